"""Headless benchmarks: ``python -m diffbook.bench CHAPTER [options]``.

Each benchmark trains a chapter's recipe without the notebook and prints one
line of JSON with timings (seconds) and quality figures.  Timings live here,
never in the tests.  With ``--cost`` it trains nothing and prints what the
recipe would cost instead: FLOPs and estimated minutes on Colab's machines
(:func:`diffbook.cost.estimate`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from . import checks, config


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def _compiled_and_timed(fn, *args):
    """Compile the ``jax.jit`` function ``fn`` for ``args`` ahead of time, then run it once.

    Returns ``(output, compile_s, run_s)``: one run instead of a warm-up run and a timed one.
    """
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out, run_s = _timed(compiled, *args)
    return out, compile_s, run_s


def _with_train_steps(cfg, args):
    """``cfg`` with ``--train-steps`` applied (the warm-up shortened to fit), if given."""
    if args.train_steps is None:
        return cfg
    return cfg.replace(steps=args.train_steps, warmup=min(cfg.warmup, args.train_steps // 2))


def _rounded(figures: dict, digits: int = 4) -> dict:
    """``figures`` with every float rounded (for the JSON line)."""
    return {
        k: (round(float(v), digits) if isinstance(v, (float, np.floating)) else v)
        for k, v in figures.items()
    }


def _report(
    chapter, cfg, model, history, *, loss_window: int, loss_digits: int = 4, **figures
) -> dict:
    """The JSON line's fields every benchmark shares, then the chapter's ``figures``.

    ``final_loss`` is the mean loss of the last ``loss_window`` steps."""
    from . import nets

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


def _fit_recipe(model, cfg, loss_fn, data, key, *, ema_warmup=False):
    """Train ``model`` as the chapters do: AdamW with the recipe's ``peak_lr``, ``warmup``
    and ``steps``, batches of ``batch_size``, an EMA of decay ``ema_decay``; no progress
    bar.  Returns (ema, history)."""
    from . import train

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


def _train_digit_unet(cfg, loss_fn, args):
    """Train a chapter's digit U-Net recipe; returns (model, ema, history)."""
    from . import data, nets

    cfg = _with_train_steps(cfg, args)
    images, _ = data.load_digits(cfg.digit, split="train")
    model = nets.unet_from_recipe(cfg, seed=args.seed)
    ema, history = _fit_recipe(model, cfg, loss_fn, images, jax.random.key(args.seed))
    return model, ema, history


def _save_digit_samples(path, samples, digit) -> None:
    """Save ``samples`` (N, 8, 8, 1) in [-1, 1] with ``train_indices``, the indices into
    ``sklearn.datasets.load_digits()`` of the images the model trained on."""
    if path:
        from . import data

        np.savez_compressed(
            path,
            samples=np.asarray(samples, np.float32),
            train_indices=data.split_indices("train", digit),
        )


def _sample_and_report(chapter, cfg, model, history, draw, state, args, **extra) -> dict:
    """Time ``draw(state, key) -> (samples, nfe)`` (compiled first); save, measure the samples."""
    from . import metrics

    (samples, nfe), sample_compile_s, sample_s = _compiled_and_timed(
        draw, state, jax.random.key(args.seed + 2)
    )
    samples = np.clip(np.asarray(samples), -1.0, 1.0)
    _save_digit_samples(args.samples, samples, cfg.digit)
    quality = metrics.digit_quality(samples, cfg.digit)
    return _report(
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
        **_rounded(quality),
    )


def bench_flow_matching(args) -> dict:
    from flax import nnx

    from . import flow

    cfg = config.pick(flow.RECIPE, args.config)
    model, ema, history = _train_digit_unet(cfg, flow.cfm_loss, args)
    graphdef, state = nnx.split(ema)

    @jax.jit
    def draw(state, key):
        return flow.sample(
            nnx.merge(graphdef, state), key, args.num_samples, rtol=cfg.rtol, atol=cfg.atol
        )

    return _sample_and_report("flow_matching", cfg, model, history, draw, state, args)


