"""Chapter 4's benchmark: ``python -m diffbook.bench mixture [--sampler NAME] [--num-samples N]``.

Trains the chapter's MLP (v-prediction) on draws from the exact 1-D mixture of
:data:`diffbook.mixture.MIXTURE`, then draws ``--num-samples`` points (default 10,000)
with ``--sampler``, any of :data:`diffbook.samplers.SAMPLERS` (default ``ancestral``),
and compares them with the exact mixture by :func:`diffbook.mixture.quality`: the
weight of each mode (``mode_weights`` beside ``exact_weights``) and the Wasserstein-1
distance (``w1``, over ``w1_ref``, what as many exact draws score).  ``--samples
PATH`` saves the points as ``.npy``.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from . import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the chapter's options to its subcommand's ``parser``."""
    from ..samplers import SAMPLERS

    parser.add_argument("--num-samples", type=common.int_at_least(1), default=10_000)
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="ancestral")


def check(args: argparse.Namespace) -> None:
    """Nothing to refuse beyond what argparse does: any count and sampler will run."""


def run(args: argparse.Namespace) -> dict:
    """Train and sample chapter 4's mixture model.

    Args:
      args: the parsed options.

    Returns:
      The JSON line's fields: :func:`~diffbook.bench.common.report`'s, then
      ``sampler``, ``num_samples``, ``nfe``, ``sample_compile_s``, ``sample_s``,
      ``exact_weights`` and :func:`diffbook.mixture.quality`'s figures.
    """
    from .. import ddpm, mixture

    cfg = common.pick_recipe(mixture.RECIPE, args)
    schedule = mixture.make_schedule(cfg)
    data = mixture.make_data(cfg, jax.random.key(args.seed))
    model = mixture.make_model(cfg, seed=args.seed)
    ema, history = common.fit_recipe(
        model,
        cfg,
        lambda m, x, k: ddpm.diffusion_loss(schedule, m, x, k, prediction="v"),
        data,
        jax.random.key(args.seed),
        ema_warmup=cfg.ema_warmup,
    )
    draw = jax.jit(lambda key: mixture.draw(args.sampler, schedule, ema, key, args.num_samples))
    (samples, nfe), sample_compile_s, sample_s = common.compiled_and_timed(
        draw, jax.random.key(args.seed + 2)
    )
    samples = mixture.unstandardise(samples)
    if args.samples:
        np.save(args.samples, samples)
    quality = mixture.quality(mixture.MIXTURE, samples)
    return common.report(
        "mixture",
        cfg,
        model,
        history,
        loss_window=200,
        sampler=args.sampler,
        num_samples=int(samples.size),
        nfe=int(nfe),
        sample_compile_s=round(sample_compile_s, 2),
        sample_s=round(sample_s, 2),
        exact_weights=list(mixture.MIXTURE.weights),
        **common.rounded(quality),
    )
