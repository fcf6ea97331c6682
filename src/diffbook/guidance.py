"""Classifier-free guidance for any kind of condition (Ho & Salimans 2022).

A *conditioned model* here is a network called as ``model(x, u, *cond)``: a batch
``x`` of shape (B, ...), float times ``u`` of shape (B,) in [0, 1], and a condition
``cond``, a tuple of arrays whose first axis is the batch (a prompt's word ids and
padding mask; a class label).  It also says what "no condition" means for it::

    model.null_condition(*cond) -> tuple of arrays of the same shapes

(an all-False padding mask for text, a reserved extra label for classes).  Training
replaces each example's condition by the null one with probability ``p_uncond``
(:func:`cfg_loss`), so that one network learns both the conditional and the
unconditional prediction; sampling combines them (:func:`guided_model_fn`)::

    guided = uncond + s * (cond - uncond)

with the guidance scale ``s`` (the convention of Ho & Salimans' ``w`` is
``s = 1 + w``): ``s = 0`` is the unconditional model, ``s = 1`` the conditional one,
``s > 1`` extrapolates beyond it.  The same formula serves an epsilon-, x0- or
v-predicting network: at fixed ``x_t`` and ``t`` each is an affine function of the
others, so guiding one guides all three alike.  ``s`` may also be a function of
the time ``u`` (a guidance schedule, :func:`guidance_schedule`).

A model may also define ``model.check_condition(*cond)``, which raises a clear
error for a bad condition (a class label out of range); :class:`GuidedSampler`
calls it before compiling, where the model itself can no longer check values.

*Classifier guidance* (Dhariwal & Nichol 2021) needs no conditional network: it
adds the gradient of a classifier of noisy images to an unconditional model's
score (:func:`classifier_guided_model_fn`).

Guided sampling splits its batch over the devices as every sampler of
:mod:`diffbook.samplers` does (:func:`diffbook.train.shard_batch`): the starting
noise, the condition and the doubled batch of each guided network call each lie on
the ``"data"`` axis, so a model trained by ``train.fit`` (weights replicated) is
evaluated on every device at once.  On one device nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import samplers
from .checks import finite_number, one_of
from .ddpm import diffusion_loss
from .schedules import PREDICTIONS, NoiseSchedule
from .train import shard_batch

#: The shapes of guidance schedule that :func:`guidance_schedule` knows.
GUIDANCE_SCHEDULES = ("constant", "linear", "cosine", "interval")


def check_scale(scale):
    """A guidance scale: a finite number >= 0, or a function of the time ``u``.

    Args:
      scale: a number, or a callable ``scale(u) -> array`` of ``u``'s shape (B,)
        (a guidance schedule); a value traced under ``jax.jit`` passes unchecked.

    Returns:
      ``float(scale)``, or the callable unchanged.

    Raises:
      TypeError: if ``scale`` is neither a number nor callable.
      ValueError: if it is a negative, infinite or NaN number.
    """
    if callable(scale) or isinstance(scale, jax.core.Tracer):
        return scale  # a schedule, or a value traced under jit: checked by its caller
    return finite_number(scale, "scale", minimum=0.0)


def _check_condition(model, cond) -> tuple:
    if not callable(getattr(model, "null_condition", None)):
        raise TypeError(
            f"model must define null_condition(*cond) for classifier-free "
            f"guidance; {type(model).__name__} does not"
        )
    if not isinstance(cond, (tuple, list)) or not cond:
        raise TypeError(f"cond must be a non-empty tuple of arrays, got {type(cond).__name__}")
    cond = tuple(jnp.asarray(c) for c in cond)
    check = getattr(model, "check_condition", None)
    if callable(check):
        check(*cond)
    return cond


def _where_kept(keep, cond, null) -> tuple:
    """Per example, the condition where ``keep`` (shape (B,)) and the null one elsewhere."""
    return tuple(
        jnp.where(keep.reshape((-1,) + (1,) * (c.ndim - 1)), c, n)
        for c, n in zip(cond, null, strict=True)
    )


def cfg_loss(
    schedule: NoiseSchedule,
    model,
    batch,
    key: jax.Array,
    *,
    p_uncond: float = 0.1,
    prediction: str = "epsilon",
) -> jax.Array:
    """The diffusion loss with *condition dropout*.

    Each example's condition is replaced by the model's null condition with
    probability ``p_uncond``, so one network learns both predictions that
    classifier-free guidance combines.

    Args:
      schedule: the noise schedule.
      model: a conditioned model (see the module docstring).
      batch: ``(x0, *cond)``: clean data (B, ...) and the condition's arrays (B, ...).
      key: PRNG key (for the dropout, the timesteps and the noise).
      p_uncond: the probability of dropping an example's condition, in [0, 1).
      prediction: what the network predicts: "epsilon", "x0" or "v".

    Returns:
      The loss, a scalar.

    Raises:
      ValueError: if ``p_uncond`` is not in [0, 1).
      TypeError: if ``model`` has no ``null_condition`` or ``batch`` holds no condition.
    """
    p_uncond = finite_number(p_uncond, "p_uncond", minimum=0.0)
    if p_uncond >= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
    x0, *cond = batch
    cond = _check_condition(model, cond)
    k_drop, k_loss = jax.random.split(key)
    keep = jax.random.uniform(k_drop, (x0.shape[0],)) >= p_uncond
    cond = _where_kept(keep, cond, model.null_condition(*cond))
    return diffusion_loss(
        schedule, lambda x, u: model(x, u, *cond), x0, k_loss, prediction=prediction
    )


def _guided(model, cond, scale):
    """:func:`guided_model_fn` without the checks (``scale`` may be traced)."""
    # The condition is placed like the batch, and the doubled batch is split over the
    # devices anew: a concatenation of two split halves would otherwise leave XLA
    # free to gather it onto every device, or to split the condition (a jit input)
    # in a way that JAX cannot describe.
    cond = shard_batch(cond)
    both = shard_batch(
        tuple(
            jnp.concatenate([c, n]) for c, n in zip(cond, model.null_condition(*cond), strict=True)
        )
    )

    def model_fn(x, u):
        n = x.shape[0]
        out = model(
            shard_batch(jnp.concatenate([x, x])), shard_batch(jnp.concatenate([u, u])), *both
        )
        conditional, unconditional = out[:n], out[n:]
        s = scale(u) if callable(scale) else scale
        s = jnp.reshape(s, jnp.shape(s) + (1,) * (x.ndim - jnp.ndim(s)))
        return unconditional + s * (conditional - unconditional)

    return model_fn


def guided_model_fn(model, cond, scale) -> Callable:
    """The guided network, as the ``model_fn(x, u)`` that every sampler calls.

    The conditional and the unconditional predictions come from *one* network call
    on a batch twice the size (the second half with the null condition), so a
    sampler's ``nfe`` counts a guided step once.

    Args:
      model: a conditioned model (see the module docstring).
      cond: the condition, a tuple of arrays with first axis B (the batch that the
        sampler will pass as ``x``).
      scale: the guidance scale ``s`` (a number >= 0), or a function ``scale(u)``
        of the times ``u`` (B,) for a guidance schedule.

    Returns:
      ``model_fn(x, u) -> uncond + s * (cond - uncond)``, of ``x``'s shape.

    Raises:
      TypeError, ValueError: for a bad ``scale``, ``cond`` or ``model``.
    """
    return _guided(model, _check_condition(model, cond), check_scale(scale))


def _check_interval(interval) -> tuple[float, float]:
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise TypeError(f"interval must be a pair (low, high) of times u, got {interval!r}")
    low = finite_number(interval[0], "interval[0]", minimum=0.0)
    high = finite_number(interval[1], "interval[1]", minimum=0.0)
    if not low < high <= 1.0:
        raise ValueError(f"interval must satisfy 0 <= low < high <= 1, got {interval!r}")
    return low, high


def _check_schedule_scale(kind: str, scale: float) -> None:
    # A traced scale cannot be compared here, so a caller that traces it (GuidedSampler)
    # checks the number before tracing.
    if kind in ("linear", "cosine") and scale < 1.0:
        # 1 + (scale - 1) w(u) would drop below 0 where w > 1: guidance away from the class.
        raise ValueError(f"scale must be >= 1 for the {kind} schedule, got {scale}")


def guidance_schedule(kind: str, scale, *, interval=None) -> Callable:
    """A guidance scale that changes along the sampling path, as a function of ``u``.

    Every shape is written as ``s(u) = 1 + (scale - 1) * w(u)``: it is the
    conditional model (``s = 1``) wherever ``w = 0``, and ``scale`` where ``w = 1``.
    With ``u = t/T`` (1 is pure noise, 0 the data):

    * ``"constant"``: ``w = 1``, the usual fixed scale.
    * ``"linear"``: ``w = 2 (1 - u)``, no extra guidance at pure noise, the most
      at the end: Wang et al. (2024)'s increasing linear schedule, whose weight ``w``
      in Ho & Salimans' convention is our ``s - 1``.
    * ``"cosine"``: ``w = 1 + cos(pi u)``, the same but flat at both ends (their
      increasing cosine schedule, read the same way).
    * ``"interval"``: ``w = 1`` for ``u`` in ``interval`` and 0 outside it:
      guidance on a limited interval of noise levels (Kynkäänniemi et al. 2024).

    The linear and cosine ``w`` average 1 over ``u`` in [0, 1], so on a uniform grid
    of steps they spend as much extra guidance as the constant scale does, just
    at other times.

    Args:
      kind: one of :data:`GUIDANCE_SCHEDULES`.
      scale: the scale ``s`` (a number >= 0, or a value traced under ``jit``).
      interval: ``(low, high)`` with ``0 <= low < high <= 1``, the times ``u`` where
        ``"interval"`` guides; required for it, refused by the others.

    Returns:
      ``fn(u) -> s(u)``, an array of ``u``'s shape; pass it as the ``scale`` of
      :func:`guided_model_fn` or :func:`guided_sample`.

    Raises:
      ValueError: for an unknown ``kind``, a bad ``scale`` (below 1 for "linear" and
        "cosine", whose weight reaches 2), or a missing, unwanted or bad ``interval``.
    """
    one_of(kind, "kind", GUIDANCE_SCHEDULES)
    if callable(scale):
        raise TypeError("scale must be a number here: guidance_schedule builds the function")
    scale = check_scale(scale)
    if (kind == "interval") != (interval is not None):
        raise ValueError('interval is needed by kind="interval" and only by it')
    low, high = _check_interval(interval) if interval is not None else (0.0, 1.0)
    if not isinstance(scale, jax.core.Tracer):
        _check_schedule_scale(kind, scale)

    def fn(u):
        u = jnp.asarray(u, jnp.float32)
        if kind == "constant":
            w = jnp.ones_like(u)
        elif kind == "linear":
            w = 2.0 * (1.0 - u)
        elif kind == "cosine":
            w = 1.0 + jnp.cos(jnp.pi * u)
        else:
            w = ((u >= low) & (u <= high)).astype(jnp.float32)
        return 1.0 + (scale - 1.0) * w

    return fn


def classifier_loss(
    schedule: NoiseSchedule, classifier, batch, key: jax.Array, *, noisy: bool = True
) -> jax.Array:
    """Cross-entropy of a classifier on noised training images.

    Written out in chapter 6 (``notebooks/06_class_conditional.md``): change the two together.

    Each image is noised to a random timestep ``t`` exactly as the diffusion loss
    noises it, and the classifier, told ``u = t/T``, must name the digit.  With
    ``noisy=False`` it sees the clean images at ``u = 0``: an ordinary classifier,
    the one that fails as a guide.

    Args:
      schedule: the diffusion model's noise schedule.
      classifier: ``classifier(x, u) -> (B, K)`` logits.
      batch: ``(x0, labels)``: images (B, 8, 8, 1) and ints (B,).
      key: PRNG key for the timesteps and the noise.
      noisy: noise the images (the default) or not.

    Returns:
      The mean cross-entropy, a scalar.
    """
    x0, labels = batch
    k_t, k_noise = jax.random.split(key)
    if noisy:
        t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_timesteps)
        x = schedule.add_noise(x0, jax.random.normal(k_noise, x0.shape), t)
        u = schedule.to_u(t)
    else:
        x, u = x0, jnp.zeros((x0.shape[0],))
    logits = classifier(x, u)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _check_labels(labels, classifier) -> jax.Array:
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be a (B,) int array, got {labels.dtype} {labels.shape}")
    if not isinstance(labels, jax.core.Tracer):
        # A label past the classifier's classes would be silently clamped by
        # take_along_axis (no guidance), a negative one would wrap round.
        values = np.asarray(labels)
        top = getattr(classifier, "num_classes", None)
        if values.min() < 0 or (top is not None and values.max() >= top):
            raise ValueError(
                f"labels must lie in 0..{'K-1' if top is None else top - 1}, "
                f"got {sorted(set(values.tolist()))[:10]}"
            )
    return labels


_schedule_fn = guidance_schedule  # for GuidedSampler, whose argument has the same name


def classifier_guided_model_fn(
    schedule: NoiseSchedule,
    model_fn: Callable,
    classifier: Callable,
    labels,
    scale,
    *,
    prediction: str = "epsilon",
) -> Callable:
    """Classifier guidance (Dhariwal & Nichol 2021): an unconditional network steered
    by the gradient of a classifier of noisy images.

    Written out in chapter 6 (``notebooks/06_class_conditional.md``): change the two together.

    Bayes' rule splits the conditional score,
    ``grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t)``, and the
    network's noise prediction is a scaled score,
    ``eps = -sqrt(1 - alpha_bar) grad log p(x_t)``, so the guided prediction is::

        eps_hat = eps - s * sqrt(1 - alpha_bar) * grad_x log p_classifier(y | x_t, u)

    (Dhariwal & Nichol's Algorithm 2).  ``s = 1`` is the conditional model if
    the classifier is exact; ``s > 1`` sharpens the class.  For an ``x0``- or
    ``v``-network the same change is applied in its own units
    (``x0`` moves by ``-sqrt(1 - alpha_bar) / sqrt(alpha_bar)`` times the change of
    ``eps``, ``v`` by ``1 / sqrt(alpha_bar)`` times it), so the result can be
    passed to any sampler with the same ``prediction``.

    Args:
      schedule: the training schedule (for ``alpha_bar`` at ``u``).
      model_fn: the unconditional network, ``model_fn(x, u) -> prediction``.
      classifier: ``classifier(x, u) -> (B, K)`` logits of noisy images.
      labels: ``(B,)`` ints, the class each sample is steered to.
      scale: the classifier scale ``s >= 0``, or a function of ``u`` (a schedule).
      prediction: what ``model_fn`` predicts: "epsilon", "x0" or "v".

    Returns:
      ``guided(x, u)``, of ``x``'s shape, in the units of ``prediction``.

    Raises:
      ValueError, TypeError: for a bad ``scale``, ``prediction`` or ``labels``.
    """
    one_of(prediction, "prediction", PREDICTIONS)
    scale = check_scale(scale)
    labels = _check_labels(labels, classifier)

    def log_prob(x, u):
        # Summed over the batch: example i's gradient depends on its own term only.
        logp = jax.nn.log_softmax(classifier(x, u))
        return jnp.take_along_axis(logp, shard_batch(labels)[:, None], axis=1).sum()

    def guided(x, u):
        out = model_fn(x, u)
        grad = jax.grad(log_prob)(x, u)
        shape = (-1,) + (1,) * (x.ndim - 1)
        sqrt_ab = jnp.sqrt(schedule.alpha_bar_at(u)).reshape(shape)
        sqrt_1m_ab = jnp.sqrt(1.0 - schedule.alpha_bar_at(u)).reshape(shape)
        s = (scale(u) if callable(scale) else jnp.full(u.shape, scale)).reshape(shape)
        d_eps = -s * sqrt_1m_ab * grad
        if prediction == "epsilon":
            return out + d_eps
        if prediction == "x0":
            return out - sqrt_1m_ab / sqrt_ab * d_eps
        return out + d_eps / sqrt_ab

    return guided


def _is_deterministic(sampler: str, options: dict) -> bool:
    """Whether the sampler draws no noise: the ODE, and DDIM with eta = 0."""
    return sampler == "ode" or (sampler == "ddim" and options.get("eta", 0.0) == 0.0)


def guided_sample(
    schedule: NoiseSchedule,
    model,
    cond,
    x_T: jax.Array,
    key: jax.Array | None = None,
    *,
    scale,
    sampler: str = "ddim",
    **options,
):
    """Sample with classifier-free guidance using any sampler of
    :data:`diffbook.samplers.SAMPLERS`.

    Args:
      schedule: the training schedule.
      model: a conditioned model.
      cond: the condition, a tuple of arrays with first axis B.
      x_T: the starting noise, shape (B, ...).
      key: PRNG key; needed by the stochastic samplers (all but "ddim" with
        ``eta = 0`` and "ode").
      scale: the guidance scale, or a function of ``u`` (see :func:`guided_model_fn`).
      sampler: a key of :data:`diffbook.samplers.SAMPLERS`.
      **options: the sampler's options (``steps``, ``prediction``, ``clip_x0``,
        ``timesteps``, ...).

    Returns:
      ``(x, nfe)``: samples of ``x_T``'s shape and the number of (doubled-batch)
      network calls.

    Raises:
      ValueError: for an unknown ``sampler``, or a stochastic one without ``key``.
    """
    if sampler not in samplers.SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(samplers.SAMPLERS)}, got {sampler!r}")
    if key is None and not _is_deterministic(sampler, options):
        raise ValueError(f"sampler {sampler!r} adds noise: give a key")
    fn = guided_model_fn(model, cond, scale)
    return samplers.SAMPLERS[sampler](schedule, fn, x_T, key, **options)


class GuidedSampler:
    """A guided sampler compiled once, with the guidance scale as an input.

    ``GuidedSampler(schedule, steps=25, prediction="v")(model, cond, x_T, scale=3.0)``
    runs :func:`guided_sample` under ``nnx.jit``; trying several scales (or
    several conditions of the same shapes) reuses the compiled function.

    Args:
      schedule: the training schedule.
      sampler: a key of :data:`diffbook.samplers.SAMPLERS` (default "ddim").
      clip_x0: clip each predicted clean sample to [-1, 1].  Unlike the samplers
        themselves (default False), this class clips by default: it is meant for images.
      guidance_schedule: how the scale varies along the path, a kind of
        :func:`guidance_schedule` ("constant" by default); the ``scale`` given at
        each call is that schedule's ``scale``.
      interval: the ``(low, high)`` times of ``guidance_schedule="interval"``.
      **options: the sampler's other options (``steps``, ``prediction``, ...).

    Raises:
      ValueError: for an unknown ``sampler`` or ``guidance_schedule``, or a bad
        ``interval``.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        sampler: str = "ddim",
        clip_x0: bool = True,
        guidance_schedule: str = "constant",
        interval=None,
        **options,
    ):
        # Fails early for a bad kind or interval (the scale is checked per call).
        _schedule_fn(guidance_schedule, 1.0, interval=interval)
        if sampler not in samplers.SAMPLERS:
            raise ValueError(f"sampler must be one of {tuple(samplers.SAMPLERS)}, got {sampler!r}")
        if sampler == "ddim" and options.get("steps") is not None:
            samplers.ddim_timesteps(schedule.num_timesteps, options["steps"])  # checks steps
        self.schedule, self.sampler = schedule, sampler
        self.guidance_schedule = guidance_schedule
        self._deterministic = _is_deterministic(sampler, options)

        def run(model, cond, x_T, key, scale):
            if guidance_schedule != "constant":
                scale = _schedule_fn(guidance_schedule, scale, interval=interval)
            fn = _guided(model, cond, scale)
            return samplers.SAMPLERS[sampler](schedule, fn, x_T, key, clip_x0=clip_x0, **options)

        self._run = nnx.jit(run)

    def __call__(self, model, cond, x_T: jax.Array, key: jax.Array | None = None, *, scale):
        """Guided samples from ``x_T``.

        Args:
          model: a conditioned model.
          cond: the condition, a tuple of arrays with first axis B.
          x_T: the starting noise, (B, ...).
          key: PRNG key; required by the stochastic samplers, unused by the others.
          scale: the guidance scale, a number >= 0 (a traced input: no recompiling).

        Returns:
          ``(x, nfe)`` as :func:`guided_sample` returns them.

        Raises:
          TypeError, ValueError: for a bad ``scale`` (below 1 for the "linear" and
            "cosine" schedules) or ``cond``, ``cond`` whose batch differs from
            ``x_T``'s, or a stochastic sampler without ``key``.
        """
        scale = finite_number(scale, "scale", minimum=0.0)
        _check_schedule_scale(self.guidance_schedule, scale)  # inside jit it would be traced
        cond = _check_condition(model, cond)
        if any(c.shape[0] != x_T.shape[0] for c in cond):
            raise ValueError(
                f"cond's arrays must have x_T's batch size {x_T.shape[0]}, got "
                f"shapes {[c.shape for c in cond]}"
            )
        if key is None and not self._deterministic:
            raise ValueError(f"sampler {self.sampler!r} adds noise: give a key")
        key = jax.random.key(0) if key is None else key  # unused by a deterministic sampler
        return self._run(model, cond, x_T, key, jnp.float32(scale))
