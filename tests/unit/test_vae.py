import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from conftest import assert_every_param_gets_a_gradient
from diffbook import config, data, train, vae


def test_kl_matches_closed_form_and_monte_carlo():
    # Hand-computed: mean 1, variance e (logvar 1) in one dimension:
    # 0.5 * (1 + e - 1 - 1) = 0.5 * (e - 1).
    kl = vae.kl_to_standard_normal(jnp.array([[1.0]]), jnp.array([[1.0]]))
    np.testing.assert_allclose(kl, [0.5 * (np.e - 1.0)], rtol=1e-6)
    # Monte Carlo: E_q[log q(z) - log p(z)] over many draws.
    mean, logvar = jnp.array([[0.5, -1.0, 0.0]]), jnp.array([[-0.5, 0.3, 0.0]])
    z = vae.reparameterize(
        jax.random.key(0),
        jnp.broadcast_to(mean, (200_000, 3)),
        jnp.broadcast_to(logvar, (200_000, 3)),
    )
    std = np.exp(0.5 * np.asarray(logvar))
    log_q = stats.norm.logpdf(np.asarray(z), np.asarray(mean), std).sum(1)
    log_p = stats.norm.logpdf(np.asarray(z)).sum(1)
    assert float(vae.kl_to_standard_normal(mean, logvar)[0]) == pytest.approx(
        np.mean(log_q - log_p), abs=0.01
    )
    # Zero exactly at the prior.
    assert float(vae.kl_to_standard_normal(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0]) == 0.0


def test_reparameterize_has_the_right_moments():
    z = vae.reparameterize(
        jax.random.key(1), jnp.full((100_000, 1), 2.0), jnp.full((100_000, 1), np.log(0.25))
    )
    assert float(z.mean()) == pytest.approx(2.0, abs=0.01)
    assert float(z.std()) == pytest.approx(0.5, abs=0.01)


def test_binomial_log_likelihood_by_hand():
    # One pixel would be too little for the model's shape, so use a full image of
    # zero logits (p = 1/2): log p = sum_k log C(16, k) - 16 log 2 per pixel.
    counts = np.arange(64) % 17
    images = (counts / 8.0 - 1.0).reshape(1, 8, 8, 1).astype(np.float32)
    expected = sum(np.log(stats.binom.pmf(k, 16, 0.5)) for k in counts)
    got = vae.binomial_log_likelihood(jnp.zeros((1, 8, 8, 1)), jnp.asarray(images))
    np.testing.assert_allclose(got, [expected], rtol=1e-5)
    # Large logits stay finite (log_sigmoid, not log(sigmoid)).
    big = vae.binomial_log_likelihood(jnp.full((1, 8, 8, 1), 200.0), jnp.asarray(images))
    assert np.isfinite(np.asarray(big)).all()


def test_elbo_on_a_tiny_case_by_hand():
    # A model whose encoder and decoder output zeros: q = N(0, I) = prior, so KL = 0,
    # and every pixel has p = 1/2 whatever z is.
    model = vae.VAE(2, 4, rngs=nnx.Rngs(0))
    for layer in (model.encoder.out, model.decoder.out):
        layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
        layer.bias[...] = jnp.zeros_like(layer.bias[...])
    images = np.full((3, 8, 8, 1), -1.0, np.float32)  # every pixel a count of 0
    images[1] = 1.0  # every pixel a count of 16
    value = vae.elbo(model, jnp.asarray(images), jax.random.key(0))
    np.testing.assert_allclose(value, np.full(3, 64 * 16 * np.log(0.5)), rtol=1e-6)
    loss = vae.vae_loss(model, (jnp.asarray(images), jnp.zeros(3)), jax.random.key(0))
    assert float(loss) == pytest.approx(-64 * 16 * np.log(0.5), rel=1e-6)


def test_training_improves_the_held_out_elbo():
    xtr, ytr = data.load_digits(split="train")
    xte, _ = data.load_digits(split="held_out")
    cfg = config.pick(vae.RECIPE, "cpu").replace(steps=200, warmup=10)
    model, optimizer = vae.make_model_and_optimizer(cfg)
    before = vae.evaluate_elbo(model, xte, key=jax.random.key(0), num_samples=2)
    train.fit(
        model,
        optimizer,
        vae.vae_loss,
        (xtr, ytr),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        key=jax.random.key(1),
        progress=False,
    )
    after = vae.evaluate_elbo(model, xte, key=jax.random.key(0), num_samples=2)
    assert after > before + 200 and after > -160
    samples = vae.sample_prior(model, jax.random.key(2), 5)
    assert samples.shape == (5, 8, 8, 1) and float(jnp.abs(samples).max()) <= 1.0


def test_every_parameter_gets_a_gradient():
    model = vae.VAE(rngs=nnx.Rngs(0))
    images, _ = data.load_digits()
    assert_every_param_gets_a_gradient(
        model, lambda m: vae.vae_loss(m, jnp.asarray(images[:32]), jax.random.key(0))
    )


def test_bad_input_names_the_argument():
    model = vae.VAE(rngs=nnx.Rngs(0))
    images, _ = data.load_digits()
    with pytest.raises(ValueError, match="images must have shape"):
        vae.elbo(model, jnp.zeros((4, 64)), jax.random.key(0))
    with pytest.raises(ValueError, match="images must lie"):
        vae.evaluate_elbo(model, images[:8] * 16, key=jax.random.key(0))
    with pytest.raises(ValueError, match="per-image shape"):
        vae.evaluate_elbo(model, np.zeros((8, 4, 4, 1)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_samples"):
        vae.evaluate_elbo(model, images[:8], key=jax.random.key(0), num_samples=0)
    with pytest.raises(ValueError, match="logits and images"):
        vae.binomial_log_likelihood(jnp.zeros((2, 64)), jnp.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="mean and logvar"):
        vae.kl_to_standard_normal(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="latent_dim"):
        vae.VAE(0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="n must be"):
        vae.sample_prior(model, jax.random.key(0), 0)
