"""Samplers that the chapters have taught, kept here for reuse, behind one contract.

Every sampler of a diffusion model has the signature::

    sampler(schedule, model_fn, x_T, key, *, steps=None, prediction="epsilon",
            clip_x0=False, **options) -> (x, nfe)

``schedule`` is the :class:`~diffbook.schedules.NoiseSchedule` the network was
trained with; ``model_fn(x, u)`` is the network, called with a batch ``x`` of shape
(B, ...) and float times ``u`` of shape (B,) in [0, 1] (``u = t / T`` on the
schedule's grid); ``x_T`` is the starting noise; ``prediction`` says what the
network predicts ("epsilon", "x0" or "v"); ``clip_x0`` clips every predicted clean
sample to [-1, 1] (right for images, wrong for unbounded data).  The sampler
returns the samples, of ``x_T``'s shape, and ``nfe``, the number of calls of
``model_fn`` it made (a call on a doubled batch, as classifier-free guidance makes,
counts once).  Two samplers need a number of steps: ``ddim`` (``steps`` or an explicit
``timesteps`` grid) and ``sde``; the ancestral ones (``ancestral``, ``pc``,
``annealed_langevin``) visit all ``T`` timesteps and accept only ``steps=None`` or ``T``;
``ode`` chooses its steps adaptively unless given.  :data:`SAMPLERS` names them all;
:func:`sample` draws the starting noise and runs one by name.

``ode_solve`` integrates ``dx/dt = velocity(t, x)`` with diffrax, for a whole batch
at once, and reports how many times the velocity (the network) was evaluated.
Flow matching samples with it (noise at t=0 to data at t=1) and encodes with it
(the same ODE run backwards); the probability-flow ODE of a diffusion model is
another use, and :mod:`diffbook.likelihood` solves it with the log-density carried along.

Every sampler here splits its batch over the devices (:func:`diffbook.train.shard_batch`):
``x_T`` and the state carried from step to step live on the ``"data"`` axis of
:func:`diffbook.train.data_mesh`, so with a model trained by ``train.fit`` (weights
replicated) each device runs the network on its own slice of the samples.  On one
device nothing changes; on several, the samples equal the one-device ones to float
rounding.  A batch whose size does not divide by the device count is replicated
instead (every device computes all of it; see :func:`~diffbook.train.shard_batch`).
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

from .checks import finite_number, one_of, positive_int
from .schedules import PREDICTIONS, NoiseSchedule, split_prediction
from .train import shard_batch

# Velocity evaluations per attempted step.  Tsit5 and Dopri5 are "first same as
# last": a step reuses the previous step's final evaluation, so they cost one
# evaluation at the start plus six per step.
_EVALS_PER_STEP = {
    "Euler": (1, 0),
    "Heun": (2, 0),
    "Midpoint": (2, 0),
    "Tsit5": (6, 1),
    "Dopri5": (6, 1),
}
_ADAPTIVE = ("Heun", "Tsit5", "Dopri5")  # those with an embedded error estimate


def ode_solve(
    velocity: Callable,
    x: jax.Array,
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    solver: dfx.AbstractSolver | None = None,
    steps: int | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    max_steps: int = 4096,
):
    """Integrate ``dx/dt = velocity(t, x)`` from ``t0`` to ``t1``.

    Args:
      velocity: ``velocity(t, x) -> dx/dt`` with ``t`` a scalar and ``x`` the
        whole batch; it is called with traced values, so it must be JAX code.
      x: the state at ``t0``, any shape (a batch of images, say).  An array with
        a leading axis is taken to be a batch and split over the devices.
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
        raise ValueError(
            f"{name} has no error estimate: give a fixed number of steps, or use one of {_ADAPTIVE}"
        )
    if t0 == t1:
        raise ValueError("t0 and t1 must differ")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int or None, got {steps!r}")
    if steps is None and not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    n_steps = 10 if steps is None else steps
    dt0 = (t1 - t0) / n_steps
    controller = (
        dfx.ConstantStepSize() if steps is not None else dfx.PIDController(rtol=rtol, atol=atol)
    )
    sol = dfx.diffeqsolve(
        dfx.ODETerm(lambda t, y, args: _shard(velocity(t, _shard(y)))),
        solver,
        t0,
        t1,
        dt0,
        _shard(x),
        stepsize_controller=controller,
        max_steps=max_steps,
    )
    per_step, initial = _EVALS_PER_STEP[name]
    nfe = per_step * sol.stats["num_steps"] + initial
    return _shard(sol.ys[0]), jnp.asarray(nfe)


