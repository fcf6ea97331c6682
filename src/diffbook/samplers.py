"""Samplers that the chapters have taught, kept here for reuse.

``ode_solve`` integrates ``dx/dt = velocity(t, x)`` with diffrax, for a whole batch
at once, and reports how many times the velocity (the network) was evaluated.
Flow matching samples with it (noise at t=0 to data at t=1) and encodes with it
(the same ODE run backwards); the probability-flow ODE of a diffusion model is
another use.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

# Velocity evaluations per attempted step.  Tsit5 and Dopri5 are "first same as
# last": a step reuses the previous step's final evaluation, so they cost one
# evaluation at the start plus six per step.
_EVALS_PER_STEP = {"Euler": (1, 0), "Heun": (2, 0), "Midpoint": (2, 0), "Tsit5": (6, 1),
                   "Dopri5": (6, 1)}
_ADAPTIVE = ("Heun", "Tsit5", "Dopri5")  # those with an embedded error estimate


def ode_solve(velocity: Callable, x: jax.Array, *, t0: float = 0.0, t1: float = 1.0,
              solver: dfx.AbstractSolver | None = None, steps: int | None = None,
              rtol: float = 1e-3, atol: float = 1e-3, max_steps: int = 4096):
    """Integrate ``dx/dt = velocity(t, x)`` from ``t0`` to ``t1``.

    Args:
      velocity: ``velocity(t, x) -> dx/dt`` with ``t`` a scalar and ``x`` the
        whole batch; it is called with traced values, so it must be JAX code.
      x: the state at ``t0``, any shape (a batch of images, say).
      t0, t1: start and end times; ``t1 < t0`` integrates backwards.
      solver: a diffrax solver (default ``diffrax.Tsit5()``).
      steps: a fixed number of equal steps; ``None`` lets an adaptive step-size
        controller with tolerances ``rtol``/``atol`` choose them.
      max_steps: give up (with an error) after this many steps.

    Returns:
      ``(x_t1, nfe)``: the state at ``t1`` and the number of velocity evaluations.
    """
    solver = dfx.Tsit5() if solver is None else solver
    name = type(solver).__name__
    if name not in _EVALS_PER_STEP:
        raise ValueError(f"solver must be one of {sorted(_EVALS_PER_STEP)}, got {name}")
    if steps is None and name not in _ADAPTIVE:
        raise ValueError(f"{name} has no error estimate: give a fixed number of steps, "
                         f"or use one of {_ADAPTIVE}")
    if t0 == t1:
        raise ValueError("t0 and t1 must differ")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int or None, got {steps!r}")
    if steps is None and not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    n_steps = 10 if steps is None else steps
    dt0 = (t1 - t0) / n_steps
    controller = dfx.ConstantStepSize() if steps is not None else dfx.PIDController(rtol=rtol, atol=atol)
    sol = dfx.diffeqsolve(dfx.ODETerm(lambda t, y, args: velocity(t, y)), solver, t0, t1, dt0, x,
                          stepsize_controller=controller, max_steps=max_steps)
    per_step, initial = _EVALS_PER_STEP[name]
    nfe = per_step * sol.stats["num_steps"] + initial
    return sol.ys[0], jnp.asarray(nfe)


# --------------------------------------------------------------------------
# Discrete-time diffusion (DDPM and DDIM).  ``model_fn(x_t, t) -> output`` takes
# a batch and integer timesteps of shape (B,), and predicts the kind of target
# named by ``prediction`` ("epsilon", "x0" or "v"; see diffbook.schedules).
# --------------------------------------------------------------------------

def _x0_eps(schedule, model_fn, x, t, prediction, clip_x0):
    tb = jnp.full((x.shape[0],), t, jnp.int32)
    x0, eps = schedule.to_x0_eps(model_fn(x, tb), x, tb, prediction)
    if clip_x0:
        # Keep the predicted clean image in the data range, then make eps agree with it.
        x0 = jnp.clip(x0, -1.0, 1.0)
        ab = schedule.alpha_bars[t]
        eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
    return x0, eps


def ddpm_step(schedule, model_output, t, x_t, key, *, prediction: str = "epsilon",
              clip_x0: bool = True):
    """One ancestral step x_t -> x_{t-1}: the posterior q(x_{t-1} | x_t, x0) with the
    predicted x0 and the "fixed small" variance; no noise is added at ``t = 0``."""
    tb = jnp.full((x_t.shape[0],), t, jnp.int32)
    x0, _ = schedule.to_x0_eps(model_output, x_t, tb, prediction)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
    mean, var = schedule.posterior(x0, x_t, tb)
    return mean + jnp.sqrt(var) * jax.random.normal(key, x_t.shape)


def ddpm_sample(schedule, model_fn, key, shape, *, prediction: str = "epsilon",
                clip_x0: bool = True):
    """Ancestral sampling through all ``schedule.num_steps`` steps (one network call each)."""
    k0, key = jax.random.split(key)
    x = jax.random.normal(k0, shape)

    def body(x, inputs):
        t, k = inputs
        tb = jnp.full((shape[0],), t, jnp.int32)
        return ddpm_step(schedule, model_fn(x, tb), t, x, k, prediction=prediction,
                         clip_x0=clip_x0), None

    ts = jnp.arange(schedule.num_steps - 1, -1, -1)
    x, _ = jax.lax.scan(body, x, (ts, jax.random.split(key, schedule.num_steps)))
    return x


def ddim_timesteps(num_train_steps: int, steps: int, skip: str = "uniform") -> np.ndarray:
    """``steps`` increasing timesteps out of ``0 .. num_train_steps-1`` ending at the last one.

    ``"uniform"`` spaces them evenly; ``"quadratic"`` packs them towards ``t = 0``,
    where the image's fine detail is decided.
    """
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_train_steps:
        raise ValueError(f"steps must be an int in 1..{num_train_steps}, got {steps!r}")
    if skip not in ("uniform", "quadratic"):
        raise ValueError(f"skip must be 'uniform' or 'quadratic', got {skip!r}")
    if steps == 1:
        return np.array([num_train_steps - 1], np.int32)   # one jump from pure noise
    if skip == "uniform":
        ts = np.linspace(0, num_train_steps - 1, steps)
    elif skip == "quadratic":
        ts = np.linspace(0, np.sqrt(num_train_steps - 1), steps) ** 2
        # Near 0 the squares are closer than one step apart: keep them distinct.
        ts = np.maximum(np.round(ts), np.arange(steps))
    else:
        raise ValueError(f"skip must be 'uniform' or 'quadratic', got {skip!r}")
    ts = np.round(ts).astype(np.int32)
    if len(np.unique(ts)) != steps:
        raise ValueError(f"{steps} {skip} steps out of {num_train_steps} repeat a timestep")
    return ts


def ddim_step(schedule, x0, eps, t, t_prev, key, *, eta: float):
    """x_{t_prev} from the predicted (x0, eps) at t (Song et al. 2021, eq. 12).

    ``eta = 0`` is deterministic; ``eta = 1`` with ``t_prev = t - 1`` is exactly the
    DDPM posterior.  ``t_prev = -1`` means "the clean image" (alpha_bar = 1).
    """
    ab = schedule.alpha_bars[t]
    ab_prev = jnp.where(t_prev >= 0, schedule.alpha_bars[jnp.maximum(t_prev, 0)], 1.0)
    sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps
    return jnp.sqrt(ab_prev) * x0 + direction + sigma * jax.random.normal(key, eps.shape)


def ddim_sample(schedule, model_fn, x_T, *, steps: int, eta: float = 0.0, key=None,
                skip: str = "uniform", prediction: str = "epsilon", clip_x0: bool = True):
    """DDIM sampling from ``x_T`` with ``steps`` network calls (``eta > 0`` needs ``key``)."""
    if not (eta >= 0 and np.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if eta > 0 and key is None:
        raise ValueError("eta > 0 adds noise: give a key")
    key = jax.random.key(0) if key is None else key
    ts = ddim_timesteps(schedule.num_steps, steps, skip)[::-1]
    prev = np.concatenate([ts[1:], [-1]])

    def body(x, inputs):
        t, t_prev, k = inputs
        x0, eps = _x0_eps(schedule, model_fn, x, t, prediction, clip_x0)
        return ddim_step(schedule, x0, eps, t, t_prev, k, eta=eta), None

    x, _ = jax.lax.scan(body, x_T, (jnp.asarray(ts), jnp.asarray(prev),
                                    jax.random.split(key, len(ts))))
    return x


def ddim_invert(schedule, model_fn, x0, *, steps: int, skip: str = "uniform",
                prediction: str = "epsilon"):
    """Deterministic DDIM run backwards: a clean image to the noise that DDIM (eta = 0,
    same ``steps``) would turn back into it."""
    ts = ddim_timesteps(schedule.num_steps, steps, skip)
    prev = np.concatenate([[-1], ts[:-1]])

    def body(x, inputs):
        t_from, t_to = inputs
        tb = jnp.full((x.shape[0],), t_to, jnp.int32)
        # The noise direction is estimated at the next (noisier) timestep.
        _, eps = schedule.to_x0_eps(model_fn(x, tb), x, tb, prediction)
        ab_from = jnp.where(t_from >= 0, schedule.alpha_bars[jnp.maximum(t_from, 0)], 1.0)
        x0_pred = (x - jnp.sqrt(1.0 - ab_from) * eps) / jnp.sqrt(ab_from)
        ab_to = schedule.alpha_bars[t_to]
        return jnp.sqrt(ab_to) * x0_pred + jnp.sqrt(1.0 - ab_to) * eps, None

    x, _ = jax.lax.scan(body, x0, (jnp.asarray(prev), jnp.asarray(ts)))
    return x
