"""Denoising diffusion (DDPM) on digits, as taught in the DDPM chapter.

The network sees ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps`` and the time
``u = t / T`` (``schedule.to_u(t)``, a float in [0, 1), the same input scale as the
flow-matching U-Net) and predicts ``eps`` (or ``x0``, or ``v``).  Sampling uses
:mod:`diffbook.samplers` with the *same*
:class:`~diffbook.schedules.NoiseSchedule` object as training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .checks import one_of
from .schedules import PREDICTIONS, NoiseSchedule

#: The chapter's two recipes; :func:`diffbook.config.pick` chooses one.
RECIPE = {
    "cpu": dict(
        digit=2,
        channels=(16, 32),
        batch_size=128,
        steps=1000,
        peak_lr=2e-3,
        warmup=50,
        ema_decay=0.995,
        num_timesteps=1000,
        num_samples=64,  # per sampling seed: the judge compares them with 59 held-out twos
    ),
    "accelerator": dict(
        digit=2,
        channels=(64, 128),
        batch_size=512,
        steps=6000,
        peak_lr=1e-3,
        warmup=200,
        ema_decay=0.999,
        num_timesteps=1000,
        num_samples=64,
    ),
    # A smoke run of the chapter (see diffbook.config.pick): every cell, few steps.
    "smoke": dict(steps=20, warmup=2, batch_size=16, num_timesteps=50, num_samples=16),
}


def diffusion_loss(
    schedule: NoiseSchedule, model, x0: jax.Array, key: jax.Array, *, prediction: str = "epsilon"
) -> jax.Array:
    """The simple DDPM loss with ``t`` uniform over the schedule's timesteps.

    The mean squared error of the network's prediction of ``prediction``: the
    noise ("epsilon", Ho et al. 2020), the clean data ("x0") or the velocity
    ("v", Salimans & Ho 2022).

    Args:
      schedule: the noise schedule.
      model: ``model(x_t, u) -> prediction``, ``u = schedule.to_u(t)`` of shape (B,).
      x0: a batch of clean data, shape (B, ...).
      key: PRNG key for the timesteps and the noise.
      prediction: "epsilon", "x0" or "v".

    Returns:
      The loss, a scalar.

    Raises:
      ValueError: for an unknown ``prediction``.
    """
    one_of(prediction, "prediction", PREDICTIONS)
    k_t, k_noise = jax.random.split(key)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_timesteps)
    noise = jax.random.normal(k_noise, x0.shape)
    x_t = schedule.add_noise(x0, noise, t)
    if prediction == "epsilon":
        target = noise
    elif prediction == "x0":
        target = x0
    else:
        target = schedule.velocity(x0, noise, t)
    return jnp.mean((model(x_t, schedule.to_u(t)) - target) ** 2)
