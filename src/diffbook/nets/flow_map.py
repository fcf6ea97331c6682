"""A network of two times for flow maps (chapter 8): ``u(z, r, t)``, built on a U-Net.

A flow map jumps along an ODE's paths: from the point ``z`` at time ``r`` to where the
path is at a later time ``t``, as ``z + (t - r) u(z, r, t)``, with ``u`` the average
velocity over ``[r, t]``.  When ``t = r`` the average velocity is the instantaneous
one, ``u(z, r, r) = v(z, r)``: the flow-matching network's.  :class:`FlowMapUNet` uses
that to start from a trained velocity network: it embeds ``r`` with the U-Net's own
time embedding and adds a second embedding of the gap ``t - r`` whose last layer starts
at zero, so that before any training it *is* the velocity network, at every gap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import TimeEmbedding
from .unet import UNet


class FlowMapUNet(nnx.Module):
    """The average velocity ``u(z, r, t)`` of a flow, ``(B, H, W, C), (B,), (B,) -> (B, H, W, C)``.

    Args:
      unet: the U-Net to build on, called as ``unet(z, r, emb_shift=...)``; usually a
        copy of a trained flow-matching velocity network (:meth:`from_velocity`).
        It must be unconditional (built without ``num_classes`` or ``context_dim``).
      rngs: ``nnx.Rngs`` for the gap embedding's first layer.

    Raises:
      TypeError: if ``unet`` is not a :class:`~diffbook.nets.unet.UNet`.
      ValueError: if ``unet`` is conditioned on labels or text.
    """

    def __init__(self, unet: UNet, *, rngs: nnx.Rngs):
        if not isinstance(unet, UNet):
            raise TypeError(f"unet must be a diffbook.nets.UNet, got {type(unet).__name__}")
        if unet.num_classes is not None or unet.context_dim is not None:
            raise ValueError("unet must be unconditional (no num_classes, no context_dim)")
        self.unet = unet
        dim = unet.time.dim
        self.gap = TimeEmbedding(dim, rngs=rngs)
        # Zero last layer: the gap changes nothing until training says it should.
        self.gap.fc2.kernel[...] = 0.0
        self.gap.fc2.bias[...] = 0.0

    @classmethod
    def from_velocity(cls, velocity: UNet, *, seed: int = 0) -> FlowMapUNet:
        """A flow map that starts as a copy of the velocity network ``velocity``.

        Args:
          velocity: a trained unconditional U-Net ``v(x, t)``; it is copied, not changed.
          seed: seed of the gap embedding's first layer.

        Returns:
          A :class:`FlowMapUNet` with ``u(z, r, t) = velocity(z, r)`` for every ``t``.
        """
        return cls(nnx.clone(velocity), rngs=nnx.Rngs(seed))

    def __call__(self, z: jax.Array, r: jax.Array, t: jax.Array) -> jax.Array:
        """The average velocity over ``[r, t]`` of the path through ``z`` at time ``r``.

        Args:
          z: points at time ``r``, shape (B, H, W, C).
          r, t: start and end times, each of shape (B,) (``r <= t`` in use).

        Returns:
          ``u(z, r, t)``, of ``z``'s shape.
        """
        r = jnp.broadcast_to(jnp.asarray(r, jnp.float32), (z.shape[0],))
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (z.shape[0],))
        return self.unet(z, r, emb_shift=self.gap(t - r))
