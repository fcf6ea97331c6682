import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import (
    TINY_VOCAB,
    assert_every_param_gets_a_gradient,
    tiny_prompts,
    tiny_text_to_image,
)
from diffbook import nets


def _randomise_output_layer(model, seed=1):
    # The output convolution starts at zero, which blocks every gradient behind
    # it; give it random weights so each parameter's gradient can be seen.
    kernel = model.out.kernel
    kernel[...] = 0.1 * jax.random.normal(jax.random.key(seed), kernel.shape)


@pytest.mark.parametrize("channels, attention", [((8, 16), True), ((8, 16, 16), False)])
def test_every_parameter_gets_a_gradient(channels, attention):
    model = nets.UNet(1, channels, emb_dim=16, attention=attention, rngs=nnx.Rngs(0))
    _randomise_output_layer(model)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    t = jnp.linspace(0.1, 0.9, 4)
    assert_every_param_gets_a_gradient(model, lambda m: jnp.sum(m(x, t) ** 2), jit=True)


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


def test_unet_shapes_zero_init_and_time_dependence():
    model = nets.UNet(3, (8, 16), emb_dim=16, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 16, 16, 3))
    out = model(x, jnp.array([0.1, 0.9]))
    assert out.shape == x.shape and float(jnp.abs(out).max()) == 0.0
    _randomise_output_layer(model)
    a, b = model(x, jnp.array([0.1, 0.1])), model(x, jnp.array([0.9, 0.9]))
    assert float(jnp.abs(a - b).max()) > 1e-4
    assert model(x, 0.5).shape == x.shape  # a scalar time is broadcast


def test_unet_rejects_bad_input():
    model = nets.UNet(1, (8, 16), emb_dim=16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="x must have shape"):
        model(jnp.ones((2, 8, 8, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match="divide by 2"):
        model(jnp.ones((2, 7, 7, 1)), jnp.zeros(2))
    with pytest.raises(ValueError, match="channels"):
        nets.UNet(1, (), rngs=nnx.Rngs(0))


def test_sinusoidal_embedding():
    emb = nets.sinusoidal_embedding(jnp.array([0.0, 0.5]), 8)
    assert emb.shape == (2, 8)
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    with pytest.raises(ValueError, match="dim"):
        nets.sinusoidal_embedding(jnp.zeros(2), 7)
    with pytest.raises(ValueError, match="t must have shape"):
        nets.sinusoidal_embedding(jnp.zeros((2, 2)), 8)


# ------------------------------------------------------------------ text to image


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


def test_cross_attention_ignores_masked_context():
    layer = nets.CrossAttention(8, 6, num_heads=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    context = jax.random.normal(jax.random.key(1), (2, 5, 6))
    mask = jnp.array([[True, True, False, False, False], [True, False, True, False, False]])
    changed = context.at[:, 3:].set(100.0)  # only masked positions change
    np.testing.assert_allclose(layer(x, changed, mask), layer(x, context, mask), atol=1e-5)


def test_text_encoder_rejects_bad_input():
    enc = nets.TextEncoder(TINY_VOCAB, 8, max_len=4, layers=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_len"):
        enc(jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="shape"):
        enc(jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="context"):
        nets.UNet(3, (8, 16), context_dim=8, rngs=nnx.Rngs(0))(jnp.zeros((1, 8, 8, 3)), 0.5)


def test_unet_from_recipe_reads_the_widths_and_seeds_the_weights():
    from diffbook import config

    cfg = config.Config("tiny", dict(channels=(8, 16), peak_lr=1e-3))
    a, b = nets.unet_from_recipe(cfg, seed=0), nets.unet_from_recipe(cfg, seed=0)
    assert nets.count_params(a) == nets.count_params(nets.UNet(1, (8, 16), rngs=nnx.Rngs(0)))
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b)), strict=True):
        np.testing.assert_array_equal(x, y)
    other = nets.unet_from_recipe(cfg, seed=1)
    assert not np.array_equal(other.stem.kernel[...], a.stem.kernel[...])
    assert nets.unet_from_recipe(cfg, in_channels=3).out.kernel.shape[-1] == 3
    with pytest.raises(KeyError, match="channels"):
        nets.unet_from_recipe(dict(peak_lr=1e-3))
    with pytest.raises(ValueError, match="seed"):
        nets.unet_from_recipe(cfg, seed=-1)
    with pytest.raises(ValueError, match=r"channels\[1\]"):
        nets.UNet(1, (8, 0), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="in_channels"):
        nets.UNet(1.5, (8, 16), rngs=nnx.Rngs(0))


# ------------------------------------------------------------------ diffusion transformer


def _tiny_dit(in_channels=1, patch_size=2, num_classes=None, seed=0):
    return nets.DiT(
        in_channels,
        8,
        patch_size=patch_size,
        dim=16,
        depth=2,
        num_heads=4,
        mlp_ratio=2,
        num_classes=num_classes,
        rngs=nnx.Rngs(seed),
    )


def _perturb(module, seed=1, scale=0.1):
    # Adds small random values to every parameter of ``module``.  adaLN-Zero starts
    # the modulations and the output layer at zero, which makes the output zero and
    # blocks most gradients (a zero gate multiplies the attention and the MLP, a zero
    # output layer everything before it); perturbed, every parameter matters.
    params = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)]
    nnx.update(module, jax.tree.unflatten(treedef, noisy))


