"""diffbook.nets.text_encoder: the text encoder and TextToImage read the prompt, not the padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import (
    TINY_VOCAB,
    tiny_prompts,
    tiny_text_to_image,
)
from diffbook import nets


def test_text_to_image_every_parameter_gets_a_gradient():
    model = tiny_text_to_image()
    tokens, mask = tiny_prompts()
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    # Compiled: op by op, the gradient of this model takes far longer.
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, jnp.full((3,), 0.3), tokens, mask) ** 2)))(
        model
    )
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(grads, nnx.Param))[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g))]
    assert not dead, f"parameters without gradient: {dead}"
    # Rows of the word embedding: only the ids that the prompts use get a gradient
    # (padding 0, unknown 1 and the unused 8..11 none).
    embed_grad = np.asarray(grads.text.embed.embedding[...])
    used = np.unique(np.asarray(tokens)[np.asarray(mask)])
    assert np.all(np.abs(embed_grad[used]).sum(1) > 0)
    assert np.all(embed_grad[[0, 1, 8, 9, 10, 11]] == 0)


def test_text_to_image_on_latents_keeps_their_channels():
    # Latent diffusion: 8x8 latents with 4 channels instead of RGB pixels.
    model = nets.TextToImage(
        12,
        max_len=4,
        text_dim=16,
        text_layers=1,
        channels=(8, 16),
        emb_dim=16,
        in_channels=4,
        rngs=nnx.Rngs(0),
    )
    tokens, mask = tiny_prompts()
    z = jax.random.normal(jax.random.key(0), (3, 8, 8, 4))
    out = nnx.jit(lambda m: m(z, jnp.full((3,), 0.5), tokens, mask))(model)
    assert out.shape == z.shape
    with pytest.raises(ValueError, match=r"x must have shape \(B, H, W, 4\)"):
        model(jnp.zeros((3, 8, 8, 3)), jnp.full((3,), 0.5), tokens, mask)


def test_text_to_image_ignores_padding_and_reads_the_prompt():
    model = tiny_text_to_image()
    tokens, mask = tiny_prompts()
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    u = jnp.full((3,), 0.5)
    out = model(x, u, tokens, mask)
    assert out.shape == x.shape
    # Whatever ids sit under the padding, the output is the same.
    other_padding = jnp.where(mask, tokens, 9)
    np.testing.assert_allclose(model(x, u, other_padding, mask), out, atol=1e-5)
    # A different prompt gives a different prediction.
    assert float(jnp.abs(model(x, u, tokens.at[0, 0].set(8), mask) - out).max()) > 1e-4
    # Dropping every word (the unconditional model) runs and differs too.
    empty = model(x, u, tokens, jnp.zeros_like(mask))
    assert bool(jnp.isfinite(empty).all()) and float(jnp.abs(empty - out).max()) > 1e-4


def test_null_condition_is_the_empty_prompt():
    model = tiny_text_to_image()
    tokens, mask = tiny_prompts()
    null = model.null_condition(tokens, mask)
    assert isinstance(null, tuple) and len(null) == 2
    assert null[0].shape == tokens.shape and null[1].shape == mask.shape
    assert null[1].dtype == mask.dtype and not bool(null[1].any())
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    u = jnp.array([0.1, 0.5, 0.9])
    uncond = model(x, u, *null)
    np.testing.assert_array_equal(uncond, model(x, u, tokens, jnp.zeros_like(mask)))
    assert float(jnp.abs(uncond - model(x, u, tokens, mask)).max()) > 1e-4


def test_text_encoder_rejects_bad_input():
    enc = nets.TextEncoder(TINY_VOCAB, 8, max_len=4, layers=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_len"):
        enc(jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="shape"):
        enc(jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="context"):
        nets.UNet(3, (8, 16), context_dim=8, rngs=nnx.Rngs(0))(jnp.zeros((1, 8, 8, 3)), 0.5)
