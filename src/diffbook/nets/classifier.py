"""A noise-aware image classifier, the model behind classifier guidance (chapter 6)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from .. import checks
from .layers import ResBlock, TimeEmbedding, num_groups


class NoisyClassifier(nnx.Module):
    """A small convolutional classifier of noisy images, ``(B, H, W, C), (B,) -> (B, K)`` logits.

    The model behind classifier guidance (Dhariwal & Nichol 2021): it reads an
    image ``x_t`` *and* its noise level ``u`` (through the same FiLM-modulated
    :class:`~diffbook.nets.layers.ResBlock` as the U-Net) and predicts the class of
    the clean image that was noised.  Trained only on clean images (``u = 0``) it is an ordinary
    classifier, which is what the class-conditional chapter shows to fail as a guide.

    Args:
      in_channels: channels of the image.
      channels: width of each resolution level; every level after the first
        halves the resolution.
      num_classes: number of classes ``K``.
      emb_dim: width of the time embedding.
      rngs: ``nnx.Rngs`` for the initial parameters.

    Raises:
      TypeError, ValueError: for an argument that is not a positive int (or a
        sequence of them).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32),
        *,
        num_classes: int = 10,
        emb_dim: int = 32,
        rngs: nnx.Rngs,
    ):
        channels = tuple(checks.positive_int(c, f"channels[{i}]") for i, c in enumerate(channels))
        if not channels:
            raise ValueError("channels must be a non-empty sequence of positive ints, got ()")
        self.in_channels = checks.positive_int(in_channels, "in_channels")
        self.num_classes = checks.positive_int(num_classes, "num_classes", minimum=2)
        emb_dim = checks.positive_int(emb_dim, "emb_dim", minimum=2)
        self.time = TimeEmbedding(emb_dim, rngs=rngs)
        self.stem = nnx.Conv(self.in_channels, channels[0], (3, 3), rngs=rngs)
        self.blocks = nnx.List(
            [
                ResBlock(channels[max(i - 1, 0)], c, emb_dim, rngs=rngs)
                for i, c in enumerate(channels)
            ]
        )
        self.pool = nnx.List(
            [nnx.Conv(c, c, (3, 3), strides=(2, 2), rngs=rngs) for c in channels[:-1]]
        )
        self.norm = nnx.GroupNorm(channels[-1], num_groups=num_groups(channels[-1]), rngs=rngs)
        self.head = nnx.Linear(channels[-1], self.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, u: jax.Array) -> jax.Array:
        """Class logits of noisy images.

        Args:
          x: ``(B, H, W, in_channels)`` images at noise level ``u``.
          u: ``(B,)`` float times in ``[0, 1]`` (0 for clean images), or a scalar.

        Returns:
          ``(B, num_classes)`` logits (unnormalised log-probabilities).

        Raises:
          ValueError: if ``x`` is not ``(B, H, W, in_channels)``.
        """
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must have shape (B, H, W, {self.in_channels}), got {x.shape}")
        u = jnp.broadcast_to(jnp.asarray(u, jnp.float32), (x.shape[0],))
        emb = self.time(u)
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if i < len(self.pool):
                h = self.pool[i](h)
        # Global average pooling: the class does not depend on where a stroke lies.
        return self.head(nnx.silu(self.norm(h)).mean(axis=(1, 2)))
