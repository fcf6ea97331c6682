"""Chapter 8's benchmark: ``python -m diffbook.bench few_step [options]``.

Trains the chapter's teacher, a flow-matching U-Net of all ten training digits, and
then (``--method``) one of its few-step students, each started from the teacher's
weights: ``distill`` (the default) distils the teacher's DPM-Solver++(2M) paths into a
flow map ``u(z, r, t)``; ``reflow`` fits a velocity network to the pairs (noise, the
teacher's sample from it); ``meanflow`` trains a flow map with MeanFlow's loss, the
teacher's velocity in place of the conditional one.  ``teacher`` trains no student and
samples the teacher itself.  Then ``--num-samples`` digits (default the recipe's 600; at
least 599, the held-out images) are drawn in ``--nfe`` network evaluations (default 1;
16 for ``teacher``): flow maps jump ``--nfe`` times, velocity networks (``teacher``,
``reflow``) are integrated with ``--solver`` (default ``dpm_solver_2m``; ``heun`` and
``midpoint`` take two evaluations a step, so ``--nfe`` must be even; ``adaptive`` is the
adaptive Tsit5 solver at tolerances 1e-3, which chooses its own steps, so ``--nfe``
does not apply).  The samples are judged by :func:`diffbook.metrics.digit_quality`.
``compile_s`` and ``train_s`` cover every stage (teacher, paths, student);
``teacher_s``, ``paths_s`` and ``student_s`` are each stage's training or drawing
alone, and ``steps`` the student's steps (the teacher's for ``teacher``).
``--train-steps N`` gives the teacher and the student N steps each, ``--path-samples``
sets the number of the teacher's paths (``distill``, ``reflow``).  ``--samples PATH``
saves the digits as ``.npz`` with ``train_indices``.
"""

from __future__ import annotations

import argparse

import jax

from . import common

#: The chapter's students and ``teacher`` (no student: the teacher sampled itself).
METHODS = ("teacher", "distill", "reflow", "meanflow")

#: The methods whose network is a velocity field, sampled with ``--solver``.
_VELOCITY_METHODS = ("teacher", "reflow")

#: Tolerances of ``--solver adaptive`` (chapter 3's CPU recipe's).
ADAPTIVE_TOLERANCE = 1e-3


