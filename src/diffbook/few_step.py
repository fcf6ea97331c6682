"""Few-step generation from a flow-matching model: better solvers, straighter paths, jumps.

The time convention is :mod:`diffbook.flow`'s throughout: noise ``x0 ~ N(0, I)`` at
``t = 0``, data ``x1`` at ``t = 1``, the straight path ``x_t = (1 - t) x0 + t x1``
and a velocity network called as ``model(x, t)`` with ``t`` of shape ``(B,)``.
Sampling runs forward in ``t``.

Three ways to need fewer network evaluations:

* **Better solvers.** :func:`euler`, :func:`heun` and :func:`midpoint` (fixed
  equal steps through :func:`diffbook.samplers.ode_solve`) and
  :func:`dpm_solver_2m`, the multistep second-order solver of Lu et al. (2022)
  written for this path.  All four share one contract,
  ``solver(model, x0, steps) -> (x, nfe)``; :data:`SOLVERS` names them.
* **Straighter paths.** :func:`minibatch_ot_pairs` re-pairs a batch of noise and
  data by an exact optimal assignment (Tong et al. 2024; Pooladian et al. 2023);
  :func:`straightness` measures how far a model's own ODE paths are from straight
  lines (Liu et al. 2023), the property that reflow improves.
* **Models that jump.** MeanFlow (Geng et al. 2025) learns the *average*
  velocity ``u(z, r, t)`` over an interval, so that one evaluation jumps from
  noise to data: :func:`meanflow_loss` trains it with a target built by
  :func:`jax.jvp`; :func:`flow_map_distillation_loss` learns the same average
  velocity from a teacher's paths (:func:`teacher_paths`) instead, and
  :func:`flow_map_sample` samples with either.  :func:`reflow_loss` straightens a
  flow by training on the pairs (noise, teacher sample).

:data:`RECIPE` holds chapter 8's configurations (``notebooks/08_few_step.md``).

For the path of :mod:`diffbook.flow` the data coefficient is ``alpha_t = t`` and
the noise coefficient ``sigma_t = 1 - t``; the network's velocity ``v`` turns
into a prediction of the data, ``x1_hat = x_t + (1 - t) v``, and of the noise,
``x0_hat = x_t - t v``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

from . import checks
from .flow import decode, logit_normal, velocity_field

#: Chapter 8's recipes; :func:`diffbook.config.pick` chooses one.  The teacher is a
#: flow-matching U-Net of all ten digits (``steps`` at ``peak_lr``); its paths for the
#: students are DPM-Solver++(2M) paths of ``path_steps`` steps from
#: ``path_samples`` noise images; each student (``distill_*``, ``reflow_*``,
#: ``meanflow_*``) starts from the teacher's weights.  MeanFlow draws its intervals
#: with :func:`meanflow_times`'s ``equal_fraction`` = ``meanflow_equal_fraction`` and
#: logit-normal times of ``meanflow_time_mean`` and ``meanflow_time_std`` (the paper's
#: defaults are 0.75, 0.4 and 1.0).  ``num_samples`` images are judged per sampling seed.
RECIPE = {
    "cpu": dict(
        channels=(16, 32),
        batch_size=128,
        steps=1500,
        peak_lr=3e-3,
        warmup=100,
        ema_decay=0.995,
        path_steps=16,
        path_samples=2048,
        student_lr=1e-3,
        student_warmup=50,
        student_ema_decay=0.99,
        distill_steps=800,
        reflow_steps=800,
        meanflow_steps=800,
        meanflow_equal_fraction=0.25,
        meanflow_time_mean=0.0,
        meanflow_time_std=2.0,
        num_samples=600,
    ),
    "accelerator": dict(
        channels=(64, 128),
        batch_size=512,
        steps=4000,
        peak_lr=1e-3,
        warmup=200,
        ema_decay=0.999,
        path_steps=32,
        path_samples=16384,
        student_lr=5e-4,
        student_warmup=200,
        student_ema_decay=0.999,
        distill_steps=2000,
        reflow_steps=2000,
        meanflow_steps=2000,
        meanflow_equal_fraction=0.25,
        meanflow_time_mean=0.0,
        meanflow_time_std=2.0,
        num_samples=600,
    ),
    # A smoke run of the chapter (see diffbook.config.pick): every cell, few steps.
    "smoke": dict(
        steps=20,
        warmup=2,
        batch_size=16,
        path_steps=4,
        path_samples=64,
        student_warmup=2,
        distill_steps=10,
        reflow_steps=10,
        meanflow_steps=10,
        num_samples=32,
    ),
}


# --------------------------------------------------------------------------
# Argument checks shared by the functions below.
# --------------------------------------------------------------------------


def _check_batch(x, name: str):
    """``x`` as an array of shape (B, ...) with B >= 1."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array of shape (B, ...), got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a batch of shape (B, ...), got shape {x.shape}")
    return x


