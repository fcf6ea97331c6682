"""Chapter 2's benchmark: ``python -m diffbook.bench ddpm [--sampler NAME] [--steps N]``.

Trains the chapter's noise-predicting U-Net on the training images of the recipe's
digit (cosine schedule), then draws ``--num-samples`` digits (default 256; at least
59, the held-out images of that digit) with ``--sampler``: ``ddpm``, the ancestral
sampler that visits all 1,000 timesteps (the default), or any other sampler of
:data:`diffbook.samplers.SAMPLERS` (``ddim`` with ``--eta``, ``sde``, ``ode``, ...),
with ``--steps`` sampling steps where the sampler takes them.  The samples are
measured by :func:`diffbook.metrics.digit_quality`; ``sample_steps`` is the number of
steps asked for (``null`` for the adaptive ODE solver), ``nfe`` the network
evaluations made.  ``--samples PATH`` saves the digits as ``.npz`` with
``train_indices``.
"""

from __future__ import annotations

import argparse

import jax

from . import common

#: The default steps of the samplers that take a number of steps; the ODE solver
#: without ``--steps`` chooses its steps itself (no number to report), and the others
#: visit every timestep of the schedule.
DEFAULT_STEPS = {"ddim": 50, "sde": 50, "ode": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the chapter's options to its subcommand's ``parser``."""
    from ..samplers import SAMPLERS

    parser.add_argument("--num-samples", type=common.int_at_least(1), default=256)
    parser.add_argument(
        "--sampler",
        choices=["ddpm", *sorted(set(SAMPLERS) - {"ancestral"})],
        default="ddpm",
        help="ddpm: the ancestral sampler; the others are diffbook.samplers.SAMPLERS",
    )
    parser.add_argument(
        "--steps",
        type=common.int_at_least(1),
        help="sampling steps (ddpm, pc: must equal the schedule's 1000; "
        "ddim, sde: default 50; ode: adaptive unless given)",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0: deterministic)")


def check(args: argparse.Namespace) -> None:
    """Refuse options that argparse cannot judge alone (before anything trains).

    Raises:
      ValueError: naming the option: ``--num-samples`` below the held-out images'
        count, ``--steps`` other than 1,000 for the ``ddpm`` sampler, or above 1,000.
    """
    from .. import ddpm

    common.check_num_samples(args, ddpm.RECIPE)
    if args.sampler == "ddpm" and args.steps not in (None, common.MAX_STEPS):
        raise ValueError(
            "--steps: the ddpm sampler visits every timestep: use --sampler ddim for fewer steps"
        )
    if args.steps is not None and args.steps > common.MAX_STEPS:
        raise ValueError(f"--steps must be in 1..{common.MAX_STEPS}")


def run(args: argparse.Namespace) -> dict:
    """Train and sample chapter 2's U-Net.

    Args:
      args: the parsed options.

    Returns:
      The JSON line's fields, as :func:`~diffbook.bench.common.sample_and_report`
      gives them, with ``sampler`` and ``sample_steps``.
    """
    from flax import nnx

    from .. import ddpm, samplers
    from ..schedules import NoiseSchedule

    cfg = common.pick_recipe(ddpm.RECIPE, args)
    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    model, ema, history = common.train_digit_unet(
        cfg, lambda m, x, k: ddpm.diffusion_loss(schedule, m, x, k), args.seed
    )
    graphdef, state = nnx.split(ema)
    shape = (args.num_samples, 8, 8, 1)
    steps = args.steps or DEFAULT_STEPS.get(args.sampler, cfg.num_timesteps)

    # "ddpm" is the registry's "ancestral"; every other name is a key of SAMPLERS.
    name = "ancestral" if args.sampler == "ddpm" else args.sampler
    options = {"eta": args.eta} if name == "ddim" else {}
    if name in ("ddim", "sde") or args.steps:
        options["steps"] = steps

    @jax.jit
    def draw(state, key):
        return samplers.sample(
            name, schedule, nnx.merge(graphdef, state), key, shape, clip_x0=True, **options
        )

    return common.sample_and_report(
        "ddpm", cfg, model, history, draw, state, args, sampler=args.sampler, sample_steps=steps
    )
