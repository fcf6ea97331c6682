"""diffbook.likelihood: the ODE log-likelihood against exact densities.

Chapter 4's mixture under a smooth variance-preserving diffusion: the noised density is
a Gaussian mixture at every time, so the probability-flow velocity and the log-density
at both ends are known exactly; and a linear field on digit-shaped batches, whose flow
is a matrix exponential.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from diffbook import likelihood
from diffbook.mixture import STANDARD

# ------------------------------------------------------------ ODE likelihood
# A smooth VP diffusion (Song et al. 2021's beta(u) = 0.1 + 19.9 u) of chapter 4's
# mixture, in the model's standardised coordinates: at time u the data are the
# mixture noised to alpha_bar(u), with exact score and hence exact velocity
# dx/du = -beta(u) / 2 (x + score(x, u)).
B0, B1 = 0.1, 20.0


def alpha_bar(u):
    return jnp.exp(-(B0 * u + 0.5 * (B1 - B0) * u**2))


def pf_velocity_1d(u, x):
    return -0.5 * (B0 + (B1 - B0) * u) * (x + STANDARD.noised_score(x, alpha_bar(u)))


NOISE = STANDARD.noised(float(alpha_bar(1.0)))  # the exact density at u = 1


def test_ode_likelihood_of_the_mixture_is_its_exact_log_density():
    x = jnp.linspace(-2.0, 1.5, 8)[:, None]
    log_p, nfe = likelihood.ode_log_likelihood(
        pf_velocity_1d, x, 0.0, 1.0, log_prior=lambda z: NOISE.log_prob(z[:, 0])
    )
    np.testing.assert_allclose(log_p, STANDARD.log_prob(x[:, 0]), atol=1e-2)
    assert int(nfe) > 0


def test_hutchinson_agrees_with_the_exact_divergence_in_two_rotated_dimensions():
    # Two independent mixture coordinates, rotated: the Jacobian is not diagonal,
    # so Rademacher probes do not give the trace exactly.
    c, s = np.cos(0.6), np.sin(0.6)
    rot = jnp.asarray([[c, -s], [s, c]], jnp.float32)

    def velocity(u, x):  # x = R y, v_x = R v_y(R^T x)
        return pf_velocity_1d(u, x @ rot) @ rot.T

    def log_prior(z):
        return NOISE.log_prob(z @ rot).sum(axis=1)

    x = jnp.asarray([[-1.5, 0.3], [0.4, 0.9], [1.0, -0.7]], jnp.float32)
    truth = STANDARD.log_prob(x @ rot).sum(axis=1)
    exact, _ = likelihood.ode_log_likelihood(velocity, x, 0.0, 1.0, log_prior=log_prior)
    np.testing.assert_allclose(exact, truth, atol=1e-2)
    reps = 64
    hutch, _ = likelihood.ode_log_likelihood(
        velocity,
        jnp.repeat(x, reps, axis=0),
        0.0,
        1.0,
        log_prior=log_prior,
        divergence="hutchinson",
        key=jax.random.key(0),
    )
    hutch = np.asarray(hutch).reshape(3, reps)
    spread = hutch.std(axis=1)
    assert np.all(spread > 1e-3)  # the probes do add noise here
    assert np.all(np.abs(hutch.mean(axis=1) - truth) < 4 * spread / np.sqrt(reps) + 1e-2)


def test_ode_likelihood_refuses_bad_arguments():
    x = jnp.zeros((2, 1))
    with pytest.raises(ValueError, match="divergence"):
        likelihood.ode_log_likelihood(pf_velocity_1d, x, 0.0, 1.0, divergence="trace")
    with pytest.raises(ValueError, match="key"):
        likelihood.ode_log_likelihood(pf_velocity_1d, x, 0.0, 1.0, divergence="hutchinson")
    with pytest.raises(ValueError, match="num_probes"):
        likelihood.ode_log_likelihood(pf_velocity_1d, x, 0.0, 1.0, num_probes=0)
    with pytest.raises(ValueError, match="t0 and t1"):
        likelihood.ode_log_likelihood(pf_velocity_1d, x, 0.5, 0.5)


def test_ode_likelihood_of_a_linear_field_on_digit_shaped_data():
    # dx/dt = A x carries x to exp(A) x by t = 1, so log p_0(x) = log N(exp(A) x) + tr(A):
    # the exact divergence of a 64-dimensional field, for image-shaped batches.
    a = 0.3 * jax.random.normal(jax.random.key(0), (64, 64)) / 8.0

    def velocity(t, x):
        return (x.reshape(len(x), 64) @ a.T).reshape(x.shape)

    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    log_p, _ = likelihood.ode_log_likelihood(velocity, x, 0.0, 1.0, steps=16)
    z = x.reshape(3, 64) @ jax.scipy.linalg.expm(a).T
    expected = norm.logpdf(np.asarray(z)).sum(axis=1) + float(jnp.trace(a))
    np.testing.assert_allclose(log_p, expected, atol=1e-3)
