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


def ddpm_sample(schedule, model_fn, key, shape, *, prediction: str = "epsilon",
                clip_x0: bool = True):
    """Ancestral sampling through all ``schedule.num_steps`` steps (one network call each),
    each step being :meth:`~diffbook.schedules.NoiseSchedule.step`."""
    k0, key = jax.random.split(key)
    x = jax.random.normal(k0, shape)

    def body(x, inputs):
        t, k = inputs
        tb = jnp.full((shape[0],), t, jnp.int32)
        return schedule.step(model_fn(x, tb), t, x, k, prediction=prediction,
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


def ddim_sample(schedule, model_fn, x_T, *, steps: int | None = None, eta: float = 0.0,
                key=None, skip: str = "uniform", prediction: str = "epsilon",
                clip_x0: bool = True, timesteps=None):
    """DDIM sampling from ``x_T`` with ``steps`` network calls (``eta > 0`` needs ``key``).

    ``timesteps`` (decreasing integers, instead of ``steps``) gives the grid
    explicitly: ``x_T`` is then taken to be at ``timesteps[0]``, so a grid without
    its first entries starts the same sampler at a lower noise level.
    """
    if not (eta >= 0 and np.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if eta > 0 and key is None:
        raise ValueError("eta > 0 adds noise: give a key")
    if (steps is None) == (timesteps is None):
        raise ValueError("give either steps or timesteps")
    key = jax.random.key(0) if key is None else key
    if timesteps is None:
        ts = ddim_timesteps(schedule.num_steps, steps, skip)[::-1]
    else:
        ts = np.asarray(timesteps, np.int32)
        if ts.ndim != 1 or len(ts) == 0 or np.any(np.diff(ts) >= 0) or ts[-1] < 0 \
                or ts[0] >= schedule.num_steps:
            raise ValueError(f"timesteps must decrease within 0..{schedule.num_steps - 1}, "
                             f"got {ts.tolist()}")
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
    same ``steps`` and ``skip``) would turn back into it.

    The inversion never clips its estimate of ``x0``, so sample back with
    ``ddim_sample(..., clip_x0=False)``: a clipped step is a different map, and the
    round trip would then measure the clipping as well as the discretisation.  With
    an exact denoiser the round-trip error shrinks as ``steps`` grows (each step
    estimates the noise at one end of its interval only).
    """
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


# --------------------------------------------------------------------------
# Score-based samplers.  The score of the noised data at level alpha_bar is
# -eps / sqrt(1 - alpha_bar), so an eps- (or v-, or x0-) predicting network is a
# score model.  The continuous-time samplers use the schedule's VP-SDE view
# (NoiseSchedule.alpha_bar_at / beta_at) and call ``net(x, u)`` with the float
# time ``u = t / T`` of shape (B,), the input the chapters' networks take.
# --------------------------------------------------------------------------

def langevin(score, x, key, *, steps: int, step_size: float):
    """Unadjusted Langevin dynamics ``x += step_size * score(x) + sqrt(2 step_size) z``.

    ``score(x)`` is the gradient of the log-density of the target (exact or
    learned).  Returns the state after ``steps`` updates.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")

    def body(x, k):
        z = jax.random.normal(k, x.shape)
        return x + step_size * score(x) + jnp.sqrt(2.0 * step_size) * z, None

    x, _ = jax.lax.scan(body, x, jax.random.split(key, steps))
    return x


def _score_at(schedule, net, x, u, prediction):
    """(x0, eps, score) of the network at continuous time ``u`` (a scalar)."""
    from .schedules import split_prediction

    ab = schedule.alpha_bar_at(u)
    x0, eps = split_prediction(net(x, jnp.full((x.shape[0],), u, jnp.float32)), x, ab, prediction)
    return x0, eps, -eps / jnp.sqrt(1.0 - ab)


def pc_sample(schedule, model_fn, key, shape, *, corrector_steps: int = 1, snr: float = 0.1,
              predictor: str = "ancestral", prediction: str = "epsilon", clip_x0: bool = False):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-2 for the VP-SDE).

    The predictor is the ancestral step; after it, ``corrector_steps`` Langevin
    steps with the learned score at the new noise level pull the samples towards
    that level's marginal.  Each Langevin step size follows the paper's rule
    ``2 alpha (snr * |z| / |score|)^2`` (norms averaged over the batch).
    ``predictor="none"`` leaves only the corrector: annealed Langevin dynamics
    (Song & Ermon 2019) down the schedule's noise levels.
    Costs ``T * (corrector_steps + 1)`` network calls with the ancestral
    predictor and ``T * corrector_steps + 1`` without (the last one denoises).
    """
    if predictor not in ("ancestral", "none"):
        raise ValueError(f"predictor must be 'ancestral' or 'none', got {predictor!r}")
    if not isinstance(corrector_steps, (int, np.integer)) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an int >= 0, got {corrector_steps!r}")
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    k0, key = jax.random.split(key)
    x = jax.random.normal(k0, shape)
    axes = tuple(range(1, len(shape)))

    def body(x, inputs):
        t, k = inputs
        k_pred, k_corr = jax.random.split(k)
        tb = jnp.full((shape[0],), t, jnp.int32)
        if predictor == "ancestral":
            x = schedule.step(model_fn(x, tb), t, x, k_pred, prediction=prediction,
                              clip_x0=clip_x0)
        # Correct at level t - 1, the level the predictor just moved to.
        t_new = jnp.maximum(t - 1, 0)
        tn = jnp.full((shape[0],), t_new, jnp.int32)
        ab, alpha = schedule.alpha_bars[t_new], schedule.alphas[t_new]

        def correct(x, kc):
            _, eps = schedule.to_x0_eps(model_fn(x, tn), x, tn, prediction)
            score = -eps / jnp.sqrt(1.0 - ab)
            z = jax.random.normal(kc, x.shape)
            ratio = (jnp.mean(jnp.sqrt(jnp.sum(z**2, axes)))
                     / jnp.mean(jnp.sqrt(jnp.sum(score**2, axes))))
            step = 2.0 * alpha * (snr * ratio) ** 2
            return x + step * score + jnp.sqrt(2.0 * step) * z, None

        if corrector_steps:
            x_c, _ = jax.lax.scan(correct, x, jax.random.split(k_corr, corrector_steps))
            x = jnp.where(t > 0, x_c, x)   # the last step lands on data: no correction
        return x, None

    ts = jnp.arange(schedule.num_steps - 1, -1, -1)
    x, _ = jax.lax.scan(body, x, (ts, jax.random.split(key, schedule.num_steps)))
    if predictor == "none":   # finish with the predicted clean sample: one more call
        t0 = jnp.zeros((shape[0],), jnp.int32)
        x = schedule.to_x0_eps(model_fn(x, t0), x, t0, prediction)[0]
    return x


def probability_flow(schedule, net, x_T, *, prediction: str = "epsilon", solver=None,
                     steps: int | None = None, rtol: float = 1e-3, atol: float = 1e-3):
    """Integrate the probability-flow ODE of the schedule's VP-SDE from ``u = (T-1)/T``
    down to ``u = 0`` with :func:`ode_solve`, then denoise once (the predicted x0).

    ``dx/du = -beta(u) / 2 * (x + score(x, u))``: a deterministic map from noise to
    data with the same marginals as the diffusion.  Returns ``(x0, nfe)``.
    """
    u_start = (schedule.num_steps - 1) / schedule.num_steps

    def velocity(u, x):
        _, _, score = _score_at(schedule, net, x, u, prediction)
        return -0.5 * schedule.beta_at(u) * (x + score)

    x, nfe = ode_solve(velocity, x_T, t0=u_start, t1=0.0, solver=solver, steps=steps,
                       rtol=rtol, atol=atol)
    x0, _, _ = _score_at(schedule, net, x, 0.0, prediction)
    return x0, nfe + 1


def reverse_sde(schedule, net, x_T, key, *, steps: int, prediction: str = "epsilon"):
    """Integrate the reverse-time VP-SDE with diffrax's Euler-Maruyama in ``steps`` equal
    steps from ``u = (T-1)/T`` to 0, then denoise once.  Returns ``(x0, nfe)``.

    In reversed time ``tau = u_start - u`` the SDE reads
    ``dx = beta (x / 2 + score) dtau + sqrt(beta) dW``.
    """
    import lineax as lx

    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    u_start = (schedule.num_steps - 1) / schedule.num_steps

    def drift(tau, x, args):
        u = u_start - tau
        _, _, score = _score_at(schedule, net, x, u, prediction)
        return schedule.beta_at(u) * (0.5 * x + score)

    def diffusion(tau, x, args):
        return lx.DiagonalLinearOperator(jnp.sqrt(schedule.beta_at(u_start - tau)) * jnp.ones_like(x))

    dt = u_start / steps
    brownian = dfx.UnsafeBrownianPath(shape=x_T.shape, key=key)
    terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, brownian))
    sol = dfx.diffeqsolve(terms, dfx.Euler(), 0.0, u_start, dt, x_T,
                          stepsize_controller=dfx.ConstantStepSize(), max_steps=steps + 1,
                          adjoint=dfx.ForwardMode())
    x0, _, _ = _score_at(schedule, net, sol.ys[0], 0.0, prediction)
    return x0, steps + 1
