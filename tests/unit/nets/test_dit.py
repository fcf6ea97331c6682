"""diffbook.nets.dit: the Diffusion Transformer's shapes, adaLN-Zero start, conditions,
checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import (
    assert_every_param_gets_a_gradient,
)
from diffbook import guidance, nets


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

    model = _tiny_dit(in_channels=3, num_classes=4)
    _perturb(model)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
    u = jnp.array([0.2, 0.5, 0.8])
    labels = jnp.array([0, 2, 3])
    guided = guidance.guided_model_fn(model, (labels,), 2.0)(x, u)
    assert guided.shape == x.shape
    cond, uncond = model(x, u, labels), model(x, u, *model.null_condition(labels))
    np.testing.assert_allclose(guided, uncond + 2.0 * (cond - uncond), atol=1e-5)
