"""The layers that the book's networks share: time and label embeddings, residual and
attention blocks, patches, and :func:`count_params`.

Everything trainable is an attribute of an ``nnx.Module`` (or inside an
``nnx.List``) so that NNX sees it.  Parameters captured in a Python closure or a
plain list are invisible to ``nnx.state`` and therefore never trained -- a trap
that the tests of ``tests/unit/nets`` guard against by checking that every parameter
receives a gradient.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import checks


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


def num_groups(channels: int) -> int:
    """The group count of the book's ``nnx.GroupNorm`` layers for ``channels`` channels.

    Args:
      channels: the number of channels to normalise.

    Returns:
      The largest of 8, 4, 2 and 1 that divides ``channels``.
    """
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ResBlock(nnx.Module):
    """Two 3x3 convolutions with a residual connection, modulated by the time embedding.

    The embedding sets a per-channel scale and shift after the first
    normalisation (FiLM), which conditions the block far more strongly than
    adding a bias would.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(in_ch, num_groups=num_groups(in_ch), rngs=rngs)
        self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), rngs=rngs)
        self.film = nnx.Linear(emb_dim, 2 * out_ch, rngs=rngs)
        self.norm2 = nnx.GroupNorm(out_ch, num_groups=num_groups(out_ch), rngs=rngs)
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
        self.norm = nnx.GroupNorm(channels, num_groups=num_groups(channels), rngs=rngs)
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
    which is why :class:`~diffbook.nets.text_encoder.TextEncoder` always puts a learned
    start token first.
    """

    def __init__(self, channels: int, context_dim: int, *, num_heads: int = 4, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(channels, num_groups=num_groups(channels), rngs=rngs)
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
    check of the labels.  :class:`~diffbook.nets.unet.UNet` and
    :class:`~diffbook.nets.dit.DiT` inherit it."""

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


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
