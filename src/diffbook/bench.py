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


BENCHMARKS = {"flow_matching": bench_flow_matching}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffbook.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapter", choices=sorted(BENCHMARKS))
    parser.add_argument("--samples", metavar="PATH.npy", help="save the samples here")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--config", choices=["cpu", "accelerator"],
                        help="recipe to run (default: chosen by the device)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error("--num-samples must be positive")
    os.environ.setdefault("DIFFBOOK_PROGRESS", "0")
    result = BENCHMARKS[args.chapter](args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
