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
