"""Few-step generation checked against flows solved by hand.

For data x1 ~ N(m, s^2 I), noise x0 ~ N(0, I) and the book's path
x_t = (1 - t) x0 + t x1, x_t is Gaussian with mean t m and variance
var_t = (1 - t)^2 + t^2 s^2 (per coordinate), and the marginal velocity
E[x1 - x0 | x_t] is
    v(x, t) = m + (t s^2 - (1 - t)) / var_t * (x - t m) = m + var_t' / (2 var_t) * (x - t m).
With y = x - t m the ODE reads dy/dt = var_t' / (2 var_t) y, so y grows like sqrt(var_t):
the flow map from time r to time t is affine,
    phi_{r->t}(z) = t m + sqrt(var_t / var_r) (z - r m),
the ODE carries noise x0 to m + s x0 at t = 1, and the average velocity over [r, t]
of the path through z at r is u(z, r, t) = (phi_{r->t}(z) - z) / (t - r).
For a point mass (s = 0, every x1 = m) the paths are straight lines to m.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffbook import few_step

M, S = 0.5, 2.0  # s != 1: the paths are curved


def _col(t, x):
    """Times (B,) (or a scalar) shaped to broadcast over x's sample dimensions."""
    return jnp.reshape(t, (-1,) + (1,) * (x.ndim - 1))


def var(t, s=S):
    return (1 - t) ** 2 + t**2 * s**2


def exact_velocity(x, t, m=M, s=S):
    t = _col(t, x)
    return m + (t * s**2 - (1 - t)) / var(t, s) * (x - t * m)


def flow_map(z, r, t, m=M, s=S):
    r, t = _col(r, z), _col(t, z)
    return t * m + jnp.sqrt(var(t, s) / var(r, s)) * (z - r * m)


def exact_average_velocity(z, r, t, m=M, s=S):
    """u(z, r, t); the instantaneous velocity where r = t (no 0/0 in either branch)."""
    gap = _col(t - r, z)
    tiny = jnp.abs(gap) < 1e-6
    safe = jnp.where(tiny, 1.0, gap)
    return jnp.where(tiny, exact_velocity(z, r, m, s), (flow_map(z, r, t, m, s) - z) / safe)


def point_mass_velocity(x, t):
    return exact_velocity(x, t, s=0.0)


def point_mass_average_velocity(z, r, t):
    return exact_average_velocity(z, r, t, s=0.0)


X0 = jax.random.normal(jax.random.key(0), (64, 3))
ENDPOINT = M + S * X0  # where the exact ODE carries X0


def rms(a, b):
    return float(jnp.sqrt(jnp.mean((a - b) ** 2)))


def error_ratios(solver, steps, **kw):
    errors = [rms(solver(exact_velocity, X0, n, **kw)[0], ENDPOINT) for n in steps]
    return np.array(errors[:-1]) / np.array(errors[1:])


# ---------------------------------------------------------------- solvers


def test_the_closed_form_flow_map_solves_the_ode():
    """The reference itself: a fine Tsit5 solution matches phi_{0->1}."""
    from diffbook.flow import velocity_field
    from diffbook.samplers import ode_solve

    x, _ = ode_solve(velocity_field(exact_velocity), X0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x, ENDPOINT, atol=1e-4)
    np.testing.assert_allclose(flow_map(X0, 0.0, 1.0), ENDPOINT, atol=1e-6)


def test_euler_is_first_order():
    ratios = error_ratios(few_step.euler, [16, 32, 64])
    assert np.all((ratios > 1.8) & (ratios < 2.2)), ratios


def test_heun_is_second_order():
    ratios = error_ratios(few_step.heun, [8, 16, 32])
    assert np.all((ratios > 3.0) & (ratios < 5.0)), ratios


