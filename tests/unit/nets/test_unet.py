"""diffbook.nets.unet: every parameter trains, shapes, time and labels, bad input, the
recipe's U-Net."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import (
    assert_every_param_gets_a_gradient,
    tiny_class_unet,
)
from diffbook import config, nets


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


def test_unet_from_recipe_reads_the_widths_and_seeds_the_weights():

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


def test_class_conditional_unet_reads_its_labels():
    model = tiny_class_unet()
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    u = jnp.full((4,), 0.5)
    call = nnx.jit(lambda m, y: m(x, u, y))  # compiled once: eager U-Net calls are slow
    a = call(model, jnp.array([0, 1, 2, 3]))
    b = call(model, jnp.array([0, 1, 2, 7]))
    np.testing.assert_allclose(a[:3], b[:3], atol=1e-6)  # one example's label moves only it
    assert not np.allclose(a[3], b[3])
    (null,) = model.null_condition(jnp.array([3, 4]))
    np.testing.assert_array_equal(null, [10, 10])
    with pytest.raises(ValueError, match="labels"):
        model(x, u)  # built with classes: labels are required
    with pytest.raises(ValueError, match="labels"):
        model(x, u, jnp.array([0, 1, 2, 11]))
    with pytest.raises(TypeError, match="labels"):
        model(x, u, jnp.zeros(4))
    with pytest.raises(ValueError, match="labels"):
        nets.UNet(1, (8, 16), emb_dim=16, rngs=nnx.Rngs(0))(x, u, jnp.zeros(4, int))
