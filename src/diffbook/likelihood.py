"""Exact likelihoods of continuous models, in nats: the change of variables along an ODE.

A flow-matching model, or a diffusion model through its probability-flow ODE, maps data
to a simple prior by an invertible flow, so the log-density of given data is the prior's
log-density at the far end plus the integral of the velocity's divergence along the path
(the instantaneous change of variables).  :func:`ode_log_likelihood` solves that
augmented ODE with :func:`diffbook.samplers.ode_solve`, with the exact divergence (one
forward-mode product per dimension: affordable for the 64 pixels of a digit) or
Hutchinson's unbiased estimate.  :mod:`diffbook.masked` turns such a density on
dequantised digits into nats per image, comparable with a discrete model's.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

from .checks import finite_number, one_of, positive_int
from .samplers import ode_solve


def _standard_normal_log_prob(z: jax.Array) -> jax.Array:
    """``log N(z; 0, I)`` of each sample of a batch ``(B, ...)``, shape ``(B,)``."""
    z = z.reshape(z.shape[0], -1)
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[1] * jnp.log(2 * jnp.pi)


def ode_log_likelihood(
    velocity: Callable,
    x: jax.Array,
    t0: float,
    t1: float,
    *,
    log_prior: Callable | None = None,
    divergence: str = "exact",
    key: jax.Array | None = None,
    num_probes: int = 1,
    solver: dfx.AbstractSolver | None = None,
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
):
    """``log p_t0(x)`` of the density that the ODE ``dx/dt = velocity(t, x)`` carries.

    Along a path of the ODE the log-density changes by minus the divergence of the
    field (the instantaneous change of variables, Chen et al. 2018):
    ``d/dt log p_t(x(t)) = -div v(t, x(t))``.  Integrated from ``t0`` (where the
    data are) to ``t1`` (where the density is known: ``log_prior``),

        ``log p_t0(x) = log p_t1(x(t1)) + int_t0^t1 div v(t, x(t)) dt``.

    The state and the running integral are solved together as one augmented ODE
    with :func:`~diffbook.samplers.ode_solve` (its solvers, step control and ``nfe``
    count; the error control sees the integral too).  Direction: for flow matching (noise at 0,
    data at 1) call with ``t0=1, t1=0``; for a diffusion's probability-flow ODE
    ``t0`` is the data end (``u = 0``) and ``t1`` the noise end.

    The divergence is either exact, the trace of the Jacobian from ``D`` forward-mode
    products (``jax.linearize``, then one product per basis vector: affordable for
    ``D = 64``), or Hutchinson's unbiased estimate ``E[eps^T J eps]`` with Rademacher
    probes ``eps`` (one product per probe).  The ``num_probes`` probes are drawn once
    and kept for the whole path, so the integrand is a smooth function of ``t`` for
    the solver; the estimate of ``log p`` is then unbiased, and its spread over keys
    is what the chapter shows.

    The samples of a batch must not interact: ``velocity`` must compute each
    sample's velocity from that sample alone (no batch statistics), since the
    Jacobian is taken of the whole batch and only its per-sample diagonal blocks
    are read.

    Args:
      velocity: ``velocity(t, x) -> dx/dt`` for a scalar ``t`` and a batch ``x``
        ``(B, ...)``, JAX code (as for :func:`~diffbook.samplers.ode_solve`).
      x: the points ``(B, ...)`` at time ``t0``.
      t0, t1: the data end and the end with the known density; they must differ.
      log_prior: ``log_prior(z) -> (B,)``, the log-density at ``t1`` of the batch
        ``z``; default the standard normal over all of a sample's ``D`` entries.
      divergence: ``"exact"`` or ``"hutchinson"``.
      key: PRNG key for the probes; needed for ``"hutchinson"`` only.
      num_probes: Rademacher probes averaged per evaluation (``"hutchinson"``).
      solver, steps, rtol, atol, max_steps: as in :func:`~diffbook.samplers.ode_solve` (tolerances
        tighter by default: a likelihood wants more digits than a sample).

    Returns:
      ``(log_p, nfe)``: ``float32`` log-densities ``(B,)`` in nats at ``t0`` (not per
      dimension) and the number of evaluations of the augmented field, each one
      velocity evaluation with its Jacobian products.

    Raises:
      TypeError: if ``num_probes`` is not an int.
      ValueError: if ``x`` is not a batch, ``divergence`` is not one of the two,
        ``"hutchinson"`` has no ``key``, ``num_probes < 1``, or :func:`~diffbook.samplers.ode_solve`
        refuses the solver settings.
    """
    one_of(divergence, "divergence", ("exact", "hutchinson"))
    num_probes = positive_int(num_probes, "num_probes")
    t0 = finite_number(t0, "t0")
    t1 = finite_number(t1, "t1")
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 1:
        raise ValueError(f"x must be a batch of shape (B, ...), got shape {x.shape}")
    if divergence == "hutchinson" and key is None:
        raise ValueError('divergence="hutchinson" draws random probes: give a key')
    log_prior = _standard_normal_log_prob if log_prior is None else log_prior
    batch, shape = x.shape[0], x.shape[1:]
    dim = int(np.prod(shape))

    if divergence == "exact":
        # Tangent d is the d-th basis vector of one sample, repeated over the batch.
        tangents = jnp.broadcast_to(jnp.eye(dim)[:, None, :], (dim, batch, dim))
    else:
        signs = jax.random.rademacher(key, (num_probes, batch, dim))
        tangents = signs.astype(jnp.float32)

    def augmented(t, state):
        y = state[:, :dim].reshape(x.shape)
        v, jvp = jax.linearize(lambda z: velocity(t, z), y)
        # (P, B, D): J applied to every tangent, sample by sample.
        products = jax.vmap(lambda e: jvp(e.reshape(x.shape)).reshape(batch, dim))(tangents)
        div = jnp.mean(jnp.sum(products * tangents, axis=-1), axis=0)
        if divergence == "exact":  # the sum of the diagonal entries, not their mean
            div = div * dim
        return jnp.concatenate([v.reshape(batch, dim), div[:, None]], axis=1)

    start = jnp.concatenate([x.reshape(batch, dim), jnp.zeros((batch, 1))], axis=1)
    end, nfe = ode_solve(
        augmented,
        start,
        t0=t0,
        t1=t1,
        solver=solver,
        steps=steps,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
    )
    z = end[:, :dim].reshape(x.shape)
    return log_prior(z) + end[:, dim], nfe
