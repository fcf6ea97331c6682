"""A small transformer text encoder, and :class:`TextToImage`, which joins it to a
cross-attending :class:`~diffbook.nets.unet.UNet` (the text-to-image chapters, 5 and 7)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from .. import checks
from .unet import UNet


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


class TextToImage(nnx.Module):
    """A :class:`TextEncoder` and a cross-attending :class:`~diffbook.nets.unet.UNet`, trained
    together.

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