def bench_ddpm(args) -> dict:
    from flax import nnx

    from . import ddpm, samplers
    from .schedules import NoiseSchedule

    cfg = config.pick(ddpm.RECIPE, args.config)
    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    model, ema, history = _train_digit_unet(
        cfg, lambda m, x, k: ddpm.diffusion_loss(schedule, m, x, k), args
    )
    graphdef, state = nnx.split(ema)
    shape = (args.num_samples, 8, 8, 1)
    # The ODE without --steps chooses its steps adaptively: no fixed number to report.
    steps = args.steps or {"ddim": 50, "sde": 50, "ode": None}.get(args.sampler, cfg.num_timesteps)

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

    return _sample_and_report(
        "ddpm", cfg, model, history, draw, state, args, sampler=args.sampler, sample_steps=steps
    )


def _int_at_least(minimum: int):
    """An argparse ``type=``: the option's int, refused (exit 2, naming it) below ``minimum``."""

    def convert(text: str) -> int:
        try:
            return checks.positive_int(int(text), "the value", minimum=minimum)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}") from None

    return convert


def _flow_matching_options(parser):
    parser.add_argument("--num-samples", type=_int_at_least(1), default=256)


def _ddpm_options(parser):
    parser.add_argument("--num-samples", type=_int_at_least(1), default=256)
    from .samplers import SAMPLERS

    parser.add_argument(
        "--sampler",
        choices=["ddpm", *sorted(set(SAMPLERS) - {"ancestral"})],
        default="ddpm",
        help="ddpm: the ancestral sampler; the others are diffbook.samplers.SAMPLERS",
    )
    parser.add_argument(
        "--steps",
        type=_int_at_least(1),
        help="sampling steps (ddpm, pc: must equal the schedule's 1000; "
        "ddim, sde: default 50; ode: adaptive unless given)",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0: deterministic)")


def bench_mixture(args) -> dict:
    from . import ddpm, mixture

    cfg = config.pick(mixture.RECIPE, args.config)
    cfg = _with_train_steps(cfg, args)
    schedule = mixture.make_schedule(cfg)
    data = mixture.make_data(cfg, jax.random.key(args.seed))
    model = mixture.make_model(cfg, seed=args.seed)
    ema, history = _fit_recipe(
        model,
        cfg,
        lambda m, x, k: ddpm.diffusion_loss(schedule, m, x, k, prediction="v"),
        data,
        jax.random.key(args.seed),
        ema_warmup=cfg.ema_warmup,
    )
    draw = jax.jit(lambda key: mixture.draw(args.sampler, schedule, ema, key, args.num_samples))
    (samples, nfe), sample_compile_s, sample_s = _compiled_and_timed(
        draw, jax.random.key(args.seed + 2)
    )
    samples = mixture.unstandardise(samples)
    if args.samples:
        np.save(args.samples, samples)
    quality = mixture.quality(mixture.MIXTURE, samples)
    return _report(
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
        **_rounded(quality),
    )


def _fit_text_to_image(model, cfg, schedule, data, key):
    """Train a text-conditioned ``model`` on ``data = (x, tokens, mask)`` with condition
    dropout, as chapters 5 and 7 do (an EMA without warm-up); returns (ema, history)."""
    from . import guidance

    def loss_fn(m, b, k):
        return guidance.cfg_loss(
            schedule, m, b, k, p_uncond=cfg.p_uncond, prediction=cfg.prediction
        )

    return _fit_recipe(model, cfg, loss_fn, data, key)


