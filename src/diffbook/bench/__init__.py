"""Headless benchmarks: ``python -m diffbook.bench CHAPTER [options]``.

Each benchmark trains a chapter's recipe without the notebook and prints one
line of JSON with timings (seconds) and quality figures.  Timings live here,
never in the tests.  With ``--cost`` it trains nothing and prints what the
recipe would cost instead: FLOPs and estimated minutes on Colab's machines
(:func:`diffbook.cost.chapters.estimate`).

Every chapter takes ``--config cpu|accelerator`` (default: chosen by the device),
``--seed``, ``--train-steps`` (fewer steps, for quick checks), ``--samples PATH``
(save the samples) and ``--cost``; ``python -m diffbook.bench CHAPTER --help`` shows
what the chapter measures and its own options.

Each chapter's benchmark is one module of this package, named after the chapter,
with three functions: ``add_arguments(parser)`` adds its options, ``check(args)``
refuses bad combinations before anything trains (a ``ValueError`` naming the option,
which the command line turns into a usage error), and ``run(args)`` trains, samples
and returns the JSON line's fields as a dict.  :mod:`diffbook.bench.common` holds
what they share.  A new chapter's benchmark is one new module and one more line in
:data:`BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import json
import os

from . import (
    class_conditional,
    common,
    ddpm,
    emoji,
    few_step,
    flow_matching,
    latent,
    mixture,
    vae,
)

#: Chapter name, as given on the command line -> the module of its benchmark.
BENCHMARKS = {
    "vae": vae,
    "ddpm": ddpm,
    "flow_matching": flow_matching,
    "mixture": mixture,
    "emoji": emoji,
    "class_conditional": class_conditional,
    "latent": latent,
    "few_step": few_step,
}


def _parsers() -> tuple[argparse.ArgumentParser, dict]:
    """The command line's parser, and each chapter's subcommand parser by name."""
    parser = argparse.ArgumentParser(
        prog="python -m diffbook.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chapters = parser.add_subparsers(
        dest="chapter", required=True, metavar="CHAPTER", help=", ".join(sorted(BENCHMARKS))
    )
    subparsers = {}
    for name, bench in sorted(BENCHMARKS.items()):
        sub = chapters.add_parser(
            name, description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument(
            "--samples",
            metavar="PATH",
            help="save the samples here (.npz; digits: with train_indices)",
        )
        sub.add_argument(
            "--config",
            choices=["cpu", "accelerator"],
            help="recipe to run (default: chosen by the device)",
        )
        sub.add_argument("--seed", type=common.int_at_least(0), default=0)
        sub.add_argument(
            "--train-steps",
            type=common.int_at_least(2),
            help="override the recipe's training steps (for quick checks)",
        )
        sub.add_argument(
            "--cost",
            action="store_true",
            help="train nothing: print the recipe's FLOPs by XLA's cost analysis and the "
            "estimated minutes on a Colab T4 and TPUs (only --config applies)",
        )
        bench.add_arguments(sub)
        subparsers[name] = sub
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    """Run the command line: parse ``argv``, run one chapter's benchmark, print its JSON line.

    Args:
      argv: the arguments after the program's name; default: ``sys.argv[1:]``.

    Returns:
      0, the exit status of a run that printed its line.

    Raises:
      SystemExit: with status 2 (argparse's usage error, its message naming the
        option) for options that argparse or the chapter's ``check`` refuses, and
        with status 0 after ``--help``.
    """
    parser, subparsers = _parsers()
    args = parser.parse_args(argv)
    sub = subparsers[args.chapter]
    if args.cost:
        if args.samples or args.train_steps:
            sub.error("--cost trains nothing: --samples and --train-steps do not apply")
        from .. import config, cost

        choice = args.config or os.environ.get("DIFFBOOK_CONFIG") or config.default_choice()
        print(json.dumps(cost.estimate(args.chapter, choice)), flush=True)
        return 0
    bench = BENCHMARKS[args.chapter]
    try:
        bench.check(args)
    except ValueError as err:
        sub.error(str(err))
    os.environ.setdefault("DIFFBOOK_PROGRESS", "0")
    print(json.dumps(bench.run(args)), flush=True)
    return 0
