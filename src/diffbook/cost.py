"""What a chapter's recipe costs to run: FLOPs from XLA's cost analysis, minutes on Colab.

:func:`estimate` lowers (``jax.jit(f).lower(...)``: no compiling, no training)
every training step and every network call that a chapter makes, at the batch the
chapter makes it on, reads the FLOPs from XLA's cost analysis of each, multiplies
them by the recipe's counts and divides the total by the sustained rate assumed for
each machine of :data:`DEVICES`.  The networks are built with ``nnx.eval_shape``:
shapes only, no weights.  ``python -m diffbook.bench CHAPTER --config accelerator
--cost`` prints the result as one line of JSON.

What is counted, for each chapter (the stages of :func:`chapter_stages`):

* every training run the chapter's cells make, the whole optimiser step (forward,
  backward, AdamW or Adam, the moving average) at the recipe's batch, times its
  steps: chapter 1 trains two VAEs, chapter 4 the recipe's network and six shorter
  runs for its ablation (10,000 steps more), chapter 6 a U-Net, a noise-aware and a
  clean classifier and a DiT, chapter 7 the autoencoder and the latent network;
* the sampling that the chapter's cells do with the trained networks: for each
  sampler, its network calls times the cost of one call at the batch it is made on.
  A classifier-free guided call is one call on twice the batch (the prompts and
  the empty prompt), a classifier-guided call includes the classifier's gradient.
  The counts follow the chapters' cells: chapter 5 samples every prompt at six
  guidance scales, chapter 7 at three and decodes every sample, chapter 2 runs the
  1,000-step ancestral sampler ten times on 64 digits.  Where a sampler chooses its
  own steps (the adaptive ODE solvers of chapters 3 and 4) the count is an
  assumption, stated where it is made; a few small batches (a grid of ten images)
  are counted as one more full batch.

Not counted: compiling, the measures of quality (NumPy and scikit-learn on the
host), probes of a handful of images, and the fixed overhead of launching each
training step and sampler step, a millisecond or two, which adds about a minute at
most (chapter 4 makes the most steps, about 37,000, chapter 2 about 20,000).
Chapter 7's pixel-space comparison is timed by ``python -m diffbook.bench emoji``,
not in the chapter, so it is not counted either.

The estimate of memory (:meth:`Stage.memory_bytes`) is what a training step holds
on one device: the activations that the backward pass reads (the residuals of the
loss's ``jax.vjp``, which the lowered step returns for their shapes), divided among
the devices that share the batch, plus the parameters, one set of gradients,
AdamW's two moments and the moving average, which every device holds.  XLA may fuse
some residuals away or keep temporaries besides, and the data (under 0.1 GB) is left
out, hence :data:`MEMORY_SHARE`.  The cost analysis's "bytes accessed" is no measure
of memory: it counts every read and write of every operation before fusion, about
100 GB for one step of chapter 5's former accelerator recipe, whose residuals are
6.4 GB.

These are estimates until the recipes are timed on the machines themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import checks, config


@dataclass(frozen=True)
class Device:
    """A machine that Colab lends, as this module's estimates see it.

    Attributes:
      name: what Colab calls it.
      rate: the sustained rate assumed for the chapters' networks, FLOP/s, over all
        its devices together.
      devices: the JAX devices it has; the batch is split among them.
      memory: bytes of accelerator memory per device.
    """

    name: str
    rate: float
    devices: int
    memory: float


#: The machines that Colab offers, with the sustained rates the estimates assume.
#:
#: * ``t4``: NVIDIA T4, 8.1 TFLOP/s fp32 peak at its 1.59 GHz boost clock.  JAX
#:   computes these float32 networks in fp32: Turing's tensor cores do fp16 and int8
#:   only (no TF32), so the 65 TFLOP/s fp16 figure does not apply.  We assume 2.0
#:   TFLOP/s, a quarter of the peak: the 70 W card does not hold its boost clock
#:   under sustained load; the convolutions have 32 to 256 channels on 8×8 to 64×64
#:   maps, shapes on which cuDNN reaches well under its peak; and the group norms,
#:   activations, softmaxes and optimiser updates are bound by the 320 GB/s memory
#:   and add their time to the convolutions'.  A third of the peak would be a fair
#:   guess too; a quarter keeps the budget safe.  16 GB of memory (about 15 GB usable).
#: * ``tpu_v2_8``: a TPU v2-8, four chips of two cores, 22.5 TFLOP/s bf16 peak and
#:   8 GB of memory per core, 180 TFLOP/s in all.  JAX's default precision runs the
#:   float32 matmuls and convolutions as one bfloat16 pass, so the bf16 peak is the
#:   one that applies.  We assume 15 TFLOP/s (a twelfth of the peak): the batch is
#:   split eight ways (8 to 64 examples per core), layers of 32 to 128 channels
#:   fill a fraction of each core's 128×128 matrix unit, and the gradients are summed
#:   across the cores at every step.
#: * ``tpu_v5e_1``: one TPU v5e chip, 197 TFLOP/s bf16 peak, 16 GB.  We assume 25
#:   TFLOP/s (an eighth): the whole batch on one chip, the same narrow layers.
#: * ``tpu_v6e_1``: one TPU v6e (Trillium) chip, 918 TFLOP/s bf16 peak, 32 GB and
#:   1.64 TB/s.  We assume 50 TFLOP/s (a twentieth): its 256×256 matrix units are
#:   mostly idle on layers this narrow, and at the 30 or so FLOP per byte that these
#:   steps may reach after fusion, its memory bandwidth allows about 50 TFLOP/s.
#:
#: Nothing here has been timed on these machines yet: ``book/teaching.md`` keeps the
#: estimates and will keep the measurements.
DEVICES = {
    "t4": Device("Colab T4", 2.0e12, 1, 16e9),
    "tpu_v2_8": Device("Colab TPU v2-8", 15e12, 8, 8e9),
    "tpu_v5e_1": Device("Colab TPU v5e-1", 25e12, 1, 16e9),
    "tpu_v6e_1": Device("Colab TPU v6e-1", 50e12, 1, 32e9),
}

#: What a chapter's accelerator recipe may take on a T4, minutes of training and sampling.
BUDGET_MINUTES = 10.0

#: The share of a device's memory that a training step may fill by :attr:`Stage.memory_bytes`
#: (the rest for XLA's temporaries and workspace, the data, the runtime).
MEMORY_SHARE = 0.8

#: The chapters :func:`estimate` knows, the names the benchmark uses.
CHAPTERS = ("vae", "ddpm", "flow_matching", "mixture", "emoji", "class_conditional", "latent")


@dataclass(frozen=True)
class Stage:
    """One part of a chapter's computation: a training run, or the calls of a network.

    Attributes:
      name: what the chapter does, in words.
      kind: ``"train"`` (``calls`` optimiser steps) or ``"sample"`` (``calls``
        network calls).
      batch: examples per step or per call (for a guided call, the samples; the
        network sees them twice, with and without their condition).
      calls: optimiser steps or network calls.
      flops_per_call: XLA's count of floating-point operations of one step or call.
      activation_bytes: for training, the bytes of the activations kept for the
        backward pass at the whole batch; 0 for sampling.
      state_bytes: for training, the bytes of the parameters, gradients, optimiser
        state and moving average; 0 for sampling.
    """

    name: str
    kind: str
    batch: int
    calls: int
    flops_per_call: float
    activation_bytes: float = 0.0
    state_bytes: float = 0.0

    @property
    def flops(self) -> float:
        """All the stage's floating-point operations."""
        return self.flops_per_call * self.calls

    def memory_bytes(self, devices: int = 1) -> float:
        """Bytes a training step holds on each of ``devices`` that share its batch.

        Args:
          devices: devices the batch is split among (8 on a TPU v2-8).

        Returns:
          ``activation_bytes / devices + state_bytes``; 0 for a sampling stage.

        Raises:
          TypeError, ValueError: if ``devices`` is not a positive int.
        """
        devices = checks.positive_int(devices, "devices")
        return self.activation_bytes / devices + self.state_bytes


