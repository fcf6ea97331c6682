"""The text-conditioned model of the emoji chapter: text encoder, cross-attention,
condition dropout and classifier-free guidance.  Tiny sizes; no emoji data needed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffbook import emoji, nets
from diffbook.schedules import NoiseSchedule

VOCAB = 12


def _model(seed=0):
    model = emoji.TextToImage(VOCAB, max_len=4, text_dim=16, text_layers=1, channels=(8, 16),
                              emb_dim=16, rngs=nnx.Rngs(seed))
    # The output convolution starts at zero (the untrained model predicts zeros);
    # give it weights so that the inputs' influence can be seen.
    kernel = model.unet.out.kernel
    kernel[...] = 0.1 * jax.random.normal(jax.random.key(seed + 1), kernel.shape)
    return model


def _prompts():
    tokens = jnp.array([[2, 3, 0, 0], [4, 5, 6, 0], [7, 0, 0, 0]], jnp.int32)
    return tokens, tokens > 0


def test_every_parameter_gets_a_gradient():
    model = _model()
    tokens, mask = _prompts()
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    # Compiled: op by op, the gradient of this model takes far longer.
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, jnp.full((3,), 0.3), tokens, mask) ** 2)))(
        model)
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(grads, nnx.Param))[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g))]
    assert not dead, f"parameters without gradient: {dead}"
    # Rows of the word embedding: only the ids that the prompts use get a gradient
    # (padding 0, unknown 1 and the unused 8..11 none).
    embed_grad = np.asarray(grads.text.embed.embedding[...])
    used = np.unique(np.asarray(tokens)[np.asarray(mask)])
    assert np.all(np.abs(embed_grad[used]).sum(1) > 0)
    assert np.all(embed_grad[[0, 1, 8, 9, 10, 11]] == 0)


def test_padding_is_ignored_and_the_prompt_matters():
    model = _model()
    tokens, mask = _prompts()
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    t = jnp.full((3,), 0.5)
    out = model(x, t, tokens, mask)
    # Whatever ids sit under the padding, the output is the same.
    other_padding = jnp.where(mask, tokens, 9)
    np.testing.assert_allclose(model(x, t, other_padding, mask), out, atol=1e-5)
    # A different prompt gives a different prediction.
    assert float(jnp.abs(model(x, t, tokens.at[0, 0].set(8), mask) - out).max()) > 1e-4
    # Dropping every word (the unconditional model) runs and differs too.
    empty = model(x, t, tokens, jnp.zeros_like(mask))
    assert bool(jnp.isfinite(empty).all()) and float(jnp.abs(empty - out).max()) > 1e-4


def test_cross_attention_ignores_masked_context():
    layer = nets.CrossAttention(8, 6, num_heads=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    context = jax.random.normal(jax.random.key(1), (2, 5, 6))
    mask = jnp.array([[True, True, False, False, False], [True, False, True, False, False]])
    changed = context.at[:, 3:].set(100.0)   # only masked positions change
    np.testing.assert_allclose(layer(x, changed, mask), layer(x, context, mask), atol=1e-5)


def test_guidance_combines_one_batched_call():
    model = _model()
    tokens, mask = _prompts()
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    t = jnp.array([100, 500, 900])
    cond = model(x, t / 1000, tokens, mask)
    uncond = model(x, t / 1000, tokens, jnp.zeros_like(mask))
    for scale in (0.0, 1.0, 3.5):
        guided = emoji.guided_model_fn(model, tokens, mask, scale, 1000)(x, t)
        np.testing.assert_allclose(guided, uncond + scale * (cond - uncond), atol=1e-5)
    np.testing.assert_allclose(emoji.guided_model_fn(model, tokens, mask, 1.0, 1000)(x, t), cond,
                               atol=1e-5)


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_bad_guidance_scales_raise(scale):
    with pytest.raises(ValueError, match="guidance"):
        emoji.check_guidance(scale)
    sampler = emoji.GuidedDDIM(NoiseSchedule.cosine(50), 5, resolution=16)
    tokens, mask = _prompts()
    with pytest.raises(ValueError, match="guidance"):
        sampler(_model(), tokens, mask, jax.random.key(0), scale=scale)


def test_guided_sampler_shapes_range_and_determinism():
    sampler = emoji.GuidedDDIM(NoiseSchedule.cosine(50), 5, resolution=16)
    tokens, mask = _prompts()
    model = _model()
    a = sampler(model, tokens, mask, jax.random.key(3), scale=2.0)
    b = sampler(model, tokens, mask, jax.random.key(3), scale=2.0)
    assert a.shape == (3, 16, 16, 3) and float(a.min()) >= -1 and float(a.max()) <= 1
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(sampler(model, tokens, mask, jax.random.key(3), scale=0.0) - a).max()) > 0
    with pytest.raises(ValueError, match="tokens and mask"):
        sampler(model, tokens, mask[:, :2], jax.random.key(0), scale=1.0)
    with pytest.raises(ValueError, match="resolution"):
        emoji.GuidedDDIM(NoiseSchedule.cosine(50), 5, resolution=12)


def test_condition_dropout():
    model = _model()
    tokens, mask = _prompts()
    images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3), minval=-1, maxval=1)
    sched = NoiseSchedule.cosine(50)
    key = jax.random.key(4)
    # With p_uncond = 0 the loss is the plain conditional loss ...
    from diffbook.ddpm import diffusion_loss

    k_loss = jax.random.split(key)[1]
    plain = diffusion_loss(sched, lambda x, t: model(x, t, tokens, mask), images, k_loss)
    np.testing.assert_allclose(emoji.cfg_loss(sched, model, (images, tokens, mask), key,
                                              p_uncond=0.0), plain, rtol=1e-6)
    # ... and with p_uncond close to 1 it is the unconditional one.
    empty = diffusion_loss(sched, lambda x, t: model(x, t, tokens, jnp.zeros_like(mask)), images,
                           k_loss)
    np.testing.assert_allclose(emoji.cfg_loss(sched, model, (images, tokens, mask), key,
                                              p_uncond=0.999999), empty, rtol=1e-6)
    with pytest.raises(ValueError, match="p_uncond"):
        emoji.cfg_loss(sched, model, (images, tokens, mask), key, p_uncond=1.0)


def test_text_encoder_rejects_bad_input():
    enc = nets.TextEncoder(VOCAB, 8, max_len=4, layers=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_len"):
        enc(jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="shape"):
        enc(jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="context"):
        nets.UNet(3, (8, 16), context_dim=8, rngs=nnx.Rngs(0))(jnp.zeros((1, 8, 8, 3)), 0.5)