def test_midpoint_is_at_least_second_order():
    # About 8 here: the leading error term of the midpoint rule cancels for this linear
    # field (on a nonlinear one, sin(2x) + t x, it is 3.6 to 3.9, second order).
    ratios = error_ratios(few_step.midpoint, [8, 16, 32])
    assert np.all(ratios > 3.0), ratios


def test_dpm_solver_2m_is_second_order_on_the_whole_path():
    # log(steps) / steps^2 (see the docstring): 3.3 to 3.5 rather than 4.
    ratios = error_ratios(few_step.dpm_solver_2m, [16, 32, 64])
    assert np.all((ratios > 3.0) & (ratios < 5.0)), ratios


def test_dpm_solver_2m_is_second_order_inside_the_interval():
    a, b = 0.1, 0.9
    exact = flow_map(X0, a, b)
    errors = [
        rms(few_step.dpm_solver_2m(exact_velocity, X0, times=np.linspace(a, b, n + 1))[0], exact)
        for n in (16, 32, 64)
    ]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 3.0) & (ratios < 5.0)), ratios


def test_one_step_of_a_plain_solver_gives_the_mean():
    """x0 + v(x0, 0) = E[x1] for the exact field: every noise goes to the mean."""
    for solver in (few_step.euler, few_step.dpm_solver_2m):
        x, _ = solver(exact_velocity, X0, 1)
        np.testing.assert_allclose(x, jnp.full_like(X0, M), atol=1e-5)


def test_dpm_solver_first_order_steps_are_euler_steps():
    # With two steps both are first order (the first, and the last, which ends at t = 1).
    x_dpm, _ = few_step.dpm_solver_2m(exact_velocity, X0, 2)
    x_euler, _ = few_step.euler(exact_velocity, X0, 2)
    np.testing.assert_allclose(x_dpm, x_euler, atol=1e-5)


def test_dpm_solver_beats_euler_at_the_same_cost():
    for n in (4, 8):
        dpm = rms(few_step.dpm_solver_2m(exact_velocity, X0, n)[0], ENDPOINT)
        eul = rms(few_step.euler(exact_velocity, X0, n)[0], ENDPOINT)
        assert dpm < eul, (n, dpm, eul)


def test_a_given_grid_equals_the_uniform_one():
    x_steps, n_steps = few_step.dpm_solver_2m(exact_velocity, X0, 8)
    x_times, n_times = few_step.dpm_solver_2m(exact_velocity, X0, times=np.linspace(0, 1, 9))
    np.testing.assert_allclose(x_steps, x_times, atol=1e-6)
    assert n_steps == n_times == 8


@pytest.mark.parametrize(
    "name, per_step", [("euler", 1), ("heun", 2), ("midpoint", 2), ("dpm_solver_2m", 1)]
)
def test_nfe_counts_the_evaluations_made(name, per_step):
    calls = []

    def counted(x, t):  # one callback per evaluation, when it runs
        jax.debug.callback(lambda: calls.append(1))
        return exact_velocity(x, t)

    x, nfe = few_step.SOLVERS[name](counted, X0, 5)
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == 5 * per_step == len(calls)


@pytest.mark.parametrize("name", sorted(few_step.SOLVERS))
def test_solvers_refuse_bad_arguments(name):
    solver = few_step.SOLVERS[name]
    with pytest.raises(ValueError, match="steps"):
        solver(exact_velocity, X0, 0)
    with pytest.raises(TypeError, match="steps"):
        solver(exact_velocity, X0, 2.0)
    with pytest.raises(ValueError, match="x0"):
        solver(exact_velocity, jnp.zeros(()), 2)
    with pytest.raises(ValueError, match="model"):
        solver(lambda x, t: x[:, :1], X0, 2)
    with pytest.raises(TypeError, match="model"):
        solver("not a model", X0, 2)