# --------------------------------------------------------------------------
# Discrete-time diffusion (DDPM and DDIM) on the schedule's integer grid.
# --------------------------------------------------------------------------


def _shard(x):
    """:func:`~diffbook.train.shard_batch` for a batch; a scalar state is left alone."""
    return shard_batch(x) if jnp.ndim(x) >= 1 else x


def _check_common(schedule, x_T, prediction):
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if jnp.ndim(x_T) < 1:
        raise ValueError(f"x_T must be a batch of shape (B, ...), got shape {jnp.shape(x_T)}")
    one_of(prediction, "prediction", PREDICTIONS)


def _full_chain(schedule, steps, name):
    """The ancestral samplers visit every timestep: ``steps`` must be None or T."""
    T = schedule.num_timesteps
    if steps is not None and positive_int(steps, "steps") != T:
        raise ValueError(
            f"{name} visits all T = {T} timesteps: steps must be None or {T}, got {steps!r}"
        )


def _call(schedule, model_fn, x, t):
    """The network at integer timestep ``t`` (a scalar) for the whole batch."""
    return model_fn(x, shard_batch(schedule.to_u(jnp.full((x.shape[0],), t, jnp.int32))))


def ddpm_sample(
    schedule: NoiseSchedule,
    model_fn: Callable,
    x_T: jax.Array,
    key: jax.Array,
    *,
    steps: int | None = None,
    prediction: str = "epsilon",
    clip_x0: bool = False,
):
    """Ancestral sampling (Ho et al. 2020) through every timestep, ``T - 1`` down to 0.

    Each step is :meth:`~diffbook.schedules.NoiseSchedule.step`: the posterior
    q(x_{t-1} | x_t, x0) around the predicted ``x0``.

    Args:
      schedule: the training schedule (``T = schedule.num_timesteps``).
      model_fn: ``model_fn(x, u) -> output``, ``x`` of shape (B, ...), ``u`` (B,).
      x_T: the starting noise, shape (B, ...).
      key: PRNG key for the noise added at each step.
      steps: must be ``None`` or ``T``: this sampler does not skip.
      prediction: "epsilon", "x0" or "v".
      clip_x0: clip each predicted ``x0`` to [-1, 1].

    Returns:
      ``(x, nfe)``: samples of ``x_T``'s shape and ``nfe = T``.

    Raises:
      TypeError: if ``schedule`` is not a NoiseSchedule.
      TypeError: if ``steps`` is not an int.
      ValueError: for ``steps`` other than None or T, or an unknown ``prediction``.
    """
    _check_common(schedule, x_T, prediction)
    _full_chain(schedule, steps, "ddpm_sample")

    def body(x, inputs):
        t, k = inputs
        out = _call(schedule, model_fn, x, t)
        x = schedule.step(out, t, x, k, prediction=prediction, clip_x0=clip_x0).prev_sample
        return shard_batch(x), None

    T = schedule.num_timesteps
    x_T = shard_batch(x_T)
    x, _ = jax.lax.scan(body, x_T, (jnp.arange(T - 1, -1, -1), jax.random.split(key, T)))
    return x, T


