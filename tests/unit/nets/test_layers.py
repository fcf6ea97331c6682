"""diffbook.nets.layers: parameter counts, the time embedding, cross-attention, patches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffbook import nets


@pytest.mark.parametrize("time_embedding, expected", [(False, 1505), (True, 1633)])
def test_count_params_counts_trainable_scalars_only(time_embedding, expected):
    # Counted by hand for MixtureMLP(16, depth=2, emb_dim=8, norm="batch"):
    # time: Linear(1, 8) = 16, or TimeEmbedding(8) = 2 * (8 * 8 + 8) = 144; inp: Linear(1, 16) = 32;
    # per block: BatchNorm scale and bias 32 (its 32 running statistics are not trained),
    # fc1 and fc2 16 * 16 + 16 = 272 each, emb Linear(8, 16) = 144; out: Linear(16, 1) = 17.
    # Counting the running statistics too would give 64 more.
    from diffbook.mixture import MixtureMLP

    model = MixtureMLP(
        16, 2, emb_dim=8, norm="batch", time_embedding=time_embedding, rngs=nnx.Rngs(0)
    )
    assert nets.count_params(model) == expected
    assert nets.count_params(model.blocks[0]) == 32 + 272 + 144 + 272


def test_sinusoidal_embedding():
    emb = nets.sinusoidal_embedding(jnp.array([0.0, 0.5]), 8)
    assert emb.shape == (2, 8)
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    with pytest.raises(ValueError, match="dim"):
        nets.sinusoidal_embedding(jnp.zeros(2), 7)
    with pytest.raises(ValueError, match="t must have shape"):
        nets.sinusoidal_embedding(jnp.zeros((2, 2)), 8)


# ------------------------------------------------------------------ text to image


def test_cross_attention_ignores_masked_context():
    layer = nets.CrossAttention(8, 6, num_heads=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    context = jax.random.normal(jax.random.key(1), (2, 5, 6))
    mask = jnp.array([[True, True, False, False, False], [True, False, True, False, False]])
    changed = context.at[:, 3:].set(100.0)  # only masked positions change
    np.testing.assert_allclose(layer(x, changed, mask), layer(x, context, mask), atol=1e-5)


def test_patchify_token_order_and_round_trip():
    # A 4x4 one-channel image holding 0..15 row by row, cut into 2x2 patches:
    # token k is the k-th 2x2 block (row-major over blocks), pixels row-major inside.
    image = jnp.arange(16.0).reshape(1, 4, 4, 1)
    tokens = nets.patchify(image, 2)
    expected = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    np.testing.assert_array_equal(tokens, np.array([expected], np.float32))
    # With channels, each pixel's channels stay together (channels last).
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    tokens = nets.patchify(x, 4)
    assert tokens.shape == (2, 6, 48)
    np.testing.assert_array_equal(tokens[:, 4], x[:, 4:8, 4:8, :].reshape(2, 48))
    np.testing.assert_array_equal(nets.unpatchify(tokens, 4, 8, 12), x)
    np.testing.assert_array_equal(nets.unpatchify(nets.patchify(x, 2), 2, 8, 12), x)
    with pytest.raises(ValueError, match="patch_size"):
        nets.patchify(x, 5)
    with pytest.raises(ValueError, match="x must have shape"):
        nets.patchify(x[0], 2)
    with pytest.raises(ValueError, match="tokens must have shape"):
        nets.unpatchify(tokens, 4, 8, 8)
    with pytest.raises(ValueError, match="patch_size"):
        nets.unpatchify(tokens, 4, 8, 10)