def test_dpm_solver_refuses_a_bad_grid():
    for times in ([0.0, 0.5, 0.5, 1.0], [0.5, 0.2], [0.0, 1.5], [0.3]):
        with pytest.raises(ValueError, match="times"):
            few_step.dpm_solver_2m(exact_velocity, X0, times=times)
    with pytest.raises(ValueError, match="steps and times"):
        few_step.dpm_solver_2m(exact_velocity, X0, 4, times=[0.0, 1.0])
    with pytest.raises(ValueError, match="steps and times"):
        few_step.dpm_solver_2m(exact_velocity, X0)


# ---------------------------------------------------------------- optimal transport


def cost(x0, x1):
    return float(np.sum((np.asarray(x0) - np.asarray(x1)) ** 2))


def test_ot_pairs_are_a_permutation_with_the_brute_force_optimum():
    k0, k1 = jax.random.split(jax.random.key(1))
    x0 = jax.random.normal(k0, (5, 2, 2, 1))
    x1 = 2.0 + jax.random.normal(k1, (5, 2, 2, 1))
    same, paired, perm = few_step.minibatch_ot_pairs(x0, x1, return_index=True)
    assert same is x0
    assert sorted(perm.tolist()) == list(range(5))
    np.testing.assert_array_equal(paired, np.asarray(x1)[perm])
    best = min(cost(x0, np.asarray(x1)[list(p)]) for p in itertools.permutations(range(5)))
    assert cost(x0, paired) == pytest.approx(best, rel=1e-6)
    assert cost(x0, paired) <= cost(x0, x1)


def test_ot_pairs_lower_the_cost_of_a_larger_batch():
    k0, k1 = jax.random.split(jax.random.key(2))
    x0 = jax.random.normal(k0, (128, 8, 8, 1))
    x1 = jax.random.normal(k1, (128, 8, 8, 1))
    _, paired = few_step.minibatch_ot_pairs(x0, x1)
    assert sorted(map(tuple, np.asarray(paired).reshape(128, -1))) == sorted(
        map(tuple, np.asarray(x1).reshape(128, -1))
    )
    assert cost(x0, paired) < 0.95 * cost(x0, x1)


def test_ot_pairs_refuse_mismatched_batches():
    with pytest.raises(ValueError, match="x1"):
        few_step.minibatch_ot_pairs(jnp.zeros((4, 2)), jnp.zeros((5, 2)))
    with pytest.raises(TypeError, match="x0"):
        few_step.minibatch_ot_pairs([[0.0]], jnp.zeros((1, 1)))


# ---------------------------------------------------------------- straightness


def test_a_point_mass_flows_in_straight_lines():
    result = few_step.straightness(point_mass_velocity, X0, 16)
    assert float(result.straightness) < 1e-8
    assert float(result.length_ratio) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(result.x, jnp.full_like(X0, M), atol=1e-5)


def test_gaussian_data_with_another_spread_flows_in_curves():
    result = few_step.straightness(exact_velocity, X0, 64)
    assert float(result.straightness) > 0.1
    assert float(result.length_ratio) > 1.01
    np.testing.assert_allclose(result.x, few_step.euler(exact_velocity, X0, 64)[0], atol=1e-5)


def test_straightness_refuses_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        few_step.straightness(exact_velocity, X0, 0)
    with pytest.raises(ValueError, match="model"):
        few_step.straightness(lambda x, t: x.sum(1), X0, 4)


# ---------------------------------------------------------------- MeanFlow


R = jnp.linspace(0.05, 0.6, X0.shape[0])
T = jnp.linspace(0.3, 0.95, X0.shape[0])  # r < t for every sample


def test_the_meanflow_identity_holds_on_the_exact_flow():
    """u(z_r, r, t) = v(z_r, r) + (t - r) d/dr u(z_r, r, t), the derivative along the path."""
    z = flow_map(X0, 0.0, R)  # points on the paths, at time r
    v = exact_velocity(z, R)
    u, du_dr = jax.jvp(exact_average_velocity, (z, R, T), (v, jnp.ones_like(R), jnp.zeros_like(T)))
    np.testing.assert_allclose(u, v + _col(T - R, z) * du_dr, atol=1e-4)
    # and the average velocity is what it says: one jump lands on the path
    np.testing.assert_allclose(z + _col(T - R, z) * u, flow_map(X0, 0.0, T), atol=1e-5)