def bench_emoji(args) -> dict:
    from . import guidance, metrics, text_to_image
    from .autoencoder import psnr
    from .schedules import NoiseSchedule

    cfg = config.pick(text_to_image.RECIPE, args.config)
    if args.num_emoji:
        cfg = cfg.replace(num_emoji=args.num_emoji)
    if args.resolution:
        cfg = cfg.replace(resolution=args.resolution)
    if args.prediction:
        cfg = cfg.replace(prediction=args.prediction)
    cfg = _with_train_steps(cfg, args)
    scale = guidance.check_scale(cfg.guidance if args.guidance is None else args.guidance)
    images, prompts, tokenizer, tokens, mask = text_to_image.make_data(cfg)
    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    model = text_to_image.make_model(cfg, tokenizer.vocab_size, seed=args.seed)
    ema, history = _fit_text_to_image(
        model, cfg, schedule, (images, tokens, mask), jax.random.key(args.seed)
    )
    sampler = guidance.GuidedSampler(schedule, steps=cfg.sample_steps, prediction=cfg.prediction)
    # One image per prompt, from noise drawn with `key`; the first call compiles, the
    # second is timed.
    draw = lambda key, s, sampler=sampler: sampler(
        ema, (tokens, mask), jax.random.normal(key, images.shape), scale=s
    )
    _, sample_compile_s = _timed(draw, jax.random.key(args.seed + 1), scale)
    (samples, nfe), sample_s = _timed(draw, jax.random.key(args.seed + 2), scale)
    samples = np.asarray(samples)
    labels = np.arange(len(prompts))
    fidelity = metrics.prompt_fidelity(samples, labels, images)
    own_psnr = psnr(samples, images)  # each sample against its own prompt's emoji
    result = _report(
        "emoji",
        cfg,
        model,
        history,
        loss_window=100,
        resolution=cfg.resolution,
        num_emoji=len(prompts),
        prediction=cfg.prediction,
        guidance=scale,
        num_samples=int(len(samples)),
        nfe=int(nfe),
        sample_compile_s=round(sample_compile_s, 2),
        sample_s=round(sample_s, 2),
        psnr_median=round(float(np.median(own_psnr)), 2),
        **{k: round(float(v), 4) for k, v in fidelity.items()},
    )

    # The same noise without guidance (scale 1: the conditional model alone) and
    # without the prompt (scale 0): what guidance adds.
    def probe() -> dict:
        """Where does the network learn the prompts, and how much does the first step cost?

        ``x0_top5``: top-5 fidelity of the network's clipped clean-image estimate from the
        training images noised to each timestep of the sampling grid (with and without
        the prompt).  ``late_start_top5``: the same sampler started from pure noise at a
        later timestep of its grid (its first steps dropped), at scale 1 and the
        guidance scale.  ``first_step_clipped``: fraction of the pixels of the first
        step's estimate (from pure noise, at the last timestep) that the clip to [-1, 1]
        changes.  Each figure: [mean, std] over 3 seeds of noise.
        """
        import jax.numpy as jnp
        from flax import nnx

        from . import samplers

        grid = samplers.ddim_timesteps(schedule.num_timesteps, cfg.sample_steps)[::-1]
        seeds = range(3)
        ms = lambda xs: [round(float(np.mean(xs)), 4), round(float(np.std(xs)), 4)]
        top5 = lambda x: metrics.prompt_fidelity(np.clip(np.asarray(x), -1, 1), labels, images)[
            "top5"
        ]
        estimate = nnx.jit(
            lambda m, x, tk, mk, t, noise: samplers.predict_x0(
                schedule,
                lambda x, u: m(x, u, tk, mk),
                x,
                t,
                noise,
                prediction=cfg.prediction,
                clip_x0=True,
            )
        )
        none = np.zeros_like(mask)
        x0_top5 = {}
        for t in grid[[0, 1, 2, 3, 4, 6, 9, 12, 18]].tolist():
            noises = [
                jax.random.normal(jax.random.key(args.seed + 10 + i), images.shape) for i in seeds
            ]
            x0_top5[str(t)] = {
                "prompt": ms([top5(estimate(ema, images, tokens, mask, t, n)) for n in noises]),
                "no_prompt": ms([top5(estimate(ema, images, tokens, none, t, n)) for n in noises]),
            }
        late = {}
        for skip in (0, 1, 2, 4):
            run = nnx.jit(
                lambda m, tk, mk, x, s, ts=grid[skip:]: guidance.guided_sample(
                    schedule,
                    m,
                    (tk, mk),
                    x,
                    scale=s,
                    timesteps=ts,
                    prediction=cfg.prediction,
                    clip_x0=True,
                )[0]
            )
            late[str(int(grid[skip]))] = {
                str(s): ms(
                    [
                        top5(
                            run(
                                ema,
                                tokens,
                                mask,
                                jax.random.normal(jax.random.key(args.seed + 2 + i), images.shape),
                                jnp.float32(s),
                            )
                        )
                        for i in seeds
                    ]
                )
                for s in sorted({1.0, scale})
            }
        first = []
        for i in seeds:
            x_T = jax.random.normal(jax.random.key(args.seed + 2 + i), images.shape)
            tb = jnp.full((len(images),), int(grid[0]), jnp.int32)
            out = guidance.guided_model_fn(ema, (tokens, mask), 1.0)(x_T, schedule.to_u(tb))
            x0 = schedule.to_x0_eps(out, x_T, tb, cfg.prediction)[0]
            first.append(float(jnp.mean(jnp.abs(x0) > 1.0)))
        # The guided sampler with other numbers of steps (the chapter's exercise 1).
        by_steps = {}
        for steps in (10, cfg.sample_steps, 50):
            other = guidance.GuidedSampler(schedule, steps=steps, prediction=cfg.prediction)
            fids = [
                metrics.prompt_fidelity(
                    np.asarray(draw(jax.random.key(args.seed + 2 + i), scale, sampler=other)[0]),
                    labels,
                    images,
                )
                for i in seeds
            ]
            by_steps[str(steps)] = {
                key: ms([f[key] for f in fids]) for key in ("top1", "top5", "distance_ratio")
            }
        return {
            "x0_top5": x0_top5,
            "late_start_top5": late,
            "first_step_clipped": ms(first),
            "steps_fidelity": by_steps,
            "alpha_bar": {str(int(t)): float(schedule.alpha_bars[int(t)]) for t in grid[:5]},
        }

    for name, other_scale in (("conditional", 1.0), ("unconditional", 0.0)):
        if other_scale != scale:
            other = metrics.prompt_fidelity(
                np.asarray(draw(jax.random.key(args.seed + 2), other_scale)[0]), labels, images
            )
            result[f"top5_{name}"] = round(float(other["top5"]), 4)
    if args.probe:
        result.update(probe())
    if args.samples:
        # Sample i was prompted by prompts[i], the name of train_images[i].
        np.savez_compressed(
            args.samples, samples=samples, prompts=np.array(prompts), train_images=images
        )
    return result


