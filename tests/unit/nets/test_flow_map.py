"""nets.FlowMapUNet: a U-Net of two times that starts as the velocity network it is built from."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffbook import nets


def _trained_looking_unet(seed=0):
    """A small U-Net whose output layer is not zero (a fresh U-Net predicts zeros)."""
    unet = nets.UNet(1, (8, 16), emb_dim=16, rngs=nnx.Rngs(seed))
    leaves, treedef = jax.tree.flatten(nnx.state(unet, nnx.Param))
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys, strict=True)
    ]
    nnx.update(unet, jax.tree.unflatten(treedef, noisy))
    return unet


def test_it_starts_as_its_velocity_network_at_every_gap():
    unet = _trained_looking_unet()
    flow_map = nets.FlowMapUNet.from_velocity(unet)
    z = jax.random.normal(jax.random.key(2), (5, 8, 8, 1))
    r = jnp.array([0.0, 0.1, 0.3, 0.5, 0.9])
    v = unet(z, r)
    assert float(jnp.abs(v).max()) > 1e-2  # a test of something: v is not zero
    for t in (r, jnp.ones(5), jnp.minimum(r + 0.2, 1.0)):
        np.testing.assert_allclose(flow_map(z, r, t), v, atol=1e-6)


def test_its_copy_trains_without_changing_the_velocity_network():
    unet = _trained_looking_unet()
    before = jax.tree.map(jnp.copy, nnx.state(unet, nnx.Param))
    flow_map = nets.FlowMapUNet.from_velocity(unet)
    z = jax.random.normal(jax.random.key(3), (4, 8, 8, 1))
    r, t = jnp.zeros(4), jnp.ones(4)

    def loss(m):
        return jnp.mean((m(z, r, t) - 1.0) ** 2)

    grads = nnx.grad(loss)(flow_map)
    # The gap embedding gets a gradient (its zero last layer does not block it).
    assert float(jnp.abs(grads["gap"]["fc2"]["kernel"][...]).max()) > 0
    flow_map.gap.fc2.kernel[...] = flow_map.gap.fc2.kernel[...] + 0.5
    assert not np.allclose(flow_map(z, r, t), unet(z, r))  # the gap now matters
    after = nnx.state(unet, nnx.Param)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)


def test_it_refuses_what_it_cannot_build_on():
    with pytest.raises(TypeError, match="unet"):
        nets.FlowMapUNet(lambda x, t: x, rngs=nnx.Rngs(0))
    conditional = nets.UNet(1, (8, 16), emb_dim=16, num_classes=10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unconditional"):
        nets.FlowMapUNet(conditional, rngs=nnx.Rngs(0))


def test_the_unet_refuses_an_embedding_shift_of_another_shape():
    unet = nets.UNet(1, (8, 16), emb_dim=16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="emb_shift"):
        unet(jnp.zeros((2, 8, 8, 1)), jnp.zeros(2), emb_shift=jnp.zeros((2, 8)))
