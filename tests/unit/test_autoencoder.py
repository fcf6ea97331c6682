"""The latent diffusion chapter's autoencoder: folds, shapes, loss, training, scale."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import assert_every_param_gets_a_gradient, rectangles
from diffbook import autoencoder as ae
from diffbook import config, metrics, train

# A tiny model for fast tests: 8x8 images, folded by 2 into 4x4x2 latents.
RES, FACTOR, LATENT = 8, 2, 2


def key(seed: int) -> jax.Array:
    # XLA's CPU compiler takes seconds for every new shape drawn with the default
    # threefry keys; "rbg" keys compile in a fraction of a second.
    return jax.random.key(seed, impl="rbg")


def tiny(seed: int = 0) -> ae.Autoencoder:
    return ae.Autoencoder(RES, FACTOR, LATENT, channels=8, num_blocks=1, rngs=nnx.Rngs(key(seed)))


@functools.cache
def x8() -> np.ndarray:
    return rectangles(4)


def test_space_to_depth_layout_and_round_trip():
    # One 4x4 image with 2 channels, every value distinct.
    x = jnp.arange(4 * 4 * 2, dtype=jnp.float32).reshape(1, 4, 4, 2)
    folded = ae.space_to_depth(x, 2)
    assert folded.shape == (1, 2, 2, 8)
    # Position (r, s), channel (i * 2 + j) * 2 + c holds pixel (2r + i, 2s + j), channel c.
    for r in range(2):
        for s in range(2):
            for i in range(2):
                for j in range(2):
                    for c in range(2):
                        assert folded[0, r, s, (i * 2 + j) * 2 + c] == x[0, 2 * r + i, 2 * s + j, c]
    # The top-left 2x2 block, written out: pixels (0,0), (0,1), (1,0), (1,1), 2 channels each.
    np.testing.assert_array_equal(folded[0, 0, 0], [0, 1, 2, 3, 8, 9, 10, 11])
    np.testing.assert_array_equal(ae.depth_to_space(folded, 2), x)
    # Non-square images, and factor 1 is the identity.
    y = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 12, 3)), jnp.float32)
    for f in (1, 2, 3, 6):
        folded = ae.space_to_depth(y, f)
        assert folded.shape == (3, 6 // f, 12 // f, f * f * 3)
        np.testing.assert_array_equal(ae.depth_to_space(folded, f), y)
    np.testing.assert_array_equal(ae.space_to_depth(y, 1), y)


def test_shapes_of_the_tiny_model_and_of_both_recipes():
    model = tiny()
    x = jnp.asarray(x8())
    z = model.encode(x)
    assert z.shape == (4, RES // FACTOR, RES // FACTOR, LATENT)
    assert model.decode(z).shape == (4, RES, RES, 3)
    reconstruction, mean, logvar = model(x, key(0))
    assert reconstruction.shape == x.shape
    assert mean.shape == logvar.shape == z.shape
    np.testing.assert_array_equal(mean, z)  # encode gives the posterior means
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and float(jnp.abs(recon).max()) <= 1.0
    # Both recipes give 8x8 latents; shapes only (traced, nothing is computed).
    for name, resolution in (("cpu", 32), ("accelerator", 64)):
        cfg = config.pick(ae.RECIPE, name)
        assert cfg.resolution == resolution and cfg.resolution // cfg.factor == 8
        image = jax.ShapeDtypeStruct((2, resolution, resolution, 3), jnp.float32)
        z = jax.eval_shape(lambda x, cfg=cfg: ae.make_autoencoder(cfg).encode(x), image)
        assert z.shape == (2, 8, 8, cfg.latent_channels)
        out = jax.eval_shape(lambda z, cfg=cfg: ae.make_autoencoder(cfg).decode(z), z)
        assert out.shape == image.shape


def test_every_parameter_gets_a_gradient():
    x = jnp.asarray(x8())
    k = key(1)
    loss = lambda m: ae.autoencoder_loss(m, x, k, kl_weight=0.5)
    assert_every_param_gets_a_gradient(tiny(), loss, jit=True)


def test_loss_is_the_squared_error_plus_the_kl_per_latent_element():
    model = tiny()
    x = jnp.asarray(x8())
    k = key(2)

    @functools.partial(nnx.jit, static_argnums=1)  # kl_weight: a Python number
    def parts(model, kl_weight):
        loss = ae.autoencoder_loss(model, x, k, kl_weight=kl_weight)
        reconstruction, _, _ = model(x, k)
        return loss, jnp.mean((reconstruction - x) ** 2)

    loss, mse = parts(model, 0.0)
    np.testing.assert_allclose(loss, mse, rtol=1e-6)
    # An encoder whose last layer is zero gives mean 0 and logvar 0, the prior: no KL.
    out = model.encoder.stack.conv_out
    out.kernel[...] = jnp.zeros_like(out.kernel[...])
    out.bias[...] = jnp.zeros_like(out.bias[...])
    mean, logvar = model.encoder(x)
    assert float(jnp.abs(mean).max()) == 0.0 and float(jnp.abs(logvar).max()) == 0.0
    loss_0, mse_0 = parts(model, 0.0)
    loss_big, _ = parts(model, 1000.0)
    np.testing.assert_allclose(loss_big, loss_0, rtol=1e-6)
    # Mean 1, logvar 0: KL 0.5 per latent element, whatever the number of elements.
    out.bias[...] = jnp.concatenate([jnp.ones(LATENT), jnp.zeros(LATENT)])
    loss_1, mse_1 = parts(model, 0.0)
    loss_2, _ = parts(model, 2.0)
    np.testing.assert_allclose(loss_1, mse_1, rtol=1e-6)
    np.testing.assert_allclose(loss_2 - loss_1, 2.0 * 0.5, rtol=1e-5)


def test_a_few_dozen_steps_lower_the_loss_and_raise_psnr():
    images = rectangles(16, seed=3)
    model = tiny(seed=3)
    reconstruct = nnx.jit(lambda m, x: m.reconstruct(x))
    before = np.median(metrics.psnr(reconstruct(model, images), images))
    loss_fn = functools.partial(ae.autoencoder_loss, kl_weight=1e-4)
    _, optimizer = train.adamw_with_ema(model, peak_lr=1e-2, steps=60, warmup=5)
    history = train.fit(
        model,
        optimizer,
        loss_fn,
        images,
        steps=60,
        batch_size=16,
        key=key(0),
        progress=False,
    )
    assert history.loss[-10:].mean() < 0.5 * history.loss[:5].mean()
    after = np.median(metrics.psnr(reconstruct(model, images), images))
    assert after > before + 3.0, (before, after)


def test_latent_scale_factor_gives_unit_std():
    latents = 1.0 + 3.0 * np.random.default_rng(0).normal(size=(64, 4, 4, 2))
    scale = ae.latent_scale_factor(latents)
    assert isinstance(scale, float)
    assert scale == pytest.approx(1.0 / 3.0, rel=0.05)
    assert float(np.std(latents * scale)) == pytest.approx(1.0, rel=1e-6)


def test_bad_arguments_are_named():
    model = tiny()
    x = x8()
    k = key(0)
    # Images: rank, channels, resolution, range, NaN -- outside and inside jit.
    for bad, what in (
        (x[0], r"shape \(N, H, W, C\)"),
        (x[..., :1], r"per-image shape \(8, 8, 3\)"),
        (np.ones((2, 6, 6, 3), np.float32), r"per-image shape \(8, 8, 3\)"),
        (1.5 * x, r"lie in \[-1.0, 1.0\]"),
        (np.full_like(x, np.nan), "NaN"),
    ):
        with pytest.raises(ValueError, match=f"^x (must|contains) .*{what}"):
            model.encode(bad)
        with pytest.raises(ValueError, match=f"^images (must|contains) .*{what}"):
            ae.autoencoder_loss(model, bad, k, kl_weight=0.0)
    with pytest.raises(ValueError, match="^x must"):
        model(x[..., :1], k)
    with pytest.raises(ValueError, match="^x must have shape"):
        jax.jit(model.encode)(x[:, :6])
    # Latents of the wrong channels or size.
    with pytest.raises(ValueError, match="^z must have shape"):
        model.decode(jnp.zeros((1, 4, 4, LATENT + 1)))
    with pytest.raises(ValueError, match="^z must have shape"):
        model.decode(jnp.zeros((1, 8, 8, LATENT)))
    with pytest.raises(ValueError, match="^z must have shape"):
        jax.jit(model.decode)(jnp.zeros((4, 4, LATENT)))
    # The model's sizes.
    with pytest.raises(ValueError, match="^resolution must be a multiple of factor"):
        ae.Autoencoder(10, 4, 2, 8, 1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="^factor"):
        ae.Autoencoder(8, 0, 2, 8, 1, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="^factor"):
        ae.Autoencoder(8, 2.0, 2, 8, 1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="^latent_channels"):
        ae.Autoencoder(8, 2, 0, 8, 1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="^num_blocks"):
        ae.Autoencoder(8, 2, 2, 8, -1, rngs=nnx.Rngs(0))
    # The folds.
    with pytest.raises(ValueError, match="^factor"):
        ae.space_to_depth(x, 0)
    with pytest.raises(TypeError, match="^factor"):
        ae.space_to_depth(x, 2.0)
    with pytest.raises(ValueError, match="^factor must divide"):
        ae.space_to_depth(x, 3)
    with pytest.raises(ValueError, match="^x must have shape"):
        ae.space_to_depth(x[0], 2)
    with pytest.raises(ValueError, match="^x must have shape"):
        ae.depth_to_space(np.zeros((1, 2, 2, 6)), 2)
    with pytest.raises(TypeError, match="^factor"):
        ae.depth_to_space(np.zeros((1, 2, 2, 4)), True)
    # The loss's weight.
    with pytest.raises(ValueError, match="^kl_weight"):
        ae.autoencoder_loss(model, x, k, kl_weight=-1.0)
    with pytest.raises(ValueError, match="^kl_weight"):
        ae.autoencoder_loss(model, x, k, kl_weight=float("nan"))
    # The scale.
    with pytest.raises(ValueError, match="^latents"):
        ae.latent_scale_factor(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="^latents"):
        ae.latent_scale_factor(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="^latents"):
        ae.latent_scale_factor(np.ones((3, 4)))
    with pytest.raises(TypeError, match="^latents"):
        ae.latent_scale_factor(np.array(["a", "b"]))