def _emoji_options(parser):
    parser.add_argument(
        "--guidance",
        type=float,
        help="guidance scale s of eps_u + s (eps_c - eps_u); 0: no prompt, "
        "1: the conditional model without guidance (default: the recipe's)",
    )
    parser.add_argument(
        "--prediction",
        choices=["epsilon", "v"],
        help="what the network predicts (default: the recipe's, v)",
    )
    parser.add_argument(
        "--num-emoji",
        type=_int_at_least(6),
        help="override the recipe's number of emoji (for quick checks; at "
        "least 6: fidelity looks at the 5 nearest)",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        choices=[16, 32, 64],
        help="override the recipe's resolution (the latent diffusion chapter's "
        "pixel-space comparison uses 32)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="also measure where the network learned the prompts: fidelity of "
        "its clean-image estimate at each noise level, and of samples "
        "started later on the sampling grid (3 seeds each)",
    )


def _mixture_options(parser):
    from .samplers import SAMPLERS

    parser.add_argument("--num-samples", type=_int_at_least(1), default=10_000)
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="ancestral")


def bench_vae(args) -> dict:
    from . import data, metrics, train, vae

    cfg = config.pick(vae.RECIPE, args.config)
    cfg = _with_train_steps(cfg, args)
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
    samples, sample_s = _timed(draw, jax.random.key(args.seed + 2))
    samples = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    _save_digit_samples(args.samples, samples, None)
    quality = metrics.digit_quality(samples, None)
    return _report(
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
        **_rounded(quality),
    )


