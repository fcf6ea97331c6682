"""Latent diffusion: the bridges between pixels and scaled latents, the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffbook import autoencoder as ae
from diffbook import config
from diffbook import latent_diffusion as ld

RES, FACTOR, LATENT = 8, 2, 2


def tiny() -> ae.Autoencoder:
    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
    return ae.Autoencoder(RES, FACTOR, LATENT, channels=8, num_blocks=1, rngs=rngs)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, RES, RES, 3)).astype(np.float32)


def test_encode_scales_and_decode_undoes_the_scale():
    model, x = tiny(), images(5)
    z = ld.encode(model, x)
    assert z.shape == (5, 4, 4, LATENT) and z.dtype == np.float32
    np.testing.assert_allclose(z, np.asarray(model.encode(jnp.asarray(x))), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ld.encode(model, x, 2.5), 2.5 * z, rtol=1e-5, atol=1e-6)
    # decode(encode(x, s), s) is the clipped reconstruction, whatever the scale.
    back = ld.decode(model, ld.encode(model, x, 2.5), 2.5)
    np.testing.assert_allclose(back, np.asarray(model.reconstruct(jnp.asarray(x))), atol=1e-5)
    assert back.min() >= -1.0 and back.max() <= 1.0


def test_batches_give_the_same_latents_as_one_call():
    # 7 images in batches of 3: the last batch is padded, and the padding is dropped.
    model, x = tiny(), images(7, seed=1)
    np.testing.assert_allclose(
        ld.encode(model, x, batch_size=3), ld.encode(model, x), rtol=1e-5, atol=1e-6
    )
    z = ld.encode(model, x)
    np.testing.assert_allclose(
        ld.decode(model, z, batch_size=3), ld.decode(model, z), rtol=1e-5, atol=1e-6
    )


def test_bad_input_names_the_argument():
    model = tiny()
    with pytest.raises(ValueError, match="images"):
        ld.encode(model, np.zeros((2, 16, 16, 3), np.float32))  # wrong resolution
    with pytest.raises(ValueError, match="images"):
        ld.encode(model, 3 * np.ones((2, RES, RES, 3), np.float32))  # outside [-1, 1]
    with pytest.raises(ValueError, match="latents"):
        ld.decode(model, np.zeros((2, 4, 4, 3), np.float32))  # wrong latent channels
    with pytest.raises(ValueError, match="scale"):
        ld.decode(model, np.zeros((2, 4, 4, LATENT), np.float32), 0.0)
    with pytest.raises(ValueError, match="batch_size"):
        ld.encode(model, images(2), batch_size=0)


def test_model_maps_latents_to_latents_with_cross_attention_at_every_level():
    cfg = config.pick(ld.RECIPE, "cpu").replace(channels=(8, 16), emb_dim=16, text_dim=16)
    model = ld.make_model(cfg, vocab_size=10, latent_channels=LATENT, seed=0)
    # Cross-attention at every level, the 8x8 one included.
    assert model.unet.cross_levels == (0, 1)
    z = jax.random.normal(jax.random.key(0), (2, 4, 4, LATENT))
    tokens = jnp.array([[2, 3, 0], [4, 5, 6]])
    mask = tokens > 0
    out = model(z, jnp.array([0.3, 0.7]), tokens, mask)
    assert out.shape == z.shape
