"""Chapter 5's benchmark: ``python -m diffbook.bench emoji [--guidance S] [--probe]``.

Trains the chapter's text-to-image U-Net on the emoji of the recipe (their names as
prompts, with condition dropout), then draws one image per prompt with the guided DDIM
sampler at scale ``--guidance`` (default: the recipe's).  The samples are judged by
:func:`diffbook.metrics.prompt_fidelity` (``top1``, ``top5``, ``distance_ratio``: does
a sample look like its own prompt's emoji rather than the others?) and by the PSNR of
each sample against its own emoji (``psnr_median``); the same noise is also sampled at
scale 1 (the conditional model without guidance) and 0 (no prompt), giving
``top5_conditional`` and ``top5_unconditional``.

``--num-emoji``, ``--resolution`` and ``--prediction`` override the recipe (chapter 7
compares with this bench at 32×32); ``--probe`` adds :func:`probe`'s figures, where
along the sampling grid the network learns the prompts.  ``--samples PATH`` saves
``samples``, ``prompts`` and ``train_images`` as ``.npz`` (sample ``i`` was drawn for
``prompts[i]``, the name of ``train_images[i]``).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from . import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the chapter's options to its subcommand's ``parser``."""
    parser.add_argument(
        "--guidance",
        type=float,
        help="guidance scale s of eps_u + s (eps_c - eps_u); 0: no prompt, "
        "1: the conditional model without guidance (default: the recipe's)",
    )
    parser.add_argument(
        "--prediction",
        choices=["epsilon", "v"],
        help="what the network predicts (default: the recipe's, v)",
    )
    parser.add_argument(
        "--num-emoji",
        type=common.int_at_least(6),
        help="override the recipe's number of emoji (for quick checks; at "
        "least 6: fidelity looks at the 5 nearest)",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        choices=[16, 32, 64],
        help="override the recipe's resolution (the latent diffusion chapter's "
        "pixel-space comparison uses 32)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="also measure where the network learned the prompts: fidelity of "
        "its clean-image estimate at each noise level, and of samples "
        "started later on the sampling grid (3 seeds each)",
    )


def check(args: argparse.Namespace) -> None:
    """Refuse options that argparse cannot judge alone (before anything trains).

    Raises:
      ValueError: naming ``--guidance`` if the scale is negative or not finite.
    """
    common.check_guidance(args.guidance)


def run(args: argparse.Namespace) -> dict:
    """Train and sample chapter 5's text-to-image network.

    Args:
      args: the parsed options.

    Returns:
      The JSON line's fields: :func:`~diffbook.bench.common.report`'s, then
      ``resolution``, ``num_emoji``, ``prediction``, ``guidance``, ``num_samples``,
      ``nfe``, ``sample_compile_s``, ``sample_s``, ``psnr_median``, the prompt
      fidelity, ``top5_conditional`` and ``top5_unconditional`` (each left out when
      it is the guidance scale's own), and with ``--probe`` :func:`probe`'s figures.
    """
    from .. import guidance, metrics, text_to_image
    from ..schedules import NoiseSchedule

    cfg = common.pick_recipe(
        text_to_image.RECIPE,
        args,
        num_emoji=args.num_emoji,
        resolution=args.resolution,
        prediction=args.prediction,
    )
    scale = guidance.check_scale(cfg.guidance if args.guidance is None else args.guidance)
    images, prompts, tokenizer, tokens, mask = text_to_image.make_data(cfg)
    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    model = text_to_image.make_model(cfg, tokenizer.vocab_size, seed=args.seed)
    ema, history = common.fit_text_to_image(
        model, cfg, schedule, (images, tokens, mask), jax.random.key(args.seed)
    )
    sampler = guidance.GuidedSampler(schedule, steps=cfg.sample_steps, prediction=cfg.prediction)

    def draw(key, s):
        """One image per prompt at guidance scale ``s``, from noise drawn with ``key``."""
        return sampler(ema, (tokens, mask), jax.random.normal(key, images.shape), scale=s)

    # The first call compiles, the second is timed.
    _, sample_compile_s = common.timed(draw, jax.random.key(args.seed + 1), scale)
    (samples, nfe), sample_s = common.timed(draw, jax.random.key(args.seed + 2), scale)
    samples = np.asarray(samples)
    labels = np.arange(len(prompts))
    fidelity = metrics.prompt_fidelity(samples, labels, images)
    own_psnr = metrics.psnr(samples, images)  # each sample against its own prompt's emoji
    result = common.report(
        "emoji",
        cfg,
        model,
        history,
        loss_window=100,
        resolution=cfg.resolution,
        num_emoji=len(prompts),
        prediction=cfg.prediction,
        guidance=scale,
        num_samples=int(len(samples)),
        nfe=int(nfe),
        sample_compile_s=round(sample_compile_s, 2),
        sample_s=round(sample_s, 2),
        psnr_median=round(float(np.median(own_psnr)), 2),
        **{k: round(float(v), 4) for k, v in fidelity.items()},
    )

    # The same noise without guidance (scale 1: the conditional model alone) and
    # without the prompt (scale 0): what guidance adds.
    for name, other_scale in (("conditional", 1.0), ("unconditional", 0.0)):
        if other_scale != scale:
            other = metrics.prompt_fidelity(
                np.asarray(draw(jax.random.key(args.seed + 2), other_scale)[0]), labels, images
            )
            result[f"top5_{name}"] = round(float(other["top5"]), 4)
    if args.probe:
        result.update(probe(ema, cfg, schedule, (images, tokens, mask), scale, args.seed))
    if args.samples:
        # Sample i was prompted by prompts[i], the name of train_images[i].
        np.savez_compressed(
            args.samples, samples=samples, prompts=np.array(prompts), train_images=images
        )
    return result


