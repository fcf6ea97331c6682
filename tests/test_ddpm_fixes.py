"""The posterior of NoiseSchedule in float32, and the cosine schedule's last step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffbook.schedules import NoiseSchedule


def _posterior_float64(sched, x0, xt, t):
    """q(x_{t-1} | x_t, x0) from the betas alone, in float64 (Ho et al. 2020, eq. 7)."""
    betas = np.asarray(sched.betas, np.float64)
    ab = np.cumprod(1.0 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    c0 = np.sqrt(ab_prev[t]) * betas[t] / (1.0 - ab[t])
    ct = np.sqrt(1.0 - betas[t]) * (1.0 - ab_prev[t]) / (1.0 - ab[t])
    var = betas[t] * (1.0 - ab_prev[t]) / (1.0 - ab[t])
    return c0 * np.asarray(x0, np.float64) + ct * np.asarray(xt, np.float64), var


@pytest.mark.parametrize(
    "sched", [NoiseSchedule.cosine(1000), NoiseSchedule.linear(1000)], ids=lambda s: s.name
)
def test_posterior_mean_at_t0_is_x0(sched):
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(k1, (16, 8, 8, 1), minval=-1, maxval=1)
    xt = sched.add_noise(x0, jax.random.normal(k2, x0.shape), jnp.zeros(16, jnp.int32))
    mean, var = sched.posterior(x0, xt, jnp.zeros(16, jnp.int32))
    # The last ancestral step must return the predicted clean image itself.
    np.testing.assert_allclose(mean, x0, rtol=0, atol=2e-7)
    np.testing.assert_array_equal(var, 0.0)


@pytest.mark.parametrize("t", [1, 10, 500, 998, 999])
def test_posterior_matches_a_float64_reference(t):
    sched = NoiseSchedule.cosine(1000)
    k1, k2 = jax.random.split(jax.random.key(t))
    x0 = jax.random.uniform(k1, (4, 3), minval=-1, maxval=1)
    xt = jax.random.normal(k2, x0.shape)
    mean, var = sched.posterior(x0, xt, jnp.full((4,), t))
    ref_mean, ref_var = _posterior_float64(sched, x0, xt, t)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var.ravel(), ref_var, rtol=1e-6)


def test_cosine_alpha_bar_uses_t_plus_one_and_the_last_beta_is_capped():
    T, s = 1000, 0.008
    sched = NoiseSchedule.cosine(T)
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
    t = np.arange(T - 1)
    np.testing.assert_allclose(sched.alpha_bars[:-1], f((t + 1) / T) / f(0), rtol=2e-4)
    # f(1) = 0 would make the last beta 1; the cap 0.999 leaves alpha_bar ~ 2e-9.
    assert float(sched.betas[-1]) == pytest.approx(0.999)
    ab = np.asarray(sched.alpha_bars, np.float64)
    assert ab[-1] == pytest.approx(ab[-2] * (1 - 0.999), rel=1e-4)
    assert 1e-9 < ab[-1] < 5e-9
