"""Conditional flow matching, as taught in the flow-matching chapter.

Time runs from noise at ``t = 0`` to data at ``t = 1``: the reverse of
:mod:`diffbook.ddpm`, where ``x0`` is the clean image and ``t = 0`` the data end.
A pair (noise ``x0``, data ``x1``) is joined by the straight line
``x_t = (1 - t) x0 + t x1``, whose velocity ``x1 - x0`` is the regression target
of the network ``v(x_t, t)``.  Sampling integrates ``dx/dt = v(x, t)`` from
noise; encoding integrates it backwards from data.

The chapter writes these functions out in its own cells; this module holds the
same recipe for the benchmark (``python -m diffbook.bench flow_matching``) and
for later chapters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import checks
from .samplers import ode_solve

#: The chapter's two recipes; :func:`diffbook.config.pick` chooses one.
RECIPE = {
    "cpu": dict(
        digit=2,
        channels=(16, 32),
        batch_size=128,
        steps=800,
        peak_lr=2e-3,
        warmup=50,
        ema_decay=0.995,
        rtol=1e-3,
        atol=1e-3,
        num_samples=256,  # per sampling seed
    ),
    "accelerator": dict(
        digit=2,
        channels=(64, 128),
        batch_size=512,
        steps=4000,
        peak_lr=1e-3,
        warmup=200,
        ema_decay=0.999,
        rtol=1e-4,
        atol=1e-4,
        num_samples=256,
    ),
    # A smoke run of the chapter (see diffbook.config.pick): every cell, few steps.
    "smoke": dict(steps=20, warmup=2, batch_size=16, num_samples=16),
}


def logit_normal(key: jax.Array, n: int, *, mean: float = 0.0, std: float = 1.0) -> jax.Array:
    """``n`` times in (0, 1): ``sigmoid(u)`` with ``u ~ N(mean, std^2)``.

    Written out in chapter 3 (``notebooks/03_flow_matching.md``): change the two together.

    They cluster around the middle of the path, where the target velocity is
    hardest to predict, and rarely fall at the easy ends.

    Args:
      key: PRNG key.
      n: number of times.
      mean: mean of ``u``.
      std: standard deviation of ``u``.

    Returns:
      Times of shape ``(n,)``, float32, in (0, 1).

    Raises:
      TypeError: if ``n`` is not an int or ``std`` not a number.
      ValueError: if ``n < 1`` or ``std <= 0``.
    """
    n = checks.positive_int(n, "n")
    std = checks.finite_number(std, "std", minimum=0.0, strictly=True)
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, (n,)))


def cfm_loss(model, x1: jax.Array, key: jax.Array) -> jax.Array:
    """Conditional flow-matching loss of ``model(x_t, t)`` on a batch of data ``x1``.

    Written out in chapter 3 (``notebooks/03_flow_matching.md``): change the two together.

    Draws one time per image from :func:`logit_normal` and one noise image ``x0``,
    and regresses the network on the straight path's velocity ``x1 - x0``.

    Args:
      model: the velocity network, ``model(x, t)`` with ``x`` of the shape of ``x1``
        and ``t`` of shape ``(B,)``.
      x1: data ``(B, H, W, C)`` in ``[-1, 1]`` (any ``(B, ...)`` works).
      key: PRNG key for the times and the noise.

    Returns:
      The mean squared error, a scalar.
    """
    k_t, k_noise = jax.random.split(key)
    t = logit_normal(k_t, x1.shape[0])
    x0 = jax.random.normal(k_noise, x1.shape)
    t_ = t.reshape((-1,) + (1,) * (x1.ndim - 1))  # (B, 1, 1, 1): broadcast over pixels
    xt = (1 - t_) * x0 + t_ * x1
    return jnp.mean((model(xt, t) - (x1 - x0)) ** 2)


def velocity_field(model):
    """The learned ODE's right-hand side, in the argument order of ODE solvers.

    Args:
      model: the velocity network ``model(x, t)``.

    Returns:
      ``f(t, x) = model(x, full((B,), t))`` for a scalar ``t`` and a batch ``x``
      of shape ``(B, ...)``.
    """
    return lambda t, x: model(x, jnp.full((x.shape[0],), t))


def sample(model, key: jax.Array, n: int, shape=(8, 8, 1), **solver_kwargs):
    """``n`` samples: noise at t=0 carried to t=1 by the learned ODE.

    The batch is integrated as one ODE: with adaptive steps, ``rtol``/``atol``
    bound the root-mean-square of the scaled error over all ``n`` samples together
    (diffrax's default norm), not the error of each sample, and all samples share
    one sequence of steps.

    Args:
      model: the velocity network ``model(x, t)``.
      key: PRNG key for the starting noise.
      n: number of samples.
      shape: shape of one sample.
      **solver_kwargs: passed to :func:`diffbook.samplers.ode_solve` (e.g. ``rtol``,
        ``atol``).

    Returns:
      What :func:`diffbook.samplers.ode_solve` returns: the samples ``(n, *shape)``
      (unclipped) and the number of velocity evaluations.

    Raises:
      TypeError: if ``n`` is not an int.
      ValueError: if ``n < 1``.
    """
    n = checks.positive_int(n, "n")
    x0 = jax.random.normal(key, (n, *shape))
    return ode_solve(velocity_field(model), x0, t0=0.0, t1=1.0, **solver_kwargs)


def encode(model, x1: jax.Array, **solver_kwargs):
    """Data to noise: the learned ODE integrated backwards from t=1 to t=0.

    Args:
      model: the velocity network ``model(x, t)``.
      x1: data ``(B, ...)``.
      **solver_kwargs: passed to :func:`diffbook.samplers.ode_solve`.

    Returns:
      What :func:`diffbook.samplers.ode_solve` returns: the noise ``(B, ...)`` and
      the number of velocity evaluations.
    """
    return ode_solve(velocity_field(model), x1, t0=1.0, t1=0.0, **solver_kwargs)


def decode(model, x0: jax.Array, **solver_kwargs):
    """Noise to data: the learned ODE integrated from t=0 to t=1.

    Args:
      model: the velocity network ``model(x, t)``.
      x0: noise ``(B, ...)``.
      **solver_kwargs: passed to :func:`diffbook.samplers.ode_solve`.

    Returns:
      What :func:`diffbook.samplers.ode_solve` returns: the data ``(B, ...)`` and
      the number of velocity evaluations.
    """
    return ode_solve(velocity_field(model), x0, t0=0.0, t1=1.0, **solver_kwargs)
