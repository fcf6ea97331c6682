"""Chapter 7's benchmark: ``python -m diffbook.bench latent [--guidance S] [--num-emoji N]``.

Trains both stages of the latent diffusion recipe on the emoji: first the autoencoder
(``autoencoder_s``, ``autoencoder_steps``; its reconstructions are judged by their
PSNR, ``recon_psnr_median`` and ``recon_psnr_p10``, and their prompt fidelity,
``recon_top1`` and ``recon_top5``), then the text-conditioned U-Net on its latents,
scaled to unit variance (``latent_scale``).  One image per prompt is sampled in latent
space with the guided DDIM sampler at scale ``--guidance`` (default: the recipe's)
and decoded to pixels: ``sample_s`` covers sampler and decoder, and the samples are
judged by :func:`diffbook.metrics.prompt_fidelity` and their PSNR against their own
emoji (``psnr_median``), with ``top1_unconditional`` and ``top5_unconditional`` from
the same noise without the prompt.  ``compile_s`` and ``train_s`` cover both stages,
``diffusion_s`` the second alone.

``--num-emoji`` and ``--autoencoder-steps`` (with ``--train-steps`` for the second
stage) shorten a run for quick checks.  ``--samples PATH`` saves ``samples``,
``prompts``, ``train_images`` and ``train_prompts`` as ``.npz``.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np

from . import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the chapter's options to its subcommand's ``parser``."""
    parser.add_argument(
        "--guidance",
        type=float,
        help="guidance scale s (0: no prompt; default: the recipe's)",
    )
    parser.add_argument(
        "--num-emoji",
        type=common.int_at_least(6),
        help="override the recipe's number of emoji (for quick checks; at least 6)",
    )
    parser.add_argument(
        "--autoencoder-steps",
        type=common.int_at_least(2),
        help="override the autoencoder's training steps (for quick checks)",
    )


def check(args: argparse.Namespace) -> None:
    """Refuse options that argparse cannot judge alone (before anything trains).

    Raises:
      ValueError: naming ``--guidance`` if the scale is negative or not finite.
    """
    common.check_guidance(args.guidance)


def run(args: argparse.Namespace) -> dict:
    """Train both stages of chapter 7's latent diffusion, sample and decode.

    Args:
      args: the parsed options.

    Returns:
      The JSON line's fields, named in this module's description.

    Raises:
      ValueError: if the autoencoder's and the diffusion's recipes disagree on the
        resolution.
    """
    from .. import autoencoder as ae
    from .. import config, emoji, guidance, metrics, nets, text
    from .. import latent_diffusion as ld
    from ..schedules import NoiseSchedule

    cfg = common.pick_recipe(ld.RECIPE, args, num_emoji=args.num_emoji)
    ae_cfg = config.pick(ae.RECIPE, cfg.name)
    if args.autoencoder_steps is not None:
        ae_cfg = ae_cfg.replace(**common.with_steps(ae_cfg, args.autoencoder_steps))
    if ae_cfg.resolution != cfg.resolution:
        raise ValueError(
            f"the {cfg.name} recipes disagree: autoencoder resolution {ae_cfg.resolution}, "
            f"diffusion resolution {cfg.resolution}"
        )
    scale = guidance.check_scale(cfg.guidance if args.guidance is None else args.guidance)
    images, prompts = emoji.load_emoji(cfg.resolution, limit=cfg.num_emoji)
    tokenizer = text.Tokenizer.fit(prompts)
    tokens, mask = tokenizer.encode(prompts, cfg.max_len)
    key_ae, key_ld, key_noise = jax.random.split(jax.random.key(args.seed), 3)

    # Stage 1: the autoencoder.
    autoenc = ae.make_autoencoder(ae_cfg, seed=args.seed)
    ae_ema, ae_history = common.fit_recipe(
        autoenc,
        ae_cfg,
        functools.partial(ae.autoencoder_loss, kl_weight=ae_cfg.kl_weight),
        images,
        key_ae,
        ema_warmup=True,
    )
    latents = ld.encode(ae_ema, images)
    latent_scale = ae.latent_scale_factor(latents)
    z = latents * np.float32(latent_scale)
    recon = ld.decode(ae_ema, latents)
    recon_psnr = metrics.pooled_psnr(recon, images)
    labels = np.arange(len(prompts))
    recon_fidelity = metrics.prompt_fidelity(recon, labels, images)

    # Stage 2: the text-conditioned network on the scaled latents.
    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    model = ld.make_model(cfg, tokenizer.vocab_size, ae_cfg.latent_channels, seed=args.seed)
    ema, history = common.fit_text_to_image(model, cfg, schedule, (z, tokens, mask), key_ld)
    # Latents are not images: no clipping to [-1, 1] inside the sampler.
    sampler = guidance.GuidedSampler(
        schedule, steps=cfg.sample_steps, prediction=cfg.prediction, clip_x0=False
    )
    noise = jax.random.normal(key_noise, z.shape)

    def draw(s):
        """Samples at guidance scale ``s``, decoded: (pixels, nfe, seconds)."""
        t0 = time.perf_counter()
        z_0, nfe = sampler(ema, (tokens, mask), noise, scale=s)
        pixels = ld.decode(ae_ema, z_0, latent_scale)
        return pixels, int(nfe), time.perf_counter() - t0

    _, _, sample_compile_s = draw(scale)  # compiles sampler and decoder
    samples, nfe, sample_s = draw(scale)
    fidelity = metrics.prompt_fidelity(samples, labels, images)
    own_psnr = metrics.pooled_psnr(samples, images)
    result = common.report(
        "latent",
        cfg,
        model,
        history,
        loss_window=100,
        autoencoder_s=round(ae_history.train_s, 2),
        autoencoder_compile_s=round(ae_history.compile_s, 2),
        diffusion_s=round(history.train_s, 2),
        autoencoder_steps=ae_history.steps,
        autoencoder_params=nets.count_params(autoenc),
        resolution=cfg.resolution,
        latent_shape=list(autoenc.latent_shape),
        latent_scale=round(latent_scale, 4),
        num_emoji=len(prompts),
        guidance=scale,
        nfe=nfe,
        sample_compile_s=round(sample_compile_s, 2),
        sample_s=round(sample_s, 2),
        recon_psnr_median=round(float(np.median(recon_psnr)), 2),
        recon_psnr_p10=round(float(np.percentile(recon_psnr, 10)), 2),
        recon_top1=round(recon_fidelity["top1"], 4),
        recon_top5=round(recon_fidelity["top5"], 4),
        psnr_median=round(float(np.median(own_psnr)), 2),
        **{k: round(float(v), 4) for k, v in fidelity.items()},
    )
    # Both stages: compile_s and train_s cover the autoencoder and the diffusion model.
    result["compile_s"] = round(ae_history.compile_s + history.compile_s, 2)
    result["train_s"] = round(ae_history.train_s + history.train_s, 2)
    if scale != 0.0:
        unconditional = metrics.prompt_fidelity(draw(0.0)[0], labels, images)
        result["top1_unconditional"] = round(unconditional["top1"], 4)
        result["top5_unconditional"] = round(unconditional["top5"], 4)
    if args.samples:
        # Sample i was prompted by prompts[i]; train_prompts are the same names
        # (one image per name), saved under both keys as the format asks.
        np.savez_compressed(
            args.samples,
            samples=samples,
            prompts=np.array(prompts),
            train_images=images,
            train_prompts=np.array(prompts),
        )
    return result
