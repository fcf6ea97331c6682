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
the time ``u`` (a guidance schedule).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from . import samplers
from .checks import finite_number
from .ddpm import diffusion_loss
from .schedules import NoiseSchedule


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
    return tuple(jnp.asarray(c) for c in cond)


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
    both = tuple(
        jnp.concatenate([c, n]) for c, n in zip(cond, model.null_condition(*cond), strict=True)
    )

    def model_fn(x, u):
        n = x.shape[0]
        out = model(jnp.concatenate([x, x]), jnp.concatenate([u, u]), *both)
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
      **options: the sampler's other options (``steps``, ``prediction``, ...).

    Raises:
      ValueError: for an unknown ``sampler``.
    """

    def __init__(
        self, schedule: NoiseSchedule, *, sampler: str = "ddim", clip_x0: bool = True, **options
    ):
        if sampler not in samplers.SAMPLERS:
            raise ValueError(f"sampler must be one of {tuple(samplers.SAMPLERS)}, got {sampler!r}")
        if sampler == "ddim" and options.get("steps") is not None:
            samplers.ddim_timesteps(schedule.num_timesteps, options["steps"])  # checks steps
        self.schedule, self.sampler = schedule, sampler
        self._deterministic = _is_deterministic(sampler, options)

        def run(model, cond, x_T, key, scale):
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
          TypeError, ValueError: for a bad ``scale`` or ``cond``, ``cond`` whose
            batch differs from ``x_T``'s, or a stochastic sampler without ``key``.
        """
        scale = finite_number(scale, "scale", minimum=0.0)
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
