"""What the chapters' benchmarks share: timing, the recipe of a run, training, the report.

Every chapter's module (:mod:`diffbook.bench.vae`, ...) builds its recipe once with
:func:`pick_recipe`, trains with :func:`fit_recipe` (or :func:`train_digit_unet`), times its
sampler with :func:`timed` or :func:`compiled_and_timed` and returns :func:`report`'s
dict, which ``python -m diffbook.bench`` prints as one line of JSON.  The digit
chapters also share :func:`check_num_samples`, :func:`save_digit_samples` and
:func:`sample_and_report`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import numpy as np

from .. import checks, config

#: The noise levels of every digit recipe's schedule (``num_timesteps``): the most
#: sampling steps a ``--steps`` option may ask for.
MAX_STEPS = 1000


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type=`` for an int option that may not go below ``minimum``.

    Args:
      minimum: the smallest value the option accepts.

    Returns:
      A converter from the option's text to an ``int``; argparse turns its error into
      a usage error (exit status 2) that names the option: ``argument --seed: must be
      an int >= 0, got '-1'``.
    """

    def convert(text: str) -> int:
        try:
            return checks.positive_int(int(text), "the value", minimum=minimum)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}") from None

    return convert


def check_guidance(scale: float | None) -> None:
    """Refuse a ``--guidance`` scale that :func:`diffbook.guidance.check_scale` refuses.

    Args:
      scale: the option's value, or ``None`` when it was not given.

    Raises:
      ValueError: naming ``--guidance``, for a negative or non-finite scale.
    """
    if scale is None:
        return
    from ..guidance import check_scale

    try:
        check_scale(scale)
    except ValueError as err:
        raise ValueError(f"--guidance: {err}") from None


def check_num_samples(args: argparse.Namespace, recipe: dict) -> None:
    """Refuse fewer ``--num-samples`` than the held-out images the samples are judged against.

    Args:
      args: the parsed options, with ``chapter`` and ``num_samples``.
      recipe: the chapter's ``RECIPE``; its ``digit`` (or ``None``, all ten) chooses
        the held-out images (:func:`diffbook.data.split_indices`).

    Raises:
      ValueError: naming ``--num-samples`` and the smallest count allowed.
    """
    from ..data import split_indices

    # The larger held-out set if the two configurations ever train on different digits.
    needed = max(
        len(split_indices("held_out", recipe[choice].get("digit"))) for choice in config.CHOICES
    )
    if args.num_samples < needed:
        raise ValueError(
            f"--num-samples must be at least {needed} for the {args.chapter} "
            f"benchmark (samples are judged against {needed} held-out images)"
        )