def ddim_timesteps(num_timesteps: int, steps: int, skip: str = "uniform") -> np.ndarray:
    """``steps`` increasing timesteps out of ``0 .. num_timesteps-1`` ending at the last one.

    Args:
      num_timesteps: the schedule's ``T``.
      steps: how many timesteps to visit, 1..T.
      skip: ``"uniform"`` spaces them evenly; ``"quadratic"`` packs them towards
        ``t = 0``, where the image's fine detail is decided.

    Returns:
      int32 array of shape (steps,), increasing, ending at ``T - 1``.

    Raises:
      TypeError, ValueError: for ``steps`` not an int in 1..T, or an unknown ``skip``.
    """
    positive_int(steps, "steps")
    if steps > num_timesteps:
        raise ValueError(f"steps must be an int in 1..{num_timesteps}, got {steps!r}")
    one_of(skip, "skip", ("uniform", "quadratic"))
    if steps == 1:
        return np.array([num_timesteps - 1], np.int32)  # one jump from pure noise
    if skip == "uniform":
        ts = np.linspace(0, num_timesteps - 1, steps)
    else:
        ts = np.linspace(0, np.sqrt(num_timesteps - 1), steps) ** 2
        # Near 0 the squares are closer than one step apart: keep them distinct.
        ts = np.maximum(np.round(ts), np.arange(steps))
    ts = np.round(ts).astype(np.int32)
    if len(np.unique(ts)) != steps:
        raise ValueError(f"{steps} {skip} steps out of {num_timesteps} repeat a timestep")
    return ts


def ddim_sample(
    schedule: NoiseSchedule,
    model_fn: Callable,
    x_T: jax.Array,
    key: jax.Array | None = None,
    *,
    steps: int | None = None,
    prediction: str = "epsilon",
    clip_x0: bool = False,
    eta: float = 0.0,
    skip: str = "uniform",
    timesteps=None,
):
    """DDIM sampling (Song et al. 2021): :meth:`~diffbook.schedules.NoiseSchedule.ddim_step`
    along a decreasing grid of timesteps, one network call per step.

    Args:
      schedule: the training schedule.
      model_fn: ``model_fn(x, u) -> output``.
      x_T: the starting noise, shape (B, ...), taken to be at the grid's first timestep.
      key: PRNG key; needed only when ``eta > 0``.
      steps: the number of steps, on the grid :func:`ddim_timesteps` (``skip``) makes.
      prediction: "epsilon", "x0" or "v".
      clip_x0: clip each predicted ``x0`` to [-1, 1] (and make ``eps`` agree with it).
      eta: 0 for the deterministic sampler; 1 adds the DDPM posterior's noise.
      skip: "uniform" or "quadratic" spacing of the grid.
      timesteps: instead of ``steps``, an explicit decreasing grid of timesteps;
        a grid without its first entries starts the same sampler later.

    Returns:
      ``(x, nfe)``: samples of ``x_T``'s shape and ``nfe = len(grid)``.

    Raises:
      ValueError: unless exactly one of ``steps`` and ``timesteps`` is given; if
        ``timesteps`` do not decrease within 0..T-1; for ``eta < 0`` or ``eta > 0``
        without ``key``.
    """
    _check_common(schedule, x_T, prediction)
    eta = finite_number(eta, "eta", minimum=0.0)
    if eta > 0 and key is None:
        raise ValueError("eta > 0 adds noise: give a key")
    if (steps is None) == (timesteps is None):
        raise ValueError("give either steps or timesteps")
    T = schedule.num_timesteps
    if timesteps is None:
        ts = ddim_timesteps(T, steps, skip)[::-1]
    else:
        ts = np.asarray(timesteps, np.int32)
        if ts.ndim != 1 or len(ts) == 0 or np.any(np.diff(ts) >= 0) or ts[-1] < 0 or ts[0] >= T:
            raise ValueError(f"timesteps must decrease within 0..{T - 1}, got {ts.tolist()}")
    prev = np.concatenate([ts[1:], [-1]])
    keys = jax.random.split(jax.random.key(0) if key is None else key, len(ts))

    def body(x, inputs):
        t, t_prev, k = inputs
        out = _call(schedule, model_fn, x, t)
        x = schedule.ddim_step(
            out, t, t_prev, x, k, eta=eta, prediction=prediction, clip_x0=clip_x0
        ).prev_sample
        return shard_batch(x), None

    x_T = shard_batch(x_T)
    x, _ = jax.lax.scan(body, x_T, (jnp.asarray(ts), jnp.asarray(prev), keys))
    return x, len(ts)


