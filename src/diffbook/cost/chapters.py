"""Each chapter's computation as cost stages: what its cells train and sample.

:func:`chapter_stages` builds, for one chapter, a
:class:`~diffbook.cost.stages.Stage` for every training run its cells make and for
the sampling they do, at the recipe's batches and counts (the list of what is
counted and what is not is in :mod:`diffbook.cost`); :func:`estimate` sums them up
with :func:`~diffbook.cost.machines.summarise`.  A new chapter's cost is one more
``_<chapter>_stages`` function and one more line in ``_STAGES``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .. import checks, config
from .machines import summarise
from .stages import Stage, abstract, call_stage, train_stage

#: The chapters :func:`estimate` knows, the names the benchmark uses.
CHAPTERS = (
    "vae",
    "ddpm",
    "flow_matching",
    "mixture",
    "emoji",
    "class_conditional",
    "latent",
    "few_step",
)


def _spec(shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(int(n) for n in shape), jnp.dtype(dtype))


def recipes(chapter: str, choice: str = "accelerator") -> dict:
    """The configurations a chapter runs with, by name, unchanged by ``$DIFFBOOK_SMOKE``.

    Args:
      chapter: one of :data:`CHAPTERS`.
      choice: ``"cpu"`` or ``"accelerator"``.

    Returns:
      ``{"recipe": Config}``; for ``"latent"`` also ``"autoencoder"``, stage 1's
      configuration of the same choice.

    Raises:
      ValueError: for an unknown ``chapter`` or ``choice``.
    """
    import importlib

    checks.one_of(chapter, "chapter", CHAPTERS)
    checks.one_of(choice, "choice", config.CHOICES)
    module = {
        "vae": "vae",
        "ddpm": "ddpm",
        "flow_matching": "flow",
        "mixture": "mixture",
        "emoji": "text_to_image",
        "class_conditional": "class_conditional",
        "latent": "latent_diffusion",
        "few_step": "few_step",
    }[chapter]
    recipe = importlib.import_module(f"diffbook.{module}").RECIPE
    found = {"recipe": config.Config(choice, dict(recipe[choice]))}
    if chapter == "latent":
        from .. import autoencoder

        found["autoencoder"] = config.Config(choice, dict(autoencoder.RECIPE[choice]))
    return found


def _adamw(model, cfg, *, steps=None, peak_lr=None):
    """The book's AdamW for ``model`` as the chapters make it, shapes only."""
    from .. import train

    steps = steps or cfg.steps
    return abstract(
        lambda: train.adamw_with_ema(
            model,
            peak_lr=peak_lr or cfg.peak_lr,
            steps=steps,
            warmup=min(cfg.warmup, steps // 2),
        )[1]
    )


def _digits(batch: int):
    return _spec((batch, 8, 8, 1))


def _count(cfg, key: str, default: int) -> int:
    """A sample count of the recipe, or ``default``, the chapter's count where the recipe
    names none."""
    return checks.positive_int(cfg.get(key, default), key)


def _vae_stages(cfgs) -> list[Stage]:
    from .. import vae

    cfg = cfgs["recipe"]
    batch = (_digits(cfg.batch_size), _spec((cfg.batch_size,), jnp.int32))
    stages = []
    for latent in (cfg.latent_dim, 2):  # the chapter's VAE, then one with a 2-D latent
        model, optimizer = abstract(
            lambda latent=latent: vae.make_model_and_optimizer(cfg.replace(latent_dim=latent))
        )
        stages.append(
            train_stage(
                f"VAE, latent {latent}", model, optimizer, vae.vae_loss, batch, steps=cfg.steps
            )
        )
        if latent == cfg.latent_dim:
            decoder = model
    stages.append(
        call_stage(
            "1,000 images decoded from the prior",
            decoder,
            vae.decode_mean,
            (_spec((1000, cfg.latent_dim)),),
            calls=1,
        )
    )
    return stages


def _digit_net(m, x, u):
    return m(x, u)


def _ddpm_stages(cfgs) -> list[Stage]:
    from .. import ddpm, nets
    from ..schedules import NoiseSchedule

    cfg = cfgs["recipe"]
    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    model = abstract(lambda: nets.unet_from_recipe(cfg))
    T = cfg.num_timesteps
    n = _count(cfg, "num_samples", 64)  # per seed
    # The chapter's DDIM table (each at eta 0 and 1) and its round trips (inversion, then
    # sampling back twice), at the numbers of steps that do not exceed T.
    ddim = [s for s in (10, 20, 50, 100) if s <= T]
    trips = [s for s in (10, 100, 1000) if s <= T]
    return [
        train_stage(
            "U-Net, noise prediction",
            model,
            _adamw(model, cfg),
            lambda m, x, k: ddpm.diffusion_loss(schedule, m, x, k),
            _digits(cfg.batch_size),
            steps=cfg.steps,
            ema_decay=cfg.ema_decay,
        ),
        call_stage(
            f"3 seeds of {n} samples: ancestral (T steps) as trained, with the linear "
            "schedule and unclipped, and once through the library; DDIM, 10/20/50/100 steps "
            "at eta 0 and 1",
            model,
            _digit_net,
            (_digits(n), _spec((n,))),
            calls=10 * T + 3 * 2 * sum(ddim),
        ),
        call_stage(
            "DDIM round trips of 8 images, 10/100/1000 steps",
            model,
            _digit_net,
            (_digits(8), _spec((8,))),
            calls=3 * sum(trips),
        ),
    ]


#: The steps assumed for the adaptive Tsit5 solver of chapter 3 at the accelerator
#: recipe's tolerance of 1e-4 (13 or 14 measured at the CPU recipe's 1e-3; a
#: fifth-order method's steps grow as the tolerance's fifth root, to about 22).
ADAPTIVE_STEPS = 30


def _flow_stages(cfgs) -> list[Stage]:
    from .. import flow, nets

    cfg = cfgs["recipe"]
    model = abstract(lambda: nets.unet_from_recipe(cfg))
    n = _count(cfg, "num_samples", 256)  # per seed
    tsit5 = 6 * ADAPTIVE_STEPS + 1  # network calls of one adaptive solve
    fixed = 2 + 4 + 16 + 2 * 2 + 2 * 8  # Euler 2, 4, 16 steps; Heun 2, 8 steps
    return [
        train_stage(
            "U-Net, conditional flow matching",
            model,
            _adamw(model, cfg),
            flow.cfm_loss,
            _digits(cfg.batch_size),
            steps=cfg.steps,
            ema_decay=cfg.ema_decay,
        ),
        call_stage(
            f"3 seeds of {n} samples, adaptive Tsit5 ({ADAPTIVE_STEPS} steps assumed), "
            "and fixed-step Euler and Heun",
            model,
            _digit_net,
            (_digits(n), _spec((n,))),
            calls=3 * (tsit5 + fixed),
        ),
    ]


def mixture_sampler_calls(num_timesteps: int) -> dict:
    """The network calls of each of chapter 4's samplers, as its table's "calls" column
    gives them for 1,000 timesteps (the adaptive ODE solver's 92 counted as 100).

    Args:
      num_timesteps: the recipe's ``num_timesteps``, ``T``.

    Returns:
      Sampler name -> network calls of one run.

    Raises:
      TypeError, ValueError: if ``num_timesteps`` is not a positive int.
    """
    T = checks.positive_int(num_timesteps, "num_timesteps")
    return {
        "ancestral": T,
        "ddim": 50,
        "pc": 2 * T,
        "annealed_langevin": T + 1,
        "ode": 100,
        "sde": 1001,
    }


def _mixture_stages(cfgs) -> list[Stage]:
    from .. import ddpm, mixture

    cfg = cfgs["recipe"]
    schedule = mixture.make_schedule(cfg)
    model = abstract(lambda: mixture.make_model(cfg))
    loss = lambda m, x, k: ddpm.diffusion_loss(schedule, m, x, k, prediction="v")
    # The ablation's runs: two halves (one at the blog's learning rate) and four eighths of
    # the recipe's steps.
    ablation = 2 * (cfg.steps // 2) + 4 * (cfg.steps // 8)
    n = _count(cfg, "num_samples", 10_000)  # ancestral samples
    table = _count(cfg, "table_samples", 3_000)  # samples per seed in the sampler table
    calls = mixture_sampler_calls(cfg.num_timesteps)
    batch = _spec((cfg.batch_size, 1))
    return [
        train_stage(
            "MLP, v-prediction: the recipe's run and the ablation's six shorter ones",
            model,
            _adamw(model, cfg),
            loss,
            batch,
            steps=cfg.steps + ablation,
            ema_decay=cfg.ema_decay,
        ),
        call_stage(
            f"{n} ancestral samples, T steps",
            model,
            _digit_net,
            (_spec((n, 1)), _spec((n,))),
            calls=calls["ancestral"],
        ),
        call_stage(
            f"the sampler table (3 seeds of {table} for six samplers) and nine networks "
            "through the ODE sampler",
            model,
            _digit_net,
            (_spec((table, 1)), _spec((table,))),
            calls=3 * (sum(calls.values()) + 9 * calls["ode"]),
        ),
    ]


def _emoji_vocabulary(num_emoji):
    """The number of prompts a recipe's ``num_emoji`` gives, and their vocabulary's size."""
    from .. import emoji, text

    names = [name for _, name in emoji.emoji_subset()]
    names = names if num_emoji is None else names[:num_emoji]
    return len(names), text.Tokenizer.fit(names).vocab_size


def _text_to_image_calls(model, cfg, in_channels, res, n, batches, *, label):
    """A guided call on ``n`` prompts (the network sees them and the empty prompt), ``batches``
    times ``cfg.sample_steps``."""
    from .. import guidance

    def fn(model, x, u, tokens, mask):
        return guidance.guided_model_fn(model, (tokens, mask), cfg.guidance)(x, u)

    inputs = (
        _spec((n, res, res, in_channels)),
        _spec((n,)),
        _spec((n, cfg.max_len), jnp.int32),
        _spec((n, cfg.max_len), jnp.bool_),
    )
    return call_stage(label, model, fn, inputs, calls=batches * cfg.sample_steps)


def _text_to_image_train(model, cfg, in_channels, res, *, label):
    from .. import guidance
    from ..schedules import NoiseSchedule

    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    b = cfg.batch_size
    batch = (
        _spec((b, res, res, in_channels)),
        _spec((b, cfg.max_len), jnp.int32),
        _spec((b, cfg.max_len), jnp.bool_),
    )
    return train_stage(
        label,
        model,
        _adamw(model, cfg),
        lambda m, x, k: guidance.cfg_loss(
            schedule, m, x, k, p_uncond=cfg.p_uncond, prediction=cfg.prediction
        ),
        batch,
        steps=cfg.steps,
        ema_decay=cfg.ema_decay,
    )


def _emoji_stages(cfgs) -> list[Stage]:
    from .. import text_to_image

    cfg = cfgs["recipe"]
    n, vocab = _emoji_vocabulary(cfg.num_emoji)
    res = cfg.resolution
    model = abstract(lambda: text_to_image.make_model(cfg, vocab))
    sampled = min(_count(cfg, "num_samples", n), n)  # the first prompts
    third = -(-sampled // 3)
    scales = 6  # the chapter's scales 0, 1, 2, 3, 5, 8
    return [
        _text_to_image_train(model, cfg, 3, res, label=f"text-to-image U-Net on {n} emoji"),
        _text_to_image_calls(
            model,
            cfg,
            3,
            res,
            third,
            3 * scales + 1,
            label=f"{sampled} prompts at {scales} guidance scales (3 seeds of {third}), "
            f"{cfg.sample_steps} DDIM steps; the grid of 10 prompts at {scales} scales and 11 "
            f"new prompts, counted as one more batch of {third}",
        ),
    ]


def _class_conditional_stages(cfgs) -> list[Stage]:
    from .. import class_conditional as cc
    from .. import guidance
    from ..schedules import NoiseSchedule

    cfg = cfgs["recipe"]
    schedule = NoiseSchedule.cosine(cfg.num_timesteps)
    b = cfg.batch_size
    batch = (_digits(b), _spec((b,), jnp.int32))

    def denoiser_loss(m, batch, k):
        return guidance.cfg_loss(
            schedule, m, batch, k, p_uncond=cfg.p_uncond, prediction=cfg.prediction
        )

    unet = abstract(lambda: cc.make_model(cfg, "unet"))
    dit = abstract(lambda: cc.make_model(cfg, "dit"))
    classifier = abstract(lambda: cc.make_classifier(cfg))
    stages = [
        train_stage(
            "class-conditional U-Net",
            unet,
            _adamw(unet, cfg),
            denoiser_loss,
            batch,
            steps=cfg.steps,
            ema_decay=cfg.ema_decay,
        ),
        # The clean classifier's step only skips the noising: counted as the noisy one's.
        train_stage(
            "noise-aware and clean classifiers",
            classifier,
            _adamw(classifier, cfg, steps=cfg.classifier_steps, peak_lr=cfg.classifier_lr),
            lambda c, batch, k: guidance.classifier_loss(schedule, c, batch, k),
            batch,
            steps=2 * cfg.classifier_steps,
        ),
        train_stage(
            "DiT",
            dit,
            _adamw(dit, cfg, steps=cfg.dit_steps, peak_lr=cfg.dit_lr),
            denoiser_loss,
            batch,
            steps=cfg.dit_steps,
            ema_decay=cfg.ema_decay,
        ),
    ]
    n = 10 * _count(cfg, "per_digit_samples", 64)
    final = 10 * _count(cfg, "final_per_digit_samples", 100)

    def guided(model, x, u, labels):
        return guidance.guided_model_fn(model, (labels,), cfg.guidance)(x, u)

    def cfg_calls(label, model, batch, calls):
        inputs = (_digits(batch), _spec((batch,)), _spec((batch,), jnp.int32))
        return call_stage(label, model, guided, inputs, calls=calls)

    def classifier_guided(models, x, u, labels):
        net, classifier = models
        (null,) = net.null_condition(labels)
        return guidance.classifier_guided_model_fn(
            schedule,
            lambda x, u: net(x, u, null),
            classifier,
            labels,
            cfg.classifier_scale,
            prediction=cfg.prediction,
        )(x, u)

    sweep = cfg.sweep_steps
    stages += [
        # 4 scales, then 3 guidance schedules x 3 seeds (one of them already drawn); the
        # grid of 10 digits at 5 scales counted as one run more, the final samples (at
        # sample_steps) as whole runs.
        cfg_calls(
            f"classifier-free guidance: 12 runs of {n} samples, the grid and {final} final samples",
            unet,
            n,
            13 * sweep + -(-final // n) * cfg.sample_steps,
        ),
        call_stage(
            f"classifier guidance: 11 runs of {n} samples",
            (unet, classifier),
            classifier_guided,
            (_digits(n), _spec((n,)), _spec((n,), jnp.int32)),
            calls=11 * sweep,
        ),
        cfg_calls(f"DiT: one run of {n} samples", dit, n, sweep),
    ]
    return stages


def _latent_stages(cfgs) -> list[Stage]:
    from .. import autoencoder as ae
    from .. import latent_diffusion as ld

    cfg, ae_cfg = cfgs["recipe"], cfgs["autoencoder"]
    if ae_cfg.resolution != cfg.resolution:
        raise ValueError(
            f"the recipes disagree: autoencoder resolution {ae_cfg.resolution}, "
            f"diffusion resolution {cfg.resolution}"
        )
    n, vocab = _emoji_vocabulary(cfg.num_emoji)
    res, side = cfg.resolution, cfg.resolution // ae_cfg.factor
    autoencoder = abstract(lambda: ae.make_autoencoder(ae_cfg))
    model = abstract(lambda: ld.make_model(cfg, vocab, ae_cfg.latent_channels))
    sampled = min(_count(cfg, "num_samples", n), n)  # the first prompts
    third = -(-sampled // 3)
    scales = 3  # the chapter's scales 0, 1 and the recipe's
    chunk = 256  # latent_diffusion.encode and decode work in batches of 256
    chunks = -(-n // chunk)
    b = ae_cfg.batch_size
    return [
        train_stage(
            "autoencoder",
            autoencoder,
            _adamw(autoencoder, ae_cfg),
            lambda m, x, k: ae.autoencoder_loss(m, x, k, kl_weight=ae_cfg.kl_weight),
            _spec((b, res, res, 3)),
            steps=ae_cfg.steps,
            ema_decay=ae_cfg.ema_decay,
        ),
        _text_to_image_train(
            model, cfg, ae_cfg.latent_channels, side, label=f"latent U-Net on {n} emoji"
        ),
        _text_to_image_calls(
            model,
            cfg,
            ae_cfg.latent_channels,
            side,
            third,
            3 * scales + 2,
            label=f"{sampled} prompts at {scales} guidance scales (3 seeds of {third}) and up "
            f"to {third} unseen names at 2, {cfg.sample_steps} DDIM steps",
        ),
        call_stage(
            "encoding every emoji once",
            autoencoder,
            lambda m, x: m.encode(x),
            (_spec((chunk, res, res, 3)),),
            calls=chunks,
        ),
        call_stage(
            "decoding the reconstructions and every sample",
            autoencoder,
            lambda m, z: m.decode(z),
            (_spec((chunk, side, side, ae_cfg.latent_channels)),),
            # The reconstructions in batches of 256; the samples a third at a time.
            calls=chunks + (3 * scales + 2) * -(-third // chunk),
        ),
    ]


#: The numbers of network evaluations of chapter 8's solver table (its closing table
#: uses the first three).
FEW_STEP_NFES = (1, 2, 4, 8, 16)


def few_step_sampling_calls() -> dict:
    """The network calls per sample that chapter 8 makes of each of its networks.

    Returns:
      ``{"teacher": ..., "reflow": ..., "flow_map": ...}``.  The teacher: the solver
      table on one seed (each of :data:`diffbook.few_step.SOLVERS` at each of
      :data:`FEW_STEP_NFES`, the two-evaluation solvers at the even ones, and the
      adaptive solve, :data:`ADAPTIVE_STEPS` Tsit5 steps assumed), its straightness
      over 16 Euler steps, and on three seeds the closing table's Euler and
      DPM-Solver++(2M) at 1, 2 and 4 evaluations, its best solver (counted as the
      adaptive solve, the dearest) and the adaptive solve.  Reflow: its straightness,
      Euler at 1, 2 and 4 on one seed, then on three.  Each flow map (distilled,
      MeanFlow): 1, 2 and 4 jumps on three seeds.
    """
    adaptive = 6 * ADAPTIVE_STEPS + 1
    few = sum(FEW_STEP_NFES[:3])  # 1, 2 and 4 evaluations
    one_eval = 2 * sum(FEW_STEP_NFES)  # euler, dpm_solver_2m
    two_evals = 2 * sum(n for n in FEW_STEP_NFES if n % 2 == 0)  # heun, midpoint
    straightness = 16
    return {
        "teacher": one_eval + two_evals + adaptive + straightness + 3 * (2 * few + 2 * adaptive),
        "reflow": straightness + few + 3 * few,
        "flow_map": 3 * few,
    }


def _few_step_stages(cfgs) -> list[Stage]:
    from .. import few_step, flow, nets

    cfg = cfgs["recipe"]
    teacher = abstract(lambda: nets.unet_from_recipe(cfg))
    flow_map = abstract(lambda: nets.FlowMapUNet(nets.unet_from_recipe(cfg), rngs=nnx.Rngs(0)))
    b, k = cfg.batch_size, cfg.path_steps
    n = _count(cfg, "num_samples", 600)  # per seed

    def student(model, method):
        steps = cfg[f"{method}_steps"]
        return _adamw(model, cfg, steps=steps, peak_lr=cfg.student_lr), steps

    def flow_map_call(m, z, r, t):
        return m(z, r, t)

    def meanflow_cost(m, x1, key):
        # The teacher's velocity in the target is counted apart, as calls (no gradient).
        return few_step.meanflow_loss(m, x1, key)

    calls = few_step_sampling_calls()
    stages = [
        train_stage(
            "teacher: U-Net, conditional flow matching",
            teacher,
            _adamw(teacher, cfg),
            flow.cfm_loss,
            _digits(b),
            steps=cfg.steps,
            ema_decay=cfg.ema_decay,
        ),
        call_stage(
            f"the teacher's paths: {cfg.path_samples} from noise, {k} DPM-Solver++(2M) steps",
            teacher,
            _digit_net,
            (_digits(cfg.path_samples), _spec((cfg.path_samples,))),
            calls=k,
        ),
    ]
    optimizer, steps = student(flow_map, "distill")
    stages.append(
        train_stage(
            "flow map distilled from the paths",
            flow_map,
            optimizer,
            few_step.flow_map_distillation_loss,
            _spec((b, k + 1, 8, 8, 1)),
            steps=steps,
            ema_decay=cfg.student_ema_decay,
        )
    )
    optimizer, steps = student(teacher, "reflow")
    stages.append(
        train_stage(
            "reflow: U-Net on (noise, teacher sample) pairs",
            teacher,
            optimizer,
            few_step.reflow_loss,
            (_digits(b), _digits(b)),
            steps=steps,
            ema_decay=cfg.student_ema_decay,
        )
    )
    optimizer, steps = student(flow_map, "meanflow")
    stages += [
        train_stage(
            "MeanFlow flow map",
            flow_map,
            optimizer,
            meanflow_cost,
            _digits(b),
            steps=steps,
            ema_decay=cfg.student_ema_decay,
        ),
        call_stage(
            "the teacher's velocity in MeanFlow's targets, once a step",
            teacher,
            _digit_net,
            (_digits(b), _spec((b,))),
            calls=steps,
        ),
        call_stage(
            f"batches of {n} samples: the teacher's solver table (four solvers at "
            f"{'/'.join(map(str, FEW_STEP_NFES))} evaluations and adaptively, "
            f"{ADAPTIVE_STEPS} steps assumed), the teacher's and reflow's straightness "
            "and Euler, and the closing table's teacher and reflow rows on 3 seeds",
            teacher,
            _digit_net,
            (_digits(n), _spec((n,))),
            calls=calls["teacher"] + calls["reflow"],
        ),
        call_stage(
            f"the closing table's flow maps: 3 seeds of {n} samples at 1/2/4 jumps, each",
            flow_map,
            flow_map_call,
            (_digits(n), _spec((n,)), _spec((n,))),
            calls=2 * calls["flow_map"],
        ),
    ]
    return stages


_STAGES = {
    "vae": _vae_stages,
    "ddpm": _ddpm_stages,
    "flow_matching": _flow_stages,
    "mixture": _mixture_stages,
    "emoji": _emoji_stages,
    "class_conditional": _class_conditional_stages,
    "latent": _latent_stages,
    "few_step": _few_step_stages,
}


def chapter_stages(chapter: str, configs: dict) -> list[Stage]:
    """Every training run and the sampling of a chapter, with their costs.

    Args:
      chapter: one of :data:`CHAPTERS`.
      configs: the chapter's configurations as :func:`recipes` returns them (changed
        or not, e.g. ``cfg.replace(steps=...)``).

    Returns:
      The chapter's :class:`~diffbook.cost.stages.Stage` list, trainings first.

    Raises:
      ValueError: for an unknown ``chapter``.
      KeyError: if ``configs`` lacks a configuration the chapter needs.
    """
    checks.one_of(chapter, "chapter", CHAPTERS)
    return _STAGES[chapter](configs)


def estimate(chapter: str, choice: str = "accelerator", configs: dict | None = None) -> dict:
    """What a chapter's recipe costs: FLOPs by XLA's cost analysis, and minutes on Colab.

    Args:
      chapter: one of :data:`CHAPTERS`.
      choice: ``"cpu"`` or ``"accelerator"``.
      configs: the configurations to cost instead of the recipe's (as :func:`recipes`
        returns them); default: the recipe's.

    Returns:
      :func:`~diffbook.cost.machines.summarise`'s dict.

    Raises:
      ValueError: for an unknown ``chapter`` or ``choice``.
    """
    configs = recipes(chapter, choice) if configs is None else configs
    return summarise(chapter, choice, chapter_stages(chapter, configs))