def _solvers() -> tuple[str, ...]:
    from .. import few_step

    return (*few_step.SOLVERS, "adaptive")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the chapter's options to its subcommand's ``parser``."""
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="distill",
        help="the student to train (default: distill, the chapter's best at few steps); "
        "teacher: sample the teacher itself",
    )
    parser.add_argument(
        "--solver",
        choices=_solvers(),
        help="ODE solver of the velocity networks (teacher, reflow only; default "
        "dpm_solver_2m); adaptive: Tsit5 at tolerances 1e-3, its own steps",
    )
    parser.add_argument(
        "--nfe",
        type=common.int_at_least(1),
        help="network evaluations per sample (default 1; 16 for teacher); even for "
        "heun and midpoint",
    )
    parser.add_argument(
        "--path-samples",
        type=common.int_at_least(1),
        help="teacher paths to distil or reflow from (default: the recipe's "
        "path_samples, 2,048 on cpu; fewer for quick checks)",
    )
    parser.add_argument(
        "--num-samples",
        type=common.int_at_least(1),
        help="samples to draw (default: the recipe's num_samples, 600; at least 599, "
        "the held-out images)",
    )


def check(args: argparse.Namespace) -> None:
    """Refuse options that argparse cannot judge alone (before anything trains).

    Raises:
      ValueError: naming the option: ``--solver`` for a flow map (``distill``,
        ``meanflow``), ``--path-samples`` for a method without paths, ``--nfe`` with
        ``--solver adaptive`` or odd with ``heun`` or ``midpoint``, ``--num-samples``
        below the held-out images' count.
    """
    from .. import few_step

    if args.solver is not None and args.method not in _VELOCITY_METHODS:
        raise ValueError(
            f"--solver applies to --method teacher or reflow (velocity networks), not to "
            f"{args.method}, whose flow map jumps --nfe times"
        )
    if args.solver == "adaptive" and args.nfe is not None:
        raise ValueError("--nfe does not apply to --solver adaptive, which chooses its steps")
    if args.solver in ("heun", "midpoint") and args.nfe is not None and args.nfe % 2:
        raise ValueError(
            f"--nfe must be even for --solver {args.solver} (two evaluations a step), "
            f"got {args.nfe}"
        )
    if args.path_samples is not None and args.method not in ("distill", "reflow"):
        raise ValueError(
            f"--path-samples applies to --method distill or reflow, which learn from the "
            f"teacher's paths, not to {args.method}"
        )
    if args.num_samples is not None:
        common.check_num_samples(args, few_step.RECIPE)


def _recipe(args: argparse.Namespace):
    """The run's configuration, with ``--train-steps`` given to the teacher and students
    and ``--path-samples`` to the paths."""
    from .. import config, few_step

    cfg = config.pick(few_step.RECIPE, args.config)
    changes = {}
    if args.path_samples is not None:
        changes["path_samples"] = args.path_samples
    if args.train_steps is not None:
        n = args.train_steps
        changes.update(
            common.with_steps(cfg, n),
            distill_steps=n,
            reflow_steps=n,
            meanflow_steps=n,
            student_warmup=min(cfg.student_warmup, n // 2),
        )
    return cfg.replace(**changes) if changes else cfg


def student_recipe(cfg, method: str):
    """The training recipe of a student: ``cfg``'s ``<method>_steps`` and student settings.

    Args:
      cfg: the chapter's configuration (:data:`diffbook.few_step.RECIPE`'s).
      method: ``"distill"``, ``"reflow"`` or ``"meanflow"``.

    Returns:
      A :class:`~diffbook.config.Config` with ``steps``, ``peak_lr``, ``warmup``,
      ``ema_decay`` and ``batch_size``, as :func:`~diffbook.bench.common.fit_recipe`
      reads them.
    """
    from .. import config

    return config.Config(
        cfg.name,
        dict(
            steps=cfg[f"{method}_steps"],
            peak_lr=cfg.student_lr,
            warmup=cfg.student_warmup,
            ema_decay=cfg.student_ema_decay,
            batch_size=cfg.batch_size,
        ),
    )


def meanflow_student_loss(teacher, cfg):
    """MeanFlow's loss as the chapter trains its student: the teacher's velocity as ``v``.

    Args:
      teacher: the trained velocity network ``teacher(x, t)``.
      cfg: the chapter's configuration, whose ``meanflow_equal_fraction``,
        ``meanflow_time_mean`` and ``meanflow_time_std`` set the intervals.

    Returns:
      ``loss(model, x1, key) -> scalar``, for :func:`~diffbook.bench.common.fit_recipe`.
    """
    from .. import few_step

    options = dict(
        velocity=teacher,
        equal_fraction=cfg.meanflow_equal_fraction,
        mean=cfg.meanflow_time_mean,
        std=cfg.meanflow_time_std,
    )

    def loss(model, x1, key):
        return few_step.meanflow_loss(model, x1, key, **options)

    return loss


def run(args: argparse.Namespace) -> dict:
    """Train chapter 8's teacher and one student, and sample it in ``--nfe`` evaluations.

    Args:
      args: the parsed options.

    Returns:
      The JSON line's fields: :func:`~diffbook.bench.common.sample_and_report`'s, with
      ``method``, ``solver`` (``null`` for a flow map), ``teacher_steps``,
      ``teacher_s``, ``paths_s``, ``student_s``, and ``compile_s`` and ``train_s``
      summed over the stages.
    """
    from flax import nnx

    from .. import data, few_step, flow, nets

    cfg = _recipe(args)
    num_samples = args.num_samples or cfg.num_samples
    images, _ = data.load_digits(None, split="train")

    # 1. The teacher: flow matching on all ten digits; its moving average is the teacher.
    net = nets.unet_from_recipe(cfg, seed=args.seed)
    teacher, teacher_history = common.fit_recipe(
        net, cfg, flow.cfm_loss, images, jax.random.key(args.seed), ema_warmup=True
    )
    compile_s, train_s = teacher_history.compile_s, teacher_history.train_s
    paths_s = paths_compile_s = student_s = 0.0

    # 2. The teacher's paths, for distillation and reflow.
    paths = None
    if args.method in ("distill", "reflow"):
        t_graph, t_state = nnx.split(teacher)

        @jax.jit
        def draw_paths(state, x0):
            return few_step.teacher_paths(nnx.merge(t_graph, state), x0, cfg.path_steps)

        x0 = jax.random.normal(jax.random.key(args.seed + 1), (cfg.path_samples, 8, 8, 1))
        paths, paths_compile_s, paths_s = common.compiled_and_timed(draw_paths, t_state, x0)
        compile_s, train_s = compile_s + paths_compile_s, train_s + paths_s

    # 3. The student, from the teacher's weights.
    model, history = teacher, teacher_history
    if args.method != "teacher":
        if args.method == "reflow":
            student = nnx.clone(teacher)
            loss, train_data = few_step.reflow_loss, (paths[:, 0], paths[:, -1])
        elif args.method == "distill":
            student = nets.FlowMapUNet.from_velocity(teacher, seed=args.seed)
            loss, train_data = few_step.flow_map_distillation_loss, paths
        else:
            student = nets.FlowMapUNet.from_velocity(teacher, seed=args.seed)
            loss, train_data = meanflow_student_loss(teacher, cfg), images
        model, history = common.fit_recipe(
            student,
            student_recipe(cfg, args.method),
            loss,
            train_data,
            jax.random.key(args.seed + 3),
            ema_warmup=True,
        )
        student_s = history.train_s
        compile_s, train_s = compile_s + history.compile_s, train_s + history.train_s

    # 4. Sampling in --nfe evaluations.
    velocity = args.method in _VELOCITY_METHODS
    solver = (args.solver or "dpm_solver_2m") if velocity else None
    default_nfe = 16 if args.method == "teacher" else 1
    nfe = None if solver == "adaptive" else (args.nfe or default_nfe)
    graphdef, state = nnx.split(model)

    @jax.jit
    def draw(state, key):
        net = nnx.merge(graphdef, state)
        x0 = jax.random.normal(key, (num_samples, 8, 8, 1))
        if solver is None:
            return few_step.flow_map_sample(net, x0, nfe)
        if solver == "adaptive":
            return flow.decode(net, x0, rtol=ADAPTIVE_TOLERANCE, atol=ADAPTIVE_TOLERANCE)
        steps = nfe // 2 if solver in ("heun", "midpoint") else nfe
        return few_step.SOLVERS[solver](net, x0, steps)

    return common.sample_and_report(
        "few_step",
        cfg,
        model,
        history,
        draw,
        state,
        args,
        method=args.method,
        solver=solver,
        teacher_steps=teacher_history.steps,
        path_samples=cfg.path_samples if paths is not None else None,
        compile_s=round(compile_s, 2),
        train_s=round(train_s, 2),
        teacher_s=round(teacher_history.train_s, 2),
        paths_s=round(paths_s, 2),
        student_s=round(student_s, 2),
    )
