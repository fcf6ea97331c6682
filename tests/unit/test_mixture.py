import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import assert_every_param_gets_a_gradient
from diffbook import config, ddpm, mixture, samplers
from diffbook.mixture import MIXTURE, GaussianMixture1D
from diffbook.schedules import NoiseSchedule


def test_density_integrates_to_one_and_matches_the_cdf():
    x = np.linspace(-20, 25, 20001)
    p = np.exp(np.asarray(MIXTURE.log_prob(x), np.float64))
    assert abs(np.trapezoid(p, x) - 1.0) < 1e-4
    cdf = np.asarray(MIXTURE.cdf(x))
    np.testing.assert_allclose(np.cumsum(p) * (x[1] - x[0]), cdf, atol=2e-3)
    assert abs(MIXTURE.mean - 2.1) < 1e-9
    assert abs(MIXTURE.std**2 - 27.415) < 1e-6


def test_score_is_the_derivative_of_the_log_density():
    x = jnp.linspace(-9.0, 12.0, 43)
    h = 1e-2
    fd = (MIXTURE.log_prob(x + h) - MIXTURE.log_prob(x - h)) / (2 * h)
    np.testing.assert_allclose(MIXTURE.score(x), fd, rtol=1e-2, atol=1e-2)
    # One Gaussian: the score is -(x - m) / s^2.
    g = GaussianMixture1D((1.0,), (1.5,), (0.5,))
    np.testing.assert_allclose(g.score(x), -(x - 1.5) / 0.25, rtol=1e-5)


def test_noised_mixture_is_the_law_of_the_forward_process():
    sched = NoiseSchedule.cosine(1000)
    x0 = MIXTURE.sample(jax.random.key(0), 200_000)[:, None]
    for t in (0, 300, 700):
        ab = float(sched.alpha_bars[t])
        xt = sched.add_noise(
            x0, jax.random.normal(jax.random.key(t), x0.shape), jnp.full((x0.shape[0],), t)
        )
        noised = MIXTURE.noised(ab)
        assert abs(float(xt.mean()) - noised.mean) < 0.03
        assert abs(float(xt.std()) - noised.std) < 0.03
        # The traced version of its score agrees with autodiff of its density.
        x = jnp.linspace(-6, 8, 15)
        np.testing.assert_allclose(
            MIXTURE.noised_score(x, ab), noised.score(x), rtol=1e-4, atol=1e-5
        )
    assert MIXTURE.noised(1.0) == MIXTURE


def test_mode_weights_of_exact_draws_are_the_weights():
    x = MIXTURE.sample(jax.random.key(1), 100_000)
    np.testing.assert_allclose(mixture.mode_weights(MIXTURE, x), MIXTURE.weights, atol=0.005)
    # All samples in the middle mode: weight 1 there.
    w = mixture.mode_weights(MIXTURE, np.zeros(10))
    assert w[1] > 0.98  # the wide component at 6 still claims 1.6% of x = 0


def test_wasserstein1_measures_a_shift_and_shrinks_with_sample_size():
    g = GaussianMixture1D((1.0,), (0.0,), (1.0,))
    x = g.sample(jax.random.key(2), 50_000)
    assert abs(mixture.wasserstein1(g, x + 0.5) - 0.5) < 0.02
    assert mixture.wasserstein1(g, x) < 0.02
    small, large = (mixture.w1_reference(MIXTURE, n, repeats=10) for n in (1000, 16000))
    assert 2.5 < small / large < 6  # about sqrt(16) = 4


