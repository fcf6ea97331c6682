"""Noise schedules of discrete-time diffusion models (DDPM) and the conversions between
what a network can predict.

Conventions (those of Ho et al. 2020 and of diffusers' schedulers): timesteps are
integers ``t = 0 .. T-1`` with ``T = num_timesteps``; ``betas[t]`` is the variance added
by step ``t``,
``alpha_bars[t] = prod_{s <= t} (1 - betas[s])``, and the noised sample is

    x_t = sqrt(alpha_bars[t]) * x0 + sqrt(1 - alpha_bars[t]) * eps,   eps ~ N(0, I).

A network may predict ``eps`` ("epsilon"), the clean image ``x0`` ("x0"), or the
velocity ``v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x0`` ("v",
Salimans & Ho 2022).  ``to_x0_eps`` turns any of them into the pair (x0, eps).

One :class:`NoiseSchedule` object serves training and sampling alike, so the two
can never disagree.  Networks never see the integer ``t``: at the network boundary
time is the float ``u = t / T`` in [0, 1) (:meth:`NoiseSchedule.to_u`), the same
input scale as every other network in the book.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .checks import one_of, positive_int

PREDICTIONS = ("epsilon", "x0", "v")


class StepOutput(NamedTuple):
    """What one sampler step returns (as diffusers' schedulers do), both of ``x_t``'s shape."""

    #: The sample at the next, less noisy, timestep.
    prev_sample: jax.Array
    #: The clean sample predicted on the way, clipped when the step clips; it shows
    #: what the step aimed at, which is useful to watch a sampler work.
    pred_x0: jax.Array


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete noise schedule; build one with :meth:`linear`, :meth:`cosine` or
    :meth:`from_betas`.

    Attributes are float32 arrays of length ``num_timesteps``: ``betas``, ``alphas``
    (= 1 - betas), ``alpha_bars`` and ``alpha_bars_prev`` (``alpha_bars`` shifted
    right, with 1 at ``t = 0``), and the posterior's coefficients
    ``posterior_x0_coef``, ``posterior_xt_coef`` and ``posterior_variance`` (see
    :meth:`posterior`).  Everything is computed in float64 and only then cast to
    float32: near ``t = 0`` the factor ``1 - alpha_bar`` is tiny, and forming it in
    float32 would lose three of its digits.
    """

    betas: jax.Array
    name: str = "custom"

    def __post_init__(self):
        betas = np.asarray(self.betas, np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError(
                f"betas must lie in (0, 1), got values in [{betas.min()}, {betas.max()}]"
            )
        alpha_bars = np.cumprod(1.0 - betas)
        alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
        # q(x_{t-1} | x_t, x0) = N(c0 x0 + ct x_t, var) (Ho et al. 2020, eqs. 6-7).  At
        # t = 0, c0 = beta_0 / (1 - alpha_bar_0) must be exactly 1: in float32,
        # 1 - alpha_bar_0 = 1 - (1 - 4e-5) keeps only about three digits.
        posterior = {
            "posterior_x0_coef": np.sqrt(alpha_bars_prev) * betas / (1.0 - alpha_bars),
            "posterior_xt_coef": np.sqrt(1.0 - betas)
            * (1.0 - alpha_bars_prev)
            / (1.0 - alpha_bars),
            "posterior_variance": betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars),
        }
        object.__setattr__(self, "betas", jnp.asarray(betas, jnp.float32))
        object.__setattr__(self, "alphas", jnp.asarray(1.0 - betas, jnp.float32))
        object.__setattr__(self, "alpha_bars", jnp.asarray(alpha_bars, jnp.float32))
        object.__setattr__(self, "alpha_bars_prev", jnp.asarray(alpha_bars_prev, jnp.float32))
        for name, values in posterior.items():
            object.__setattr__(self, name, jnp.asarray(values, jnp.float32))

    # ----------------------------------------------------------------- builders
    @classmethod
    def from_betas(cls, betas, name: str = "custom") -> NoiseSchedule:
        """A schedule with the given variances per step.

        Args:
          betas: ``(T,)`` values in (0, 1), the variance added at each step.
          name: a label for printing.

        Returns:
          The :class:`NoiseSchedule`.

        Raises:
          ValueError: if ``betas`` is not a non-empty 1-D array of values in (0, 1).
        """
        return cls(betas=betas, name=name)

    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """Betas rising linearly from ``beta_start`` to ``beta_end`` (Ho et al. 2020)."""
        num_timesteps = positive_int(num_timesteps, "num_timesteps")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        return cls(np.linspace(beta_start, beta_end, num_timesteps), name="linear")

    @classmethod
    def cosine(
        cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
    ) -> NoiseSchedule:
        """The cosine schedule of Nichol & Dhariwal (2021).

        With ``f(u) = cos^2((u + s) / (1 + s) * pi / 2)``, ``alpha_bars[t] =
        f((t + 1) / T) / f(0)`` for ``t = 0 .. T-1`` (index ``t`` is the noise level
        after ``t + 1`` steps).  The betas are ``1 - f((t+1)/T) / f(t/T)``, capped at
        ``max_beta``.  The cap matters only at the last step, where ``f(1) = 0``
        would make ``beta = 1`` and ``alpha_bar = 0``: with 0.999 the last
        ``alpha_bar`` is about 2e-9 instead (T = 1000), small but non-zero, so an
        epsilon-prediction can still be turned into ``x0``.  (Clipping the betas to
        a small range such as [1e-4, 0.02] would make a different schedule.)
        """
        num_timesteps = positive_int(num_timesteps, "num_timesteps")
        if not s > 0:
            raise ValueError(f"s must be positive, got {s}")
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
        u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        f = np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
        return cls(betas, name="cosine")

    # ---------------------------------------------------------------- accessors
    @property
    def num_timesteps(self) -> int:
        """``T``, the number of noise levels (timesteps ``0 .. T-1``)."""
        return int(self.betas.shape[0])

    def to_u(self, t) -> jax.Array:
        """The network's time input for integer timesteps ``t``: ``u = t / T`` (float32).

        Args:
          t: integer timesteps, any shape (usually (B,)).

        Returns:
          Float32 array of ``t``'s shape, in [0, (T-1)/T].
        """
        return jnp.asarray(t, jnp.float32) / self.num_timesteps

    def _at(self, values: jax.Array, t, ndim: int) -> jax.Array:
        """values[t] shaped to broadcast against an array of rank ``ndim``."""
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.integer):
            raise TypeError(f"t must be integer timesteps, got dtype {t.dtype}")
        if not isinstance(t, jax.core.Tracer):
            if np.any((np.asarray(t) < 0) | (np.asarray(t) >= self.num_timesteps)):
                raise ValueError(f"t must lie in 0..{self.num_timesteps - 1}, got {np.asarray(t)}")
        out = values[t]
        return out.reshape(out.shape + (1,) * (ndim - out.ndim))

    def snr(self, t=None) -> jax.Array:
        """Signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)`` (all steps if ``t`` is None)."""
        ab = self.alpha_bars if t is None else self._at(self.alpha_bars, t, jnp.ndim(t))
        return ab / (1.0 - ab)

    # --------------------------------------------------- forward process, targets
    def add_noise(self, x0: jax.Array, noise: jax.Array, t) -> jax.Array:
        """Sample of q(x_t | x0): ``sqrt(ab_t) x0 + sqrt(1 - ab_t) noise``; ``t`` has shape (B,)."""
        ab = self._at(self.alpha_bars, t, x0.ndim)
        return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise

    def velocity(self, x0: jax.Array, noise: jax.Array, t) -> jax.Array:
        """The v-prediction target ``sqrt(ab_t) noise - sqrt(1 - ab_t) x0``."""
        ab = self._at(self.alpha_bars, t, x0.ndim)
        return jnp.sqrt(ab) * noise - jnp.sqrt(1.0 - ab) * x0

    def to_x0_eps(
        self,
        model_output: jax.Array,
        x_t: jax.Array,
        t,
        prediction: str = "epsilon",
        *,
        clip_x0: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """Turn a network's output at ``(x_t, t)`` into the pair ``(x0, eps)``.

        Args:
          model_output: the network's output, shape of ``x_t``.
          x_t: the noisy batch, shape (B, ...).
          t: integer timesteps of shape (B,).
          prediction: what the network predicts: "epsilon", "x0" or "v".
          clip_x0: clip ``x0`` to [-1, 1] (for data that lives there) and recompute
            ``eps`` from the clipped ``x0`` so that the pair still satisfies
            ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``.  Every sampler clips through
            :func:`split_prediction`, which this calls.

        Returns:
          ``(x0, eps)``, each of the shape of ``x_t``.

        Raises:
          ValueError: for an unknown ``prediction``.
        """
        ab = self._at(self.alpha_bars, t, x_t.ndim)
        return split_prediction(model_output, x_t, ab, prediction, clip_x0=clip_x0)

    def posterior(self, x0: jax.Array, x_t: jax.Array, t) -> tuple[jax.Array, jax.Array]:
        """Mean and variance of q(x_{t-1} | x_t, x0) (Ho et al. 2020, eq. 7).

        ``mean = sqrt(ab_prev) beta / (1 - ab) * x0 + sqrt(alpha) (1 - ab_prev) / (1 - ab) * x_t``
        and ``var = beta (1 - ab_prev) / (1 - ab)``, with coefficients precomputed in
        float64.  At ``t = 0`` (``ab_prev = 1``) the mean is ``x0`` and the variance 0.
        """
        nd = x_t.ndim
        mean = (
            self._at(self.posterior_x0_coef, t, nd) * x0
            + self._at(self.posterior_xt_coef, t, nd) * x_t
        )
        return mean, self._at(self.posterior_variance, t, nd)

    def step(
        self,
        model_output: jax.Array,
        t,
        x_t: jax.Array,
        key: jax.Array,
        *,
        prediction: str = "epsilon",
        clip_x0: bool = False,
    ) -> StepOutput:
        """One ancestral step ``x_t -> x_{t-1}`` (the sampler of Ho et al. 2020).

        The network's output becomes a predicted clean sample ``x0`` (clipped to
        [-1, 1] if ``clip_x0``); ``x_{t-1}`` is drawn from the posterior
        q(x_{t-1} | x_t, x0) with its own, "fixed small", variance.  At ``t = 0``
        no noise is added, so the step returns the posterior mean, which is ``x0``.

        Args:
          model_output: the network's output at ``(x_t, t)``, shape (B, ...).
          t: one integer timestep shared by the batch (may be traced).
          x_t: the batch at timestep ``t``, shape (B, ...).
          key: PRNG key for the posterior noise.
          prediction: "epsilon", "x0" or "v".
          clip_x0: clip the predicted ``x0`` to [-1, 1].

        Returns:
          :class:`StepOutput` ``(prev_sample, pred_x0)``, both of ``x_t``'s shape.
        """
        tb = jnp.full((x_t.shape[0],), t, jnp.int32)
        x0, _ = self.to_x0_eps(model_output, x_t, tb, prediction, clip_x0=clip_x0)
        mean, var = self.posterior(x0, x_t, tb)
        return StepOutput(mean + jnp.sqrt(var) * jax.random.normal(key, x_t.shape), x0)

    def ddim_step(
        self,
        model_output: jax.Array,
        t,
        t_prev,
        x_t: jax.Array,
        key: jax.Array | None = None,
        *,
        eta: float = 0.0,
        prediction: str = "epsilon",
        clip_x0: bool = False,
    ) -> StepOutput:
        """One DDIM step ``x_t -> x_{t_prev}`` (Song et al. 2021, eq. 12).

        With ``(x0, eps)`` read off the network's output,
        ``x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z`` and
        ``sigma = eta sqrt((1 - ab_prev) / (1 - ab) (1 - ab / ab_prev))``.  ``eta = 0``
        is deterministic; ``eta = 1`` with ``t_prev = t - 1`` is the DDPM posterior.

        Args:
          model_output: the network's output at ``(x_t, t)``, shape (B, ...).
          t: one integer timestep shared by the batch (may be traced).
          t_prev: the timestep to jump to, ``< t``; ``-1`` means the clean data
            (``alpha_bar = 1``).
          x_t: the batch at timestep ``t``, shape (B, ...).
          key: PRNG key for the noise; needed only when ``eta > 0``.
          eta: the amount of fresh noise, >= 0.
          prediction: "epsilon", "x0" or "v".
          clip_x0: clip the predicted ``x0`` to [-1, 1] (``eps`` made consistent).

        Returns:
          :class:`StepOutput` ``(prev_sample, pred_x0)``, both of ``x_t``'s shape.
        """
        if key is None and not (isinstance(eta, (int, float)) and eta == 0):
            raise ValueError("eta > 0 adds noise: give a key")
        tb = jnp.full((x_t.shape[0],), t, jnp.int32)
        x0, eps = self.to_x0_eps(model_output, x_t, tb, prediction, clip_x0=clip_x0)
        ab = self.alpha_bars[t]
        ab_prev = jnp.where(t_prev >= 0, self.alpha_bars[jnp.maximum(t_prev, 0)], 1.0)
        sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps
        x_prev = jnp.sqrt(ab_prev) * x0 + direction
        if key is not None:
            x_prev = x_prev + sigma * jax.random.normal(key, x_t.shape)
        return StepOutput(x_prev, x0)

    # ---------------------------------------------------------- continuous time
    # The discrete schedule seen as a VP-SDE (Song et al. 2021): continuous time
    # u in [0, (T-1)/T] with u = t/T on the grid (the time the networks see), log
    # alpha_bar linear between grid points, and beta(u) = -d log alpha_bar / du.
    # For the linear schedule beta(u) ~ T * betas[t] runs from 0.1 to 20: the
    # VP-SDE of Song et al.  A capped last beta (cosine's 0.999) makes the final
    # interval stiff, which an adaptive ODE solver handles but Euler-Maruyama
    # does not.
    def alpha_bar_at(self, u) -> jax.Array:
        """``alpha_bar`` at continuous times ``u`` (any shape), interpolated in log space."""
        grid = jnp.arange(self.num_timesteps, dtype=jnp.float32) / self.num_timesteps
        return jnp.exp(jnp.interp(u, grid, jnp.log(self.alpha_bars)))

    def beta_at(self, u) -> jax.Array:
        """The VP-SDE's ``beta(u) = -d log alpha_bar / du`` (piecewise constant)."""
        T = self.num_timesteps
        if T < 2:
            raise ValueError("continuous time needs a schedule with at least 2 steps")
        i = jnp.clip(jnp.floor(jnp.asarray(u) * T).astype(jnp.int32), 0, T - 2)
        log_ab = jnp.log(self.alpha_bars)
        return T * (log_ab[i] - log_ab[i + 1])


def split_prediction(
    model_output: jax.Array,
    x_t: jax.Array,
    alpha_bar,
    prediction: str = "epsilon",
    *,
    clip_x0: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """``(x0, eps)`` from a prediction of kind ``prediction`` at noise level ``alpha_bar``.

    ``alpha_bar`` must broadcast against ``x_t``.  With ``a = sqrt(alpha_bar)`` and
    ``s = sqrt(1 - alpha_bar)``: ``x_t = a x0 + s eps`` and ``v = a eps - s x0``,
    so ``x0 = a x_t - s v`` and ``eps = s x_t + a v``.  With ``clip_x0``, ``x0`` is
    clipped to [-1, 1] and ``eps`` recomputed from it, so the pair still explains
    ``x_t``: the one place where every sampler clips.
    """
    one_of(prediction, "prediction", PREDICTIONS)
    a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    if prediction == "epsilon":
        x0, eps = (x_t - s * model_output) / a, model_output
    elif prediction == "x0":
        x0, eps = model_output, (x_t - a * model_output) / s
    else:
        x0, eps = a * x_t - s * model_output, s * x_t + a * model_output
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = (x_t - a * x0) / s
    return x0, eps
