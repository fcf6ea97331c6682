"""A one-dimensional Gaussian mixture, exactly known, and the 1-D chapter's model.

In one dimension every density can be drawn and every quantity computed exactly:
the data density and its score, the density of the *noised* data at any level
of a variance-preserving diffusion (again a Gaussian mixture), the share of
samples in each mode, and the Wasserstein-1 distance of a sample to the truth.

:data:`MIXTURE` is the chapter's distribution: weights (0.3, 0.1, 0.6), means
(-5, 0, 6), standard deviations (1, 0.5, 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

from . import checks, samplers
from .nets import TimeEmbedding
from .schedules import NoiseSchedule


@dataclass(frozen=True)
class GaussianMixture1D:
    """``sum_k weights[k] * N(means[k], stds[k]^2)`` on the real line.

    Frozen (hashable); the three sequences are stored as tuples of floats.

    Args:
      weights: component weights, ``K`` positive numbers summing to 1.
      means: component means, ``K`` finite numbers.
      stds: component standard deviations, ``K`` positive numbers.

    Raises:
      ValueError: if the three are not 1-D of one common length ``K >= 1``, a weight
        is not positive or they do not sum to 1, a std is not positive, or a mean is
        not finite.
    """

    weights: tuple
    means: tuple
    stds: tuple

    def __post_init__(self):
        w, m, s = (np.asarray(v, np.float64) for v in (self.weights, self.means, self.stds))
        if not (w.ndim == m.ndim == s.ndim == 1 and w.size == m.size == s.size >= 1):
            raise ValueError("weights, means and stds must be 1-D sequences of one common length")
        if np.any(w <= 0) or abs(w.sum() - 1.0) > 1e-6:
            raise ValueError(f"weights must be positive and sum to 1, got {tuple(w)}")
        if np.any(s <= 0) or not np.all(np.isfinite(m)):
            raise ValueError(f"stds must be positive and means finite, got {tuple(s)}, {tuple(m)}")
        for name, v in (("weights", w), ("means", m), ("stds", s)):
            object.__setattr__(self, name, tuple(float(x) for x in v))

    @property
    def mean(self) -> float:
        """The mixture's mean, ``sum_k w_k m_k``."""
        return float(np.dot(self.weights, self.means))

    @property
    def std(self) -> float:
        """The mixture's standard deviation (all components together)."""
        w, m, s = map(np.asarray, (self.weights, self.means, self.stds))
        return float(np.sqrt(np.dot(w, s**2 + m**2) - self.mean**2))

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` exact draws.

        Args:
          key: PRNG key.
          n: number of draws.

        Returns:
          Draws of shape ``(n,)``, float32.

        Raises:
          TypeError: if ``n`` is not an int.
          ValueError: if ``n < 1``.
        """
        n = checks.positive_int(n, "n")
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, len(self.weights), (n,), p=jnp.asarray(self.weights))
        z = jax.random.normal(k_noise, (n,))
        return jnp.asarray(self.means)[comp] + jnp.asarray(self.stds)[comp] * z

    def _component_logpdf(self, x) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)[..., None]
        return jnp.log(jnp.asarray(self.weights)) + norm.logpdf(
            x, jnp.asarray(self.means), jnp.asarray(self.stds)
        )

    def log_prob(self, x) -> jax.Array:
        """Log-density.

        Args:
          x: points, any shape.

        Returns:
          ``log p(x)``, the shape of ``x``.
        """
        return logsumexp(self._component_logpdf(x), axis=-1)

    def score(self, x) -> jax.Array:
        """The score ``d/dx log p(x)``, by automatic differentiation of :meth:`log_prob`.

        Args:
          x: points, any shape.

        Returns:
          The score, the shape of ``x``.
        """
        x = jnp.asarray(x, jnp.float32)
        return jnp.vectorize(jax.grad(self.log_prob))(x)

    def responsibilities(self, x) -> jax.Array:
        """Posterior probability of each component, ``p(component k | x)``.

        Args:
          x: points, any shape.

        Returns:
          Probabilities of shape ``x.shape + (K,)``, summing to 1 over the last axis.
        """
        lp = self._component_logpdf(x)
        return jnp.exp(lp - logsumexp(lp, axis=-1, keepdims=True))

    def cdf(self, x) -> jax.Array:
        """Cumulative distribution function.

        Args:
          x: points, any shape.

        Returns:
          ``P(X <= x)``, the shape of ``x``.
        """
        x = jnp.asarray(x, jnp.float32)[..., None]
        return jnp.sum(
            jnp.asarray(self.weights)
            * norm.cdf(x, jnp.asarray(self.means), jnp.asarray(self.stds)),
            axis=-1,
        )

    def affine(self, scale: float, shift: float) -> GaussianMixture1D:
        """The distribution of ``scale * x + shift``.

        Args:
          scale: a positive factor.
          shift: an offset.

        Returns:
          A new :class:`GaussianMixture1D` with the same weights.

        Raises:
          TypeError: if ``scale`` or ``shift`` is not a number.
          ValueError: if ``scale <= 0`` or either is not finite.
        """
        scale = checks.finite_number(scale, "scale", minimum=0.0, strictly=True)
        shift = checks.finite_number(shift, "shift")
        return GaussianMixture1D(
            self.weights,
            tuple(scale * m + shift for m in self.means),
            tuple(scale * s for s in self.stds),
        )

    def noised(self, alpha_bar: float) -> GaussianMixture1D:
        """The law of ``sqrt(ab) x0 + sqrt(1 - ab) eps``, the forward process exactly.

        Each component's mean shrinks by ``sqrt(ab)`` and its variance moves towards 1.

        Args:
          alpha_bar: the noise level ``ab`` in ``(0, 1]`` (1: no noise).

        Returns:
          A new :class:`GaussianMixture1D` with the same weights.

        Raises:
          ValueError: if ``alpha_bar`` is not in ``(0, 1]``.
        """
        ab = float(alpha_bar)
        if not 0.0 < ab <= 1.0:
            raise ValueError(f"alpha_bar must lie in (0, 1], got {alpha_bar}")
        return GaussianMixture1D(
            self.weights,
            tuple(np.sqrt(ab) * m for m in self.means),
            tuple(np.sqrt(ab * s**2 + 1.0 - ab) for s in self.stds),
        )

    def noised_score(self, x, alpha_bar) -> jax.Array:
        """The exact score of :meth:`noised` at ``x``, for an array ``alpha_bar``.

        Unlike :meth:`noised`, ``alpha_bar`` may be a traced array, so this runs inside
        ``jax.jit``.  ``-sqrt(1 - alpha_bar)`` times it is the ideal noise prediction:
        an oracle "network" for testing samplers.

        Args:
          x: points, any shape.
          alpha_bar: noise levels in ``(0, 1]``, broadcastable against ``x``.

        Returns:
          The score of the noised law, the broadcast shape of ``x`` and ``alpha_bar``.
        """
        x = jnp.asarray(x, jnp.float32)[..., None]
        ab = jnp.asarray(alpha_bar, jnp.float32)[..., None]
        m = jnp.sqrt(ab) * jnp.asarray(self.means)
        var = ab * jnp.asarray(self.stds) ** 2 + 1.0 - ab
        logp = jnp.log(jnp.asarray(self.weights)) + norm.logpdf(x, m, jnp.sqrt(var))
        resp = jnp.exp(logp - logsumexp(logp, axis=-1, keepdims=True))
        return jnp.sum(resp * (m - x) / var, axis=-1)


#: The chapter's mixture, with weights (0.3, 0.1, 0.6), means (-5, 0, 6) and stds (1, 0.5, 2).
MIXTURE = GaussianMixture1D(weights=(0.3, 0.1, 0.6), means=(-5.0, 0.0, 6.0), stds=(1.0, 0.5, 2.0))


# ------------------------------------------------------------------- measures
def _as_samples(samples) -> np.ndarray:
    x = np.asarray(samples, np.float64).reshape(-1)
    if x.size < 2:
        raise ValueError(f"samples must hold at least 2 values, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"samples contain {int(np.sum(~np.isfinite(x)))} NaN or infinite values")
    return x


def mode_weights(mixture: GaussianMixture1D, samples) -> np.ndarray:
    """The share of ``samples`` in each component: the mean responsibility.

    For exact draws its expectation is exactly ``mixture.weights`` (soft
    assignment has no bias where components overlap, unlike nearest-mode counts).

    Args:
      mixture: the true distribution.
      samples: draws, any shape (flattened), at least 2 values.

    Returns:
      Shares of shape ``(K,)``, float64, summing to 1.

    Raises:
      ValueError: if there are fewer than 2 samples or any is NaN or infinite.
    """
    x = _as_samples(samples)
    return np.asarray(mixture.responsibilities(x).mean(axis=0), np.float64)


def wasserstein1(mixture: GaussianMixture1D, samples, *, grid_points: int = 40_001) -> float:
    """Wasserstein-1 distance between the empirical law of ``samples`` and ``mixture``.

    In one dimension it is the area between the two CDFs, integrated here with the
    trapezoid rule on a fine grid that covers the samples and 8 standard deviations
    around every component.

    Args:
      mixture: the true distribution.
      samples: draws, any shape (flattened), at least 2 values.
      grid_points: points of the integration grid.

    Returns:
      W1 in data units, a float ``>= 0``.

    Raises:
      ValueError: if there are fewer than 2 samples or any is NaN or infinite.
    """
    x = np.sort(_as_samples(samples))
    grid_points = checks.positive_int(grid_points, "grid_points", minimum=2)
    pairs = list(zip(mixture.means, mixture.stds, strict=True))
    lo = min(x[0], min(m - 8 * s for m, s in pairs))
    hi = max(x[-1], max(m + 8 * s for m, s in pairs))
    grid = np.linspace(lo, hi, grid_points)
    empirical = np.searchsorted(x, grid, side="right") / x.size
    exact = np.asarray(mixture.cdf(grid), np.float64)
    gap = np.abs(empirical - exact)
    return float(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(grid)))


def w1_reference(mixture: GaussianMixture1D, n: int, *, repeats: int = 20, seed: int = 0) -> float:
    """The mean W1 of ``n`` exact draws: what sampling noise alone costs at that size.

    Args:
      mixture: the true distribution.
      n: sample size.
      repeats: independent sets of ``n`` draws to average over.
      seed: seed of the draws.

    Returns:
      The mean :func:`wasserstein1` of the ``repeats`` sets, a float.

    Raises:
      TypeError: if ``n`` or ``repeats`` is not an int.
      ValueError: if ``n < 2`` or ``repeats < 1``.
    """
    n = checks.positive_int(n, "n", minimum=2)
    repeats = checks.positive_int(repeats, "repeats")
    keys = jax.random.split(jax.random.key(seed), repeats)
    return float(np.mean([wasserstein1(mixture, mixture.sample(k, n)) for k in keys]))


def quality(mixture: GaussianMixture1D, samples) -> dict:
    """Mode weights, their largest error, W1 and its sampling-noise reference.

    Args:
      mixture: the true distribution.
      samples: draws, any shape (flattened), at least 2 values.

    Returns:
      dict with ``n_samples``; ``mode_weights`` (list of ``K`` shares, see
      :func:`mode_weights`); ``weight_error`` (largest absolute error of a share);
      ``w1`` (:func:`wasserstein1`), ``w1_ref`` (:func:`w1_reference` at the same
      size) and ``w1_ratio`` (``w1 / w1_ref``; about 1 for exact draws).

    Raises:
      ValueError: if there are fewer than 2 samples or any is NaN or infinite.
    """
    x = _as_samples(samples)
    weights = mode_weights(mixture, x)
    w1 = wasserstein1(mixture, x)
    ref = w1_reference(mixture, x.size)
    return {
        "n_samples": int(x.size),
        "mode_weights": [round(float(w), 4) for w in weights],
        "weight_error": float(np.max(np.abs(weights - np.asarray(mixture.weights)))),
        "w1": w1,
        "w1_ref": ref,
        "w1_ratio": w1 / ref,
    }


# ---------------------------------------------------------------------- model
class _Block(nnx.Module):
    """Pre-norm residual MLP block, with the time embedding added to its hidden layer."""

    def __init__(self, width: int, emb_dim: int, norm: str, *, rngs: nnx.Rngs):
        self.norm = {
            "layer": lambda: nnx.LayerNorm(width, rngs=rngs),
            "batch": lambda: nnx.BatchNorm(width, rngs=rngs),
            "none": lambda: None,
        }[norm]()
        self.fc1 = nnx.Linear(width, width, rngs=rngs)
        self.emb = nnx.Linear(emb_dim, width, rngs=rngs)
        self.fc2 = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, h, emb):
        z = h if self.norm is None else self.norm(h)
        return h + self.fc2(nnx.silu(self.fc1(z) + self.emb(emb)))


class MixtureMLP(nnx.Module):
    """A small residual MLP ``(x, u) -> output`` for 1-D data.

    ``x`` has shape ``(B, 1)`` and ``u`` (the time ``t / T``) shape ``(B,)``; the
    output has shape ``(B, 1)``.  ``norm`` and ``time_embedding`` are there to try
    the naive recipe's choices.

    Args:
      width: width of the hidden layers.
      depth: number of residual blocks.
      emb_dim: size of the time embedding.
      norm: normalisation inside the blocks: ``"layer"``, ``"batch"`` or ``"none"``.
      time_embedding: sinusoidal features of ``u``; ``False`` feeds ``u`` as a
        plain number through a linear layer instead.
      rngs: Flax's random streams for the initial weights.

    Raises:
      TypeError: if ``width``, ``depth`` or ``emb_dim`` is not an int.
      ValueError: if one of them is below 1, or ``norm`` is not one of the three.
    """

    def __init__(
        self,
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 32,
        *,
        norm: str = "none",
        time_embedding: bool = True,
        rngs: nnx.Rngs,
    ):
        width = checks.positive_int(width, "width")
        depth = checks.positive_int(depth, "depth")
        emb_dim = checks.positive_int(emb_dim, "emb_dim")
        checks.one_of(norm, "norm", ("layer", "batch", "none"))
        self.time = TimeEmbedding(emb_dim, rngs=rngs) if time_embedding else None
        self.time_in = None if time_embedding else nnx.Linear(1, emb_dim, rngs=rngs)
        self.inp = nnx.Linear(1, width, rngs=rngs)
        self.blocks = nnx.List([_Block(width, emb_dim, norm, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x: jax.Array, u: jax.Array) -> jax.Array:
        """The network's output.

        Args:
          x: points ``(B, 1)``.
          u: times ``t / T`` in ``[0, 1]``, shape ``(B,)``.

        Returns:
          Output ``(B, 1)`` (a v-prediction in the chapter's recipe).

        Raises:
          ValueError: if ``x`` is not of shape ``(B, 1)``.
        """
        if x.ndim != 2 or x.shape[1] != 1:
            raise ValueError(f"x must have shape (batch, 1), got {x.shape}")
        emb = self.time(u) if self.time is not None else nnx.silu(self.time_in(u[:, None]))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nnx.silu(h))


#: The chapter's recipes; :func:`diffbook.config.pick` chooses one.  ``ema_warmup``
#: is :func:`diffbook.train.fit`'s: the EMA's decay ramps up as ``(1 + n) / (10 + n)``
#: to ``ema_decay``, so that short runs are not judged by an average still full of
#: the random initial weights.
RECIPE = {
    "cpu": dict(
        width=64,
        depth=3,
        batch_size=1024,
        steps=8000,
        peak_lr=2e-3,
        warmup=100,
        ema_decay=0.999,
        ema_warmup=True,
        schedule="linear",
        num_timesteps=1000,
        num_data=2**16,
        num_samples=10_000,
        table_samples=3_000,
    ),
    "accelerator": dict(
        width=128,
        depth=3,
        batch_size=8192,
        steps=8000,
        peak_lr=2e-3,
        warmup=200,
        ema_decay=0.999,
        ema_warmup=True,
        schedule="linear",
        num_timesteps=1000,
        num_data=2**18,
        num_samples=10_000,
        table_samples=3_000,
    ),
    # A smoke run of the chapter (see diffbook.config.pick): every cell, few steps.
    "smoke": dict(steps=64, warmup=4, batch_size=64, num_samples=1024, table_samples=512),
}


def standardise(x) -> jax.Array:
    """Data units -> the unit-variance coordinates the model works in.

    Args:
      x: points in data units, any shape (flattened).

    Returns:
      ``(x - MIXTURE.mean) / MIXTURE.std`` of shape ``(N, 1)``, float32.
    """
    x = jnp.asarray(x, jnp.float32).reshape(-1, 1)
    return (x - MIXTURE.mean) / MIXTURE.std


def unstandardise(z) -> np.ndarray:
    """The model's coordinates -> data units; the inverse of :func:`standardise`.

    Args:
      z: points in standardised coordinates, any shape (flattened).

    Returns:
      Points in data units, float32 of shape ``(N,)``.
    """
    return np.asarray(z, np.float32).reshape(-1) * MIXTURE.std + MIXTURE.mean


#: :data:`MIXTURE` in the model's (standardised) coordinates.
STANDARD = MIXTURE.affine(1.0 / MIXTURE.std, -MIXTURE.mean / MIXTURE.std)


def oracle_net(schedule: NoiseSchedule, mix: GaussianMixture1D = STANDARD):
    """A perfect v-predicting "network" ``net(z, u)`` for ``mix`` under ``schedule``.

    It has the signature of a trained :class:`MixtureMLP` (``z`` of shape ``(n, 1)``,
    ``u = t / T`` of shape ``(n,)``) and returns the exact v of the noised mixture:
    the ideal noise prediction is ``eps = -sqrt(1 - ab) * score`` and, with
    ``x0 = (z - sqrt(1 - ab) eps) / sqrt(ab)``, ``v = sqrt(ab) eps - sqrt(1 - ab) x0``.
    A sampler run with it shows its own error, free of the network's.

    Args:
      schedule: the noise schedule whose ``alpha_bar_at(u)`` gives the noise level.
      mix: the data distribution, in the model's coordinates (default
        :data:`STANDARD`).

    Returns:
      ``net(z, u)``: ``z`` of shape ``(n, 1)`` and ``u`` of shape ``(n,)`` ->
      v of shape ``(n, 1)``; it raises ``ValueError`` for a ``z`` of another shape.

    Raises:
      TypeError: if ``schedule`` is not a :class:`~diffbook.schedules.NoiseSchedule`
        or ``mix`` not a :class:`GaussianMixture1D`.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if not isinstance(mix, GaussianMixture1D):
        raise TypeError(f"mix must be a GaussianMixture1D, got {type(mix).__name__}")

    def net(z, u):
        if z.ndim != 2 or z.shape[1] != 1:
            raise ValueError(f"z must have shape (n, 1), got {z.shape}")
        ab = schedule.alpha_bar_at(u)[:, None]
        eps = -jnp.sqrt(1 - ab) * mix.noised_score(z[:, 0], ab[:, 0])[:, None]
        x0 = (z - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab)
        return jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0

    return net


def make_schedule(cfg) -> NoiseSchedule:
    """The recipe's noise schedule."""
    return {"cosine": NoiseSchedule.cosine, "linear": NoiseSchedule.linear}[cfg.schedule](
        cfg.num_timesteps
    )


def make_data(cfg, key: jax.Array) -> jax.Array:
    """``cfg.num_data`` exact draws of :data:`MIXTURE`, standardised, shape ``(N, 1)``."""
    return standardise(MIXTURE.sample(key, cfg.num_data))


def make_model(cfg, seed: int = 0, **options) -> MixtureMLP:
    """The recipe's :class:`MixtureMLP` (``options`` go to its constructor)."""
    return MixtureMLP(cfg.width, cfg.depth, rngs=nnx.Rngs(seed), **options)


#: The options :func:`draw` gives each sampler unless told otherwise: the number of
#: steps of the samplers that can take fewer than ``T`` (DDIM) or need a number
#: (the reverse SDE's Euler-Maruyama).
SAMPLER_OPTIONS = {"ddim": {"steps": 50}, "sde": {"steps": 1000}}


def draw(
    name: str,
    schedule: NoiseSchedule,
    net,
    key: jax.Array,
    n: int,
    *,
    prediction: str = "v",
    **options,
):
    """``n`` samples of the chapter's 1-D model with the sampler called ``name``.

    :func:`diffbook.samplers.sample` with shape ``(n, 1)``, no clipping (the
    mixture is not bounded), the chapter's ``prediction`` ("v") and
    :data:`SAMPLER_OPTIONS`; ``options`` override them.

    Args:
      name: a key of :data:`diffbook.samplers.SAMPLERS`.
      schedule: the training schedule.
      net: ``net(z, u)``, a trained :class:`MixtureMLP` or :func:`oracle_net`.
      key: PRNG key.
      n: the number of samples.
      prediction: what ``net`` predicts.
      **options: more sampler options (e.g. ``steps``, ``corrector_steps``).

    Returns:
      ``(z, nfe)``: samples in the model's coordinates, shape (n, 1), and the
      number of network calls.

    Raises:
      TypeError, ValueError: for an unknown ``name`` or a bad ``n``.
    """
    from .checks import positive_int

    positive_int(n, "n")
    defaults = dict(SAMPLER_OPTIONS.get(name, {}))
    if "timesteps" in options:  # an explicit grid replaces the default number of steps
        defaults.pop("steps", None)
    options = {**defaults, **options}
    return samplers.sample(name, schedule, net, key, (n, 1), prediction=prediction, **options)