def probe(ema, cfg, schedule, data: tuple, scale: float, seed: int) -> dict:
    """Where does the network learn the prompts, and how much does the first step cost?

    Each figure is ``[mean, std]`` over 3 seeds of noise.

    Args:
      ema: the trained network (the moving average the benchmark samples with).
      cfg: the recipe it trained with (``sample_steps``, ``prediction``).
      schedule: its :class:`~diffbook.schedules.NoiseSchedule`.
      data: ``(images, tokens, mask)``, the training emoji and their prompts.
      scale: the guidance scale of the benchmark.
      seed: the benchmark's ``--seed``; the probe's noise is drawn from seeds after it.

    Returns:
      ``x0_top5``: top-5 fidelity of the network's clipped clean-image estimate from
      the training images noised to each of several timesteps of the sampling grid,
      with and without the prompt.  ``late_start_top5``: the same sampler started
      from pure noise at a later timestep of its grid (its first steps dropped), at
      scale 1 and ``scale``.  ``first_step_clipped``: the fraction of the pixels of
      the first step's estimate (from pure noise, at the last timestep) that the clip
      to ``[-1, 1]`` changes.  ``steps_fidelity``: the guided sampler's fidelity with
      10, the recipe's and 50 steps (the chapter's exercise 1).  ``alpha_bar``: the
      schedule's cumulative signal at the grid's first five timesteps.
    """
    import jax.numpy as jnp
    from flax import nnx

    from .. import guidance, metrics, samplers

    images, tokens, mask = data
    labels = np.arange(len(images))  # one image per prompt
    grid = samplers.ddim_timesteps(schedule.num_timesteps, cfg.sample_steps)[::-1]
    seeds = range(3)
    ms = lambda xs: [round(float(np.mean(xs)), 4), round(float(np.std(xs)), 4)]
    top5 = lambda x: metrics.prompt_fidelity(np.clip(np.asarray(x), -1, 1), labels, images)["top5"]
    noise = lambda offset, i: jax.random.normal(jax.random.key(seed + offset + i), images.shape)

    estimate = nnx.jit(
        lambda m, x, tk, mk, t, noise: samplers.predict_x0(
            schedule,
            lambda x, u: m(x, u, tk, mk),
            x,
            t,
            noise,
            prediction=cfg.prediction,
            clip_x0=True,
        )
    )
    none = np.zeros_like(mask)
    x0_top5 = {}
    for t in grid[[0, 1, 2, 3, 4, 6, 9, 12, 18]].tolist():
        noises = [noise(10, i) for i in seeds]
        x0_top5[str(t)] = {
            "prompt": ms([top5(estimate(ema, images, tokens, mask, t, n)) for n in noises]),
            "no_prompt": ms([top5(estimate(ema, images, tokens, none, t, n)) for n in noises]),
        }

    late = {}
    for skip in (0, 1, 2, 4):
        run = nnx.jit(
            lambda m, tk, mk, x, s, ts=grid[skip:]: guidance.guided_sample(
                schedule,
                m,
                (tk, mk),
                x,
                scale=s,
                timesteps=ts,
                prediction=cfg.prediction,
                clip_x0=True,
            )[0]
        )
        late[str(int(grid[skip]))] = {
            str(s): ms([top5(run(ema, tokens, mask, noise(2, i), jnp.float32(s))) for i in seeds])
            for s in sorted({1.0, scale})
        }

    first = []
    for i in seeds:
        x_T = noise(2, i)
        tb = jnp.full((len(images),), int(grid[0]), jnp.int32)
        out = guidance.guided_model_fn(ema, (tokens, mask), 1.0)(x_T, schedule.to_u(tb))
        x0 = schedule.to_x0_eps(out, x_T, tb, cfg.prediction)[0]
        first.append(float(jnp.mean(jnp.abs(x0) > 1.0)))

    # The guided sampler with other numbers of steps (the chapter's exercise 1).
    by_steps = {}
    for steps in (10, cfg.sample_steps, 50):
        other = guidance.GuidedSampler(schedule, steps=steps, prediction=cfg.prediction)
        fids = [
            metrics.prompt_fidelity(
                np.asarray(other(ema, (tokens, mask), noise(2, i), scale=scale)[0]),
                labels,
                images,
            )
            for i in seeds
        ]
        by_steps[str(steps)] = {
            key: ms([f[key] for f in fids]) for key in ("top1", "top5", "distance_ratio")
        }
    return {
        "x0_top5": x0_top5,
        "late_start_top5": late,
        "first_step_clipped": ms(first),
        "steps_fidelity": by_steps,
        "alpha_bar": {str(int(t)): float(schedule.alpha_bars[int(t)]) for t in grid[:5]},
    }
