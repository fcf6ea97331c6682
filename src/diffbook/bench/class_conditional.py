"""Chapter 6's benchmark: ``python -m diffbook.bench class_conditional [options]``.

Trains the chapter's class-conditional network on the training digits (all ten, with
label dropout): the U-Net (``--backbone unet``, the default) or the DiT (``dit``, its
own steps and learning rate from the recipe).  ``--method cfg`` (the default) samples
with classifier-free guidance; ``--method classifier`` also trains the noise-aware
classifier and steers the unconditional model with its gradient.  ``--per-digit``
samples of each digit (default 100; at least 61, the most held-out images of one
digit) are drawn with DDIM in ``--steps`` steps at scale ``--guidance`` and judged by
:func:`diffbook.metrics.class_conditional_quality` (``accuracy``: does an independent
classifier see the digit asked for?).  ``compile_s`` and ``train_s`` include the
classifier's; ``classifier_s`` is its training alone.  ``--samples PATH`` saves
``samples``, ``labels`` and ``train_indices`` as ``.npz``.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from . import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the chapter's options to its subcommand's ``parser``."""
    from ..class_conditional import BACKBONES, METHODS

    parser.add_argument(
        "--guidance",
        type=float,
        help="guidance scale (cfg: s of uncond + s (cond - uncond); classifier: the "
        "classifier scale); 0: the unconditional model (default: the recipe's, "
        "1 for cfg, i.e. the conditional model without guidance, which measured best on "
        "digits; 4 for classifier)",
    )
    parser.add_argument(
        "--steps",
        type=common.int_at_least(1),
        help="DDIM sampling steps (default: the recipe's sample_steps, 50 on cpu)",
    )
    parser.add_argument("--method", choices=METHODS, default="cfg")
    parser.add_argument("--backbone", choices=BACKBONES, default="unet")
    parser.add_argument(
        "--per-digit",
        type=common.int_at_least(61),
        default=100,
        help="samples of each digit (at least 61, the most held-out images of one digit)",
    )


def check(args: argparse.Namespace) -> None:
    """Refuse options that argparse cannot judge alone (before anything trains).

    Raises:
      ValueError: naming the option: ``--steps`` above 1,000, ``--guidance`` negative
        or not finite.
    """
    if args.steps is not None and args.steps > common.MAX_STEPS:
        raise ValueError(f"--steps must be in 1..{common.MAX_STEPS}")
    common.check_guidance(args.guidance)


def _recipe(args: argparse.Namespace):
    """The run's configuration: the recipe with the backbone's steps and learning rate,
    and with ``--train-steps`` applied to the network and (no longer than that) to the
    classifier."""
    from .. import class_conditional as cc
    from .. import config

    base = config.pick(cc.RECIPE, args.config)
    changes = {}
    if args.backbone == "dit":  # the DiT's own steps and learning rate
        changes.update(common.with_steps(base, args.train_steps or base.dit_steps))
        changes["peak_lr"] = base.dit_lr
    elif args.train_steps is not None:
        changes.update(common.with_steps(base, args.train_steps))
    if args.train_steps is not None:  # a quick check trains the classifier no longer
        changes["classifier_steps"] = min(base.classifier_steps, args.train_steps)
    return base.replace(**changes) if changes else base


def run(args: argparse.Namespace) -> dict:
    """Train and sample chapter 6's class-conditional network (and its classifier).

    Args:
      args: the parsed options.

    Returns:
      The JSON line's fields: :func:`~diffbook.bench.common.report`'s, then
      ``backbone``, ``method``, ``guidance``, ``classifier_s``, ``num_samples``,
      ``nfe``, ``sample_compile_s``, ``sample_s`` and the quality.
    """
    import jax.numpy as jnp
    from flax import nnx

    from .. import class_conditional as cc
    from .. import data, guidance, metrics, samplers, train
    from ..schedules import NoiseSchedule

    cfg = _recipe(args)
    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    images, labels = data.load_digits(split="train")
    key = jax.random.key(args.seed)
    k_model, k_classifier, k_noise = jax.random.split(key, 3)

    model = cc.make_model(cfg, args.backbone, seed=args.seed)

    def loss_fn(m, batch, k):
        return guidance.cfg_loss(
            schedule, m, batch, k, p_uncond=cfg.p_uncond, prediction=cfg.prediction
        )

    ema, history = common.fit_recipe(
        model, cfg, loss_fn, (images, labels), k_model, ema_warmup=True
    )
    classifier_s = classifier_compile_s = 0.0
    classifier = None
    if args.method == "classifier":
        classifier = cc.make_classifier(cfg, seed=args.seed)
        _, clf_optimizer = train.adamw_with_ema(
            classifier,
            peak_lr=cfg.classifier_lr,
            steps=cfg.classifier_steps,
            warmup=min(cfg.warmup, cfg.classifier_steps // 2),
        )
        clf_history = train.fit(
            classifier,
            clf_optimizer,
            lambda c, batch, k: guidance.classifier_loss(schedule, c, batch, k),
            (images, labels),
            steps=cfg.classifier_steps,
            batch_size=cfg.batch_size,
            key=k_classifier,
            progress=False,
        )
        classifier_s, classifier_compile_s = clf_history.train_s, clf_history.compile_s

    default = cfg.guidance if args.method == "cfg" else cfg.classifier_scale
    scale = default if args.guidance is None else args.guidance
    wanted = np.repeat(np.arange(cc.NUM_CLASSES), args.per_digit).astype(np.int32)
    options = dict(
        steps=args.steps or cfg.sample_steps, eta=cfg.eta, prediction=cfg.prediction, clip_x0=True
    )
    graphdef, state = nnx.split((ema, classifier))

    @jax.jit
    def draw(state, key):
        net, clf = nnx.merge(graphdef, state)
        y = jnp.asarray(wanted)
        if args.method == "cfg":
            fn = guidance.guided_model_fn(net, (y,), scale)
        else:  # the unconditional model, steered by the classifier
            (null,) = net.null_condition(y)
            fn = guidance.classifier_guided_model_fn(
                schedule,
                lambda x, u: net(x, u, null),
                clf,
                y,
                scale,
                prediction=cfg.prediction,
            )
        return samplers.sample("ddim", schedule, fn, key, (len(y), 8, 8, 1), **options)

    (samples, nfe), sample_compile_s, sample_s = common.compiled_and_timed(
        draw, state, jax.random.fold_in(k_noise, 1)
    )
    samples = np.clip(np.asarray(samples), -1.0, 1.0)
    if args.samples:
        np.savez_compressed(
            args.samples,
            samples=samples.astype(np.float32),
            labels=wanted,
            train_indices=data.split_indices("train"),
        )
    quality = metrics.class_conditional_quality(samples, wanted)
    return common.report(
        "class_conditional",
        cfg,
        model,
        history,
        loss_window=50,
        backbone=args.backbone,
        method=args.method,
        guidance=scale,
        compile_s=round(history.compile_s + classifier_compile_s, 2),
        train_s=round(history.train_s + classifier_s, 2),
        classifier_s=round(classifier_s, 2),
        num_samples=int(len(samples)),
        nfe=int(nfe),
        sample_compile_s=round(sample_compile_s, 2),
        sample_s=round(sample_s, 2),
        **common.rounded(quality),
    )
