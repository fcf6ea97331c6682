"""Latent diffusion for text-to-emoji: the recipe, and the two bridges between spaces.

Stage 1 (:mod:`diffbook.autoencoder`) maps each ``(R, R, 3)`` emoji to a small
grid of latents; stage 2, this module's recipe, is chapter 5's text-conditioned
network (:class:`diffbook.nets.text_encoder.TextToImage`, with its tokenizer, text encoder,
cross-attention and classifier-free guidance) trained on those latents instead of
pixels.  A sample is drawn in latent space with
:class:`diffbook.guidance.GuidedSampler` and decoded to pixels.

Between the spaces sit two small functions: :func:`encode` (images to latents,
multiplied by the latent scale factor) and :func:`decode` (the inverse, clipped
to ``[-1, 1]``).  Both work in batches so that a few hundred emoji need no more
memory than one batch.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import checks, text_to_image
from .autoencoder import Autoencoder
from .nets import TextToImage
from .train import shard_batch

#: The diffusion stage's recipes; :func:`diffbook.config.pick` chooses one, and the
#: autoencoder's recipe of the same name (:data:`diffbook.autoencoder.RECIPE`) gives
#: stage 1.  ``resolution`` must match it.  The network is chapter 5's, with two
#: resolution levels (8x8 and 4x4 latents) and cross-attention at both.
RECIPE = {
    "cpu": dict(
        resolution=32,
        num_emoji=300,
        max_len=8,
        text_dim=64,
        text_layers=2,
        channels=(48, 96),
        emb_dim=96,
        batch_size=64,
        steps=900,
        peak_lr=2e-3,
        warmup=100,
        ema_decay=0.995,
        p_uncond=0.1,
        num_timesteps=1000,
        prediction="v",
        # 10, 25 and 50 DDIM steps gave the same fidelity and PSNR (chapter 7, exercise 3).
        sample_steps=10,
        guidance=3.0,
        num_samples=300,  # prompts sampled in the guidance sweep: the first ones (here all)
    ),
    "accelerator": dict(
        resolution=64,
        # The first 1,200 of the 1,640 named emoji; the others stay unseen (chapter 5's and
        # chapter 7's sections on names the model never saw).
        num_emoji=1200,
        max_len=8,
        text_dim=128,
        text_layers=3,
        channels=(128, 256),
        emb_dim=256,
        # With the autoencoder's, sized by diffbook.cost to about 7 minutes on a Colab T4.
        batch_size=128,
        steps=5000,
        peak_lr=1e-3,
        warmup=200,
        ema_decay=0.999,
        p_uncond=0.1,
        num_timesteps=1000,
        prediction="v",
        sample_steps=25,
        guidance=3.0,
        num_samples=600,
    ),
    # A smoke run of the chapter (see diffbook.config.pick): every cell, few steps.
    "smoke": dict(steps=10, warmup=2, batch_size=16, sample_steps=2, num_samples=24),
}


def make_model(cfg, vocab_size: int, latent_channels: int, *, seed: int = 0) -> TextToImage:
    """The recipe's text-conditioned U-Net, for latents of ``latent_channels`` channels.

    Args:
      cfg: a recipe from :data:`RECIPE`, as :func:`diffbook.config.pick` returns it.
      vocab_size: the tokenizer's number of ids (``tokenizer.vocab_size``).
      latent_channels: channels of the autoencoder's latents
        (``autoencoder.latent_channels``).
      seed: seed of the initial parameters.

    Returns:
      A :class:`~diffbook.nets.text_encoder.TextToImage` whose inputs and outputs have
      ``latent_channels`` channels.

    Raises:
      TypeError, ValueError: for a setting out of range (named in the message).
    """
    return text_to_image.make_model(
        cfg,
        vocab_size,
        seed=seed,
        in_channels=latent_channels,
        cross_attention_levels=tuple(range(len(cfg.channels))),
    )


# Each batch is split over the devices (train.shard_batch), as fit splits its batches.
@nnx.jit
def _encode_batch(autoencoder, x):
    return autoencoder.encode(shard_batch(x))


@nnx.jit
def _decode_batch(autoencoder, z):
    return jnp.clip(autoencoder.decode(shard_batch(z)), -1.0, 1.0)


def _batched(fn, autoencoder, arrays, batch_size: int) -> np.ndarray:
    # Pad the last batch to the full size: one compiled shape for every batch.
    n = len(arrays)
    out = []
    for start in range(0, n, batch_size):
        chunk = arrays[start : start + batch_size]
        pad = batch_size - len(chunk) if n > batch_size else 0
        if pad:
            chunk = jnp.concatenate([chunk, jnp.repeat(chunk[-1:], pad, axis=0)])
        out.append(np.asarray(fn(autoencoder, chunk))[: len(chunk) - pad])
    return np.concatenate(out)


def _check_scale_and_batch(scale, batch_size) -> tuple[float, int]:
    scale = checks.finite_number(scale, "scale", minimum=0.0)
    if scale == 0.0:
        raise ValueError("scale must be > 0, got 0")
    return scale, checks.positive_int(batch_size, "batch_size")


def encode(autoencoder: Autoencoder, images, scale: float = 1.0, *, batch_size: int = 256):
    """Latents of images for the diffusion model: the posterior means times ``scale``.

    Args:
      autoencoder: a trained :class:`~diffbook.autoencoder.Autoencoder`.
      images: ``(N, R, R, 3)`` in ``[-1, 1]``, ``R`` the autoencoder's resolution.
      scale: the latent scale factor (:func:`diffbook.autoencoder.latent_scale_factor`
        of unscaled latents); 1 gives the unscaled latents.
      batch_size: images encoded per call.

    Returns:
      ``(N, R/f, R/f, c)`` float32 NumPy array: ``scale * autoencoder.encode(images)``.

    Raises:
      TypeError, ValueError: for images the autoencoder does not take, or a
        ``scale`` or ``batch_size`` that is not positive (named in the message).
    """
    scale, batch_size = _check_scale_and_batch(scale, batch_size)
    images = autoencoder.check_images(images, "images")
    return _batched(_encode_batch, autoencoder, images, batch_size) * np.float32(scale)


def decode(autoencoder: Autoencoder, latents, scale: float = 1.0, *, batch_size: int = 256):
    """Images from (scaled) latents: ``autoencoder.decode(latents / scale)``, clipped.

    Args:
      autoencoder: a trained :class:`~diffbook.autoencoder.Autoencoder`.
      latents: ``(N, R/f, R/f, c)``, e.g. samples of the diffusion model.
      scale: the factor the latents were multiplied by (see :func:`encode`).
      batch_size: latents decoded per call.

    Returns:
      ``(N, R, R, 3)`` float32 NumPy array in ``[-1, 1]``.

    Raises:
      TypeError, ValueError: for latents not of the autoencoder's latent shape,
        or a ``scale`` or ``batch_size`` that is not positive (named in the message).
    """
    scale, batch_size = _check_scale_and_batch(scale, batch_size)
    z = jnp.asarray(latents, jnp.float32)
    if z.ndim != 4 or tuple(z.shape[1:]) != autoencoder.latent_shape:
        raise ValueError(
            f"latents must have shape (N, *{autoencoder.latent_shape}) for this autoencoder, "
            f"got {z.shape}"
        )
    return _batched(_decode_batch, autoencoder, z / scale, batch_size)
