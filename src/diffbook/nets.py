"""Networks shared by the chapters, in Flax NNX: a time embedding, a small U-Net, a text
encoder, the text-to-image model that joins the last two, and a Diffusion Transformer.

Everything trainable is an attribute of an ``nnx.Module`` (or inside an
``nnx.List``) so that NNX sees it.  Parameters captured in a Python closure or a
plain list are invisible to ``nnx.state`` and therefore never trained -- a trap
that ``tests/test_nets.py`` guards against by checking that every parameter
receives a gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import checks


def sinusoidal_embedding(
    t: jax.Array, dim: int, *, max_period: float = 10_000.0, scale: float = 1000.0
) -> jax.Array:
    """Sine/cosine features of a scalar time per example, shape ``(B,)`` -> ``(B, dim)``.

    ``t`` is multiplied by ``scale`` first, so times in ``[0, 1]`` cover the
    same frequencies as integer timesteps ``0..1000`` would.
    """
    dim = checks.positive_int(dim, "dim", minimum=2)
    if dim % 2:
        raise ValueError(f"dim must be a positive even number, got {dim}")
    t = jnp.asarray(t, jnp.float32)
    if t.ndim != 1:
        raise ValueError(f"t must have shape (batch,), got {t.shape}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = scale * t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimeEmbedding(nnx.Module):
    """Sinusoidal features of ``t`` followed by a two-layer MLP."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.dim = dim
        self.fc1 = nnx.Linear(dim, dim, rngs=rngs)
        self.fc2 = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.fc2(nnx.silu(self.fc1(sinusoidal_embedding(t, self.dim))))


def _groups(channels: int) -> int:
    """The largest group count <= 8 that divides ``channels``."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ResBlock(nnx.Module):
    """Two 3x3 convolutions with a residual connection, modulated by the time embedding.

    The embedding sets a per-channel scale and shift after the first
    normalisation (FiLM), which conditions the block far more strongly than
    adding a bias would.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(in_ch, num_groups=_groups(in_ch), rngs=rngs)
        self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), rngs=rngs)
        self.film = nnx.Linear(emb_dim, 2 * out_ch, rngs=rngs)
        self.norm2 = nnx.GroupNorm(out_ch, num_groups=_groups(out_ch), rngs=rngs)
        self.conv2 = nnx.Conv(out_ch, out_ch, (3, 3), rngs=rngs)
        self.skip = nnx.Conv(in_ch, out_ch, (1, 1), rngs=rngs) if in_ch != out_ch else None

    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        scale, shift = jnp.split(self.film(nnx.silu(emb))[:, None, None, :], 2, axis=-1)
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(nnx.silu(h))
        return h + (x if self.skip is None else self.skip(x))