def predict_x0(
    schedule: NoiseSchedule,
    model_fn: Callable,
    x0: jax.Array,
    t,
    noise: jax.Array,
    *,
    prediction: str = "epsilon",
    clip_x0: bool = False,
) -> jax.Array:
    """The network's estimate of the clean data after noising ``x0`` to timestep ``t``.

    ``x_t = schedule.add_noise(x0, noise, t)``; the network's output there is turned
    into ``x0`` as a sampler's first step from ``t`` would (clipped if ``clip_x0``).
    An exact network returns the data it was given wherever the data are
    identifiable from ``x_t``; how far a trained one falls short, level by level,
    shows where it has learned its task.

    Args:
      schedule: the training schedule.
      model_fn: ``model_fn(x, u) -> output``.
      x0: clean data, (B, ...).
      t: one integer timestep (all examples) or integer timesteps of shape (B,).
      noise: the noise, of ``x0``'s shape.
      prediction: "epsilon", "x0" or "v".
      clip_x0: clip the estimate to [-1, 1].

    Returns:
      The estimate, of ``x0``'s shape.
    """
    _check_common(schedule, x0, prediction)
    tb = shard_batch(jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x0.shape[0],)))
    x_t = shard_batch(schedule.add_noise(x0, noise, tb))
    return schedule.to_x0_eps(
        model_fn(x_t, schedule.to_u(tb)), x_t, tb, prediction, clip_x0=clip_x0
    )[0]


def ddim_invert(
    schedule: NoiseSchedule,
    model_fn: Callable,
    x0: jax.Array,
    *,
    steps: int,
    skip: str = "uniform",
    prediction: str = "epsilon",
):
    """Deterministic DDIM run backwards: clean data to the noise that DDIM (eta = 0,
    same ``steps`` and ``skip``) would turn back into it.

    The inversion never clips its estimate of ``x0``, so sample back with
    ``ddim_sample(..., clip_x0=False)``: a clipped step is a different map, and the
    round trip would then measure the clipping as well as the discretisation.  With
    an exact denoiser the round-trip error shrinks as ``steps`` grows (each step
    estimates the noise at one end of its interval only).

    Args:
      schedule: the training schedule.
      model_fn: ``model_fn(x, u) -> output``.
      x0: clean data, shape (B, ...).
      steps, skip: the grid, as in :func:`ddim_sample`.
      prediction: "epsilon", "x0" or "v".

    Returns:
      ``(x_T, nfe)``: the codes, of ``x0``'s shape, and ``nfe = steps``.
    """
    _check_common(schedule, x0, prediction)
    ts = ddim_timesteps(schedule.num_timesteps, steps, skip)
    prev = np.concatenate([[-1], ts[:-1]])

    def body(x, inputs):
        t_from, t_to = inputs
        tb = shard_batch(jnp.full((x.shape[0],), t_to, jnp.int32))
        # The noise direction is estimated at the next (noisier) timestep.
        _, eps = schedule.to_x0_eps(model_fn(x, schedule.to_u(tb)), x, tb, prediction)
        ab_from = jnp.where(t_from >= 0, schedule.alpha_bars[jnp.maximum(t_from, 0)], 1.0)
        x0_pred = (x - jnp.sqrt(1.0 - ab_from) * eps) / jnp.sqrt(ab_from)
        ab_to = schedule.alpha_bars[t_to]
        return shard_batch(jnp.sqrt(ab_to) * x0_pred + jnp.sqrt(1.0 - ab_to) * eps), None

    x, _ = jax.lax.scan(body, shard_batch(x0), (jnp.asarray(prev), jnp.asarray(ts)))
    return x, len(ts)


# --------------------------------------------------------------------------
# Score-based samplers.  The score of the noised data at level alpha_bar is
# -eps / sqrt(1 - alpha_bar), so an eps- (or v-, or x0-) predicting network is a
# score model.  The continuous-time samplers use the schedule's VP-SDE view
# (NoiseSchedule.alpha_bar_at / beta_at) in the same time u that the network sees.
# --------------------------------------------------------------------------


