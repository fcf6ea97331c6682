"""Flow matching against a case solved by hand: Gaussian data.

For data x1 ~ N(m, s^2 I) and noise x0 ~ N(0, I), x_t = (1-t) x0 + t x1 is
Gaussian with mean t*m and variance v_t = (1-t)^2 + t^2 s^2, and the marginal
velocity (the minimiser of the flow-matching loss) is
    u(x, t) = m + (t s^2 - (1 - t)) / v_t * (x - t m).
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffbook import flow

M, S = 1.5, 0.5


def exact_velocity(x, t):
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    var = (1 - t) ** 2 + t**2 * S**2
    return M + (t * S**2 - (1 - t)) / var * (x - t * M)


def test_loss_is_smallest_at_the_marginal_velocity():
    x1 = M + S * jax.random.normal(jax.random.key(0), (4096, 2, 2, 1))
    key = jax.random.key(1)
    best = flow.cfm_loss(exact_velocity, x1, key)
    for wrong in (
        lambda x, t: 1.1 * exact_velocity(x, t),
        lambda x, t: exact_velocity(x, t) + 0.1,
        lambda x, t: jnp.zeros_like(x),
    ):
        assert flow.cfm_loss(wrong, x1, key) > best


def test_sampling_with_the_exact_field_reaches_the_data_distribution():
    calls = []

    def counted(x, t):  # one callback per evaluation of the field, when it runs
        jax.debug.callback(lambda: calls.append(1))
        return exact_velocity(x, t)

    samples, nfe = flow.sample(counted, jax.random.key(0), 4000, shape=(2, 2, 1))
    jax.effects_barrier()
    assert abs(float(samples.mean()) - M) < 0.03
    assert abs(float(samples.std()) - S) < 0.03
    assert int(nfe) == len(calls)
    # Fixed steps: Tsit5 evaluates the field 6 times a step plus once at the start.
    calls.clear()
    _, nfe = flow.sample(counted, jax.random.key(0), 10, shape=(2, 2, 1), steps=4)
    jax.effects_barrier()
    assert int(nfe) == len(calls) == 6 * 4 + 1


def test_encode_decode_round_trip():
    x1 = M + S * jax.random.normal(jax.random.key(2), (16, 2, 2, 1))
    noise, _ = flow.encode(exact_velocity, x1, rtol=1e-6, atol=1e-6)
    assert abs(float(noise.std()) - 1.0) < 0.4  # codes look like standard noise
    back, _ = flow.decode(exact_velocity, noise, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(back, x1, atol=1e-4)


def test_logit_normal_concentrates_in_the_middle():
    t = np.asarray(flow.logit_normal(jax.random.key(0), 100_000))
    assert 0 < t.min() and t.max() < 1
    assert abs(np.median(t) - 0.5) < 0.01
    assert np.mean((t > 0.25) & (t < 0.75)) > 0.7  # uniform would give 0.5