def with_steps(cfg: config.Config, steps: int) -> dict:
    """The changes that make ``cfg`` train for ``steps`` steps, its warm-up shortened to fit.

    Args:
      cfg: a recipe's configuration with ``steps`` and ``warmup``.
      steps: the training steps wanted.

    Returns:
      ``{"steps": steps, "warmup": min(cfg.warmup, steps // 2)}``, for ``cfg.replace``.
    """
    return {"steps": steps, "warmup": min(cfg.warmup, steps // 2)}


def pick_recipe(recipe: dict, args: argparse.Namespace, **changes) -> config.Config:
    """The configuration this run trains with, built once.

    Args:
      recipe: the chapter's ``RECIPE``.
      args: the parsed options: ``--config`` chooses the configuration (default: as
        :func:`diffbook.config.pick` chooses), ``--train-steps`` (if given) sets its
        ``steps`` and shortens its ``warmup`` to fit.
      **changes: settings to replace besides; a value of ``None`` (an option not
        given) changes nothing.

    Returns:
      The :class:`~diffbook.config.Config`.
    """
    cfg = config.pick(recipe, args.config)
    changes = {key: value for key, value in changes.items() if value is not None}
    if args.train_steps is not None:
        changes = {**with_steps(cfg, args.train_steps), **changes}
    return cfg.replace(**changes) if changes else cfg


def timed(fn: Callable, *args) -> tuple:
    """Run ``fn(*args)`` and wait for its arrays.

    Returns:
      ``(output, seconds)``.
    """
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def compiled_and_timed(fn, *args) -> tuple:
    """Compile the ``jax.jit`` function ``fn`` for ``args`` ahead of time, then run it once.

    One run instead of a warm-up run and a timed one.

    Returns:
      ``(output, compile_seconds, run_seconds)``.
    """
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out, run_s = timed(compiled, *args)
    return out, compile_s, run_s


def rounded(figures: dict, digits: int = 4) -> dict:
    """``figures`` with every float rounded to ``digits`` (for the JSON line)."""
    return {
        k: (round(float(v), digits) if isinstance(v, (float, np.floating)) else v)
        for k, v in figures.items()
    }


def report(
    chapter: str, cfg, model, history, *, loss_window: int, loss_digits: int = 4, **figures
) -> dict:
    """The JSON line's fields that every benchmark shares, then the chapter's ``figures``.

    Args:
      chapter: the chapter's name, as on the command line.
      cfg: the configuration the run trained with.
      model: the trained network (its parameters are counted).
      history: :func:`diffbook.train.fit`'s history of the run.
      loss_window: ``final_loss`` is the mean loss of the last ``loss_window`` steps.
      loss_digits: digits ``final_loss`` is rounded to.
      **figures: the chapter's own fields, added last (they may replace shared ones).

    Returns:
      ``chapter``, ``config``, ``backend``, ``devices``, ``params``, ``steps``,
      ``batch_size``, ``compile_s``, ``train_s``, ``final_loss``, then ``figures``.
    """
    from .. import nets

    return {
        "chapter": chapter,
        "config": cfg.name,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "params": nets.count_params(model),
        "steps": history.steps,
        "batch_size": history.batch_size,
        "compile_s": round(history.compile_s, 2),
        "train_s": round(history.train_s, 2),
        "final_loss": round(float(history.loss[-loss_window:].mean()), loss_digits),
        **figures,
    }


def fit_recipe(model, cfg, loss_fn: Callable, data, key, *, ema_warmup: bool = False) -> tuple:
    """Train ``model`` as the chapters do, without a progress bar.

    Args:
      model: the NNX network, trained in place.
      cfg: the recipe: AdamW with ``peak_lr``, ``warmup`` and ``steps``, batches of
        ``batch_size``, a moving average of decay ``ema_decay``.
      loss_fn: ``loss_fn(model, batch, key) -> scalar``.
      data: the training set, an array or a tuple of arrays.
      key: JAX key of the batches and the loss's noise.
      ema_warmup: let the moving average's decay warm up (as chapters 4, 6 and 7 do).

    Returns:
      ``(ema, history)``: the moving average and :func:`diffbook.train.fit`'s history.
    """
    from .. import train

    ema, optimizer = train.adamw_with_ema(
        model, peak_lr=cfg.peak_lr, steps=cfg.steps, warmup=cfg.warmup
    )
    history = train.fit(
        model,
        optimizer,
        loss_fn,
        data,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        key=key,
        ema=ema,
        ema_decay=cfg.ema_decay,
        ema_warmup=ema_warmup,
        progress=False,
    )
    return ema, history


def fit_text_to_image(model, cfg, schedule, data, key) -> tuple:
    """Train a text-conditioned network with condition dropout, as chapters 5 and 7 do.

    Args:
      model: the network, called as ``model(x, u, tokens, mask)``.
      cfg: the recipe (``p_uncond``, ``prediction`` and :func:`fit_recipe`'s settings).
      schedule: the :class:`~diffbook.schedules.NoiseSchedule` it learns to denoise.
      data: ``(x, tokens, mask)``.
      key: JAX key of the run.

    Returns:
      ``(ema, history)``, as :func:`fit_recipe` (a moving average without warm-up).
    """
    from .. import guidance

    def loss_fn(m, b, k):
        return guidance.cfg_loss(
            schedule, m, b, k, p_uncond=cfg.p_uncond, prediction=cfg.prediction
        )

    return fit_recipe(model, cfg, loss_fn, data, key)


def train_digit_unet(cfg, loss_fn: Callable, seed: int) -> tuple:
    """Train a digit chapter's U-Net (chapters 2 and 3) on the training images of ``cfg.digit``.

    Args:
      cfg: the recipe (:func:`diffbook.nets.unet.unet_from_recipe`'s and
        :func:`fit_recipe`'s settings, and ``digit``).
      loss_fn: ``loss_fn(model, x, key) -> scalar``.
      seed: seed of the weights and of the run.

    Returns:
      ``(model, ema, history)``.
    """
    from .. import data, nets

    images, _ = data.load_digits(cfg.digit, split="train")
    model = nets.unet_from_recipe(cfg, seed=seed)
    ema, history = fit_recipe(model, cfg, loss_fn, images, jax.random.key(seed))
    return model, ema, history


def save_digit_samples(path: str | None, samples, digit: int | None) -> None:
    """Save digit samples as ``.npz``, with the indices of the images the model trained on.

    Args:
      path: where to save; nothing is saved when it is ``None`` or empty.
      samples: ``(N, 8, 8, 1)`` in ``[-1, 1]``, saved as float32 ``samples``.
      digit: the class trained on, or ``None`` for all ten: ``train_indices`` are
        the indices into ``sklearn.datasets.load_digits()`` of its training images.
    """
    if path:
        from .. import data

        np.savez_compressed(
            path,
            samples=np.asarray(samples, np.float32),
            train_indices=data.split_indices("train", digit),
        )


def sample_and_report(
    chapter: str, cfg, model, history, draw: Callable, state, args: argparse.Namespace, **extra
) -> dict:
    """Time a digit chapter's sampler, save its samples and measure them.

    Args:
      chapter: the chapter's name, as on the command line.
      cfg: the configuration the run trained with; its ``digit`` (the class the
        samples are judged as), or all ten when it has none.
      model: the trained network (its parameters are counted).
      history: :func:`diffbook.train.fit`'s history of the run.
      draw: ``draw(state, key) -> (samples, nfe)``, a ``jax.jit`` function; it is
        compiled first, then timed.
      state: the trained network's state, ``draw``'s first argument.
      args: the parsed options (``seed``, ``samples``).
      **extra: fields of the JSON line besides the shared ones and the quality.

    Returns:
      :func:`report`'s dict with ``extra``, ``num_samples``, ``nfe``,
      ``sample_compile_s``, ``sample_s`` and :func:`diffbook.metrics.digit_quality`.
    """
    from .. import metrics

    (samples, nfe), sample_compile_s, sample_s = compiled_and_timed(
        draw, state, jax.random.key(args.seed + 2)
    )
    samples = np.clip(np.asarray(samples), -1.0, 1.0)
    digit = cfg.get("digit")  # a recipe of all ten digits names none
    save_digit_samples(args.samples, samples, digit)
    quality = metrics.digit_quality(samples, digit)
    return report(
        chapter,
        cfg,
        model,
        history,
        loss_window=50,
        **extra,
        num_samples=int(len(samples)),
        nfe=int(nfe),
        sample_compile_s=round(sample_compile_s, 2),
        sample_s=round(sample_s, 2),
        **rounded(quality),
    )