def langevin(score: Callable, x: jax.Array, key: jax.Array, *, steps: int, step_size: float):
    """Unadjusted Langevin dynamics ``x += step_size * score(x) + sqrt(2 step_size) z``.

    Written out in chapter 4 (``notebooks/04_mixture.md``): change the two together.

    Args:
      score: ``score(x)``, the gradient of the target's log-density (exact or learned).
      x: the starting points, any shape (an array with a leading axis is a batch,
        split over the devices).
      key: PRNG key.
      steps: the number of updates.
      step_size: the step size, > 0.

    Returns:
      The state after ``steps`` updates, of ``x``'s shape.

    Raises:
      TypeError, ValueError: for a bad ``steps`` or ``step_size``.
    """
    positive_int(steps, "steps")
    finite_number(step_size, "step_size", minimum=0.0, strictly=True)

    def body(x, k):
        z = jax.random.normal(k, x.shape)
        return _shard(x + step_size * score(x) + jnp.sqrt(2.0 * step_size) * z), None

    x, _ = jax.lax.scan(body, _shard(x), jax.random.split(key, steps))
    return x


def _score_at(schedule, model_fn, x, u, prediction, clip_x0=False):
    """(x0, eps, score) of the network at continuous time ``u`` (a scalar)."""
    ab = schedule.alpha_bar_at(u)
    out = model_fn(x, shard_batch(jnp.full((x.shape[0],), u, jnp.float32)))
    x0, eps = split_prediction(out, x, ab, prediction, clip_x0=clip_x0)
    return x0, eps, -eps / jnp.sqrt(1.0 - ab)


