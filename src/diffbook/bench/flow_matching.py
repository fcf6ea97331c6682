"""Chapter 3's benchmark: ``python -m diffbook.bench flow_matching [--num-samples N]``.

Trains the chapter's U-Net by conditional flow matching on the training images of the
recipe's digit, then draws ``--num-samples`` digits (default 256; at least 59, the
held-out images of that digit) with the adaptive ODE solver at the recipe's
tolerances, measured by :func:`diffbook.metrics.digit_quality`.  ``nfe`` is the
solver's network evaluations.  ``--samples PATH`` saves the digits as ``.npz`` with
``train_indices``.
"""

from __future__ import annotations

import argparse

import jax

from . import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the chapter's options to its subcommand's ``parser``."""
    parser.add_argument("--num-samples", type=common.int_at_least(1), default=256)


def check(args: argparse.Namespace) -> None:
    """Refuse options that argparse cannot judge alone (before anything trains).

    Raises:
      ValueError: naming ``--num-samples`` if it is below the held-out images' count.
    """
    from .. import flow

    common.check_num_samples(args, flow.RECIPE)


def run(args: argparse.Namespace) -> dict:
    """Train and sample chapter 3's flow-matching U-Net.

    Args:
      args: the parsed options.

    Returns:
      The JSON line's fields, as :func:`~diffbook.bench.common.sample_and_report`
      gives them.
    """
    from flax import nnx

    from .. import flow

    cfg = common.pick_recipe(flow.RECIPE, args)
    model, ema, history = common.train_digit_unet(cfg, flow.cfm_loss, args.seed)
    graphdef, state = nnx.split(ema)

    @jax.jit
    def draw(state, key):
        return flow.sample(
            nnx.merge(graphdef, state), key, args.num_samples, rtol=cfg.rtol, atol=cfg.atol
        )

    return common.sample_and_report("flow_matching", cfg, model, history, draw, state, args)
