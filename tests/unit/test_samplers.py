import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import prompt_oracle, tiny_prompts
from diffbook import samplers
from diffbook.samplers import ode_solve
from diffbook.schedules import NoiseSchedule


def test_linear_ode_forward_and_backward():
    x0 = jnp.array([1.0, -2.0])
    x1, _ = ode_solve(lambda t, x: -x, x0, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(x1, x0 * np.exp(-1.0), rtol=1e-5)
    back, _ = ode_solve(lambda t, x: -x, x1, t0=1.0, t1=0.0, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(back, x0, rtol=1e-5)


@pytest.mark.parametrize(
    "solver, steps",
    [
        (dfx.Tsit5(), None),
        (dfx.Tsit5(), 5),
        (dfx.Heun(), None),
        (dfx.Dopri5(), None),
        (dfx.Euler(), 7),
        (dfx.Midpoint(), 3),
    ],
)
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


# ---------------------------------------------------------------------------
# The sampler contract: sampler(schedule, model_fn, x_T, key, **options) -> (x, nfe).
# Data N(M, S^2): the exact network is known (conftest.gaussian_oracle).
# ---------------------------------------------------------------------------
M, S = 0.4, 0.3

# Settings under which each sampler, run with the exact network, lands on the data.
# (The linear schedule's betas are meant for T = 1000; cosine(200) is cheaper.)
CASES = {
    "ancestral": (NoiseSchedule.cosine(200), {}),
    "ddim": (NoiseSchedule.cosine(200), {"steps": 50}),
    "ddim_eta1": (NoiseSchedule.cosine(200), {"steps": 200, "eta": 1.0}),
    "pc": (NoiseSchedule.linear(1000), {}),
    "annealed_langevin": (NoiseSchedule.linear(1000), {"corrector_steps": 2}),
    "ode": (NoiseSchedule.linear(1000), {}),
    "sde": (NoiseSchedule.linear(1000), {"steps": 200}),
}
EXPECTED_NFE = {
    "ancestral": 200,
    "ddim": 50,
    "ddim_eta1": 200,
    "pc": 2000,
    "annealed_langevin": 2001,
    "sde": 201,
}


def test_the_registry_holds_every_sampler():
    assert set(samplers.SAMPLERS) == {"ancestral", "ddim", "pc", "annealed_langevin", "ode", "sde"}
    with pytest.raises(ValueError, match="name"):
        samplers.sample(
            "euler", NoiseSchedule.cosine(10), lambda x, u: x, jax.random.key(0), (2, 1)
        )


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_sampler_reaches_the_data_and_counts_its_network_calls(case, oracle, counted):
    schedule, options = CASES[case]
    name = "ddim" if case == "ddim_eta1" else case
    model_fn = counted(oracle(schedule, M, S, "v"))
    x, nfe = samplers.sample(
        name, schedule, model_fn, jax.random.key(0), (4000, 2), prediction="v", **options
    )
    assert x.shape == (4000, 2)
    # nfe is what the sampler reports; the counter saw the calls that really ran.
    assert int(nfe) == model_fn.count() == EXPECTED_NFE.get(case, model_fn.count())
    tolerance = 0.03 if name == "annealed_langevin" else 0.02
    assert abs(float(x.mean()) - M) < tolerance
    assert abs(float(x.std()) - S) < tolerance


def test_sample_splits_the_key_into_the_start_and_the_run(oracle):
    # The same key gives DDIM (which ignores its key at eta = 0) the start that
    # sample() draws from the first half of the split.
    schedule = NoiseSchedule.cosine(50)
    fn = oracle(schedule, M, S)
    key = jax.random.key(7)
    x, _ = samplers.sample("ddim", schedule, fn, key, (16, 3), steps=10)
    x_T = jax.random.normal(jax.random.split(key)[0], (16, 3))
    np.testing.assert_array_equal(x, samplers.ddim_sample(schedule, fn, x_T, steps=10)[0])


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_the_samplers_honour_prediction(prediction, oracle):
    # The same exact network, asked in each of its three forms, gives one sample.
    schedule = NoiseSchedule.cosine(100)
    key = jax.random.key(1)
    reference, _ = samplers.sample("ancestral", schedule, oracle(schedule, M, S), key, (64, 1))
    x, _ = samplers.sample(
        "ancestral",
        schedule,
        oracle(schedule, M, S, prediction),
        key,
        (64, 1),
        prediction=prediction,
    )
    np.testing.assert_allclose(x, reference, atol=2e-4)


def test_the_ancestral_sampler_calls_the_network_at_u_equal_t_over_T():
    schedule = NoiseSchedule.cosine(20)
    seen = []

    def model_fn(x, u):
        jax.debug.callback(lambda u: seen.append(np.asarray(u)), u)
        return jnp.zeros_like(x)

    samplers.ddpm_sample(schedule, model_fn, jnp.zeros((3, 1)), jax.random.key(0))
    jax.effects_barrier()
    np.testing.assert_allclose(np.stack(seen), np.repeat(np.arange(19, -1, -1)[:, None] / 20, 3, 1))


def test_ddim_sample_on_an_explicit_grid(oracle):
    schedule = NoiseSchedule.cosine(100)
    model_fn = oracle(schedule, M, S)
    x_T = jax.random.normal(jax.random.key(0), (8, 2))
    grid = samplers.ddim_timesteps(100, 8)[::-1]
    by_steps, nfe = samplers.ddim_sample(schedule, model_fn, x_T, steps=8)
    np.testing.assert_array_equal(
        samplers.ddim_sample(schedule, model_fn, x_T, timesteps=grid)[0], by_steps
    )
    # Without the first two entries: the same sampler, started later, two calls fewer.
    late, late_nfe = samplers.ddim_sample(schedule, model_fn, x_T, timesteps=grid[2:])
    assert late.shape == x_T.shape and nfe - late_nfe == 2
    for bad in ({}, {"steps": 8, "timesteps": grid}):
        with pytest.raises(ValueError, match="either steps or timesteps"):
            samplers.ddim_sample(schedule, model_fn, x_T, **bad)
    with pytest.raises(ValueError, match="timesteps must decrease"):
        samplers.ddim_sample(schedule, model_fn, x_T, timesteps=grid[::-1])


def test_ddim_inversion_round_trip(oracle):
    schedule = NoiseSchedule.cosine(1000)
    fn = oracle(schedule, M, S)
    x0 = M + S * jax.random.normal(jax.random.key(0), (64, 2))
    errors = []
    for steps in (50, 200):
        noise, nfe = samplers.ddim_invert(schedule, fn, x0, steps=steps)
        assert nfe == steps and abs(float(noise.std()) - 1.0) < 0.2
        back, _ = samplers.ddim_sample(schedule, fn, noise, steps=steps)
        errors.append(float(jnp.abs(back - x0).max()))
    # A first-order method: four times the steps, about a quarter of the error.
    assert errors[1] < 0.025 and errors[1] < errors[0] / 3


@pytest.mark.parametrize("skip", ["uniform", "quadratic"])
@pytest.mark.parametrize("steps", [1, 10, 50, 200, 1000])
def test_ddim_timesteps_are_distinct_and_end_at_the_last_step(skip, steps):
    ts = samplers.ddim_timesteps(1000, steps, skip)
    assert len(ts) == steps and ts[-1] == 999 and np.all(np.diff(ts) > 0) and ts[0] >= 0


def test_langevin_reaches_the_target():
    x_T = jax.random.normal(jax.random.key(0), (4000, 1))
    x = samplers.langevin(
        lambda x: -(x - M) / S**2, x_T, jax.random.key(1), steps=500, step_size=0.01
    )
    assert abs(float(x.mean()) - M) < 0.02 and abs(float(x.std()) - S) < 0.02


def test_probability_flow_is_deterministic_and_monotone(oracle):
    # A 1-D flow map is increasing: the ODE never lets two samples cross.
    schedule = NoiseSchedule.linear(1000)
    x_T = jnp.linspace(-3, 3, 50)[:, None]
    x, _ = samplers.probability_flow(schedule, oracle(schedule, M, S), x_T)
    again, _ = samplers.probability_flow(schedule, oracle(schedule, M, S), x_T)
    np.testing.assert_array_equal(x, again)
    assert np.all(np.diff(np.asarray(x[:, 0])) > 0)


def test_bad_sampler_settings_raise():
    schedule = NoiseSchedule.linear(10)
    fn, x, key = (lambda x, u: x), jnp.zeros((2, 1)), jax.random.key(0)
    with pytest.raises(ValueError, match="step_size"):
        samplers.langevin(lambda x: -x, jnp.zeros(3), key, steps=5, step_size=0.0)
    with pytest.raises(ValueError, match="steps"):
        samplers.langevin(lambda x: -x, jnp.zeros(3), key, steps=0, step_size=0.1)
    with pytest.raises(ValueError, match="corrector_steps"):
        samplers.pc_sample(schedule, fn, x, key, corrector_steps=-1)
    with pytest.raises(ValueError, match="snr"):
        samplers.pc_sample(schedule, fn, x, key, snr=0.0)
    with pytest.raises(ValueError, match="steps"):
        samplers.reverse_sde(schedule, fn, x, key, steps=0)
    with pytest.raises(ValueError, match="steps must be None or 10"):
        samplers.ddpm_sample(schedule, fn, x, key, steps=5)
    with pytest.raises(ValueError, match="eta"):
        samplers.ddim_sample(schedule, fn, x, steps=2, eta=-1.0)
    with pytest.raises(ValueError, match="give a key"):  # the step alone checks it too
        schedule.ddim_step(x, 5, 4, x, eta=0.5)
    with pytest.raises(ValueError, match="give a key"):
        samplers.ddim_sample(schedule, fn, x, steps=2, eta=0.5)
    with pytest.raises(ValueError, match="prediction"):
        samplers.ddim_sample(schedule, fn, x, steps=2, prediction="score")
    with pytest.raises(TypeError, match="schedule"):
        samplers.ddim_sample("cosine", fn, x, steps=2)
    with pytest.raises(ValueError, match="steps"):
        samplers.ddim_timesteps(10, 0)


def test_ddim_with_clipping_ends_in_the_data_range():
    # A network that always predicts the clean value 2.5, outside the data range: DDIM
    # ends on it without clipping and on 1 with it.
    schedule = NoiseSchedule.cosine(100)
    wild = lambda x, u: jnp.full_like(x, 2.5)  # noqa: E731
    x_T = jax.random.normal(jax.random.key(0), (256, 1))
    for steps in (1, 10):
        clipped, _ = samplers.ddim_sample(
            schedule, wild, x_T, steps=steps, prediction="x0", clip_x0=True
        )
        free, _ = samplers.ddim_sample(schedule, wild, x_T, steps=steps, prediction="x0")
        np.testing.assert_allclose(clipped, 1.0, atol=1e-5)
        np.testing.assert_allclose(free, 2.5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_predict_x0_of_the_exact_network_of_one_point_is_that_point(prediction, oracle):
    # Data that is a single point (s = 0): its x0 is identifiable at every noise level.
    schedule = NoiseSchedule.cosine(100)
    x0 = jnp.full((5, 3), 0.7)
    noise = jax.random.normal(jax.random.key(2), x0.shape)
    fn = oracle(schedule, 0.7, 0.0, prediction)
    for t in (0, 50, 99):
        np.testing.assert_allclose(
            samplers.predict_x0(schedule, fn, x0, t, noise, prediction=prediction), x0, atol=1e-3
        )
    # A point outside [-1, 1] is clipped back to the edge.
    fn = oracle(schedule, 1.5, 0.0, prediction)
    np.testing.assert_allclose(
        samplers.predict_x0(
            schedule, fn, x0 * 0 + 1.5, 50, noise, prediction=prediction, clip_x0=True
        ),
        1.0,
        atol=1e-5,
    )


@pytest.mark.parametrize("prediction", ["v", "epsilon"])
def test_predict_x0_of_an_exact_network_is_the_image(prediction):
    schedule, oracle, x0_cond, x0_uncond = prompt_oracle(prediction)
    tokens, mask = tiny_prompts()
    noise = jax.random.normal(jax.random.key(7), x0_cond.shape)

    def estimate(mask, t):
        return samplers.predict_x0(
            schedule,
            lambda x, u: oracle(x, u, tokens, mask),
            x0_cond,
            t,
            noise,
            prediction=prediction,
            clip_x0=True,
        )

    for t in (10, 500, 900):
        np.testing.assert_allclose(estimate(mask, t), x0_cond, atol=1e-3)
    np.testing.assert_allclose(estimate(jnp.zeros_like(mask), 500), x0_uncond, atol=1e-3)