def pc_sample(
    schedule: NoiseSchedule,
    model_fn: Callable,
    x_T: jax.Array,
    key: jax.Array,
    *,
    steps: int | None = None,
    prediction: str = "epsilon",
    clip_x0: bool = False,
    corrector_steps: int = 1,
    snr: float = 0.1,
    predictor: str = "ancestral",
):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-2 for the VP-SDE).

    The predictor is the ancestral step; after it, ``corrector_steps`` Langevin
    steps with the learned score at the new noise level pull the samples towards
    that level's marginal.  Each Langevin step size follows the paper's rule
    ``2 alpha (snr * |z| / |score|)^2`` (norms averaged over the batch).
    ``predictor="none"`` leaves only the corrector: annealed Langevin dynamics
    (Song & Ermon 2019) down the schedule's noise levels, finished by one
    denoising call.

    Args:
      schedule, model_fn, x_T, key, prediction, clip_x0: as in :func:`ddpm_sample`
        (``clip_x0`` acts on the predictor's ``x0`` and on the final denoising).
      steps: must be ``None`` or ``T``.
      corrector_steps: Langevin steps per noise level, >= 0.
      snr: the corrector's signal-to-noise ratio, > 0.
      predictor: "ancestral" or "none".

    Returns:
      ``(x, nfe)`` with ``nfe = T (corrector_steps + 1)`` for the ancestral
      predictor, ``T corrector_steps + 1`` without.

    Raises:
      TypeError, ValueError: for a bad ``steps``, ``corrector_steps``, ``snr`` or
        ``predictor``.
    """
    _check_common(schedule, x_T, prediction)
    _full_chain(schedule, steps, "pc_sample")
    one_of(predictor, "predictor", ("ancestral", "none"))
    positive_int(corrector_steps, "corrector_steps", minimum=0)
    finite_number(snr, "snr", minimum=0.0, strictly=True)
    axes = tuple(range(1, x_T.ndim))

    def body(x, inputs):
        t, k = inputs
        k_pred, k_corr = jax.random.split(k)
        if predictor == "ancestral":
            x = schedule.step(
                _call(schedule, model_fn, x, t),
                t,
                x,
                k_pred,
                prediction=prediction,
                clip_x0=clip_x0,
            ).prev_sample
        # Correct at level t - 1, the level the predictor just moved to.
        t_new = jnp.maximum(t - 1, 0)
        tn = shard_batch(jnp.full((x.shape[0],), t_new, jnp.int32))
        ab, alpha = schedule.alpha_bars[t_new], schedule.alphas[t_new]

        def correct(x, kc):
            _, eps = schedule.to_x0_eps(model_fn(x, schedule.to_u(tn)), x, tn, prediction)
            score = -eps / jnp.sqrt(1.0 - ab)
            z = jax.random.normal(kc, x.shape)
            ratio = jnp.mean(jnp.sqrt(jnp.sum(z**2, axes))) / jnp.mean(
                jnp.sqrt(jnp.sum(score**2, axes))
            )
            step = 2.0 * alpha * (snr * ratio) ** 2
            return shard_batch(x + step * score + jnp.sqrt(2.0 * step) * z), None

        if corrector_steps:
            x_c, _ = jax.lax.scan(correct, x, jax.random.split(k_corr, corrector_steps))
            x = jnp.where(t > 0, x_c, x)  # the last step lands on data: no correction
        return shard_batch(x), None

    T = schedule.num_timesteps
    x_T = shard_batch(x_T)
    x, _ = jax.lax.scan(body, x_T, (jnp.arange(T - 1, -1, -1), jax.random.split(key, T)))
    if predictor == "none":  # finish with the predicted clean sample: one more call
        t0 = shard_batch(jnp.zeros((x.shape[0],), jnp.int32))
        x = schedule.to_x0_eps(model_fn(x, schedule.to_u(t0)), x, t0, prediction, clip_x0=clip_x0)[
            0
        ]
        return x, T * corrector_steps + 1
    return x, T * (corrector_steps + 1)


def annealed_langevin(
    schedule: NoiseSchedule,
    model_fn: Callable,
    x_T: jax.Array,
    key: jax.Array,
    *,
    steps: int | None = None,
    prediction: str = "epsilon",
    clip_x0: bool = False,
    corrector_steps: int = 1,
    snr: float = 0.1,
):
    """Annealed Langevin dynamics: :func:`pc_sample` with ``predictor="none"``.

    Returns:
      ``(x, nfe)`` with ``nfe = T corrector_steps + 1``.
    """
    return pc_sample(
        schedule,
        model_fn,
        x_T,
        key,
        steps=steps,
        prediction=prediction,
        clip_x0=clip_x0,
        corrector_steps=corrector_steps,
        snr=snr,
        predictor="none",
    )


def probability_flow(
    schedule: NoiseSchedule,
    model_fn: Callable,
    x_T: jax.Array,
    key: jax.Array | None = None,
    *,
    steps: int | None = None,
    prediction: str = "epsilon",
    clip_x0: bool = False,
    solver=None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
):
    """The probability-flow ODE of the schedule's VP-SDE, integrated with
    :func:`ode_solve` from ``u = (T-1)/T`` down to ``u = 0``, then denoised once.

    ``dx/du = -beta(u) / 2 * (x + score(x, u))``: a deterministic map from noise to
    data with the same marginals as the diffusion.

    Args:
      schedule, model_fn, x_T, prediction: as in :func:`ddpm_sample`.
      key: unused (the map is deterministic); accepted for the common contract.
      steps: fixed equal steps, or ``None`` for adaptive steps (``rtol``, ``atol``).
      clip_x0: clip the final denoised sample to [-1, 1].
      solver: a diffrax solver (default Tsit5).

    Returns:
      ``(x, nfe)``: the samples and the number of network calls (the solver's
      evaluations plus the final denoising call).
    """
    _check_common(schedule, x_T, prediction)
    u_start = (schedule.num_timesteps - 1) / schedule.num_timesteps

    def velocity(u, x):
        _, _, score = _score_at(schedule, model_fn, x, u, prediction)
        return -0.5 * schedule.beta_at(u) * (x + score)

    x, nfe = ode_solve(
        velocity, x_T, t0=u_start, t1=0.0, solver=solver, steps=steps, rtol=rtol, atol=atol
    )
    x0, _, _ = _score_at(schedule, model_fn, x, 0.0, prediction, clip_x0)
    return x0, nfe + 1


def reverse_sde(
    schedule: NoiseSchedule,
    model_fn: Callable,
    x_T: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    prediction: str = "epsilon",
    clip_x0: bool = False,
):
    """The reverse-time VP-SDE with diffrax's Euler-Maruyama in ``steps`` equal steps
    from ``u = (T-1)/T`` to 0, then denoised once.

    In reversed time ``tau = u_start - u`` the SDE reads
    ``dx = beta (x / 2 + score) dtau + sqrt(beta) dW``.

    Args:
      schedule, model_fn, x_T, key, prediction: as in :func:`ddpm_sample`.
      steps: the number of Euler-Maruyama steps.
      clip_x0: clip the final denoised sample to [-1, 1].

    Returns:
      ``(x, nfe)`` with ``nfe = steps + 1``.

    Raises:
      TypeError, ValueError: for a bad ``steps``.
    """
    import lineax as lx

    _check_common(schedule, x_T, prediction)
    positive_int(steps, "steps")
    u_start = (schedule.num_timesteps - 1) / schedule.num_timesteps

    def drift(tau, x, args):
        u = u_start - tau
        x = shard_batch(x)
        _, _, score = _score_at(schedule, model_fn, x, u, prediction)
        return shard_batch(schedule.beta_at(u) * (0.5 * x + score))

    def diffusion(tau, x, args):
        scale = jnp.sqrt(schedule.beta_at(u_start - tau)) * jnp.ones_like(x)
        return lx.DiagonalLinearOperator(scale)

    dt = u_start / steps
    brownian = dfx.UnsafeBrownianPath(shape=x_T.shape, key=key)
    terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, brownian))
    sol = dfx.diffeqsolve(
        terms,
        dfx.Euler(),
        0.0,
        u_start,
        dt,
        shard_batch(x_T),
        stepsize_controller=dfx.ConstantStepSize(),
        max_steps=steps + 1,
        adjoint=dfx.ForwardMode(),
    )
    x0, _, _ = _score_at(schedule, model_fn, shard_batch(sol.ys[0]), 0.0, prediction, clip_x0)
    return x0, steps + 1


#: Every sampler of a diffusion model, by name, all with the contract of this
#: module's docstring: ``SAMPLERS[name](schedule, model_fn, x_T, key, *, steps,
#: prediction, clip_x0, **options) -> (x, nfe)``.
SAMPLERS: dict[str, Callable] = {
    "ancestral": ddpm_sample,
    "ddim": ddim_sample,
    "pc": pc_sample,
    "annealed_langevin": annealed_langevin,
    "ode": probability_flow,
    "sde": reverse_sde,
}


def sample(
    name: str, schedule: NoiseSchedule, model_fn: Callable, key: jax.Array, shape, **options
):
    """Draw ``x_T ~ N(0, I)`` of ``shape`` and run the sampler called ``name`` from it.

    The key is split once: the first half draws ``x_T``, the second drives the
    sampler, so a deterministic sampler and a stochastic one started from the same
    key start from the same noise.  ``x_T`` is split over the devices
    (:func:`diffbook.train.shard_batch`) before the sampler runs; the noise drawn is
    the same on any number of devices.

    Args:
      name: a key of :data:`SAMPLERS`.
      schedule: the training schedule.
      model_fn: ``model_fn(x, u) -> output``.
      key: PRNG key.
      shape: the batch's shape, (B, ...).
      **options: passed to the sampler (``steps``, ``prediction``, ``clip_x0``, ...).

    Returns:
      ``(x, nfe)`` as the sampler returns them.

    Raises:
      ValueError: if ``name`` is not a key of :data:`SAMPLERS`.
    """
    one_of(name, "name", tuple(SAMPLERS))
    k_init, k_run = jax.random.split(key)
    x_T = _shard(jax.random.normal(k_init, tuple(shape)))  # a bad shape fails in the sampler
    return SAMPLERS[name](schedule, model_fn, x_T, k_run, **options)