def test_quality_flags_wrong_mode_weights():
    key = jax.random.key(3)
    good = mixture.quality(MIXTURE, MIXTURE.sample(key, 10_000))
    wrong = GaussianMixture1D((0.4, 0.1, 0.5), MIXTURE.means, MIXTURE.stds)
    bad = mixture.quality(MIXTURE, wrong.sample(key, 10_000))
    assert good["weight_error"] < 0.015 and good["w1_ratio"] < 2
    assert bad["weight_error"] > 0.08 and bad["w1_ratio"] > 5


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture1D((0.5, 0.6), (0, 1), (1, 1))
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture1D((0.5, 0.5), (0, 1), (1, 0))
    with pytest.raises(ValueError, match="one common length"):
        GaussianMixture1D((0.5, 0.5), (0, 1, 2), (1, 1))
    with pytest.raises(ValueError, match="alpha_bar"):
        MIXTURE.noised(0.0)
    with pytest.raises(ValueError, match="NaN"):
        mixture.wasserstein1(MIXTURE, np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match=r"shape \(batch, 1\)"):
        mixture.MixtureMLP(rngs=nnx.Rngs(0))(jnp.zeros((4,)), jnp.zeros((4,)))
    with pytest.raises(ValueError, match="norm"):
        mixture.MixtureMLP(norm="group", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("options", [dict(), dict(norm="layer"), dict(time_embedding=False)])
def test_every_parameter_of_the_mlp_gets_a_gradient(options):
    model = mixture.MixtureMLP(16, 2, rngs=nnx.Rngs(0), **options)
    sched = NoiseSchedule.cosine(100)
    x = mixture.standardise(MIXTURE.sample(jax.random.key(0), 64))
    assert_every_param_gets_a_gradient(
        model, lambda m: ddpm.diffusion_loss(sched, m, x, jax.random.key(1), prediction="v")
    )


def test_standardised_coordinates_round_trip():
    x = MIXTURE.sample(jax.random.key(4), 100_000)
    z = mixture.standardise(x)
    assert z.shape == (100_000, 1)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    np.testing.assert_allclose(mixture.unstandardise(z), x, atol=1e-4)
    # STANDARD is the law of the standardised data: its CDF and density at z are those
    # of MIXTURE at the data point z stands for (the density times the Jacobian), and
    # the standardised draws follow it (Kolmogorov-Smirnov distance, 1% level 1.63/sqrt(n)).
    grid = np.linspace(-3, 3, 61)
    back = mixture.unstandardise(grid)
    np.testing.assert_allclose(mixture.STANDARD.cdf(grid), MIXTURE.cdf(back), atol=1e-6)
    np.testing.assert_allclose(
        mixture.STANDARD.log_prob(grid),
        MIXTURE.log_prob(back) + np.log(MIXTURE.std),
        rtol=1e-5,
        atol=1e-5,
    )
    zs = np.sort(np.asarray(z[:, 0], np.float64))
    cdf = np.asarray(mixture.STANDARD.cdf(zs), np.float64)
    n = zs.size
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.63 / np.sqrt(zs.size)


# The samplers run with the exact score are judged against what N exact draws of the
# mixture score on the same measures: a sampler's own bias must not show above the
# sampling noise of exact draws.
N = 50_000


@pytest.fixture(scope="module")
def exact_spread():
    """Bounds from exact draws of size N: 4 standard errors for each mode weight, and
    the mean plus 4 standard deviations of W1 / (mean W1 of exact draws)."""
    r = MIXTURE.responsibilities(MIXTURE.sample(jax.random.key(100), 400_000))
    se = np.asarray(r, np.float64).std(axis=0) / np.sqrt(N)
    ref = mixture.w1_reference(MIXTURE, N)  # the reference that quality() divides by
    ratios = np.array(
        [
            mixture.wasserstein1(MIXTURE, MIXTURE.sample(k, N)) / ref
            for k in jax.random.split(jax.random.key(101), 20)
        ]
    )
    return {"weight": 4 * se, "w1_ratio": ratios.mean() + 4 * ratios.std(), "ref": ref}


def _errors(x, spread):
    """(|mode weight - true weight| per mode, W1 ratio) of samples x in data units."""
    weights = mixture.mode_weights(MIXTURE, x)
    return (
        np.abs(weights - np.asarray(MIXTURE.weights)),
        mixture.wasserstein1(MIXTURE, x) / spread["ref"],
    )


def _run_with_oracle(name, n=N, **options):
    """The sampler with the exact score; returns samples in data units, its reported
    network calls and the calls counted as they ran."""
    sched = mixture.make_schedule(config.pick(mixture.RECIPE, "cpu"))
    oracle = mixture.oracle_net(sched)
    calls = []

    def counted(z, u):
        jax.debug.callback(lambda: calls.append(1))
        return oracle(z, u)

    # Thousands of steps run here, so this one program is compiled with XLA's backend
    # optimisation on, which tests/conftest.py turns off for the quick compiles elsewhere.
    draw = jax.jit(
        lambda k: mixture.draw(name, sched, counted, k, n, **options),
        compiler_options={"xla_backend_optimization_level": 3},
    )
    x, nfe = draw(jax.random.key(5))
    jax.effects_barrier()
    return mixture.unstandardise(x), int(nfe), len(calls)


def test_every_sampler_is_judged_below():
    # Each sampler of the registry is judged with the chapter's settings by a test below.
    assert set(samplers.SAMPLERS) == {"ancestral", "pc", "ode", "sde", "ddim", "annealed_langevin"}
    assert mixture.SAMPLER_OPTIONS == {"ddim": {"steps": 50}, "sde": {"steps": 1000}}


def test_the_bounds_pass_exact_draws_and_catch_wrong_weights(exact_spread):
    w_err, ratio = _errors(np.asarray(MIXTURE.sample(jax.random.key(7), N)), exact_spread)
    assert np.all(w_err < exact_spread["weight"]) and ratio < exact_spread["w1_ratio"]
    # Exact draws of a mixture whose weights are off by 0.015 fail.
    wrong = GaussianMixture1D((0.315, 0.1, 0.585), MIXTURE.means, MIXTURE.stds)
    w_err, ratio = _errors(np.asarray(wrong.sample(jax.random.key(7), N)), exact_spread)
    assert w_err[0] > exact_spread["weight"][0] and w_err[2] > exact_spread["weight"][2]


@pytest.mark.parametrize(
    "name, calls", [("ancestral", 1000), ("pc", 2000), ("ode", None), ("sde", 1001)]
)
def test_samplers_match_exact_draws_with_the_exact_score(name, calls, exact_spread):
    # The oracle network gives the exact v of the standardised mixture at every level:
    # any error left is the sampler's own.
    x, nfe, counted = _run_with_oracle(name)
    assert nfe == counted and (calls is None or nfe == calls), (nfe, counted)
    w_err, ratio = _errors(x, exact_spread)
    assert np.all(w_err < exact_spread["weight"]), (name, w_err, exact_spread["weight"])
    assert ratio < exact_spread["w1_ratio"], (name, ratio, exact_spread["w1_ratio"])


def test_ddim_with_50_steps_is_biased_and_its_error_is_discretisation(exact_spread):
    # The chapter shows with 200,000 samples that DDIM with 50 steps is biased even with
    # the exact network: the error is the sampler's own, 50 steps being too coarse a
    # discretisation of the probability-flow ODE. At N samples the bias shows as well;
    # with four times the steps it is within the spread of exact draws.
    x, nfe, counted = _run_with_oracle("ddim")
    assert nfe == counted == 50
    assert _errors(x, exact_spread)[1] > exact_spread["w1_ratio"]
    x, nfe, counted = _run_with_oracle("ddim", steps=200)
    assert nfe == counted == 200
    w_err, ratio = _errors(x, exact_spread)
    assert np.all(w_err < exact_spread["weight"]) and ratio < exact_spread["w1_ratio"]
    # An explicit grid replaces the chapter's default of 50 steps.
    grid = samplers.ddim_timesteps(1000, 200)[::-1]
    same, nfe, _ = _run_with_oracle("ddim", timesteps=grid)
    assert nfe == 200
    np.testing.assert_array_equal(same, x)


def test_annealed_langevin_overweights_the_middle_mode(exact_spread):
    # The chapter: with one step per level, annealed Langevin "lags behind the levels it
    # anneals through and puts too much mass in the middle mode", even with the exact score.
    x, nfe, counted = _run_with_oracle("annealed_langevin")
    assert nfe == counted == 1001
    weights = mixture.mode_weights(MIXTURE, x)
    assert weights[1] - MIXTURE.weights[1] > exact_spread["weight"][1]
    assert _errors(x, exact_spread)[1] > exact_spread["w1_ratio"]


@pytest.mark.parametrize("u", [0.2, 0.5, 0.8])
def test_oracle_net_is_the_conditional_mean_of_the_v_target(u):
    # E[v | z] is the best v-prediction, so its residual has mean zero and is
    # uncorrelated with any function of z: with z itself and with the prediction.
    sched = mixture.make_schedule(config.pick(mixture.RECIPE, "cpu"))
    oracle = mixture.oracle_net(sched)
    n = 200_000
    k_x, k_eps = jax.random.split(jax.random.key(3))
    x0 = mixture.standardise(MIXTURE.sample(k_x, n))
    eps = jax.random.normal(k_eps, (n, 1))
    uu = jnp.full((n,), u)
    ab = sched.alpha_bar_at(uu)[:, None]
    z = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
    v = jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0
    pred = oracle(z, uu)
    resid = np.asarray(v - pred, np.float64)[:, 0]
    assert abs(resid.mean()) < 0.01
    for f in (np.asarray(z)[:, 0], np.asarray(pred)[:, 0]):
        assert abs(np.corrcoef(resid, f)[0, 1]) < 0.01


def test_oracle_net_rejects_bad_arguments():
    sched = mixture.make_schedule(config.pick(mixture.RECIPE, "cpu"))
    with pytest.raises(TypeError, match="schedule"):
        mixture.oracle_net("cosine")
    with pytest.raises(TypeError, match="mix"):
        mixture.oracle_net(sched, mix=None)
    with pytest.raises(ValueError, match="z"):
        mixture.oracle_net(sched)(jnp.zeros((4,)), jnp.zeros((4,)))


class Stop(Exception):
    pass


def test_mixture_recipe_and_bench_use_the_ema_warmup(monkeypatch):
    from diffbook import bench, train

    for name in ("cpu", "accelerator"):
        assert mixture.RECIPE[name]["ema_warmup"] is True
    seen = {}

    def spy(*args, **kwargs):  # record what the bench asks for, then stop: no training
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(train, "fit", spy)
    with pytest.raises(Stop):
        bench.main(["mixture", "--config", "cpu", "--train-steps", "4", "--num-samples", "64"])
    assert seen["ema_warmup"] is True and seen["ema_decay"] == 0.999
