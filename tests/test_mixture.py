import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffbook import ddpm, mixture, samplers
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
        xt = sched.add_noise(x0, jax.random.normal(jax.random.key(t), x0.shape),
                             jnp.full((x0.shape[0],), t))
        noised = MIXTURE.noised(ab)
        assert abs(float(xt.mean()) - noised.mean) < 0.03
        assert abs(float(xt.std()) - noised.std) < 0.03
        # The traced version of its score agrees with autodiff of its density.
        x = jnp.linspace(-6, 8, 15)
        np.testing.assert_allclose(MIXTURE.noised_score(x, ab), noised.score(x), rtol=1e-4,
                                   atol=1e-5)
    assert MIXTURE.noised(1.0) == MIXTURE


def test_mode_weights_of_exact_draws_are_the_weights():
    x = MIXTURE.sample(jax.random.key(1), 100_000)
    np.testing.assert_allclose(mixture.mode_weights(MIXTURE, x), MIXTURE.weights, atol=0.005)
    # All samples in the middle mode: weight 1 there.
    w = mixture.mode_weights(MIXTURE, np.zeros(10))
    assert w[1] > 0.98   # the wide component at 6 still claims 1.6% of x = 0


def test_wasserstein1_measures_a_shift_and_shrinks_with_sample_size():
    g = GaussianMixture1D((1.0,), (0.0,), (1.0,))
    x = g.sample(jax.random.key(2), 50_000)
    assert abs(mixture.wasserstein1(g, x + 0.5) - 0.5) < 0.02
    assert mixture.wasserstein1(g, x) < 0.02
    small, large = (mixture.w1_reference(MIXTURE, n, repeats=10) for n in (1000, 16000))
    assert 2.5 < small / large < 6        # about sqrt(16) = 4


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
    grads = nnx.grad(lambda m: ddpm.diffusion_loss(sched, m, x, jax.random.key(1),
                                                   prediction="v"))(model)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0, path


def test_standardised_coordinates_round_trip():
    x = MIXTURE.sample(jax.random.key(4), 100_000)
    z = mixture.standardise(x)
    assert z.shape == (100_000, 1)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    np.testing.assert_allclose(mixture.unstandardise(z), x, atol=1e-4)
    np.testing.assert_allclose(mixture.STANDARD.weights, MIXTURE.weights)


@pytest.mark.parametrize("name", sorted(mixture.SAMPLERS))
def test_every_sampler_gets_the_mode_weights_right_with_the_exact_score(name):
    # The oracle network: the exact v of the standardised mixture at every level.
    # Any error left is the sampler's own.
    sched = mixture.make_schedule(mixture.pick_recipe("cpu"))

    oracle = mixture.oracle_net(sched)

    x, nfe = jax.jit(lambda k: mixture.SAMPLERS[name](sched, oracle, k, 4000))(jax.random.key(5))
    q = mixture.quality(MIXTURE, mixture.unstandardise(x))
    assert int(nfe) > 0
    assert q["weight_error"] < 0.03, (name, q)
    assert q["w1_ratio"] < 2.5, (name, q)


@pytest.mark.parametrize("u", [0.2, 0.5, 0.8])
def test_oracle_net_is_the_conditional_mean_of_the_v_target(u):
    # E[v | z] is the best v-prediction, so its residual has mean zero and is
    # uncorrelated with any function of z: with z itself and with the prediction.
    sched = mixture.make_schedule(mixture.pick_recipe("cpu"))
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
    sched = mixture.make_schedule(mixture.pick_recipe("cpu"))
    with pytest.raises(TypeError, match="schedule"):
        mixture.oracle_net("cosine")
    with pytest.raises(TypeError, match="mix"):
        mixture.oracle_net(sched, mix=None)
    with pytest.raises(ValueError, match="z"):
        mixture.oracle_net(sched)(jnp.zeros((4,)), jnp.zeros((4,)))