def test_the_identity_in_the_papers_time_is_the_same_identity():
    """Turn time round (tau = 1 - t): u_p = v_p - (t_p - r_p) du_p/dt_p along (v_p, 0, 1)."""

    def v_paper(z, tau):
        return -exact_velocity(z, 1 - tau)

    def u_paper(z, r_p, t_p):  # z at the paper's later (noisier) time t_p
        return -exact_average_velocity(z, 1 - t_p, 1 - r_p)

    r_p, t_p = 1 - T, 1 - R
    z = flow_map(X0, 0.0, 1 - t_p)
    v = v_paper(z, t_p)
    u, du_dt = jax.jvp(u_paper, (z, r_p, t_p), (v, jnp.zeros_like(r_p), jnp.ones_like(t_p)))
    np.testing.assert_allclose(u, v - _col(t_p - r_p, z) * du_dt, atol=1e-4)


X1 = M + S * jax.random.normal(jax.random.key(3), (256, 3))


@pytest.mark.parametrize("power", [0.0, 1.0])
def test_meanflow_loss_vanishes_at_the_exact_average_velocity(power):
    key = jax.random.key(4)
    # With the exact marginal velocity in the target (distillation from a perfect teacher):
    loss = few_step.meanflow_loss(
        exact_average_velocity, X1, key, velocity=exact_velocity, power=power
    )
    assert float(loss) < 1e-6
    # From data, the conditional velocity x1 - x0 is the marginal one only for a point mass.
    point_mass = jnp.full_like(X1, M)
    loss = few_step.meanflow_loss(point_mass_average_velocity, point_mass, key, power=power)
    assert float(loss) < 1e-6


def test_meanflow_loss_is_clearly_positive_for_the_instantaneous_velocity():
    key = jax.random.key(4)
    wrong = lambda z, r, t: exact_velocity(z, r)  # v in place of u: ignores the curvature
    loss = few_step.meanflow_loss(
        wrong, X1, key, velocity=exact_velocity, equal_fraction=0.0, power=0.0
    )
    assert float(loss) > 0.1
    # where every interval is empty (r = t) the instantaneous velocity is right
    loss = few_step.meanflow_loss(
        wrong, X1, key, velocity=exact_velocity, equal_fraction=1.0, power=0.0
    )
    assert float(loss) < 1e-6


def test_meanflow_loss_trains_a_flax_network():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(5, 3, rngs=rngs)

        def __call__(self, z, r, t):
            return self.lin(jnp.concatenate([z, r[:, None], t[:, None]], axis=1))

    net = Net(nnx.Rngs(0))
    loss, grads = nnx.value_and_grad(
        lambda net: few_step.meanflow_loss(net, X1, jax.random.key(5))
    )(net)
    leaves = jax.tree.leaves(grads)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_meanflow_times_are_ordered_and_collapsed_as_asked():
    r, t = few_step.meanflow_times(jax.random.key(6), 4000, equal_fraction=0.25)
    assert r.shape == t.shape == (4000,)
    assert bool(jnp.all((0 < r) & (r <= t) & (t < 1)))
    assert float(jnp.mean(r == t)) == pytest.approx(0.25, abs=0.03)
    with pytest.raises(ValueError, match="equal_fraction"):
        few_step.meanflow_times(jax.random.key(6), 4, equal_fraction=1.5)


@pytest.mark.parametrize("steps", [1, 3])
def test_meanflow_sampling_with_the_exact_average_velocity_is_exact(steps):
    x, nfe = few_step.flow_map_sample(exact_average_velocity, X0, steps)
    np.testing.assert_allclose(x, ENDPOINT, atol=1e-5)
    assert nfe == steps


