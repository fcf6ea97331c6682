"""Chapter 6, all ten digits on command: its recipes and its networks.

The guidance itself lives in :mod:`diffbook.guidance` (classifier-free guidance,
classifier guidance with the loss of its noise-aware classifier, and guidance
schedules), the networks in :mod:`diffbook.nets` (:class:`~diffbook.nets.unet.UNet`
and :class:`~diffbook.nets.dit.DiT` with ``num_classes``,
:class:`~diffbook.nets.classifier.NoisyClassifier`) and the judge in
:mod:`diffbook.metrics` (:func:`~diffbook.metrics.class_conditional_quality`).  This
module holds the chapter's two :data:`RECIPE` configurations and builds its models
from one of them.
"""

from __future__ import annotations

from flax import nnx

from . import checks
from .nets import DiT, NoisyClassifier, UNet

#: The backbones :func:`make_model` builds.
BACKBONES = ("unet", "dit")
#: The two ways of guiding that the chapter (and its benchmark) compares.
METHODS = ("cfg", "classifier")
#: Number of digit classes.
NUM_CLASSES = 10

#: The chapter's two recipes; :func:`diffbook.config.pick` chooses one.  ``guidance``
#: is the chapter's classifier-free scale ``s`` of ``uncond + s * (cond - uncond)``
#: (1 is the conditional model, which measured best on digits) and ``classifier_scale``
#: its classifier-guidance scale.  Samples are drawn with DDIM, ``eta`` of fresh
#: noise, ``sample_steps`` steps (``sweep_steps`` in the chapter's sweeps, to save
#: time); ``dit_steps`` gives the DiT about the U-Net's training time on the machine
#: the recipe is for.  The CPU recipe's learning rate of 5e-3 gave a lower Fréchet
#: distance than 3e-3 on two training seeds of three (1.44 +- 0.05 times the real
#: reference against 1.48 +- 0.11); with the EMA warm-up of :func:`diffbook.train.fit`
#: its EMA decay of 0.995 is never reached in 1,500 steps (the warm-up's
#: ``(1 + n) / (10 + n)`` is 0.994 at the end), so the warm-up sets the average.
RECIPE = {
    "cpu": dict(
        channels=(16, 32),
        emb_dim=64,
        batch_size=128,
        steps=1500,
        peak_lr=5e-3,
        warmup=100,
        ema_decay=0.995,
        p_uncond=0.1,
        num_timesteps=1000,
        prediction="v",
        sample_steps=50,
        sweep_steps=25,
        eta=0.5,
        guidance=1.0,
        classifier_scale=4.0,
        classifier_channels=(16, 32),
        classifier_steps=600,
        classifier_lr=2e-3,
        dit_dim=64,
        dit_depth=4,
        dit_patch=2,
        dit_steps=1000,
        dit_lr=2e-3,
        per_digit_samples=64,  # of each digit, in the chapter's comparisons
        final_per_digit_samples=100,  # of each digit, in its closing figures
    ),
    "accelerator": dict(
        channels=(64, 128),
        emb_dim=128,
        batch_size=512,
        steps=6000,
        peak_lr=1e-3,
        warmup=200,
        ema_decay=0.999,
        p_uncond=0.1,
        num_timesteps=1000,
        prediction="v",
        sample_steps=50,
        sweep_steps=50,
        eta=0.5,
        guidance=1.0,
        classifier_scale=4.0,
        classifier_channels=(32, 64),
        classifier_steps=2000,
        classifier_lr=1e-3,
        dit_dim=128,
        dit_depth=6,
        dit_patch=2,
        dit_steps=6000,
        dit_lr=5e-4,
        per_digit_samples=64,
        final_per_digit_samples=100,
    ),
    # A smoke run of the chapter (see diffbook.config.pick): every cell, few steps.
    "smoke": dict(
        steps=20,
        warmup=2,
        batch_size=16,
        sample_steps=2,
        sweep_steps=2,
        classifier_steps=10,
        dit_steps=10,
        per_digit_samples=2,
        final_per_digit_samples=2,
    ),
}


def make_model(cfg, backbone: str = "unet", *, seed: int = 0) -> UNet | DiT:
    """The recipe's class-conditional network (10 digits plus "no class").

    Args:
      cfg: a recipe from :data:`RECIPE` (as :func:`diffbook.config.pick` returns it).
      backbone: "unet" (:class:`~diffbook.nets.unet.UNet`, widths ``cfg.channels``) or
        "dit" (:class:`~diffbook.nets.dit.DiT`, ``cfg.dit_dim`` wide, ``cfg.dit_depth``
        blocks, ``cfg.dit_patch`` pixels a patch).
      seed: seed of the initial parameters.

    Returns:
      A model called as ``model(x, u, labels)`` with ``x`` of shape (B, 8, 8, 1),
      ``u`` (B,) and ``labels`` (B,) ints in 0..10, 10 being "no class".

    Raises:
      ValueError: for an unknown ``backbone``.
    """
    checks.one_of(backbone, "backbone", BACKBONES)
    seed = checks.positive_int(seed, "seed", minimum=0)
    if backbone == "unet":
        return UNet(
            1, cfg.channels, emb_dim=cfg.emb_dim, num_classes=NUM_CLASSES, rngs=nnx.Rngs(seed)
        )
    return DiT(
        1,
        8,
        patch_size=cfg.dit_patch,
        dim=cfg.dit_dim,
        depth=cfg.dit_depth,
        num_classes=NUM_CLASSES,
        rngs=nnx.Rngs(seed),
    )


def make_classifier(cfg, *, seed: int = 0) -> NoisyClassifier:
    """The recipe's classifier of noisy digits (for classifier guidance).

    Args:
      cfg: a recipe from :data:`RECIPE` (its ``classifier_channels`` are used).
      seed: seed of the initial parameters.

    Returns:
      A :class:`~diffbook.nets.classifier.NoisyClassifier` for (B, 8, 8, 1) images and 10 classes.
    """
    seed = checks.positive_int(seed, "seed", minimum=0)
    return NoisyClassifier(1, cfg.classifier_channels, num_classes=NUM_CLASSES, rngs=nnx.Rngs(seed))
