import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffbook import ddpm
from diffbook.schedules import NoiseSchedule

SCHEDULES = [NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000), NoiseSchedule.cosine(50)]


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: f"{s.name}{s.num_timesteps}")
def test_alpha_bar_is_monotone_in_unit_interval(sched):
    ab = np.asarray(sched.alpha_bars)
    assert np.all(np.diff(ab) < 0) and ab[0] < 1 and ab[-1] > 0
    assert ab[0] > 0.99 and ab[-1] < 0.01  # starts near data, ends near noise
    # add_noise's one-shot x_t is the law of t + 1 single steps
    # x <- sqrt(1 - beta) x + sqrt(beta) z: follow the mean and variance of x0 = 1 step by step.
    betas = np.asarray(sched.betas, np.float64)
    mean, var = np.empty_like(betas), np.empty_like(betas)
    m, v = 1.0, 0.0
    for t, beta in enumerate(betas):
        m, v = np.sqrt(1 - beta) * m, (1 - beta) * v + beta
        mean[t], var[t] = m, v
    t = jnp.arange(sched.num_timesteps)
    ones = jnp.ones((sched.num_timesteps, 1))
    np.testing.assert_allclose(sched.add_noise(ones, 0 * ones, t)[:, 0], mean, rtol=1e-5)
    # (1 - alpha_bar in float32 is good to about 1e-7 in absolute terms.)
    np.testing.assert_allclose(
        sched.add_noise(0 * ones, ones, t)[:, 0] ** 2, var, rtol=1e-5, atol=1e-7
    )


def test_cosine_betas_are_capped_where_the_formula_reaches_one():
    # The uncapped last beta, 1 - f(1) / f((T-1)/T) with f(1) = cos(pi/2)^2 ~ 4e-33, is 1
    # in float64: alpha_bar would be 0 at T - 1 and the schedule unusable.
    for T in (1000, 50):
        u = np.arange(T + 1) / T
        f = np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
        uncapped = 1 - f[1:] / f[:-1]
        assert uncapped[-1] >= 0.999 and np.all(uncapped[:-1] < 0.999)
        with pytest.raises(ValueError, match="betas"):
            NoiseSchedule.from_betas(uncapped)
        for cap in (0.999, 0.99):
            sched = NoiseSchedule.cosine(T, max_beta=cap)
            betas = np.asarray(sched.betas, np.float64)
            assert betas.max() <= np.float32(cap) and betas[-1] == np.float32(cap)
            np.testing.assert_allclose(betas[:-1], uncapped[:-1], rtol=1e-5)
            # The cap alone sets the last alpha_bar: the formula's alpha_bar one step
            # earlier, f((T-1)/T) / f(0), times 1 - cap.
            np.testing.assert_allclose(sched.alpha_bars[-1], f[-2] / f[0] * (1 - cap), rtol=1e-4)
    assert abs(float(NoiseSchedule.cosine(1000).alpha_bars[-1]) - 2.43e-9) < 0.01e-9