def test_meanflow_refuses_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        few_step.flow_map_sample(exact_average_velocity, X0, 0)
    with pytest.raises(ValueError, match="model"):
        few_step.flow_map_sample(lambda z, r, t: z[:, :2], X0, 1)
    with pytest.raises(ValueError, match="eps"):
        few_step.meanflow_loss(exact_average_velocity, X1, jax.random.key(0), eps=0.0)
    with pytest.raises(ValueError, match="power"):
        few_step.meanflow_loss(exact_average_velocity, X1, jax.random.key(0), power=-1.0)
    with pytest.raises(ValueError, match="velocity"):
        few_step.meanflow_loss(
            exact_average_velocity, X1, jax.random.key(0), velocity=lambda z, r: z[:, :1]
        )


# ---------------------------------------------------------------- teacher paths and students


def test_teacher_paths_are_the_solvers_states_on_its_grid():
    paths = few_step.teacher_paths(exact_velocity, X0, 8)
    assert paths.shape == (64, 9, 3)
    np.testing.assert_array_equal(paths[:, 0], X0)
    end, nfe = few_step.dpm_solver_2m(exact_velocity, X0, 8)
    np.testing.assert_allclose(paths[:, -1], end, rtol=1e-6, atol=1e-6)
    # Each state is the solver's after k steps: solving on the first k grid steps alone
    # (a shorter grid) reaches the same point.
    for k in (1, 3, 6):
        part, _ = few_step.dpm_solver_2m(exact_velocity, X0, times=np.arange(k + 1) / 8)
        np.testing.assert_allclose(paths[:, k], part, rtol=1e-5, atol=1e-5)
    # On a fine grid the paths follow the exact flow map.
    fine = few_step.teacher_paths(exact_velocity, X0, 64)
    for k in (16, 32, 64):
        assert (
            rms(fine[:, k], flow_map(X0, jnp.zeros(64), jnp.full(64, k / 64))) < 5e-3
        )  # one grid step off: 0.02


def test_teacher_paths_refuse_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        few_step.teacher_paths(exact_velocity, X0, 0)
    with pytest.raises(ValueError, match="model"):
        few_step.teacher_paths(lambda x, t: x[:, :2], X0, 4)


def exact_paths(k):
    """The exact flow's states at t = 0, 1/k, ..., 1 from X0, shape (64, k + 1, 3)."""
    times = jnp.linspace(0.0, 1.0, k + 1)
    return jnp.stack([flow_map(X0, jnp.zeros(64), jnp.full(64, t)) for t in times], axis=1)


@pytest.mark.parametrize("k", [1, 4, 16])
def test_flow_map_distillation_loss_vanishes_at_the_exact_flow_map(k):
    loss = few_step.flow_map_distillation_loss(
        exact_average_velocity, exact_paths(k), jax.random.key(1)
    )
    assert float(loss) < 1e-9


def test_flow_map_distillation_loss_is_positive_for_the_velocity():
    """u = v is the right jump only for vanishing gaps: on curved paths the loss is clearly > 0."""
    velocity = lambda z, r, t: exact_velocity(z, r)  # noqa: E731
    loss = few_step.flow_map_distillation_loss(velocity, exact_paths(16), jax.random.key(1))
    assert float(loss) > 0.05


def test_flow_map_distillation_draws_every_pair_of_later_grid_times():
    """The loss sees (t_a, t_b) with a < b <= K, every such pair, roughly as often as drawn."""
    k, seen = 4, []

    def spy(z, r, t):
        seen.append((r, t))
        return jnp.zeros_like(z)

    paths = jnp.zeros((4096, k + 1, 1))
    few_step.flow_map_distillation_loss(spy, paths, jax.random.key(2))
    r, t = (np.round(np.asarray(a) * k).astype(int) for a in seen[0])
    assert np.all(r < t) and r.min() == 0 and t.max() == k
    pairs = {(a, b) for a, b in zip(r, t, strict=True)}
    assert pairs == {(a, b) for a in range(k) for b in range(a + 1, k + 1)}
    # a is uniform over 0..k-1
    np.testing.assert_allclose(np.bincount(r, minlength=k) / len(r), 1 / k, atol=0.03)


