"""Chapter 1's benchmark: ``python -m diffbook.bench vae [--num-samples N]``.

Trains the chapter's VAE on the training digits (all ten), measures the ELBO of the
held-out digits (``held_out_elbo``, nats per image, averaged over the recipe's
``eval_samples`` draws of the latent) and draws ``--num-samples`` digits from the
prior (default 1,000; at least 599, the held-out images they are judged against),
measured by :func:`diffbook.metrics.digit_quality`.  ``--samples PATH`` saves them as
``.npz`` with ``train_indices``.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from . import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the chapter's options to its subcommand's ``parser``."""
    parser.add_argument(
        "--num-samples",
        type=common.int_at_least(1),
        default=1000,
        help="prior samples to draw and measure (at least 599, the held-out images)",
    )


def check(args: argparse.Namespace) -> None:
    """Refuse options that argparse cannot judge alone (before anything trains).

    Raises:
      ValueError: naming ``--num-samples`` if it is below the held-out images' count.
    """
    from .. import vae

    common.check_num_samples(args, vae.RECIPE)


def run(args: argparse.Namespace) -> dict:
    """Train, evaluate and sample chapter 1's VAE.

    Args:
      args: the parsed options.

    Returns:
      The JSON line's fields: :func:`~diffbook.bench.common.report`'s, then
      ``held_out_elbo``, ``eval_s``, ``num_samples``, ``sample_s`` and the digit quality.
    """
    from .. import data, metrics, train, vae

    cfg = common.pick_recipe(vae.RECIPE, args)
    x_train, y_train = data.load_digits(split="train")
    x_test, _ = data.load_digits(split="held_out")
    model, optimizer = vae.make_model_and_optimizer(cfg, seed=args.seed)
    history = train.fit(
        model,
        optimizer,
        vae.vae_loss,
        (x_train, y_train),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        key=jax.random.key(args.seed),
        progress=False,
    )
    t0 = time.perf_counter()
    test_elbo = vae.evaluate_elbo(
        model, x_test, key=jax.random.key(args.seed + 1), num_samples=cfg.eval_samples
    )
    eval_s = time.perf_counter() - t0
    draw = jax.jit(lambda key: vae.sample_prior(model, key, args.num_samples))
    samples, sample_s = common.timed(draw, jax.random.key(args.seed + 2))
    samples = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    common.save_digit_samples(args.samples, samples, None)
    quality = metrics.digit_quality(samples, None)
    return common.report(
        "vae",
        cfg,
        model,
        history,
        loss_window=50,
        loss_digits=3,
        held_out_elbo=round(test_elbo, 3),
        eval_s=round(eval_s, 2),
        num_samples=int(len(samples)),
        sample_s=round(sample_s, 2),
        **common.rounded(quality),
    )
