"""Denoising diffusion (DDPM) on digits, as taught in the DDPM chapter.

The network sees ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps`` and the time ``t / T``
(a float in [0, 1), the same input scale as the flow-matching U-Net) and predicts
``eps``.  Sampling uses :mod:`diffbook.samplers` with the *same*
:class:`~diffbook.schedules.NoiseSchedule` object as training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .schedules import NoiseSchedule

#: The chapter's two recipes; :func:`diffbook.config.pick` chooses one.
RECIPE = {
    "cpu": dict(digit=2, channels=(16, 32), batch_size=128, steps=1000, peak_lr=2e-3,
                warmup=50, ema_decay=0.995, num_timesteps=1000),
    "accelerator": dict(digit=2, channels=(64, 128), batch_size=512, steps=6000, peak_lr=1e-3,
                        warmup=200, ema_decay=0.999, num_timesteps=1000),
}


def diffusion_loss(schedule: NoiseSchedule, model, x0: jax.Array, key: jax.Array, *,
                   prediction: str = "epsilon") -> jax.Array:
    """The simple DDPM loss with ``t`` uniform: the mean squared error of the network's
    prediction of ``prediction`` -- the noise ("epsilon", Ho et al. 2020), the clean
    data ("x0") or the velocity ("v", Salimans & Ho 2022)."""
    k_t, k_noise = jax.random.split(key)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_steps)
    noise = jax.random.normal(k_noise, x0.shape)
    x_t = schedule.add_noise(x0, noise, t)
    if prediction == "epsilon":
        target = noise
    elif prediction == "x0":
        target = x0
    elif prediction == "v":
        target = schedule.velocity(x0, noise, t)
    else:
        raise ValueError(f"prediction must be 'epsilon', 'x0' or 'v', got {prediction!r}")
    return jnp.mean((model(x_t, t / schedule.num_steps) - target) ** 2)


def as_model_fn(model, schedule: NoiseSchedule):
    """``model(x, t / T)`` as the ``model_fn(x, t_int)`` that the samplers call."""
    return lambda x, t: model(x, t / schedule.num_steps)
