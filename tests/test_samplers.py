import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffbook.samplers import ode_solve


def test_linear_ode_forward_and_backward():
    x0 = jnp.array([1.0, -2.0])
    x1, _ = ode_solve(lambda t, x: -x, x0, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(x1, x0 * np.exp(-1.0), rtol=1e-5)
    back, _ = ode_solve(lambda t, x: -x, x1, t0=1.0, t1=0.0, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(back, x0, rtol=1e-5)


@pytest.mark.parametrize("solver, steps", [(dfx.Tsit5(), None), (dfx.Tsit5(), 5),
                                           (dfx.Heun(), None), (dfx.Dopri5(), None),
                                           (dfx.Euler(), 7), (dfx.Midpoint(), 3)])
def test_nfe_counts_every_evaluation(solver, steps):
    calls = []

    def velocity(t, x):
        jax.debug.callback(lambda: calls.append(1))
        return -x * jnp.cos(5.0 * t)

    _, nfe = ode_solve(velocity, jnp.ones(3), solver=solver, steps=steps, rtol=1e-4, atol=1e-4)
    jax.effects_barrier()
    assert int(nfe) == len(calls) > 0


def test_bad_settings():
    with pytest.raises(ValueError, match="no error estimate"):
        ode_solve(lambda t, x: x, jnp.ones(2), solver=dfx.Euler())
    with pytest.raises(ValueError, match="steps"):
        ode_solve(lambda t, x: x, jnp.ones(2), steps=0)
    with pytest.raises(ValueError, match="t0 and t1"):
        ode_solve(lambda t, x: x, jnp.ones(2), t0=0.5, t1=0.5)
    with pytest.raises(ValueError, match="rtol"):
        ode_solve(lambda t, x: x, jnp.ones(2), rtol=0.0)


def test_ddim_sample_on_an_explicit_grid():
    from diffbook import samplers
    from diffbook.schedules import NoiseSchedule

    schedule = NoiseSchedule.cosine(100)
    model_fn = lambda x, t: 0.5 * x + 0.01 * t[:, None]   # any deterministic network
    x_T = jax.random.normal(jax.random.key(0), (4, 3))
    grid = samplers.ddim_timesteps(100, 8)[::-1]
    by_steps = samplers.ddim_sample(schedule, model_fn, x_T, steps=8)
    np.testing.assert_array_equal(samplers.ddim_sample(schedule, model_fn, x_T, timesteps=grid),
                                  by_steps)
    # A grid without its first entries is a different (later-starting) run.
    late = samplers.ddim_sample(schedule, model_fn, x_T, timesteps=grid[2:])
    assert float(jnp.abs(late - by_steps).max()) > 1e-3
    for bad in (dict(), dict(steps=8, timesteps=grid)):
        with pytest.raises(ValueError, match="steps or timesteps"):
            samplers.ddim_sample(schedule, model_fn, x_T, **bad)
    with pytest.raises(ValueError, match="decrease"):
        samplers.ddim_sample(schedule, model_fn, x_T, timesteps=grid[::-1])
