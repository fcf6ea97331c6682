"""Headless benchmarks: ``python -m diffbook.bench CHAPTER [options]``.

Each benchmark trains a chapter's recipe without the notebook and prints one
line of JSON with timings (seconds) and quality figures.  Timings live here,
never in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def bench_flow_matching(args) -> dict:
    from flax import nnx

    from . import data, flow, metrics, nets, train

    cfg = flow.pick_recipe(args.config)
    if args.train_steps:
        cfg = cfg.replace(steps=args.train_steps, warmup=min(cfg.warmup, args.train_steps // 2))
    images, _ = data.load_digits(cfg.digit)
    model, ema, optimizer = flow.make_model_and_optimizer(cfg, seed=args.seed)
    history = train.fit(model, optimizer, flow.cfm_loss, images, steps=cfg.steps,
                        batch_size=cfg.batch_size, key=jax.random.key(args.seed), ema=ema,
                        ema_decay=cfg.ema_decay, progress=False)

    graphdef, state = nnx.split(ema)

    @jax.jit
    def draw(state, key):
        return flow.sample(nnx.merge(graphdef, state), key, args.num_samples,
                           rtol=cfg.rtol, atol=cfg.atol)

    _, sample_compile_s = _timed(draw, state, jax.random.key(args.seed + 1))
    (samples, nfe), sample_s = _timed(draw, state, jax.random.key(args.seed + 2))
    samples = np.clip(np.asarray(samples), -1.0, 1.0)
    if args.samples:
        np.save(args.samples, samples)
    quality = metrics.digit_quality(samples, cfg.digit)
    return {
        "chapter": "flow_matching", "config": cfg.name, "backend": jax.default_backend(),
        "devices": jax.device_count(), "params": nets.count_params(model),
        "steps": cfg.steps, "batch_size": history.batch_size,
        "compile_s": round(history.compile_s, 2), "train_s": round(history.train_s, 2),
        "final_loss": round(float(history.loss[-50:].mean()), 4),
        "num_samples": int(len(samples)), "nfe": int(nfe),
        "sample_compile_s": round(sample_compile_s, 2), "sample_s": round(sample_s, 2),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in quality.items()},
    }


def _flow_matching_options(parser):
    parser.add_argument("--num-samples", type=int, default=256)


def bench_vae(args) -> dict:
    from . import data, metrics, nets, train, vae

    cfg = vae.pick_recipe(args.config)
    if args.train_steps:
        cfg = cfg.replace(steps=args.train_steps, warmup=min(cfg.warmup, args.train_steps // 2))
    images, labels = data.load_digits()
    (x_train, y_train), (x_test, _) = vae.split_data(images, labels,
                                                     test_fraction=cfg.test_fraction, seed=0)
    model, optimizer = vae.make_model_and_optimizer(cfg, seed=args.seed)
    history = train.fit(model, optimizer, vae.vae_loss, (x_train, y_train), steps=cfg.steps,
                        batch_size=cfg.batch_size, key=jax.random.key(args.seed), progress=False)
    t0 = time.perf_counter()
    test_elbo = vae.evaluate_elbo(model, x_test, key=jax.random.key(args.seed + 1),
                                  num_samples=cfg.eval_samples)
    eval_s = time.perf_counter() - t0
    draw = jax.jit(lambda key: vae.sample_prior(model, key, args.num_samples))
    samples, sample_s = _timed(draw, jax.random.key(args.seed + 2))
    samples = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    if args.samples:
        np.save(args.samples, samples)
    quality = metrics.digit_quality(samples, None)
    return {
        "chapter": "vae", "config": cfg.name, "backend": jax.default_backend(),
        "devices": jax.device_count(), "params": nets.count_params(model),
        "steps": cfg.steps, "batch_size": history.batch_size,
        "compile_s": round(history.compile_s, 2), "train_s": round(history.train_s, 2),
        "final_loss": round(float(history.loss[-50:].mean()), 3),
        "test_elbo": round(test_elbo, 3), "eval_s": round(eval_s, 2),
        "num_samples": int(len(samples)), "sample_s": round(sample_s, 2),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in quality.items()},
    }


def _vae_options(parser):
    parser.add_argument("--num-samples", type=int, default=1000,
                        help="prior samples to draw and measure (at least 899)")


#: chapter -> (benchmark function, function adding the chapter's own options)
BENCHMARKS = {"flow_matching": (bench_flow_matching, _flow_matching_options),
              "vae": (bench_vae, _vae_options)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffbook.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    chapters = parser.add_subparsers(dest="chapter", required=True, metavar="CHAPTER",
                                     help=", ".join(sorted(BENCHMARKS)))
    for name, (_, add_options) in sorted(BENCHMARKS.items()):
        sub = chapters.add_parser(name)
        sub.add_argument("--samples", metavar="PATH", help="save the samples here")
        sub.add_argument("--config", choices=["cpu", "accelerator"],
                         help="recipe to run (default: chosen by the device)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--train-steps", type=int,
                         help="override the recipe's training steps (for quick checks)")
        add_options(sub)
    args = parser.parse_args(argv)
    if getattr(args, "num_samples", 1) < 1:
        parser.error("--num-samples must be positive")
    if args.chapter == "vae" and args.num_samples < 899:
        parser.error("--num-samples must be at least 899 for the vae benchmark "
                     "(the all-digit Fréchet reference uses half of the 1,797 real images)")
    if args.train_steps is not None and args.train_steps < 2:
        parser.error("--train-steps must be at least 2")
    os.environ.setdefault("DIFFBOOK_PROGRESS", "0")
    result = BENCHMARKS[args.chapter][0](args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