def test_cosine_schedule_follows_its_formula_and_is_not_clipped():
    sched = NoiseSchedule.cosine(1000)
    u = (np.arange(1, 1001) / 1000 + 0.008) / 1.008
    expected = np.cos(u * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(sched.alpha_bars[:-5], expected[:-5], rtol=1e-4, atol=1e-6)
    assert float(sched.betas.max()) > 0.5  # clipping to 0.02 would cap this


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_prediction_conversions_invert_each_other(prediction):
    sched = NoiseSchedule.cosine(100)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(k1, (7, 4, 4, 1), minval=-1, maxval=1)
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.array([0, 5, 20, 50, 80, 98, 99])
    xt = sched.add_noise(x0, eps, t)
    target = {"epsilon": eps, "x0": x0, "v": sched.velocity(x0, eps, t)}[prediction]
    x0_back, eps_back = sched.to_x0_eps(target, xt, t, prediction)
    np.testing.assert_allclose(x0_back, x0, atol=2e-3)
    np.testing.assert_allclose(eps_back, eps, atol=2e-3)


def test_ddim_with_eta_one_is_the_ddpm_posterior():
    sched = NoiseSchedule.linear(100)
    x0 = jnp.full((1, 3), 0.3)
    eps = jnp.array([[0.5, -1.0, 2.0]])
    for t in [1, 10, 60, 99]:
        xt = sched.add_noise(x0, eps, jnp.array([t]))
        mean, var = sched.posterior(x0, xt, jnp.array([t]))
        # eta = 1, t_prev = t - 1: compare the moments of many draws with the posterior's.
        # (the network's output is the exact eps, so its x0 is exactly x0)
        draws = jax.vmap(
            lambda k, t=t, xt=xt: sched.ddim_step(eps, t, t - 1, xt, k, eta=1.0).prev_sample
        )(jax.random.split(jax.random.key(t), 20000))
        np.testing.assert_allclose(
            draws.mean(0), mean, atol=3 * float(jnp.sqrt(var.max())) / 100 + 1e-6
        )
        np.testing.assert_allclose(
            draws.var(0), jnp.broadcast_to(var, draws.var(0).shape), rtol=0.05
        )


def _conditional(betas, x0, xt, t):
    """q(x_{t-1} | x_t, x0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x0,
    in float64: x_{t-1} ~ N(sqrt(ab_prev) x0, 1 - ab_prev), x_t = sqrt(1 - beta_t) x_{t-1}
    + sqrt(beta_t) z."""
    betas = np.asarray(betas, np.float64)
    ab_prev = np.prod(1 - betas[:t])  # 1 at t = 0
    a = np.sqrt(1 - betas[t])
    var_prev = 1 - ab_prev
    cov = a * var_prev  # Cov(x_{t-1}, x_t)
    var_t = a**2 * var_prev + betas[t]  # Var(x_t)
    mean = np.sqrt(ab_prev) * x0 + cov / var_t * (xt - a * np.sqrt(ab_prev) * x0)
    return mean, var_prev - cov**2 / var_t


@pytest.mark.parametrize("sched", SCHEDULES[:2], ids=lambda s: s.name)
def test_posterior_is_the_gaussian_conditional_of_the_forward_process(sched):
    betas = np.linspace(1e-4, 0.02, 1000) if sched.name == "linear" else np.asarray(sched.betas)
    x0 = np.array([[-0.9], [0.2], [1.0]])
    xt = np.array([[0.5], [-1.3], [2.0]])
    for t in (0, 1, 2, 10, 400, 998, 999):
        mean, var = sched.posterior(
            jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.full((3,), t)
        )
        mean_ref, var_ref = _conditional(betas, x0, xt, t)
        # float32 accuracy: forming 1 - alpha_bar in float32 near t = 0 would miss this.
        np.testing.assert_allclose(var.ravel(), np.full(3, var_ref), rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(mean, mean_ref, rtol=1e-5, atol=1e-6)


def test_impossible_settings_raise():
    with pytest.raises(ValueError, match="num_timesteps"):
        NoiseSchedule.linear(0)
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule.linear(10, beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        NoiseSchedule.from_betas(np.array([0.1, 1.0]))
    with pytest.raises(ValueError, match="max_beta"):
        NoiseSchedule.cosine(10, max_beta=1.0)
    sched = NoiseSchedule.linear(10)
    with pytest.raises(ValueError, match=r"t must lie in 0..9"):
        sched.add_noise(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.array([10]))
    with pytest.raises(TypeError, match="integer"):
        sched.add_noise(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.array([0.5]))
    with pytest.raises(ValueError, match="prediction"):
        sched.to_x0_eps(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.array([1]), "score")


def test_step_is_the_posterior_draw_for_every_prediction_kind():
    sched = NoiseSchedule.linear(100)
    k1, k2 = jax.random.split(jax.random.key(3))
    x0 = jax.random.normal(k1, (5, 1))
    eps = jax.random.normal(k2, x0.shape)
    for t in (0, 1, 40, 99):
        tb = jnp.full((5,), t)
        xt = sched.add_noise(x0, eps, tb)
        mean, var = sched.posterior(x0, xt, tb)
        outputs = {"epsilon": eps, "x0": x0, "v": sched.velocity(x0, eps, tb)}
        steps = [
            sched.step(out, t, xt, jax.random.key(9), prediction=p) for p, out in outputs.items()
        ]
        for s in steps:  # the predicted x0 comes back with the step
            np.testing.assert_allclose(s.pred_x0, x0, atol=2e-4)
        steps = [s.prev_sample for s in steps]
        for s in steps[1:]:  # the same key: the same draw, whatever the network predicts
            np.testing.assert_allclose(s, steps[0], atol=2e-4)
        z = jax.random.normal(jax.random.key(9), x0.shape)
        np.testing.assert_allclose(steps[0], mean + jnp.sqrt(var) * z, atol=2e-4)
        if t == 0:  # the last step adds no noise
            assert float(jnp.max(var)) == 0.0


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: f"{s.name}{s.num_timesteps}")
def test_continuous_time_view_matches_the_grid(sched):
    T = sched.num_timesteps
    u = jnp.arange(T) / T
    np.testing.assert_allclose(sched.alpha_bar_at(u), sched.alpha_bars, rtol=1e-5)
    # beta(u) integrates to -log alpha_bar between grid points.
    i = np.arange(T - 1)
    lhs = np.asarray(sched.beta_at((i + 0.5) / T)) / T
    np.testing.assert_allclose(
        lhs, -np.diff(np.log(np.asarray(sched.alpha_bars, np.float64))), rtol=1e-3
    )


def test_linear_schedule_is_the_vp_sde_of_song_et_al():
    # beta(u) = T * betas on the grid (to first order): 0.1 rising linearly to 20.
    sched = NoiseSchedule.linear(1000)
    i = np.arange(998)
    np.testing.assert_allclose(
        sched.beta_at((i + 0.5) / 1000), 1000 * sched.betas[i + 1], rtol=0.011
    )
    np.testing.assert_allclose(
        sched.beta_at(jnp.array([0.0, 0.5, 0.99])),
        0.1 + 19.9 * np.array([0.0, 0.5, 0.99]),
        rtol=0.01,
        atol=0.05,
    )


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_clipping_keeps_x0_in_range_and_eps_consistent_with_it(prediction):
    # A network whose x0 lies far outside [-1, 1] for some samples and inside for others.
    sched = NoiseSchedule.cosine(100)
    t = 70
    tb = jnp.full((6,), t)
    x0_net = jnp.array([[-3.0], [-1.5], [-0.4], [0.0], [0.9], [2.5]])
    eps_net = jnp.array([[0.3], [-1.0], [1.2], [-0.7], [0.1], [0.5]])
    x = sched.add_noise(x0_net, eps_net, tb)
    out = {"epsilon": eps_net, "x0": x0_net, "v": sched.velocity(x0_net, eps_net, tb)}[prediction]
    x0, eps = sched.to_x0_eps(out, x, tb, prediction)
    np.testing.assert_allclose(x0, x0_net, atol=1e-5)
    np.testing.assert_allclose(eps, eps_net, atol=1e-5)

    x0, eps = sched.to_x0_eps(out, x, tb, prediction, clip_x0=True)
    np.testing.assert_allclose(x0[:, 0], [-1.0, -1.0, -0.4, 0.0, 0.9, 1.0], atol=1e-5)
    inside = np.abs(np.asarray(x0_net[:, 0])) <= 1
    np.testing.assert_allclose(eps[inside], eps_net[inside], atol=1e-5)  # untouched there
    assert np.all(np.abs(np.asarray(eps - eps_net)[~inside]) > 0.1)  # changed where clipped
    # The pair still explains x_t: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps with the clipped x0.
    np.testing.assert_allclose(sched.add_noise(x0, eps, tb), x, atol=1e-5)


# The simple loss of ddpm.diffusion_loss at the exact predictors of Gaussian data
# N(m, s^2): with a = alpha_bar, x_t = sqrt(a) x0 + sqrt(1 - a) eps is N(sqrt(a) m, a s^2 + 1 - a)
# and, given x_t, every target (eps, x0, v) is Gaussian with the variances below: the
# loss that no predictor can beat.  s = 0 is a single data point (irreducible loss 0).
def irreducible_loss(sched, prediction, s):
    a = np.asarray(sched.alpha_bars, np.float64)
    d = a * s**2 + 1 - a
    per_t = {"epsilon": a * s**2 / d, "x0": s**2 * (1 - a) / d, "v": s**2 / d}[prediction]
    return per_t.mean()  # t is uniform over the T steps


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("s", [0.0, 0.3])
def test_diffusion_loss_is_smallest_at_the_exact_predictor(prediction, s, oracle):
    sched = NoiseSchedule.cosine(200)
    m = 0.4
    x0 = m + s * jax.random.normal(jax.random.key(0), (200_000, 2))
    key = jax.random.key(1)

    def loss(net):
        return float(ddpm.diffusion_loss(sched, net, x0, key, prediction=prediction))

    exact = oracle(sched, m, s, prediction)
    best = loss(exact)
    if s == 0:
        assert best < 1e-6
    else:
        np.testing.assert_allclose(best, irreducible_loss(sched, prediction, s), rtol=0.02)
    # Any other predictor does worse; for a shift by c, by c^2 (the exact one is the
    # conditional mean, so the error it leaves is uncorrelated with the shift).
    np.testing.assert_allclose(loss(lambda x, u: exact(x, u) + 0.1) - best, 0.01, rtol=0.1)
    for wrong in (
        lambda x, u: 1.1 * exact(x, u),
        oracle(sched, m + 0.1, s, prediction),
        oracle(sched, m, s + 0.2, prediction),
        lambda x, u: jnp.zeros_like(x),
    ):
        assert loss(wrong) > best + 1e-4


# ----------------------------- the posterior in float32, and the cosine schedule's last step


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