def _vae_options(parser):
    parser.add_argument(
        "--num-samples",
        type=_int_at_least(1),
        default=1000,
        help="prior samples to draw and measure (at least 599, the held-out images)",
    )


def bench_class_conditional(args) -> dict:
    import jax.numpy as jnp
    from flax import nnx

    from . import class_conditional as cc
    from . import data, guidance, metrics, samplers, train
    from .schedules import NoiseSchedule

    cfg = _with_train_steps(config.pick(cc.RECIPE, args.config), args)
    dit = args.backbone == "dit"
    if dit:  # the DiT's own steps and learning rate (--train-steps sets them too)
        steps = args.train_steps or cfg.dit_steps
        cfg = cfg.replace(steps=steps, peak_lr=cfg.dit_lr, warmup=min(cfg.warmup, steps // 2))
    if args.train_steps:  # a quick check trains the classifier no longer than the model
        cfg = cfg.replace(classifier_steps=min(cfg.classifier_steps, args.train_steps))
    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    images, labels = data.load_digits(split="train")
    key = jax.random.key(args.seed)
    k_model, k_classifier, k_noise = jax.random.split(key, 3)

    model = cc.make_model(cfg, args.backbone, seed=args.seed)

    def loss_fn(m, batch, k):
        return guidance.cfg_loss(
            schedule, m, batch, k, p_uncond=cfg.p_uncond, prediction=cfg.prediction
        )

    ema, history = _fit_recipe(model, cfg, loss_fn, (images, labels), k_model, ema_warmup=True)
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
            lambda c, batch, k: cc.classifier_loss(schedule, c, batch, k),
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

    (samples, nfe), sample_compile_s, sample_s = _compiled_and_timed(
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
    return _report(
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
        **_rounded(quality),
    )


def _class_conditional_options(parser):
    parser.add_argument(
        "--guidance",
        type=float,
        help="guidance scale (cfg: s of uncond + s (cond - uncond); classifier: the "
        "classifier scale); 0: the unguided, unconditional model (default: the recipe's, "
        "1 for cfg, i.e. the conditional model without guidance, which measured best on "
        "digits; 4 for classifier)",
    )
    from .class_conditional import BACKBONES, METHODS

    parser.add_argument(
        "--steps",
        type=_int_at_least(1),
        help="DDIM sampling steps (default: the recipe's sample_steps, 50 on cpu)",
    )
    parser.add_argument("--method", choices=METHODS, default="cfg")
    parser.add_argument("--backbone", choices=BACKBONES, default="unet")
    parser.add_argument(
        "--per-digit",
        type=_int_at_least(61),
        default=100,
        help="samples of each digit (at least 61, the most held-out images of one digit)",
    )


def bench_latent(args) -> dict:
    """Both stages of the latent diffusion recipe: the autoencoder, then the
    text-conditioned network on its scaled latents; guided samples decoded to pixels."""
    import functools

    from . import autoencoder as ae
    from . import emoji, guidance, metrics, nets, text
    from . import latent_diffusion as ld
    from .schedules import NoiseSchedule

    cfg = _with_train_steps(config.pick(ld.RECIPE, args.config), args)
    ae_cfg = config.pick(ae.RECIPE, cfg.name)
    if args.autoencoder_steps is not None:
        ae_cfg = ae_cfg.replace(
            steps=args.autoencoder_steps, warmup=min(ae_cfg.warmup, args.autoencoder_steps // 2)
        )
    if args.num_emoji:
        cfg = cfg.replace(num_emoji=args.num_emoji)
    if ae_cfg.resolution != cfg.resolution:
        raise ValueError(
            f"the {cfg.name} recipes disagree: autoencoder resolution {ae_cfg.resolution}, "
            f"diffusion resolution {cfg.resolution}"
        )
    scale = guidance.check_scale(cfg.guidance if args.guidance is None else args.guidance)
    images, prompts = emoji.load_emoji(cfg.resolution, limit=cfg.num_emoji)
    tokenizer = text.Tokenizer.fit(prompts)
    tokens, mask = tokenizer.encode(prompts, cfg.max_len)
    key_ae, key_ld, key_noise = jax.random.split(jax.random.key(args.seed), 3)

    # Stage 1: the autoencoder.
    autoenc = ae.make_autoencoder(ae_cfg, seed=args.seed)
    ae_ema, ae_history = _fit_recipe(
        autoenc,
        ae_cfg,
        functools.partial(ae.autoencoder_loss, kl_weight=ae_cfg.kl_weight),
        images,
        key_ae,
        ema_warmup=True,
    )
    latents = ld.encode(ae_ema, images)
    latent_scale = ae.latent_scale_factor(latents)
    z = latents * np.float32(latent_scale)
    recon = ld.decode(ae_ema, latents)
    recon_psnr = ld.pooled_psnr(recon, images)
    labels = np.arange(len(prompts))
    recon_fidelity = metrics.prompt_fidelity(recon, labels, images)

    # Stage 2: the text-conditioned network on the scaled latents.
    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    model = ld.make_model(cfg, tokenizer.vocab_size, ae_cfg.latent_channels, seed=args.seed)
    ema, history = _fit_text_to_image(model, cfg, schedule, (z, tokens, mask), key_ld)
    # Latents are not images: no clipping to [-1, 1] inside the sampler.
    sampler = guidance.GuidedSampler(
        schedule, steps=cfg.sample_steps, prediction=cfg.prediction, clip_x0=False
    )
    noise = jax.random.normal(key_noise, z.shape)

    def draw(s):
        t0 = time.perf_counter()
        z_0, nfe = sampler(ema, (tokens, mask), noise, scale=s)
        pixels = ld.decode(ae_ema, z_0, latent_scale)
        return pixels, int(nfe), time.perf_counter() - t0

    _, _, sample_compile_s = draw(scale)  # compiles sampler and decoder
    samples, nfe, sample_s = draw(scale)
    fidelity = metrics.prompt_fidelity(samples, labels, images)
    own_psnr = ld.pooled_psnr(samples, images)
    result = _report(
        "latent",
        cfg,
        model,
        history,
        loss_window=100,
        autoencoder_s=round(ae_history.train_s, 2),
        autoencoder_compile_s=round(ae_history.compile_s, 2),
        diffusion_s=round(history.train_s, 2),
        autoencoder_steps=ae_history.steps,
        autoencoder_params=nets.count_params(autoenc),
        resolution=cfg.resolution,
        latent_shape=list(autoenc.latent_shape),
        latent_scale=round(latent_scale, 4),
        num_emoji=len(prompts),
        guidance=scale,
        nfe=nfe,
        sample_compile_s=round(sample_compile_s, 2),
        sample_s=round(sample_s, 2),
        recon_psnr_median=round(float(np.median(recon_psnr)), 2),
        recon_psnr_p10=round(float(np.percentile(recon_psnr, 10)), 2),
        recon_top1=round(recon_fidelity["top1"], 4),
        recon_top5=round(recon_fidelity["top5"], 4),
        psnr_median=round(float(np.median(own_psnr)), 2),
        **{k: round(float(v), 4) for k, v in fidelity.items()},
    )
    # Both stages: compile_s and train_s cover the autoencoder and the diffusion model.
    result["compile_s"] = round(ae_history.compile_s + history.compile_s, 2)
    result["train_s"] = round(ae_history.train_s + history.train_s, 2)
    if scale != 0.0:
        unguided = metrics.prompt_fidelity(draw(0.0)[0], labels, images)
        result["top1_unconditional"] = round(unguided["top1"], 4)
        result["top5_unconditional"] = round(unguided["top5"], 4)
    if args.samples:
        # Sample i was prompted by prompts[i]; train_prompts are the same names
        # (one image per name), saved under both keys as the format asks.
        np.savez_compressed(
            args.samples,
            samples=samples,
            prompts=np.array(prompts),
            train_images=images,
            train_prompts=np.array(prompts),
        )
    return result


def _latent_options(parser):
    parser.add_argument(
        "--guidance",
        type=float,
        help="guidance scale s (0: no prompt; default: the recipe's)",
    )
    parser.add_argument(
        "--num-emoji",
        type=_int_at_least(6),
        help="override the recipe's number of emoji (for quick checks; at least 6)",
    )
    parser.add_argument(
        "--autoencoder-steps",
        type=_int_at_least(2),
        help="override the autoencoder's training steps (for quick checks)",
    )


#: chapter -> (benchmark function, function adding the chapter's own options)
BENCHMARKS = {
    "flow_matching": (bench_flow_matching, _flow_matching_options),
    "ddpm": (bench_ddpm, _ddpm_options),
    "vae": (bench_vae, _vae_options),
    "mixture": (bench_mixture, _mixture_options),
    "emoji": (bench_emoji, _emoji_options),
    "class_conditional": (bench_class_conditional, _class_conditional_options),
    "latent": (bench_latent, _latent_options),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffbook.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chapters = parser.add_subparsers(
        dest="chapter", required=True, metavar="CHAPTER", help=", ".join(sorted(BENCHMARKS))
    )
    for name, (_, add_options) in sorted(BENCHMARKS.items()):
        sub = chapters.add_parser(name)
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
        sub.add_argument("--seed", type=_int_at_least(0), default=0)
        sub.add_argument(
            "--train-steps",
            type=_int_at_least(2),
            help="override the recipe's training steps (for quick checks)",
        )
        sub.add_argument(
            "--cost",
            action="store_true",
            help="train nothing: print the recipe's FLOPs by XLA's cost analysis and the "
            "estimated minutes on a Colab T4 and TPUs (only --config applies)",
        )
        add_options(sub)
    args = parser.parse_args(argv)
    if args.cost:
        if args.samples or args.train_steps:
            parser.error("--cost trains nothing: --samples and --train-steps do not apply")
        from . import cost

        choice = args.config or os.environ.get("DIFFBOOK_CONFIG") or config.default_choice()
        print(json.dumps(cost.estimate(args.chapter, choice)), flush=True)
        return 0
    if args.chapter in ("vae", "ddpm", "flow_matching"):
        import importlib

        from .data import split_indices

        module = {"vae": "vae", "ddpm": "ddpm", "flow_matching": "flow"}[args.chapter]
        digit = importlib.import_module(f"diffbook.{module}").RECIPE["cpu"].get("digit")
        needed = len(split_indices("held_out", digit))
        if args.num_samples < needed:
            parser.error(
                f"--num-samples must be at least {needed} for the {args.chapter} "
                f"benchmark (samples are judged against {needed} held-out images)"
            )
    if getattr(args, "sampler", None) == "ddpm" and args.steps not in (None, 1000):
        parser.error("the ddpm sampler visits every timestep: use --sampler ddim for fewer steps")
    if getattr(args, "steps", None) is not None and args.steps > 1000:
        parser.error("--steps must be in 1..1000")
    if getattr(args, "guidance", None) is not None:
        from .guidance import check_scale

        try:
            check_scale(args.guidance)
        except ValueError as err:
            parser.error(f"--guidance: {err}")
    os.environ.setdefault("DIFFBOOK_PROGRESS", "0")
    result = BENCHMARKS[args.chapter][0](args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