def _check_model(model, x, n_times: int = 1, name: str = "model"):
    """``model(x, *times)`` must be callable and return an array of ``x``'s shape.

    The model is traced once with abstract values (:func:`jax.eval_shape`), so the
    check costs no evaluation.
    """
    if not callable(model):
        raise TypeError(f"{name} must be callable, got {type(model).__name__}")
    times = [jax.ShapeDtypeStruct((x.shape[0],), jnp.float32)] * n_times
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    out = jax.eval_shape(lambda x, *ts: model(x, *ts), spec, *times)
    if getattr(out, "shape", None) != x.shape:
        raise ValueError(
            f"{name} must return an array of its input's shape {x.shape}, "
            f"got {getattr(out, 'shape', type(out).__name__)}"
        )


def _time_grid(steps, times) -> np.ndarray:
    """The grid of a fixed-step sampler: ``steps`` equal steps over [0, 1], or ``times``."""
    if (steps is None) == (times is None):
        raise ValueError("give exactly one of steps and times")
    if times is None:
        steps = checks.positive_int(steps, "steps")
        return np.linspace(0.0, 1.0, steps + 1)
    grid = np.asarray(times, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2:
        raise ValueError(f"times must be a 1-D grid of at least 2 times, got shape {grid.shape}")
    if not np.all(np.isfinite(grid)) or grid[0] < 0.0 or grid[-1] > 1.0:
        raise ValueError(f"times must lie in [0, 1], got {grid.tolist()}")
    if not np.all(np.diff(grid) > 0):
        raise ValueError(f"times must be strictly increasing, got {grid.tolist()}")
    return grid


# --------------------------------------------------------------------------
# Solvers: model(x, t), starting noise x0 at t = 0, a number of steps -> (x, nfe).
# --------------------------------------------------------------------------


def _fixed_step(solver, model, x0, steps):
    x0 = _check_batch(x0, "x0")
    steps = checks.positive_int(steps, "steps")
    _check_model(model, x0)
    return decode(model, x0, solver=solver, steps=steps)


def euler(model: Callable, x0: jax.Array, steps: int):
    """Euler's method in ``steps`` equal steps from noise (t=0) to data (t=1).

    One step is ``x += dt * v(x, t)``.  At ``steps=1`` it returns
    ``x0 + v(x0, 0)``: for the exact field that is the mean of the data, whatever
    the noise, which is why a plain solver at one step gives the mean image.

    Args:
      model: the velocity network ``model(x, t)``, ``x`` of shape (B, ...) and ``t``
        of shape (B,).
      x0: the starting noise, shape (B, ...).
      steps: the number of steps, >= 1.

    Returns:
      ``(x, nfe)``: the samples, of ``x0``'s shape, and ``nfe = steps``.

    Raises:
      TypeError: if ``steps`` is not an int, ``model`` not callable, or ``x0`` not
        an array.
      ValueError: if ``steps < 1``, ``x0`` is not a batch, or ``model`` returns
        another shape than its input's.
    """
    return _fixed_step(dfx.Euler(), model, x0, steps)


def heun(model: Callable, x0: jax.Array, steps: int):
    """Heun's method (explicit trapezoid rule), second order, in ``steps`` equal steps.

    Each step takes an Euler step, evaluates the velocity where it lands and moves
    with the average of the two velocities: two evaluations per step.

    Args:
      model, x0, steps: as in :func:`euler`.

    Returns:
      ``(x, nfe)``: the samples and ``nfe = 2 * steps``.

    Raises:
      TypeError, ValueError: as in :func:`euler`.
    """
    return _fixed_step(dfx.Heun(), model, x0, steps)


def midpoint(model: Callable, x0: jax.Array, steps: int):
    """The explicit midpoint method, second order, in ``steps`` equal steps.

    Each step evaluates the velocity half an Euler step ahead and moves the whole
    step with it: two evaluations per step.

    Args:
      model, x0, steps: as in :func:`euler`.

    Returns:
      ``(x, nfe)``: the samples and ``nfe = 2 * steps``.

    Raises:
      TypeError, ValueError: as in :func:`euler`.
    """
    return _fixed_step(dfx.Midpoint(), model, x0, steps)


def _dpm_2m_coefficients(grid: np.ndarray) -> np.ndarray:
    """Per step ``i`` (from ``grid[i]`` to ``grid[i+1]``): ``(b, c_now, c_prev)``.

    The step is ``x <- (1 - b) x + b (c_now x1_hat_i + c_prev x1_hat_{i-1})``.
    Computed on the host in float64 from ratios of ``alpha`` and ``sigma``, so that
    the infinite ``lambda`` at the ends of [0, 1] never appears.
    """
    s, t = grid[:-1], grid[1:]
    # The exponential-integrator step of DPM-Solver++ with a data prediction D:
    #   x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - exp(-h)) D,  h = lambda_t - lambda_s.
    # With alpha = t, sigma = 1 - t:  exp(-h) = s (1 - t) / ((1 - s) t), and
    #   alpha_t (1 - exp(-h)) = (t - s) / (1 - s) = b,   sigma_t / sigma_s = 1 - b.
    # (s < t <= 1, so 1 - s > 0: b is finite even at s = 0 or t = 1.)
    b = (t - s) / (1.0 - s)
    c_now, c_prev = np.ones_like(b), np.zeros_like(b)
    lam = np.full_like(grid, np.nan)
    inside = (grid > 0) & (grid < 1)
    lam[inside] = np.log(grid[inside] / (1.0 - grid[inside]))
    for i in range(1, len(b)):
        # The second-order correction needs lambda at grid[i-1], grid[i] and grid[i+1]
        # all finite: not when grid[i-1] = 0 (the previous data prediction belongs to
        # lambda = -inf) nor when grid[i+1] = 1 (lambda = +inf, r = 0 and the
        # correction 1 / (2 r) is infinite).  Those steps stay first order.
        if inside[i - 1] and inside[i + 1]:
            r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            c_now[i], c_prev[i] = 1.0 + 0.5 / r, -0.5 / r
    return np.stack([b, c_now, c_prev], axis=1)


def dpm_solver_2m(model: Callable, x0: jax.Array, steps: int | None = None, *, times=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) for the flow-matching path.

    A multistep exponential integrator in ``lambda = log(alpha / sigma)
    = log(t / (1 - t))`` with the data prediction ``x1_hat = x + (1 - t) v(x, t)``.
    A first-order step from ``s`` to ``t`` moves the fraction
    ``b = (t - s) / (1 - s)`` of the way to the predicted data,
    ``x <- (1 - b) x + b x1_hat``; for this straight path that is exactly an Euler
    step.  The second-order steps replace ``x1_hat`` with
    ``(1 + 1/(2r)) x1_hat_i - 1/(2r) x1_hat_{i-1}``, a linear extrapolation in
    ``lambda`` from the previous step's prediction (``r`` the ratio of the previous
    step's ``lambda`` length to this one's), at no extra evaluation.

    The ends of [0, 1] are handled as the paper handles its first step and as its
    reference code does its last (``lower_order_final``): at ``t = 0`` (``alpha = 0``)
    ``lambda = -inf``, so the first step, and the step after it whose ``r`` would be
    infinite, are first order; at ``t = 1`` (``sigma = 0``) ``lambda = +inf``, so the
    last step is first order too: it lands on the data prediction,
    ``x = x1_hat``.  Three first-order steps, each with a local error of
    ``O(dt^2)``, would not spoil second order; but on equal steps in ``t`` the
    steps next to either end keep ``lambda`` lengths of order 1 however many steps
    there are, and the error falls like ``log(steps) / steps^2`` rather than
    ``1 / steps^2`` (measured on Gaussian data: the error shrinks 3.3 to 3.5 times
    when the steps double, where Heun's shrinks about 4 times).  On a grid inside
    (0, 1) it is second order.

    Args:
      model: the velocity network ``model(x, t)``, ``x`` of shape (B, ...) and ``t``
        of shape (B,).
      x0: the starting state, shape (B, ...): noise when the grid starts at 0.
      steps: the number of equal steps over [0, 1]; or give ``times`` instead.
      times: an increasing grid of times in [0, 1] (host values, not traced), from
        the starting time of ``x0`` to the end; ``len(times) - 1`` steps.

    Returns:
      ``(x, nfe)``: the state at the grid's last time, of ``x0``'s shape, and
      ``nfe``, the number of model evaluations, equal to the number of steps.

    Raises:
      TypeError: if ``steps`` is not an int, ``model`` not callable, or ``x0`` not
        an array.
      ValueError: if both or neither of ``steps`` and ``times`` are given,
        ``steps < 1``, ``times`` is not a strictly increasing grid in [0, 1],
        ``x0`` is not a batch, or ``model`` returns another shape than its input's.
    """
    grid = _time_grid(steps, times)
    x0 = _check_batch(x0, "x0")
    _check_model(model, x0)
    path = _dpm_2m_path(model, x0, grid)
    return path[-1], len(grid) - 1


def _dpm_2m_path(model, x0, grid: np.ndarray) -> jax.Array:
    """DPM-Solver++(2M) on ``grid``: the states at every grid time, (len(grid), B, ...)."""
    coef = jnp.asarray(_dpm_2m_coefficients(grid), x0.dtype)
    f = velocity_field(model)

    def body(carry, inputs):
        x, pred_prev = carry
        s, (b, c_now, c_prev) = inputs
        pred = x + (1.0 - s) * f(s, x)  # x1_hat at time s: one evaluation
        x = (1.0 - b) * x + b * (c_now * pred + c_prev * pred_prev)
        return (x, pred), x

    ts = jnp.asarray(grid[:-1], x0.dtype)
    _, xs = jax.lax.scan(body, (x0, jnp.zeros_like(x0)), (ts, tuple(coef.T)))
    return jnp.concatenate([x0[None], xs])


def teacher_paths(model: Callable, x0: jax.Array, steps: int) -> jax.Array:
    """The teacher's ODE paths from ``x0``, on ``steps`` equal steps: what a flow map learns from.

    Integrates ``model``'s flow with :func:`dpm_solver_2m` and keeps the state at every
    time of the grid ``t_k = k / steps``.

    Args:
      model: the velocity network ``model(x, t)``.
      x0: the starting noise, shape (B, ...).
      steps: the number of equal steps, >= 1 (``steps`` evaluations).

    Returns:
      The paths, shape (B, steps + 1, ...): ``paths[:, k]`` is the state at ``t_k``,
      ``paths[:, 0]`` is ``x0`` and ``paths[:, -1]`` the teacher's sample.

    Raises:
      TypeError: if ``steps`` is not an int, ``model`` not callable, or ``x0`` not
        an array.
      ValueError: if ``steps < 1``, ``x0`` is not a batch, or ``model`` returns
        another shape than its input's.
    """
    grid = _time_grid(steps, None)
    x0 = _check_batch(x0, "x0")
    _check_model(model, x0)
    return jnp.moveaxis(_dpm_2m_path(model, x0, grid), 0, 1)


#: The fixed-step solvers by name, all ``solver(model, x0, steps) -> (x, nfe)``.
SOLVERS: dict[str, Callable] = {
    "euler": euler,
    "heun": heun,
    "midpoint": midpoint,
    "dpm_solver_2m": dpm_solver_2m,
}


# --------------------------------------------------------------------------
# Straighter paths: minibatch optimal transport, and how straight a flow is.
# --------------------------------------------------------------------------


def minibatch_ot_pairs(x0, x1, *, return_index: bool = False):
    """Re-pair a batch of noise with a batch of data by exact optimal transport.

    Finds the permutation ``perm`` that minimises the total squared distance
    ``sum_i |x0[i] - x1[perm[i]]|^2`` (an assignment problem, solved exactly by
    :func:`scipy.optimize.linear_sum_assignment` on the host, in float64), and
    returns the data in that order.  Training flow matching on these pairs
    (Tong et al. 2024; Pooladian et al. 2023) gives straighter paths than
    independent pairs.  It runs on the host, so call it outside :func:`jax.jit`.
    Anything carried with the data (class labels) must be reordered with
    ``perm`` too (``return_index=True``).

    Args:
      x0: noise, shape (B, ...).
      x1: data, shape (B, ...), the same shape as ``x0``.
      return_index: also return the permutation.

    Returns:
      ``(x0, x1[perm])``, or ``(x0, x1[perm], perm)`` with ``perm`` an int array of
      shape (B,), a permutation of ``0 .. B-1``.

    Raises:
      TypeError: if ``x0`` or ``x1`` is not an array.
      ValueError: if they are not batches of the same shape.
    """
    from scipy.optimize import linear_sum_assignment

    _check_batch(x0, "x0")
    _check_batch(x1, "x1")
    if x0.shape != x1.shape:
        raise ValueError(f"x1 must have x0's shape {x0.shape}, got {x1.shape}")
    a = np.asarray(x0, np.float64).reshape(x0.shape[0], -1)
    b = np.asarray(x1, np.float64).reshape(x1.shape[0], -1)
    # |a_i - b_j|^2 for every pair, shape (B, B).
    cost = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    rows, perm = linear_sum_assignment(cost)
    perm = perm[np.argsort(rows)]  # rows come back sorted; keep it explicit
    paired = x1[perm]
    return (x0, paired, perm) if return_index else (x0, paired)


class Straightness(NamedTuple):
    """What :func:`straightness` measures (means over the batch)."""

    #: Liu et al.'s straightness ``S``: 0 for straight paths.
    straightness: jax.Array
    #: Path length over the distance between the path's ends (1 for straight paths).
    length_ratio: jax.Array
    #: The paths' ends at t = 1, shape (B, ...).
    x: jax.Array


def straightness(model: Callable, x0: jax.Array, steps: int) -> Straightness:
    """How straight the model's own ODE paths from ``x0`` are (Liu et al. 2023).

    Liu et al.'s straightness of a flow ``Z_t`` is
    ``S = int_0^1 E |(Z_1 - Z_0) - dZ_t/dt|^2 dt``, zero exactly when every path is
    a straight line travelled at constant speed (then one Euler step is exact).
    Here the paths are integrated with Euler's method in ``steps`` equal steps from
    ``Z_0 = x0``, the integral is the mean over the ``steps`` velocities the steps
    use, ``v_k = v(Z_{t_k}, t_k)``, and ``Z_1`` is the Euler end point.  Then
    ``Z_1 - Z_0`` is the mean of the ``v_k``, and ``S`` is the spread of the
    velocities along a path about their mean.  The squared norm is summed over all
    of a sample's dimensions.

    Also measured: the path length ``sum_k |v_k| dt`` over the distance
    ``|Z_1 - Z_0|`` between its ends, 1 for straight paths and above 1 otherwise.

    Args:
      model: the velocity network ``model(x, t)``.
      x0: the starting noise, shape (B, ...).
      steps: the number of Euler steps, >= 1.

    Returns:
      A :class:`Straightness`: ``straightness`` and ``length_ratio`` (scalars, means
      over the batch) and ``x``, the Euler end points (B, ...).

    Raises:
      TypeError: if ``steps`` is not an int, ``model`` not callable, or ``x0`` not
        an array.
      ValueError: if ``steps < 1``, ``x0`` is not a batch, or ``model`` returns
        another shape than its input's.
    """
    x0 = _check_batch(x0, "x0")
    steps = checks.positive_int(steps, "steps")
    _check_model(model, x0)
    f = velocity_field(model)
    dt = 1.0 / steps

    def body(x, t):
        v = f(t, x)
        return x + dt * v, v

    x1, vs = jax.lax.scan(body, x0, jnp.arange(steps, dtype=x0.dtype) * dt)  # vs: (steps, B, ...)
    axes = tuple(range(2, vs.ndim))  # a sample's own dimensions in vs
    chord = x1 - x0  # = dt * sum_k v_k
    s = jnp.mean(jnp.sum((chord[None] - vs) ** 2, axis=axes))
    length = dt * jnp.sum(jnp.sqrt(jnp.sum(vs**2, axis=axes)), axis=0)  # (B,)
    distance = jnp.sqrt(jnp.sum(chord**2, axis=tuple(a - 1 for a in axes)))  # (B,)
    ratio = jnp.mean(length / jnp.maximum(distance, jnp.finfo(x0.dtype).tiny))
    return Straightness(s, ratio, x1)


def reflow_loss(model: Callable, pairs, key: jax.Array) -> jax.Array:
    """Flow matching on fixed pairs ``(x0, x1)``: the loss of reflow (Liu et al. 2023).

    Written out in chapter 8 (``notebooks/08_few_step.md``): change the two together.

    Plain flow matching pairs each data image with fresh, independent noise.  Reflow
    pairs each noise ``x0`` with the sample a trained model makes from it, and fits a
    new velocity network to the straight lines between them; the flow it learns
    has straighter paths than the first, so fewer solver steps follow them.

    Args:
      model: the velocity network ``model(x, t)``.
      pairs: ``(x0, x1)``: noise and the teacher's samples from it, each (B, ...).
      key: PRNG key for the times.

    Returns:
      The mean squared error, a scalar.
    """
    x0, x1 = pairs
    t = logit_normal(key, x1.shape[0])
    t_ = t.reshape((-1,) + (1,) * (x1.ndim - 1))
    xt = (1 - t_) * x0 + t_ * x1
    return jnp.mean((model(xt, t) - (x1 - x0)) ** 2)


def flow_map_distillation_loss(model: Callable, paths: jax.Array, key: jax.Array) -> jax.Array:
    """Distil a teacher's paths into a flow map ``model(z, r, t)``, one jump per pair of times.

    Written out in chapter 8 (``notebooks/08_few_step.md``): change the two together.

    ``paths`` (from :func:`teacher_paths`) hold each path's state at the times
    ``t_k = k / K``.  For each path two grid times ``t_a < t_b`` are drawn (``a``
    uniform in ``0..K-1``, then ``b`` uniform in ``a+1..K``), and the network's average
    velocity at ``(z_a, t_a, t_b)`` is regressed on the jump the teacher made,
    ``(z_b - z_a) / (t_b - t_a)``.  At the minimum, ``z_a + (t_b - t_a) u`` lands
    where the teacher's solver does, for every pair of grid times, the one-step jump
    from noise to data included.

    Args:
      model: the flow-map network ``model(z, r, t)``, ``z`` of shape (B, ...) and
        ``r``, ``t`` of shape (B,).
      paths: the teacher's paths, shape (B, K + 1, ...), ``K >= 1``.
      key: PRNG key for the pairs of times.

    Returns:
      The mean squared error, a scalar.
    """
    n, k = paths.shape[0], paths.shape[1] - 1
    times = jnp.linspace(0.0, 1.0, k + 1)
    k_a, k_b = jax.random.split(key)
    a = jax.random.randint(k_a, (n,), 0, k)
    # b uniform among the k - a grid times after a (floor of a uniform, clipped in
    # case the uniform draw rounds to 1).
    b = (
        a
        + 1
        + jnp.minimum(jnp.floor(jax.random.uniform(k_b, (n,)) * (k - a)), k - a - 1).astype(a.dtype)
    )
    rows = jnp.arange(n)
    z_a, z_b = paths[rows, a], paths[rows, b]
    gap = (times[b] - times[a]).reshape((-1,) + (1,) * (z_a.ndim - 1))
    return jnp.mean((model(z_a, times[a], times[b]) - (z_b - z_a) / gap) ** 2)


# --------------------------------------------------------------------------
# MeanFlow (Geng et al. 2025): a network of the average velocity over [r, t].
# --------------------------------------------------------------------------


def meanflow_times(
    key: jax.Array,
    n: int,
    *,
    equal_fraction: float = 0.75,
    mean: float = 0.4,
    std: float = 1.0,
):
    """MeanFlow's training intervals ``r <= t``, in the book's time (noise at 0).

    Two times are drawn from :func:`diffbook.flow.logit_normal`; ``r`` is the
    smaller, ``t`` the larger.  A fraction ``equal_fraction`` of the intervals is
    then collapsed to ``t = r``, where the average velocity is the instantaneous one
    and the loss is plain flow matching.  The paper's defaults (75% collapsed, its
    log-normal time with mean -0.4 and std 1 in its time, where noise is at 1) are
    the defaults here, with the mean's sign turned for the book's time.

    Args:
      key: PRNG key.
      n: the number of intervals.
      equal_fraction: the share of intervals with ``r = t``, in [0, 1].
      mean, std: of the logit-normal times.

    Returns:
      ``(r, t)``, each of shape (n,), float32, with ``0 < r <= t < 1``.

    Raises:
      TypeError: if ``n`` is not an int or a number is not a number.
      ValueError: if ``n < 1``, ``equal_fraction`` is outside [0, 1] or ``std <= 0``.
    """
    n = checks.positive_int(n, "n")
    equal_fraction = checks.finite_number(equal_fraction, "equal_fraction", minimum=0.0)
    if equal_fraction > 1.0:
        raise ValueError(f"equal_fraction must be in [0, 1], got {equal_fraction!r}")
    mean = checks.finite_number(mean, "mean")
    k1, k2, k3 = jax.random.split(key, 3)
    a = logit_normal(k1, n, mean=mean, std=std)
    b = logit_normal(k2, n, mean=mean, std=std)
    r, t = jnp.minimum(a, b), jnp.maximum(a, b)
    t = jnp.where(jax.random.uniform(k3, (n,)) < equal_fraction, r, t)
    return r, t


def meanflow_loss(
    model: Callable,
    x1: jax.Array,
    key: jax.Array,
    *,
    equal_fraction: float = 0.75,
    velocity: Callable | None = None,
    power: float = 1.0,
    eps: float = 1e-3,
    mean: float = 0.4,
    std: float = 1.0,
) -> jax.Array:
    """MeanFlow's training loss for a network ``model(z, r, t)`` of the average velocity.

    **Time direction.** The paper puts noise at time 1 and generates from 1 down to 0;
    this book puts noise at 0 and generates forward.  Here ``model(z, r, t)``, with
    ``r <= t``, is the average velocity over [r, t] of the ODE path that passes
    through ``z`` at the *earlier* time ``r`` (the noisier end):
    ``u(z, r, t) = (phi_{r->t}(z) - z) / (t - r)``, with ``phi`` the flow map, and
    ``u(z, t, t) = v(z, t)``.  One evaluation jumps: ``phi_{r->t}(z) = z + (t - r) u``.

    **The identity.** Differentiating ``(t - r) u(z_r, r, t) = int_r^t v(z_s, s) ds``
    in ``r``, along the path (``dz_r/dr = v``, ``t`` fixed), gives

        ``u(z_r, r, t) = v(z_r, r) + (t - r) d/dr u(z_r, r, t)``,

    the paper's ``u = v - (t - r) du/dt`` with its time turned round (the sign flips
    with the direction).  The total derivative is one forward-mode product,
    :func:`jax.jvp` of the network at ``(z, r, t)`` along the tangent ``(v, 1, 0)``,
    at the cost of about one more evaluation.  The right-hand side, with the network
    in it, is the regression target, behind a stop-gradient.

    For each data image: an interval from :func:`meanflow_times`, noise ``x0``, the
    point ``z = (1 - r) x0 + r x1`` of the straight path at ``r`` and its velocity
    ``v = x1 - x0`` (conditional flow matching's; or ``velocity(z, r)`` of a given
    field, a teacher to distil).  Per image, ``d = |u - target|^2`` (summed over the
    image) is weighted by the paper's adaptive ``stop_gradient(1 / (d + eps)^power)``.

    Args:
      model: the average-velocity network ``model(z, r, t)``, ``z`` of shape (B, ...)
        and ``r``, ``t`` of shape (B,); it must be JAX code (it is differentiated by
        :func:`jax.jvp`).
      x1: data, shape (B, ...).
      key: PRNG key for the times and the noise.
      equal_fraction: the share of intervals with ``r = t`` (see
        :func:`meanflow_times`).
      velocity: ``velocity(z, r)``, a velocity field to use in place of the
        conditional ``x1 - x0`` (``None``: the conditional velocity, training from
        data).
      power: the adaptive weight's power ``p``; 0 gives the plain squared error.
      eps: the adaptive weight's constant, > 0.
      mean, std: of the logit-normal times.

    Returns:
      The loss, a scalar: the batch mean of the weighted squared errors.

    Raises:
      TypeError: if ``model`` or ``velocity`` is not callable, ``x1`` not an array, or
        a number is not a number.
      ValueError: if ``x1`` is not a batch, ``model`` (or ``velocity``) returns another
        shape than its input's, ``equal_fraction`` is outside [0, 1], ``power < 0``,
        ``eps <= 0`` or ``std <= 0``.
    """
    x1 = _check_batch(x1, "x1")
    _check_model(model, x1, n_times=2)
    if velocity is not None:
        _check_model(velocity, x1, name="velocity")
    power = checks.finite_number(power, "power", minimum=0.0)
    eps = checks.finite_number(eps, "eps", minimum=0.0, strictly=True)
    k_times, k_noise = jax.random.split(key)
    r, t = meanflow_times(k_times, x1.shape[0], equal_fraction=equal_fraction, mean=mean, std=std)
    x0 = jax.random.normal(k_noise, x1.shape, x1.dtype)
    shape = (-1,) + (1,) * (x1.ndim - 1)  # (B, 1, ..., 1): broadcast over the image
    z = (1 - r.reshape(shape)) * x0 + r.reshape(shape) * x1
    v = x1 - x0 if velocity is None else velocity(z, r)
    u, du_dr = jax.jvp(model, (z, r, t), (v, jnp.ones_like(r), jnp.zeros_like(t)))
    target = jax.lax.stop_gradient(v + (t - r).reshape(shape) * du_dr)
    d = jnp.sum((u - target) ** 2, axis=tuple(range(1, x1.ndim)))  # (B,)
    weight = jax.lax.stop_gradient(1.0 / (d + eps) ** power)
    return jnp.mean(weight * d)


def flow_map_sample(model: Callable, x0: jax.Array, steps: int = 1):
    """Sample with a flow map: ``steps`` jumps from noise (t=0) to data (t=1).

    ``model(z, r, t)`` is an average velocity over ``[r, t]``, learned by MeanFlow
    (:func:`meanflow_loss`) or distilled from a teacher's paths
    (:func:`flow_map_distillation_loss`).  Each jump from ``s`` to ``t`` on the equal
    grid is ``x <- x + (t - s) u(x, s, t)``; with one step, ``x1 = x0 + u(x0, 0, 1)``.
    For the exact average velocity every jump lands on the ODE path, whatever the
    number of steps.

    Args:
      model: the average-velocity network ``model(z, r, t)`` (see
        :func:`meanflow_loss` for the time convention).
      x0: the starting noise, shape (B, ...).
      steps: the number of jumps, >= 1.

    Returns:
      ``(x, nfe)``: the samples, of ``x0``'s shape, and ``nfe = steps``.

    Raises:
      TypeError: if ``steps`` is not an int, ``model`` not callable, or ``x0`` not
        an array.
      ValueError: if ``steps < 1``, ``x0`` is not a batch, or ``model`` returns
        another shape than its input's.
    """
    x0 = _check_batch(x0, "x0")
    steps = checks.positive_int(steps, "steps")
    _check_model(model, x0, n_times=2)
    grid = jnp.linspace(0.0, 1.0, steps + 1, dtype=x0.dtype)
    batch = (x0.shape[0],)

    def body(x, st):
        s, t = st
        return x + (t - s) * model(x, jnp.full(batch, s), jnp.full(batch, t)), None

    x, _ = jax.lax.scan(body, x0, (grid[:-1], grid[1:]))
    return x, steps