def test_reflow_loss_vanishes_for_the_straight_velocity_of_its_pairs():
    x0 = jax.random.normal(jax.random.key(3), (32, 4))
    shift = jnp.arange(4.0)
    pairs = (x0, x0 + shift)  # every pair differs by the same vector
    exact = few_step.reflow_loss(
        lambda x, t: jnp.broadcast_to(shift, x.shape), pairs, jax.random.key(4)
    )
    zero = few_step.reflow_loss(lambda x, t: jnp.zeros_like(x), pairs, jax.random.key(4))
    assert float(exact) < 1e-12
    np.testing.assert_allclose(float(zero), float(jnp.mean(shift**2)), rtol=1e-6)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_meanflow_adaptive_weight_is_the_papers(power):
    """With u = exact + c, every image misses its target by exactly c (the exact average
    velocity satisfies the identity, and c adds nothing to du/dr), so every image's
    squared error is d = |c|^2 and the loss is d / (d + eps)^power."""
    c = jnp.array([0.3, -0.2, 0.1])
    eps = 1e-3

    def shifted(z, r, t):
        return exact_average_velocity(z, r, t) + c

    loss = few_step.meanflow_loss(
        shifted, X1, jax.random.key(7), velocity=exact_velocity, power=power, eps=eps
    )
    d = float(jnp.sum(c**2))
    assert float(loss) == pytest.approx(d / (d + eps) ** power, rel=1e-4)


def test_meanflow_target_is_held_fixed_by_the_stop_gradient():
    """For u = exact + theta z the target moves with theta (through du/dr); the gradient
    must treat it as a constant: d loss / d theta = mean 2 theta (z - (t - r) v) . z with the
    stop-gradient, mean 2 theta |z - (t - r) v|^2 without."""
    key, theta = jax.random.key(8), 0.7

    def loss(theta):
        model = lambda z, r, t: exact_average_velocity(z, r, t) + theta * z  # noqa: E731
        return few_step.meanflow_loss(
            model, X1, key, velocity=exact_velocity, power=0.0, equal_fraction=0.0
        )

    grad = float(jax.grad(loss)(theta))
    # the draws that meanflow_loss makes from its key
    k_times, k_noise = jax.random.split(key)
    r, t = few_step.meanflow_times(k_times, X1.shape[0], equal_fraction=0.0)
    x0 = jax.random.normal(k_noise, X1.shape, X1.dtype)
    z = (1 - r[:, None]) * x0 + r[:, None] * X1
    miss = z - (t - r)[:, None] * exact_velocity(z, r)  # (u - target) / theta
    with_stop = float(jnp.mean(2 * theta * jnp.sum(miss * z, axis=1)))
    without = float(jnp.mean(2 * theta * jnp.sum(miss**2, axis=1)))
    assert abs(with_stop - without) > 0.1 * abs(with_stop)  # the test can tell them apart
    assert grad == pytest.approx(with_stop, rel=1e-3)


def test_meanflow_times_use_the_mean_in_the_books_time():
    """The paper's mean of -0.4 (noise at 1) is +0.4 here: logit(r) and logit(t) are the
    smaller and larger of two draws of N(0.4, 1), so their average is 0.4 on average."""
    r, t = few_step.meanflow_times(jax.random.key(9), 8000, equal_fraction=0.0)
    logit = lambda p: jnp.log(p / (1 - p))  # noqa: E731
    assert float(jnp.mean((logit(r) + logit(t)) / 2)) == pytest.approx(0.4, abs=0.05)
    assert float(jnp.mean(r)) < 0.5 < float(jnp.mean(t))