class SelfAttention(nnx.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual."""

    def __init__(self, channels: int, *, num_heads: int = 4, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(channels, num_groups=_groups(channels), rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=num_heads, in_features=channels, decode=False, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        tokens = self.norm(x).reshape(b, h * w, c)
        return x + self.attn(tokens).reshape(b, h, w, c)


class CrossAttention(nnx.Module):
    """Every pixel of a feature map attends to a sequence of context vectors (text tokens).

    ``mask`` (B, L) is True for real tokens; padding gets no attention weight.
    Each row needs at least one True entry (a softmax over nothing is undefined),
    which is why :class:`TextEncoder` always puts a learned start token first.
    """

    def __init__(self, channels: int, context_dim: int, *, num_heads: int = 4, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(channels, num_groups=_groups(channels), rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=num_heads,
            in_features=channels,
            in_kv_features=context_dim,
            decode=False,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        queries = self.norm(x).reshape(b, h * w, c)
        # (B, 1, 1, L): the same key mask for every head and every query pixel.
        out = self.attn(queries, context, mask=mask[:, None, None, :])
        return x + out.reshape(b, h, w, c)


class TextEncoder(nnx.Module):
    """Token ids -> one vector per token, from a small transformer trained with the model.

    ``(tokens, mask)`` of shape (B, L) -> ``(context, context_mask)`` of shape
    (B, L + 1, dim) and (B, L + 1).  A learned *start* vector is put in front of
    every sequence and is never masked, so a prompt with every word dropped (the
    unconditional case of classifier-free guidance) still has one token to attend
    to: the model learns that "start alone" means "no prompt".
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 64,
        *,
        max_len: int = 16,
        layers: int = 2,
        num_heads: int = 4,
        rngs: nnx.Rngs,
    ):
        vocab_size = checks.positive_int(vocab_size, "vocab_size", minimum=2)
        max_len = checks.positive_int(max_len, "max_len")
        self.max_len = max_len
        self.embed = nnx.Embed(vocab_size, dim, rngs=rngs)
        self.start = nnx.Param(jax.random.normal(rngs.params(), (dim,)) * 0.02)
        self.position = nnx.Param(jax.random.normal(rngs.params(), (max_len + 1, dim)) * 0.02)
        self.attn_norms = nnx.List([nnx.LayerNorm(dim, rngs=rngs) for _ in range(layers)])
        self.attns = nnx.List(
            [
                nnx.MultiHeadAttention(
                    num_heads=num_heads, in_features=dim, decode=False, rngs=rngs
                )
                for _ in range(layers)
            ]
        )
        self.mlp_norms = nnx.List([nnx.LayerNorm(dim, rngs=rngs) for _ in range(layers)])
        self.mlps = nnx.List(
            [
                nnx.Sequential(
                    nnx.Linear(dim, 2 * dim, rngs=rngs),
                    nnx.gelu,
                    nnx.Linear(2 * dim, dim, rngs=rngs),
                )
                for _ in range(layers)
            ]
        )
        self.out_norm = nnx.LayerNorm(dim, rngs=rngs)

    def __call__(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        if tokens.ndim != 2 or tokens.shape != mask.shape:
            raise ValueError(
                f"tokens and mask must both have shape (B, L), got {tokens.shape} and {mask.shape}"
            )
        if tokens.shape[1] > self.max_len:
            raise ValueError(
                f"tokens may have at most max_len={self.max_len} positions, got {tokens.shape[1]}"
            )
        b, n = tokens.shape
        start = jnp.broadcast_to(self.start[...], (b, 1, self.start.shape[-1]))
        h = jnp.concatenate([start, self.embed(tokens)], axis=1) + self.position[: n + 1]
        mask = jnp.concatenate([jnp.ones((b, 1), bool), mask.astype(bool)], axis=1)
        pair_mask = mask[:, None, None, :]  # padding is never attended to
        for norm, attn, mlp_norm, mlp in zip(
            self.attn_norms, self.attns, self.mlp_norms, self.mlps, strict=True
        ):
            h = h + attn(norm(h), mask=pair_mask)
            h = h + mlp(mlp_norm(h))
        return self.out_norm(h), mask


class LabelEmbedding(nnx.Module):
    """A learned vector per class label, plus one for "no class".

    ``labels`` (B,) in ``0..num_classes`` -> ``(B, dim)``; the label ``num_classes``
    is the null class that classifier-free guidance trains with condition dropout.
    """

    def __init__(self, num_classes: int, dim: int, *, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.embed = nnx.Embed(num_classes + 1, dim, rngs=rngs)

    def check(self, labels, batch: int | None = None, *, allow_null: bool = True) -> jax.Array:
        """Validate class labels and return them as an array.

        Args:
          labels: ``(B,)`` ints in ``0..num_classes`` (``num_classes`` is "no class").
          batch: the required ``B``, if known.
          allow_null: whether the "no class" label ``num_classes`` is allowed (a
            user's request for a class is checked with ``False``).

        Returns:
          ``labels`` as a JAX array.

        Raises:
          TypeError: if the labels are not integers.
          ValueError: for a wrong shape, or (outside ``jit``) a label out of range.
        """
        labels = jnp.asarray(labels)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.ndim != 1 or (batch is not None and labels.shape != (batch,)):
            want = "(B,)" if batch is None else f"({batch},)"
            raise ValueError(f"labels must have shape {want}, got {labels.shape}")
        if not isinstance(labels, jax.core.Tracer):
            # Checked in NumPy: inside jit even concrete labels (closed over by the
            # traced function) would give traced comparisons that bool() refuses.
            values = np.asarray(labels)
            top = self.num_classes if allow_null else self.num_classes - 1
            bad = (values < 0) | (values > top)
            if bad.any():
                null = f" (or {self.num_classes}, no class)" if allow_null else ""
                raise ValueError(
                    f"labels must lie in 0..{self.num_classes - 1}{null}, "
                    f"got {values[bad][:5].tolist()}"
                )
        return labels

    def __call__(self, labels: jax.Array, batch: int) -> jax.Array:
        return self.embed(self.check(labels, batch))

    def null(self, labels: jax.Array) -> jax.Array:
        """The "no class" label, of ``labels``' shape."""
        return jnp.full_like(jnp.asarray(labels), self.num_classes)


class LabelConditioned:
    """What a network with an optional :class:`LabelEmbedding` (``self.label_embed``,
    ``None`` without classes) offers :mod:`diffbook.guidance`: a null condition and a
    check of the labels.  :class:`UNet` and :class:`DiT` inherit it."""

    def null_condition(self, labels: jax.Array) -> tuple[jax.Array]:
        """The "no class" condition that classifier-free guidance uses.

        Args:
          labels: ``(B,)`` int class labels.

        Returns:
          ``(null_labels,)``: a tuple of one ``(B,)`` array full of ``num_classes``.

        Raises:
          ValueError: if the network was built without ``num_classes``.
        """
        if self.label_embed is None:
            raise ValueError(f"null_condition needs a {type(self).__name__} built with num_classes")
        return (self.label_embed.null(labels),)

    def check_condition(self, labels: jax.Array) -> None:
        """Check class labels before a compiled sampler uses them (see :mod:`diffbook.guidance`).

        Args:
          labels: ``(B,)`` ints.

        Raises:
          TypeError: if they are not integers.
          ValueError: if the network has no classes, or a label is outside
            ``0..num_classes - 1`` (the "no class" label is for the guidance to add,
            not to ask for).
        """
        if self.label_embed is None:
            raise ValueError(f"labels need a {type(self).__name__} built with num_classes")
        self.label_embed.check(labels, allow_null=False)


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
        :meth:`~LabelConditioned.null_condition`).  Call it as ``model(x, t, labels)``.
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
        self.out_norm = nnx.GroupNorm(channels[0], num_groups=_groups(channels[0]), rngs=rngs)
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
    ) -> jax.Array:
        """The prediction for noisy images ``x`` (B, H, W, C) at times ``t`` (B,).

        ``labels`` (B,) ints are required exactly when the model was built with
        ``num_classes``; ``context`` (B, L, context_dim) and ``context_mask`` (B, L)
        exactly when it was built with ``context_dim``.
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


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


class TextToImage(nnx.Module):
    """A :class:`TextEncoder` and a cross-attending :class:`UNet`, trained together.

    ``model(x, u, tokens, mask)`` predicts the noise (or ``v``, or ``x0``) in the
    noisy images ``x`` given a prompt's word ids and padding mask, both from
    :meth:`diffbook.text.Tokenizer.encode`.  A mask that is all False is the empty
    prompt: the unconditional model of classifier-free guidance, which
    :meth:`null_condition` builds.

    Args:
      vocab_size: the tokenizer's number of ids (padding and unknown included).
      max_len: the most token positions a prompt may have.
      text_dim: width of the text encoder's vectors (the U-Net's context width).
      text_layers: transformer layers of the text encoder.
      channels: widths of the U-Net's resolution levels.
      emb_dim: width of the U-Net's time embedding.
      in_channels: channels of the images (3 for RGB pixels; the latent
        channels for a latent diffusion model).
      cross_attention_levels: the U-Net levels that attend to the prompt (0 is
        the full resolution); default: every level but the first.
      rngs: ``nnx.Rngs`` for the initial parameters.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        max_len: int = 8,
        text_dim: int = 64,
        text_layers: int = 2,
        channels: Sequence[int] = (16, 32, 64),
        emb_dim: int = 64,
        in_channels: int = 3,
        cross_attention_levels: Sequence[int] | None = None,
        rngs: nnx.Rngs,
    ):
        self.text = TextEncoder(
            vocab_size, text_dim, max_len=max_len, layers=text_layers, rngs=rngs
        )
        self.unet = UNet(
            in_channels,
            channels,
            emb_dim=emb_dim,
            context_dim=text_dim,
            cross_attention_levels=cross_attention_levels,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, u: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        """The network's prediction for noisy images under a prompt.

        Args:
          x: ``(B, R, R, in_channels)`` noisy images (or latents); ``R``
            divides by ``2 ** (len(channels) - 1)``.
          u: ``(B,)`` float times in ``[0, 1]``.
          tokens: ``(B, L)`` int word ids, ``L <= max_len``.
          mask: ``(B, L)`` bool, True on real words.

        Returns:
          ``(B, R, R, in_channels)``: the predicted noise, ``v`` or ``x0``,
          whichever the model was trained on.
        """
        context, context_mask = self.text(tokens, mask)
        return self.unet(x, u, context=context, context_mask=context_mask)

    def null_condition(self, tokens: jax.Array, mask: jax.Array) -> tuple:
        """The "empty prompt" inputs that classifier-free guidance uses.

        Args:
          tokens: ``(B, L)`` int word ids.
          mask: ``(B, L)`` bool padding mask.

        Returns:
          ``(tokens, all-False mask)``, of the same shapes: every word masked, so
          the model sees only the text encoder's start vector.
        """
        return tokens, jnp.zeros_like(mask)


# ---------------------------------------------------------------------------
# Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
# Transformers"): the image is cut into patches, the patches are tokens of a plain
# transformer, and the time (and class) condition steers every block through
# adaptive layer norm instead of being added to the tokens.
# ---------------------------------------------------------------------------


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """Cut images into non-overlapping square patches, one flat vector per patch.

    The patches are listed row by row (left to right, then top to bottom), and each
    patch's vector holds its pixels in the same row-major order, channels last::

        tokens = patchify(x, 2)   # x (B, 8, 8, C) -> tokens (B, 16, 4 * C)
        tokens[:, 1]              # the 2x2 block x[:, 0:2, 2:4, :], flattened

    Args:
      x: ``(B, H, W, C)`` images; ``H`` and ``W`` divide by ``patch_size``.
      patch_size: side ``p`` of a patch, in pixels.

    Returns:
      ``(B, (H // p) * (W // p), p * p * C)``: token ``k`` is the patch in row
      ``k // (W // p)`` and column ``k % (W // p)`` of the grid of patches.

    Raises:
      TypeError: if ``patch_size`` is not an int.
      ValueError: if ``patch_size < 1``, ``x`` is not 4-D, or its height or width
        does not divide by ``patch_size``.
    """
    p = checks.positive_int(patch_size, "patch_size")
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, H, W, C), got {x.shape}")
    b, h, w, c = x.shape
    if h % p or w % p:
        raise ValueError(
            f"patch_size must divide x's height and width, got patch_size={p} for {h}x{w} images"
        )
    # (B, H/p, p, W/p, p, C): split each image axis into (patch index, pixel in patch),
    # then bring the two patch indices together in front of the pixel indices.
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
    """Put patches back together into images: the inverse of :func:`patchify`.

    Args:
      tokens: ``(B, N, p * p * C)`` patch vectors in :func:`patchify`'s order, with
        ``N = (height // p) * (width // p)``.
      patch_size: side ``p`` of a patch, in pixels.
      height: height of the images, a multiple of ``patch_size``.
      width: width of the images, a multiple of ``patch_size``.

    Returns:
      ``(B, height, width, C)`` images.

    Raises:
      TypeError: if ``patch_size``, ``height`` or ``width`` is not an int.
      ValueError: if one of them is below 1, ``height`` or ``width`` does not divide
        by ``patch_size``, or ``tokens`` does not have the shape above.
    """
    p = checks.positive_int(patch_size, "patch_size")
    height = checks.positive_int(height, "height")
    width = checks.positive_int(width, "width")
    if height % p or width % p:
        raise ValueError(
            f"patch_size must divide height and width, got patch_size={p} "
            f"for height={height}, width={width}"
        )
    tokens = jnp.asarray(tokens)
    rows, cols = height // p, width // p
    if tokens.ndim != 3 or tokens.shape[1] != rows * cols or tokens.shape[2] % (p * p):
        raise ValueError(
            f"tokens must have shape (B, {rows * cols}, {p * p} * C) for {height}x{width} "
            f"images and patch_size={p}, got {tokens.shape}"
        )
    b, _, d = tokens.shape
    c = d // (p * p)
    x = tokens.reshape(b, rows, cols, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def _position_embedding_2d(grid: int, dim: int) -> jax.Array:
    """Fixed 2-D sine-cosine position vectors of a ``grid x grid`` patch grid, ``(grid**2, dim)``.

    The first half of each vector is the sinusoidal embedding of the patch's row,
    the second half that of its column (so ``dim`` must divide by 4), in
    :func:`patchify`'s token order.
    """
    index = jnp.arange(grid * grid)
    rows = sinusoidal_embedding(index // grid, dim // 2, scale=1.0)
    cols = sinusoidal_embedding(index % grid, dim // 2, scale=1.0)
    return jnp.concatenate([rows, cols], axis=-1)


def _modulate(h: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: ``h * (1 + scale) + shift``; zero ``shift`` and ``scale`` leave ``h`` as is."""
    return h * (1.0 + scale) + shift


def _zero_linear(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
    """A linear layer whose weights and bias start at zero (adaLN-Zero's modulations)."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=nnx.initializers.zeros,
        bias_init=nnx.initializers.zeros,
        rngs=rngs,
    )


def _check_transformer_widths(dim, num_heads) -> tuple[int, int]:
    """``(dim, num_heads)`` as ints, if they are positive and the heads split ``dim`` evenly."""
    dim = checks.positive_int(dim, "dim")
    num_heads = checks.positive_int(num_heads, "num_heads")
    if dim % num_heads:
        raise ValueError(
            f"dim must divide by num_heads (each head gets dim // num_heads features), "
            f"got dim={dim}, num_heads={num_heads}"
        )
    return dim, num_heads


class DiTBlock(nnx.Module):
    """A transformer block conditioned by adaLN-Zero, ``(B, N, dim), (B, dim) -> (B, N, dim)``.

    From the condition vector ``c`` a linear layer (of ``silu(c)``) computes six
    ``dim``-vectors: a shift, a scale and a gate for the attention and for the
    MLP.  With ``LN`` a layer norm without learned affine parameters::

        x = x + gate_msa * attn(LN(x) * (1 + scale_msa) + shift_msa)
        x = x + gate_mlp * mlp(LN(x) * (1 + scale_mlp) + shift_mlp)

    That linear layer starts at zero (weights and bias), so every gate is zero
    and the block starts as the identity function: a deep stack of them trains
    from a model that is exactly its own input, the "-Zero" of adaLN-Zero.

    Args:
      dim: width of the tokens and of the condition vector.
      num_heads: attention heads; must divide ``dim``.
      mlp_ratio: the MLP's hidden width is ``mlp_ratio * dim``.
      rngs: ``nnx.Rngs`` for the initial parameters.

    Raises:
      TypeError: if an argument is not an int.
      ValueError: if one is below 1, or ``dim`` does not divide by ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int = 4, *, mlp_ratio: int = 4, rngs: nnx.Rngs):
        dim, num_heads = _check_transformer_widths(dim, num_heads)
        mlp_ratio = checks.positive_int(mlp_ratio, "mlp_ratio")
        # No learned scale or bias: the condition supplies them, per example.
        self.norm1 = nnx.LayerNorm(dim, use_scale=False, use_bias=False, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=num_heads, in_features=dim, decode=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(dim, use_scale=False, use_bias=False, rngs=rngs)
        self.mlp = nnx.Sequential(
            nnx.Linear(dim, mlp_ratio * dim, rngs=rngs),
            nnx.gelu,
            nnx.Linear(mlp_ratio * dim, dim, rngs=rngs),
        )
        self.adaln = _zero_linear(dim, 6 * dim, rngs)

    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        """The block applied to the tokens ``x`` under the condition ``c``.

        Args:
          x: ``(B, N, dim)`` tokens.
          c: ``(B, dim)`` condition vectors (time and class embedding), one per example.

        Returns:
          ``(B, N, dim)``: the updated tokens; equal to ``x`` while the adaLN layer
          is zero.
        """
        # (B, 1, 6 * dim): one set of modulations per example, shared by its tokens.
        mod = self.adaln(nnx.silu(c))[:, None, :]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        x = x + gate_msa * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))


class DiT(LabelConditioned, nnx.Module):
    """A Diffusion Transformer for small square images, ``(B, S, S, C), (B,) -> (B, S, S, C)``.

    The image is cut into ``p x p`` patches (:func:`patchify`), each patch is
    projected linearly to a ``dim``-vector and given a position vector, and the
    resulting ``(S // p) ** 2`` tokens (16 for 8x8 digits and ``p = 2``) pass
    through ``depth`` transformer blocks (:class:`DiTBlock`).  The time, and the
    class label when there is one, enter only through the condition vector
    ``c = TimeEmbedding(t) + LabelEmbedding(labels)``, which modulates every
    block and the final layer (adaLN-Zero).  The final layer -- a layer norm
    modulated by ``c`` and a linear map of each token back to a ``p x p x C``
    patch -- starts at zero, as the blocks' modulations do, so an untrained model
    predicts exactly zeros (as :class:`UNet` does).

    Args:
      in_channels: channels of the image (1 for digits, 3 for colour); also the
        output's.
      image_size: height and width ``S`` of the images, a multiple of
        ``patch_size``.
      patch_size: side ``p`` of a patch, in pixels.
      dim: width of the tokens; a multiple of ``num_heads`` and of 4 (the
        position embedding gives a quarter of it to the sines and the cosines of
        the row and of the column).
      depth: number of transformer blocks.
      num_heads: attention heads of each block.
      mlp_ratio: hidden width of each block's MLP, in multiples of ``dim``.
      num_classes: if given, the model is conditioned on a class label in
        ``0..num_classes - 1``, whose learned embedding is added to the time
        embedding; the extra label ``num_classes`` means "no class" (see
        :meth:`~LabelConditioned.null_condition`).  Call it as ``model(x, t, labels)``.
      rngs: ``nnx.Rngs`` for the initial parameters.

    Raises:
      TypeError: if an integer argument is not an int.
      ValueError: if one is below 1, ``image_size`` does not divide by
        ``patch_size``, or ``dim`` does not divide by ``num_heads`` or by 4.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        *,
        patch_size: int = 2,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        num_classes: int | None = None,
        rngs: nnx.Rngs,
    ):
        in_channels = checks.positive_int(in_channels, "in_channels")
        image_size = checks.positive_int(image_size, "image_size")
        patch_size = checks.positive_int(patch_size, "patch_size")
        depth = checks.positive_int(depth, "depth")
        dim, num_heads = _check_transformer_widths(dim, num_heads)
        if image_size % patch_size:
            raise ValueError(
                f"image_size must divide by patch_size, got image_size={image_size}, "
                f"patch_size={patch_size}"
            )
        if dim % 4:
            raise ValueError(
                f"dim must be a multiple of 4 (for the 2-D sine-cosine position "
                f"embedding), got {dim}"
            )
        self.in_channels = in_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.dim = dim
        patch_features = patch_size * patch_size * in_channels
        # A linear map of each flattened patch: the same as a p x p convolution
        # with stride p, as the paper writes it.
        self.patch_embed = nnx.Linear(patch_features, dim, rngs=rngs)
        # Positions are the fixed 2-D sine-cosine vectors of the paper (and of ViT/MAE)
        # rather than a learned table: they need no parameters, and tell the model
        # from the first step which patches are neighbours along a row or a column,
        # which a learned table would have to find out from the data.  They are
        # computed in __call__ (a constant under jit), so they are no state to train.
        self.time = TimeEmbedding(dim, rngs=rngs)
        self.blocks = nnx.List(
            [DiTBlock(dim, num_heads, mlp_ratio=mlp_ratio, rngs=rngs) for _ in range(depth)]
        )
        self.final_norm = nnx.LayerNorm(dim, use_scale=False, use_bias=False, rngs=rngs)
        self.final_adaln = _zero_linear(dim, 2 * dim, rngs)
        self.final_linear = nnx.Linear(
            dim,
            patch_features,
            kernel_init=nnx.initializers.zeros,
            bias_init=nnx.initializers.zeros,
            rngs=rngs,
        )
        # Built last, so that the other layers draw the same initial weights with
        # or without it.
        self.num_classes = checks.positive_int(num_classes, "num_classes", allow_none=True)
        self.label_embed = (
            None if num_classes is None else LabelEmbedding(self.num_classes, dim, rngs=rngs)
        )

    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """The prediction for noisy images ``x`` at times ``t``.

        Args:
          x: ``(B, S, S, in_channels)`` noisy images, ``S = image_size``.
          t: ``(B,)`` float times in ``[0, 1]`` (a scalar is used for every example).
          labels: ``(B,)`` int class labels in ``0..num_classes`` (``num_classes``
            is "no class"); required exactly when the model was built with
            ``num_classes``.

        Returns:
          ``(B, S, S, in_channels)``: the predicted noise, ``v`` or ``x0``, whichever
          the model was trained on.

        Raises:
          ValueError: if ``x`` has the wrong shape, ``labels`` is given without
            ``num_classes`` or missing with it, or a label is out of range.
          TypeError: if ``labels`` are not integers.
        """
        if (labels is None) != (self.num_classes is None):
            raise ValueError(
                "labels must be given exactly when the DiT was built with "
                f"num_classes (num_classes={self.num_classes})"
            )
        size, channels = self.image_size, self.in_channels
        if x.ndim != 4 or x.shape[1:] != (size, size, channels):
            raise ValueError(f"x must have shape (B, {size}, {size}, {channels}), got {x.shape}")
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        c = self.time(t)
        if labels is not None:
            c = c + self.label_embed(labels, x.shape[0])
        grid = size // self.patch_size
        h = self.patch_embed(patchify(x, self.patch_size)) + _position_embedding_2d(grid, self.dim)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = jnp.split(self.final_adaln(nnx.silu(c))[:, None, :], 2, axis=-1)
        h = self.final_linear(_modulate(self.final_norm(h), shift, scale))  # (B, N, p * p * C)
        return unpatchify(h, self.patch_size, size, size)


class NoisyClassifier(nnx.Module):
    """A small convolutional classifier of noisy images, ``(B, H, W, C), (B,) -> (B, K)`` logits.

    The model behind classifier guidance (Dhariwal & Nichol 2021): it reads an
    image ``x_t`` *and* its noise level ``u`` (through the same FiLM-modulated
    :class:`ResBlock` as the U-Net) and predicts the class of the clean image that
    was noised.  Trained only on clean images (``u = 0``) it is an ordinary
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
        self.norm = nnx.GroupNorm(channels[-1], num_groups=_groups(channels[-1]), rngs=rngs)
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
