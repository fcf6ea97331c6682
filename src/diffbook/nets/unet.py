"""A time-conditioned U-Net for small images, optionally conditioned on a class label or
on a sequence of context vectors (text), and the U-Net of a chapter's recipe."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from .. import checks
from .layers import (
    CrossAttention,
    LabelConditioned,
    LabelEmbedding,
    ResBlock,
    SelfAttention,
    TimeEmbedding,
    num_groups,
)


class UNet(LabelConditioned, nnx.Module):
    """A time-conditioned U-Net for small images, ``(B, H, W, C), (B,) -> (B, H, W, C)``.

    Args:
      in_channels: channels of the image (1 for digits, 3 for colour).
      channels: width of each resolution level; every level after the first
        halves the resolution, so H and W must divide by ``2 ** (len(channels) - 1)``.
      emb_dim: width of the time embedding.
      attention: self-attention at the lowest resolution (cheap there).
      out_channels: defaults to ``in_channels``.
      context_dim: if given, the model is conditioned on a sequence of context
        vectors of this width (text tokens): cross-attention after each ResBlock
        of the levels in ``cross_attention_levels``, and the masked mean of the
        context, projected, added to the time embedding.  Call it as
        ``model(x, t, context, context_mask)``.
      cross_attention_levels: which levels get cross-attention (0 is the full
        resolution); default: every level but the first, where it costs most.
      num_classes: if given, the model is conditioned on a class label in
        ``0..num_classes - 1``: a learned embedding of the label is added to the
        time embedding.  The extra label ``num_classes`` means "no class" (the
        unconditional model of classifier-free guidance, see
        :meth:`~diffbook.nets.layers.LabelConditioned.null_condition`).  Call it as
        ``model(x, t, labels)``.
      rngs: ``nnx.Rngs`` for the initial parameters.

    The output layer starts at zero, so an untrained model predicts zeros.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64),
        *,
        emb_dim: int = 64,
        attention: bool = True,
        out_channels: int | None = None,
        context_dim: int | None = None,
        cross_attention_levels: Sequence[int] | None = None,
        num_classes: int | None = None,
        rngs: nnx.Rngs,
    ):
        channels = tuple(channels)
        if not channels:
            raise ValueError("channels must be a non-empty sequence of positive ints, got ()")
        channels = tuple(checks.positive_int(c, f"channels[{i}]") for i, c in enumerate(channels))
        in_channels = checks.positive_int(in_channels, "in_channels")
        emb_dim = checks.positive_int(emb_dim, "emb_dim", minimum=2)
        out_channels = checks.positive_int(out_channels, "out_channels", allow_none=True)
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.levels = len(channels)
        self.time = TimeEmbedding(emb_dim, rngs=rngs)
        self.stem = nnx.Conv(in_channels, channels[0], (3, 3), rngs=rngs)
        # Encoder: one ResBlock per level; a strided conv between levels.
        self.down = nnx.List(
            [
                ResBlock(channels[max(i - 1, 0)], c, emb_dim, rngs=rngs)
                for i, c in enumerate(channels)
            ]
        )
        self.pool = nnx.List(
            [nnx.Conv(c, c, (3, 3), strides=(2, 2), rngs=rngs) for c in channels[:-1]]
        )
        self.mid = ResBlock(channels[-1], channels[-1], emb_dim, rngs=rngs)
        self.attn = SelfAttention(channels[-1], rngs=rngs) if attention else None
        # Decoder: concatenates the encoder's feature map of the same level.
        self.up = nnx.List(
            [
                ResBlock(
                    channels[i] + (channels[i + 1] if i + 1 < len(channels) else channels[i]),
                    channels[i],
                    emb_dim,
                    rngs=rngs,
                )
                for i in reversed(range(len(channels)))
            ]
        )
        self.context_dim = context_dim
        if context_dim is None:
            self.cross_levels = ()
        else:
            levels = (
                range(1, len(channels))
                if cross_attention_levels is None
                else cross_attention_levels
            )
            self.cross_levels = tuple(sorted(int(i) for i in levels))
            if any(not 0 <= i < len(channels) for i in self.cross_levels):
                raise ValueError(
                    f"cross_attention_levels must lie in 0..{len(channels) - 1}, "
                    f"got {cross_attention_levels}"
                )
            self.context_to_emb = nnx.Linear(context_dim, emb_dim, rngs=rngs)
            self.cross_down = nnx.List(
                [CrossAttention(channels[i], context_dim, rngs=rngs) for i in self.cross_levels]
            )
            self.cross_mid = CrossAttention(channels[-1], context_dim, rngs=rngs)
            self.cross_up = nnx.List(
                [CrossAttention(channels[i], context_dim, rngs=rngs) for i in self.cross_levels]
            )
        self.out_norm = nnx.GroupNorm(channels[0], num_groups=num_groups(channels[0]), rngs=rngs)
        self.out = nnx.Conv(
            channels[0], out_channels, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs
        )
        # Built last, so that the other layers draw the same initial weights with
        # or without it.
        self.num_classes = checks.positive_int(num_classes, "num_classes", allow_none=True)
        self.label_embed = (
            None if num_classes is None else LabelEmbedding(self.num_classes, emb_dim, rngs=rngs)
        )

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        labels: jax.Array | None = None,
        *,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        emb_shift: jax.Array | None = None,
    ) -> jax.Array:
        """The prediction for noisy images ``x`` (B, H, W, C) at times ``t`` (B,).

        ``labels`` (B,) ints are required exactly when the model was built with
        ``num_classes``; ``context`` (B, L, context_dim) and ``context_mask`` (B, L)
        exactly when it was built with ``context_dim``.  ``emb_shift`` (B, emb_dim),
        if given, is added to the time embedding: a second condition computed
        outside the U-Net, such as :class:`~diffbook.nets.flow_map.FlowMapUNet`'s
        embedding of a second time.
        """
        if (labels is None) != (self.num_classes is None):
            raise ValueError(
                "labels must be given exactly when the U-Net was built with "
                f"num_classes (num_classes={self.num_classes})"
            )
        if (context is None) != (self.context_dim is None):
            raise ValueError(
                "context must be given exactly when the U-Net was built with "
                f"context_dim (context_dim={self.context_dim})"
            )
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must have shape (B, H, W, {self.in_channels}), got {x.shape}")
        factor = 2 ** (self.levels - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"x's height and width must divide by {factor}, got {x.shape[1:3]}")
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        emb = self.time(t)
        if emb_shift is not None:
            if emb_shift.shape != emb.shape:
                raise ValueError(f"emb_shift must have shape {emb.shape}, got {emb_shift.shape}")
            emb = emb + emb_shift
        if labels is not None:
            emb = emb + self.label_embed(labels, x.shape[0])
        if context is not None:
            if context_mask is None:
                context_mask = jnp.ones(context.shape[:2], bool)
            # The mean of the real tokens conditions every ResBlock through FiLM, as
            # the time does; cross-attention lets each pixel pick tokens of its own.
            weights = context_mask.astype(context.dtype)[..., None]
            pooled = (context * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
            emb = emb + self.context_to_emb(pooled)
        cross = dict(zip(self.cross_levels, range(len(self.cross_levels)), strict=True))
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            if i in cross:
                h = self.cross_down[cross[i]](h, context, context_mask)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        if context is not None:
            h = self.cross_mid(h, context, context_mask)
        for j, block in enumerate(self.up):
            level = self.levels - 1 - j
            skip = skips.pop()
            if h.shape[1] != skip.shape[1]:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour upsampling
            h = block(jnp.concatenate([h, skip], axis=-1), emb)
            if level in cross:
                h = self.cross_up[cross[level]](h, context, context_mask)
        return self.out(nnx.silu(self.out_norm(h)))


def unet_from_recipe(cfg, *, in_channels: int = 1, seed: int = 0) -> UNet:
    """The U-Net of a chapter's recipe: a :class:`UNet` of widths ``cfg["channels"]``.

    The digit chapters build their network this way; pair it with
    :func:`diffbook.train.adamw_with_ema` for its EMA copy and optimiser::

        model = nets.unet_from_recipe(cfg, seed=0)
        ema, optimizer = train.adamw_with_ema(model, peak_lr=cfg.peak_lr, steps=cfg.steps,
                                              warmup=cfg.warmup)

    Args:
      cfg: a recipe (a mapping such as :class:`diffbook.config.Config`) with the key
        ``"channels"``, a sequence of positive ints (one width per resolution level).
      in_channels: channels of the images (1 for digits); also the output's.
      seed: seed of the ``nnx.Rngs`` for the initial weights; the same seed gives
        the same weights.

    Returns:
      A fresh :class:`UNet` mapping ``(B, H, W, in_channels), (B,)`` to
      ``(B, H, W, in_channels)``.

    Raises:
      KeyError: if ``cfg`` has no ``"channels"``.
      TypeError, ValueError: if ``in_channels``, ``seed`` or the widths are not valid.
    """
    if "channels" not in cfg:
        raise KeyError(f"the recipe has no 'channels' (the U-Net's widths); it has {sorted(cfg)}")
    seed = checks.positive_int(seed, "seed", minimum=0)
    return UNet(in_channels, cfg["channels"], rngs=nnx.Rngs(seed))
