"""A Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"): the image is cut into patches, the patches are tokens of a plain
transformer, and the time (and class) condition steers every block through adaptive
layer norm instead of being added to the tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .. import checks
from .layers import (
    LabelConditioned,
    LabelEmbedding,
    TimeEmbedding,
    patchify,
    sinusoidal_embedding,
    unpatchify,
)


def _position_embedding_2d(grid: int, dim: int) -> jax.Array:
    """Fixed 2-D sine-cosine position vectors of a ``grid x grid`` patch grid, ``(grid**2, dim)``.

    The first half of each vector is the sinusoidal embedding of the patch's row,
    the second half that of its column (so ``dim`` must divide by 4), in
    :func:`~diffbook.nets.layers.patchify`'s token order.
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

    The image is cut into ``p x p`` patches (:func:`~diffbook.nets.layers.patchify`), each patch is
    projected linearly to a ``dim``-vector and given a position vector, and the
    resulting ``(S // p) ** 2`` tokens (16 for 8x8 digits and ``p = 2``) pass
    through ``depth`` transformer blocks (:class:`DiTBlock`).  The time, and the
    class label when there is one, enter only through the condition vector
    ``c = TimeEmbedding(t) + LabelEmbedding(labels)``, which modulates every
    block and the final layer (adaLN-Zero).  The final layer -- a layer norm
    modulated by ``c`` and a linear map of each token back to a ``p x p x C``
    patch -- starts at zero, as the blocks' modulations do, so an untrained model
    predicts exactly zeros (as :class:`~diffbook.nets.unet.UNet` does).

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
        :meth:`~diffbook.nets.layers.LabelConditioned.null_condition`).  Call it as
        ``model(x, t, labels)``.
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
