"""Masked diffusion against cases solved by hand.

* A product of independent per-position categoricals: the model whose logits are
  the log-marginals (whatever it sees) is exact, and for it the ELBO is tight, so
  its expectation is the exact negative log-likelihood ``sum_i -log p_i(x_i)``.
* A point mass: the model that predicts the point is exact and its loss is 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import norm

from conftest import assert_every_param_gets_a_gradient
from diffbook import data, masked
from diffbook.masked import MASK, NUM_VALUES

# ------------------------------------------------------------------ fixtures
L = 16  # a short sequence keeps the tests fast; the digits use 64


def as_output(logits, x_t):
    """``logits (L, 17)`` broadcast to ``(B, L, 17)``, formally a function of ``x_t``.

    Without the ``0 * x_t`` the output is a constant, and XLA spends seconds
    constant-folding the log-softmax of the whole batch while it compiles.
    """
    return jnp.broadcast_to(logits, (*x_t.shape, NUM_VALUES)) + 0.0 * x_t[..., None]


def factorised(length=L, seed=0):
    """Per-position marginals (length, 17), some values rare, and the exact model."""
    probs = np.random.default_rng(seed).dirichlet(np.full(NUM_VALUES, 0.5), size=length)
    probs = np.maximum(probs, 1e-4)
    probs /= probs.sum(axis=1, keepdims=True)
    logits = jnp.asarray(np.log(probs), jnp.float32)

    def model(x_t):  # ignores x_t: the positions are independent
        return as_output(logits, x_t)

    return probs, model


def draw_factorised(probs, n, seed=1):
    rng = np.random.default_rng(seed)
    cum = probs.cumsum(axis=1)
    u = rng.random((n, len(probs), 1))
    return np.minimum((u > cum[None]).sum(-1), NUM_VALUES - 1).astype(np.int32)


def exact_nll(probs, tokens):
    return -np.log(probs[np.arange(probs.shape[0]), tokens]).sum(axis=1)


def point_mass_model(point):
    """The exact model of a single sequence: all its mass on ``point``."""
    logits = jnp.where(jax.nn.one_hot(jnp.asarray(point), NUM_VALUES, dtype=bool), 0.0, -1e9)

    def model(x_t):
        return as_output(logits, x_t)

    return model


class TinyModel(nnx.Module):
    """Embedding of tokens and positions, one mixing layer over positions, logits."""

    def __init__(self, length, width=16, *, rngs):
        self.embed = nnx.Embed(NUM_VALUES + 1, width, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (length, width)))
        self.mix = nnx.Linear(length, length, rngs=rngs)
        self.out = nnx.Linear(width, NUM_VALUES, rngs=rngs)

    def __call__(self, x_t):
        h = self.embed(x_t) + self.pos[...]
        h = h + jnp.swapaxes(self.mix(jnp.swapaxes(nnx.gelu(h), 1, 2)), 1, 2)
        return self.out(h)


# -------------------------------------------------------------------- tokens
def test_digits_round_trip_through_tokens_exactly():
    images, _ = data.load_digits(split="held_out")
    tokens = masked.to_tokens(images)
    assert tokens.shape == (len(images), 64) and tokens.dtype == np.int32
    assert tokens.min() == 0 and tokens.max() == 16
    np.testing.assert_array_equal(masked.from_tokens(tokens), images)
    # The tokens are sklearn's own integer pixels, in raster order.
    from sklearn.datasets import load_digits

    raw = load_digits().images[data.split_indices("held_out")]
    np.testing.assert_array_equal(tokens, raw.reshape(len(raw), 64).astype(np.int32))


def test_tokens_refuse_what_is_not_a_digit():
    images, _ = data.load_digits(split="train")
    with pytest.raises(ValueError, match="levels"):
        masked.to_tokens(np.clip(images[:2] - 0.03, -1, 1))  # between two levels
    with pytest.raises(ValueError, match="images"):
        masked.to_tokens(images[:2, :4])
    tokens = masked.to_tokens(images[:2])
    with pytest.raises(ValueError, match="tokens must lie in 0..16"):
        masked.from_tokens(np.where(tokens == 0, MASK, tokens))
    with pytest.raises(ValueError, match="tokens must have shape"):
        masked.from_tokens(tokens[:, :10])
    with pytest.raises(TypeError, match="tokens"):
        masked.from_tokens(tokens.astype(np.float32))
    with pytest.raises(ValueError, match="tokens must lie"):
        masked.mask_tokens(tokens - 1, 0.5, jax.random.key(0))


# ------------------------------------------------------------ forward process
def test_masking_hides_each_token_with_probability_t():
    tokens = jnp.asarray(draw_factorised(factorised()[0], 2000))
    key = jax.random.key(0)
    np.testing.assert_array_equal(masked.mask_tokens(tokens, 0.0, key), tokens)
    assert bool(jnp.all(masked.mask_tokens(tokens, 1.0, key) == MASK))
    for t in (0.1, 0.5, 0.9):
        x_t = masked.mask_tokens(tokens, t, key)
        hidden = x_t == MASK
        assert abs(float(hidden.mean()) - t) < 0.01  # sd about 0.0018
        np.testing.assert_array_equal(x_t[~hidden], tokens[~hidden])
    # One time per sequence.
    t = jnp.linspace(0.0, 1.0, tokens.shape[0])
    frac = np.asarray((masked.mask_tokens(tokens, t, key) == MASK).mean(axis=1))
    half = np.asarray(t) < 0.5
    assert abs(frac[half].mean() - 0.25) < 0.02 and abs(frac[~half].mean() - 0.75) < 0.02
    with pytest.raises(ValueError, match="t must lie in"):
        masked.mask_tokens(tokens, 1.5, key)
    with pytest.raises(ValueError, match="t must be"):
        masked.mask_tokens(tokens, jnp.zeros(3), key)
    assert masked.alpha(0.25) == 0.75


def test_carry_over_keeps_unmasked_tokens_and_never_predicts_the_mask():
    _, model = factorised()
    x_t = jnp.asarray([[MASK, 3, MASK, 16] + [MASK] * (L - 4)])
    lp = masked.log_probs(model, x_t)
    assert lp.shape == (1, L, NUM_VALUES)
    assert float(lp[0, 1, 3]) == 0.0 and float(lp[0, 3, 16]) == 0.0
    assert bool(jnp.all(jnp.isneginf(jnp.delete(lp[0, 1], 3))))
    np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="logits of shape"):
        masked.log_probs(lambda x: jnp.zeros((*x.shape, NUM_VALUES + 1)), x_t)


# ---------------------------------------------------------------------- ELBO
def test_elbo_of_the_exact_factorised_model_is_the_exact_nll():
    # For independent positions the bound is tight: its expectation is the NLL.
    probs, model = factorised()
    tokens = draw_factorised(probs, 32)
    nll = exact_nll(probs, tokens)
    count = np.asarray(masked.elbo_nats(model, tokens, jax.random.key(2), 256))
    time = np.asarray(masked.elbo_nats(model, tokens, jax.random.key(3), 1024, estimator="time"))
    assert count.shape == time.shape == (32,)
    # Monte-Carlo error of the batch mean: about 0.06 nats (count), 0.13 (time); of
    # one image's count estimate about 0.34.  The tolerances are about 4 of those.
    assert abs(np.mean(count - nll)) < 0.25
    assert np.max(np.abs(count - nll)) < 1.4
    assert abs(np.mean(time - nll)) < 0.6
    # The training loss estimates the same bound, one time per row.  Its 1/t weight
    # gives it a heavy tail (a rare token masked at a small t): one batch of 8192
    # rows still spreads by about 0.4 nats, so average eight.
    rows = np.repeat(tokens, 256, axis=0)
    loss = np.mean([masked.masked_diffusion_loss(model, rows, jax.random.key(k)) for k in range(8)])
    assert abs(float(loss) - np.mean(nll)) < 0.5


def test_the_count_estimator_has_the_smaller_spread():
    probs, model = factorised()
    tokens = np.repeat(draw_factorised(probs, 1), 64, axis=0)  # one image, 64 estimates
    count = np.asarray(masked.elbo_nats(model, tokens, jax.random.key(5), 16))
    time = np.asarray(masked.elbo_nats(model, tokens, jax.random.key(5), 16, estimator="time"))
    assert count.std() < 0.7 * time.std()


def test_a_point_mass_has_loss_zero():
    point = draw_factorised(factorised()[0], 1)[0]
    model = point_mass_model(point)
    tokens = np.tile(point, (8, 1))
    assert float(masked.masked_diffusion_loss(model, tokens, jax.random.key(0))) == 0.0
    np.testing.assert_array_equal(masked.elbo_nats(model, tokens, jax.random.key(0), 4), 0.0)
    # A different sequence costs about 1e9 nats per wrong token it gets masked.
    other = (tokens + 1) % NUM_VALUES
    assert float(masked.masked_diffusion_loss(model, other, jax.random.key(0))) > 1e8


def test_loss_of_a_small_network_is_finite_and_trains_every_parameter():
    model = TinyModel(L, rngs=nnx.Rngs(0))
    tokens = draw_factorised(factorised()[0], 16)
    loss = masked.masked_diffusion_loss(model, tokens, jax.random.key(0))
    # Before training the network guesses about uniformly: L * log 17 nats.
    assert np.isfinite(float(loss)) and abs(float(loss) / (L * np.log(17)) - 1) < 0.5
    grads = assert_every_param_gets_a_gradient(
        model, lambda m: masked.masked_diffusion_loss(m, tokens, jax.random.key(0)), jit=True
    )
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_elbo_refuses_bad_arguments():
    _, model = factorised()
    tokens = draw_factorised(factorised()[0], 2)
    with pytest.raises(ValueError, match="num_t"):
        masked.elbo_nats(model, tokens, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="estimator"):
        masked.elbo_nats(model, tokens, jax.random.key(0), 4, estimator="both")
    with pytest.raises(ValueError, match="tokens must lie"):
        masked.masked_diffusion_loss(model, tokens + MASK, jax.random.key(0))
    with pytest.raises(ValueError, match="tokens must have shape"):
        masked.masked_diffusion_loss(model, tokens[0], jax.random.key(0))


# ------------------------------------------------------------------ sampling
@pytest.mark.parametrize("steps", [1, 64])
def test_a_point_mass_model_samples_its_point(steps):
    point = np.arange(64) % NUM_VALUES
    tokens, nfe = masked.sample(point_mass_model(point), jax.random.key(0), 4, steps)
    assert nfe == steps and tokens.shape == (4, 64)
    np.testing.assert_array_equal(tokens, np.tile(point, (4, 1)))


def test_samples_of_the_exact_factorised_model_have_its_marginals():
    probs, model = factorised(length=4)
    n = 4000
    tokens, _ = masked.sample(model, jax.random.key(1), n, 3, length=4)
    tokens = np.asarray(tokens)
    assert tokens.min() >= 0 and tokens.max() < NUM_VALUES
    freq = np.stack([np.bincount(tokens[:, i], minlength=NUM_VALUES) / n for i in range(4)])
    z = np.abs(freq - probs) / np.sqrt(probs * (1 - probs) / n)
    assert z.max() < 4.5  # 68 cells: a 4.5-sigma miss would be a real error


def test_unmasking_reveals_tokens_on_schedule_one_call_per_step():
    # At call k of `steps`, a token is still masked with probability t_k = 1 - k/steps.
    seen = []

    def recording(x_t):
        jax.debug.callback(lambda f: seen.append(float(f)), jnp.mean(x_t == MASK))
        return as_output(jnp.zeros((L, NUM_VALUES)), x_t)

    steps = 8
    tokens, nfe = masked.sample(recording, jax.random.key(2), 2000, steps, length=L)
    jax.effects_barrier()
    assert nfe == steps == len(seen)
    np.testing.assert_allclose(seen, 1 - np.arange(steps) / steps, atol=0.01)
    assert not bool(jnp.any(tokens == MASK))


def test_infill_keeps_the_known_tokens():
    probs, model = factorised(length=64)
    tokens = draw_factorised(probs, 50)
    top_half = np.arange(64) < 32
    filled, nfe = masked.infill(model, jax.random.key(3), tokens, top_half, 16)
    filled = np.asarray(filled)
    assert nfe == 16 and filled.shape == tokens.shape
    np.testing.assert_array_equal(filled[:, :32], tokens[:, :32])
    assert filled.min() >= 0 and filled.max() < NUM_VALUES
    assert np.mean(filled[:, 32:] != tokens[:, 32:]) > 0.2  # the rest was drawn anew
    # A random quarter known, per image; the unknown tokens may be given as MASK.
    known = np.random.default_rng(0).random(tokens.shape) < 0.25
    known[:, 0] = True
    filled, _ = masked.infill(model, jax.random.key(4), np.where(known, tokens, MASK), known, 1)
    np.testing.assert_array_equal(np.asarray(filled)[known], tokens[known])


def test_sampling_refuses_bad_arguments():
    _, model = factorised(length=64)
    tokens = draw_factorised(factorised(length=64)[0], 2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="steps"):
        masked.sample(model, key, 2, 0)
    with pytest.raises(TypeError, match="n must"):
        masked.sample(model, key, 2.0, 4)
    with pytest.raises(ValueError, match="nothing to infill"):
        masked.infill(model, key, tokens, np.ones(64, bool), 4)
    with pytest.raises(ValueError, match="no known token"):
        masked.infill(model, key, tokens, np.zeros(64, bool), 4)
    with pytest.raises(ValueError, match="known_mask must have shape"):
        masked.infill(model, key, tokens, np.ones(10, bool), 4)
    with pytest.raises(TypeError, match="known_mask"):
        masked.infill(model, key, tokens, np.ones(64), 4)
    with pytest.raises(ValueError, match="where known_mask"):
        masked.infill(model, key, np.full_like(tokens, MASK), np.arange(64) < 8, 4)
    with pytest.raises(ValueError, match="steps"):
        masked.infill(model, key, tokens, np.arange(64) < 8, 0)


# --------------------------------------------------- dequantised likelihood
def test_a_uniform_density_costs_log_17_nats_per_pixel():
    width = 17 * masked.BIN_WIDTH  # the union of the 17 bins
    log_density = jnp.full((5,), -64 * np.log(width))
    np.testing.assert_allclose(masked.dequantised_nats(log_density), 64 * np.log(17), rtol=1e-6)
    with pytest.raises(ValueError, match="bin_width"):
        masked.dequantised_nats(log_density, bin_width=0.0)


def test_dequantised_nats_bound_the_discrete_nll_of_a_gaussian():
    # A per-pixel Gaussian density; the discrete probability of a level is its
    # bin's mass, known in closed form.  The bound lies above it, and close.
    m, s, dim = 0.1, 0.5, 4
    images, _ = data.load_digits(split="held_out")
    x = images.reshape(len(images), -1)[:200, 28 : 28 + dim]  # central pixels
    w = masked.BIN_WIDTH
    exact = -np.sum(np.log(norm.cdf(x + w / 2, m, s) - norm.cdf(x - w / 2, m, s)), axis=1)
    y = masked.dequantise(jax.random.key(0), np.repeat(x, 400, axis=0))
    assert float(jnp.max(jnp.abs(y - np.repeat(x, 400, axis=0)))) <= w / 2
    log_density = norm.logpdf(np.asarray(y), m, s).sum(axis=1)
    bound = np.asarray(masked.dequantised_nats(log_density, dim)).reshape(200, 400).mean(axis=1)
    gap = bound - exact  # Jensen's gap, >= 0 up to Monte-Carlo error
    assert gap.mean() > 0 and np.all(gap > -0.02) and gap.mean() < 0.05