@pytest.mark.parametrize("in_channels, patch_size", [(1, 2), (3, 4)])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_dit_output_has_the_input_shape(in_channels, patch_size, num_classes):
    model = _tiny_dit(in_channels, patch_size, num_classes)
    _perturb(model)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, in_channels))
    labels = None if num_classes is None else jnp.array([0, 9, 10])
    call = nnx.jit(lambda m, u: m(x, u, labels))  # compiled: eager calls are slow
    out = call(model, jnp.array([0.1, 0.5, 0.9]))
    assert out.shape == x.shape and bool(jnp.isfinite(out).all())
    assert call(model, 0.5).shape == x.shape  # a scalar time is broadcast
    assert len(model.blocks) == 2


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


def test_dit_every_parameter_gets_a_gradient():
    model = _tiny_dit(num_classes=3)
    # At init most gradients are exactly zero (see _perturb), which is adaLN-Zero
    # working as intended, not a parameter NNX cannot see; so perturb first.
    _perturb(model)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    t = jnp.linspace(0.1, 0.9, 4)
    labels = jnp.array([0, 1, 2, 3])  # every class and the null class
    grads = assert_every_param_gets_a_gradient(
        model, lambda m: jnp.sum(m(x, t, labels) ** 2), jit=True
    )
    assert np.all(np.abs(np.asarray(grads.label_embed.embed.embedding[...])).sum(1) > 0)


def test_dit_adaln_zero_starts_as_the_identity():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16))
    c = jax.random.normal(jax.random.key(1), (2, 16))
    block = nets.DiTBlock(16, 4, mlp_ratio=2, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(block(x, c), x)
    model = _tiny_dit(num_classes=10)
    for b in model.blocks:
        np.testing.assert_array_equal(b(x, c), x)
    images = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    out = model(images, jnp.array([0.2, 0.8]), jnp.array([1, 10]))
    np.testing.assert_array_equal(out, jnp.zeros_like(images))
    # The identity comes from the zero modulation alone: perturb it and it is gone.
    _perturb(block.adaln)
    assert float(jnp.abs(block(x, c) - x).max()) > 1e-3


def test_dit_reads_time_and_labels_and_builds_the_null_condition():
    model = _tiny_dit(num_classes=10)
    _perturb(model)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    t = jnp.array([0.3, 0.3, 0.3])
    labels = jnp.array([1, 2, 3])
    out = model(x, t, labels)
    assert float(jnp.abs(model(x, t, labels.at[0].set(7)) - out)[0].max()) > 1e-4
    # Only the example whose label changed changes: the condition is per example.
    np.testing.assert_allclose(model(x, t, labels.at[0].set(7))[1:], out[1:], atol=1e-6)
    assert float(jnp.abs(model(x, jnp.full((3,), 0.7), labels) - out).max()) > 1e-4
    null = model.null_condition(labels)
    assert isinstance(null, tuple) and len(null) == 1
    np.testing.assert_array_equal(null[0], [10, 10, 10])
    assert null[0].dtype == labels.dtype
    assert float(jnp.abs(model(x, t, *null) - out).max()) > 1e-4
    with pytest.raises(ValueError, match="num_classes"):
        _tiny_dit().null_condition(labels)


def test_dit_rejects_bad_arguments():
    model = _tiny_dit(num_classes=10)
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros(2)
    with pytest.raises(ValueError, match="labels must lie in"):
        model(x, t, jnp.array([0, 11]))
    with pytest.raises(ValueError, match="labels must be given"):
        model(x, t)
    with pytest.raises(ValueError, match="labels must be given"):
        _tiny_dit()(x, t, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="x must have shape"):
        model(jnp.zeros((2, 8, 8, 3)), t, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="x must have shape"):
        model(jnp.zeros((2, 16, 16, 1)), t, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="image_size must divide by patch_size"):
        nets.DiT(1, 8, patch_size=3, dim=16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dim must divide by num_heads"):
        nets.DiT(1, 8, dim=16, num_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dim must be a multiple of 4"):
        nets.DiT(1, 8, dim=18, num_heads=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depth"):
        nets.DiT(1, 8, dim=16, depth=0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="patch_size"):
        nets.DiT(1, 8, patch_size=2.0, dim=16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes"):
        nets.DiT(1, 8, dim=16, num_classes=0, rngs=nnx.Rngs(0))


def test_dit_works_with_classifier_free_guidance():
    from diffbook import guidance

    model = _tiny_dit(in_channels=3, num_classes=4)
    _perturb(model)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
    u = jnp.array([0.2, 0.5, 0.8])
    labels = jnp.array([0, 2, 3])
    guided = guidance.guided_model_fn(model, (labels,), 2.0)(x, u)
    assert guided.shape == x.shape
    cond, uncond = model(x, u, labels), model(x, u, *model.null_condition(labels))
    np.testing.assert_allclose(guided, uncond + 2.0 * (cond - uncond), atol=1e-5)