def _nbytes(tree) -> float:
    return float(sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)))


def _spec(shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(int(n) for n in shape), jnp.dtype(dtype))


def lowered_flops(fn: Callable, *args) -> float:
    """XLA's count of the floating-point operations of ``jax.jit(fn)(*args)``, without compiling.

    Args:
      fn: a function JAX can trace.
      *args: its arguments, arrays or ``jax.ShapeDtypeStruct`` (shapes are enough).

    Returns:
      The ``"flops"`` of the lowered program's cost analysis.  A loop's body
      (``lax.scan``, ``while``) is counted once, whatever its trip count: lower one
      step, not a sampler.

    Raises:
      TypeError: if ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    return _flops(jax.jit(fn).lower(*args))


def _flops(lowered) -> float:
    analysis = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
        analysis = analysis[0]
    return float(analysis["flops"])


def abstract(make: Callable):
    """``make()``'s NNX modules as shapes only: ``nnx.eval_shape(make)``, no weights made.

    Args:
      make: ``make() -> model`` (a module, or a pytree of modules).

    Returns:
      The same structure with ``jax.ShapeDtypeStruct`` in place of every array.

    Raises:
      TypeError: if ``make`` is not callable.
    """
    if not callable(make):
        raise TypeError(f"make must be callable, got {type(make).__name__}")
    return nnx.eval_shape(make)


def train_stage(
    name: str,
    model,
    optimizer,
    loss_fn: Callable,
    batch,
    *,
    steps: int,
    ema_decay: float | None = None,
) -> Stage:
    """The cost of a training run: ``steps`` optimiser steps as :func:`~diffbook.train.fit` runs.

    The step lowered is ``fit``'s: the loss and its gradient, the optimiser's update
    and, with ``ema_decay``, the moving average of the parameters.

    Args:
      name: the run, in words.
      model: the NNX model, made by :func:`abstract` (or a real one).
      optimizer: its ``nnx.Optimizer``, e.g. ``abstract(lambda: train.adamw_with_ema(...)[1])``.
      loss_fn: ``loss_fn(model, batch, key) -> scalar``, as ``fit`` takes it.
      batch: one batch, a pytree of ``jax.ShapeDtypeStruct`` (or arrays) whose
        leading axis is the batch size.
      steps: optimiser steps of the run.
      ema_decay: the moving average's decay, or ``None`` for a run without one.

    Returns:
      A ``"train"`` :class:`Stage`.

    Raises:
      TypeError, ValueError: for a bad ``steps`` or ``batch``, or a ``model`` or
        ``optimizer`` that is no NNX object.
    """
    steps = checks.positive_int(steps, "steps")
    leaves = jax.tree.leaves(batch)
    if not leaves or any(np.ndim(leaf) < 1 for leaf in leaves):
        raise ValueError("batch must be a pytree of arrays with a leading batch axis")
    if not isinstance(model, nnx.Module) or not isinstance(optimizer, nnx.Optimizer):
        raise TypeError(
            f"model must be an nnx.Module and optimizer an nnx.Optimizer, got "
            f"{type(model).__name__} and {type(optimizer).__name__}"
        )
    ema = nnx.clone(model) if ema_decay is not None else None
    graphdef, state = nnx.split((model, optimizer, ema))

    def step(state, batch, key):
        model, optimizer, ema = nnx.merge(graphdef, state)
        # nnx.value_and_grad(loss_fn), written with jax.vjp to return the residuals.
        model_def, params, rest = nnx.split(model, nnx.Param, ...)
        loss_of = lambda p: loss_fn(nnx.merge(model_def, p, rest), batch, key)
        loss, backward = jax.vjp(loss_of, params)
        (grads,) = backward(jnp.ones_like(loss))
        optimizer.update(model, grads)
        if ema is not None:
            new = jax.tree.map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                nnx.state(ema, nnx.Param),
                nnx.state(model, nnx.Param),
            )
            nnx.update(ema, new)
        # The residuals, what the backward pass reads, are an output only for their shapes.
        return nnx.state((model, optimizer, ema)), loss, backward

    lowered = jax.jit(step).lower(state, batch, jax.random.key(0))
    return Stage(
        name,
        "train",
        int(leaves[0].shape[0]),
        steps,
        _flops(lowered),
        activation_bytes=_nbytes(lowered.out_info[2]),
        # Parameters, optimiser state and moving average as held, plus one set of gradients.
        state_bytes=_nbytes(state) + _nbytes(nnx.state(model, nnx.Param)),
    )


def call_stage(name: str, model, fn: Callable, inputs: tuple, *, calls: int) -> Stage:
    """The cost of ``calls`` calls of a trained network, e.g. a sampler's steps.

    Args:
      name: what the calls are for, in words.
      model: the network, made by :func:`abstract` (or a real one); any pytree of NNX
        modules, e.g. a tuple of a network and a classifier.
      fn: ``fn(model, *inputs)``, one call.
      inputs: its other arguments, ``jax.ShapeDtypeStruct`` or arrays; the first one's
        leading axis is the batch.
      calls: how many times the chapter makes the call.

    Returns:
      A ``"sample"`` :class:`Stage`.

    Raises:
      TypeError, ValueError: for a bad ``calls`` or ``inputs``.
    """
    calls = checks.positive_int(calls, "calls")
    if not isinstance(inputs, tuple) or not inputs or np.ndim(inputs[0]) < 1:
        raise TypeError("inputs must be a non-empty tuple whose first entry has a batch axis")
    graphdef, state = nnx.split(model)
    flops = lowered_flops(lambda s, *xs: fn(nnx.merge(graphdef, s), *xs), state, *inputs)
    return Stage(name, "sample", int(inputs[0].shape[0]), calls, flops)


# ------------------------------------------------------------------ the chapters
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
    }[chapter]
    recipe = importlib.import_module(f"diffbook.{module}").RECIPE
    found = {"recipe": config.Config(choice, dict(recipe[choice]))}
    if chapter == "latent":
        from . import autoencoder

        found["autoencoder"] = config.Config(choice, dict(autoencoder.RECIPE[choice]))
    return found


def _adamw(model, cfg, *, steps=None, peak_lr=None):
    """The book's AdamW for ``model`` as the chapters make it, shapes only."""
    from . import train

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
    from . import vae

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
    from . import ddpm, nets
    from .schedules import NoiseSchedule

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
    from . import flow, nets

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
    from . import ddpm, mixture

    cfg = cfgs["recipe"]
    schedule = mixture.make_schedule(cfg)
    model = abstract(lambda: mixture.make_model(cfg))
    loss = lambda m, x, k: ddpm.diffusion_loss(schedule, m, x, k, prediction="v")
    # The ablation's runs: a half, a quarter and four eighths of the recipe's steps.
    ablation = cfg.steps // 2 + cfg.steps // 4 + 4 * (cfg.steps // 8)
    n = _count(cfg, "num_samples", 10_000)  # ancestral samples
    table = _count(cfg, "table_samples", 3_000)  # samples per seed in the sampler table
    calls = mixture_sampler_calls(cfg.num_timesteps)
    batch = _spec((cfg.batch_size, 1))
    return [
        train_stage(
            "MLP, v-prediction: the recipe's run and six shorter ones for the ablation",
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
    from . import emoji, text

    names = [name for _, name in emoji.emoji_subset()]
    names = names if num_emoji is None else names[:num_emoji]
    return len(names), text.Tokenizer.fit(names).vocab_size


def _text_to_image_calls(model, cfg, in_channels, res, n, batches, *, label):
    """A guided call on ``n`` prompts (the network sees them and the empty prompt), ``batches``
    times ``cfg.sample_steps``."""
    from . import guidance

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
    from . import guidance
    from .schedules import NoiseSchedule

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
    from . import text_to_image

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
    from . import class_conditional as cc
    from . import guidance
    from .schedules import NoiseSchedule

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
            lambda c, batch, k: cc.classifier_loss(schedule, c, batch, k),
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
    from . import autoencoder as ae
    from . import latent_diffusion as ld

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


_STAGES = {
    "vae": _vae_stages,
    "ddpm": _ddpm_stages,
    "flow_matching": _flow_stages,
    "mixture": _mixture_stages,
    "emoji": _emoji_stages,
    "class_conditional": _class_conditional_stages,
    "latent": _latent_stages,
}


def chapter_stages(chapter: str, configs: dict) -> list[Stage]:
    """Every training run and the sampling of a chapter, with their costs.

    Args:
      chapter: one of :data:`CHAPTERS`.
      configs: the chapter's configurations as :func:`recipes` returns them (changed
        or not, e.g. ``cfg.replace(steps=...)``).

    Returns:
      The chapter's :class:`Stage` list, trainings first.

    Raises:
      ValueError: for an unknown ``chapter``.
      KeyError: if ``configs`` lacks a configuration the chapter needs.
    """
    checks.one_of(chapter, "chapter", CHAPTERS)
    return _STAGES[chapter](configs)


def summarise(chapter: str, choice: str, stages: list[Stage]) -> dict:
    """The figures of :func:`estimate` from a chapter's stages.

    Args:
      chapter: the chapter's name (copied into the result).
      choice: the configuration's name (copied into the result).
      stages: the chapter's :class:`Stage` list.

    Returns:
      A dict ready for JSON: ``stages`` (name, kind, batch, calls, FLOPs per call
      and in all), ``train_flops``, ``sample_flops``, ``total_flops``, for each
      machine ``minutes_<machine>`` (all FLOPs at its sustained rate) and
      ``memory_gb_<machine>`` (the largest training step's memory per device),
      ``rates_tflops`` and ``budget_minutes``.

    Raises:
      ValueError: if ``stages`` is empty.
    """
    if not stages:
        raise ValueError("stages must not be empty")
    train = sum(s.flops for s in stages if s.kind == "train")
    sample = sum(s.flops for s in stages if s.kind == "sample")
    result = {
        "chapter": chapter,
        "config": choice,
        "stages": [
            {
                "name": s.name,
                "kind": s.kind,
                "batch": s.batch,
                "calls": s.calls,
                "flops_per_call": s.flops_per_call,
                "flops": s.flops,
            }
            for s in stages
        ],
        "train_flops": train,
        "sample_flops": sample,
        "total_flops": train + sample,
    }
    for key, device in DEVICES.items():
        result[f"minutes_{key}"] = round((train + sample) / device.rate / 60, 2)
    for key, device in DEVICES.items():
        memory = max(s.memory_bytes(device.devices) for s in stages)
        result[f"memory_gb_{key}"] = round(memory / 1e9, 2)
    result["rates_tflops"] = {key: device.rate / 1e12 for key, device in DEVICES.items()}
    result["budget_minutes"] = BUDGET_MINUTES
    return result


def estimate(chapter: str, choice: str = "accelerator", configs: dict | None = None) -> dict:
    """What a chapter's recipe costs: FLOPs by XLA's cost analysis, and minutes on Colab.

    Args:
      chapter: one of :data:`CHAPTERS`.
      choice: ``"cpu"`` or ``"accelerator"``.
      configs: the configurations to cost instead of the recipe's (as :func:`recipes`
        returns them); default: the recipe's.

    Returns:
      :func:`summarise`'s dict.

    Raises:
      ValueError: for an unknown ``chapter`` or ``choice``.
    """
    configs = recipes(chapter, choice) if configs is None else configs
    return summarise(chapter, choice, chapter_stages(chapter, configs))
