"""A variational autoencoder for the 8x8 digits, as taught in the VAE chapter.

The encoder maps an image to the mean and log-variance of a diagonal Gaussian
``q(z | x)``; the decoder maps a latent ``z`` to per-pixel logits of the
likelihood ``p(x | z)``.  The prior is ``p(z) = N(0, I)``.

**Likelihood.**  sklearn's digit pixels are counts: each is the number of "on"
pixels (0..16) in a 4x4 block of a 32x32 bitmap.  We therefore model every pixel
as a Binomial(16, p) count with ``p = sigmoid(logit)``.  This is a proper
probability of the discrete data, so the ELBO is a true lower bound on
``log p(x)`` in nats per image and can be compared across models.  Images in the
book's ``[-1, 1]`` scale map to counts by ``k = 8 (x + 1)``; the decoded image
is the likelihood's mean, ``2 p - 1``.

The chapter writes these functions out in its own cells; this module holds the
same recipe for the benchmark (``python -m diffbook.bench vae``) and for later
chapters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.scipy.special import gammaln

from . import train
from .data import DIGIT_SHAPE, check_images

#: Trials of the Binomial likelihood: the largest pixel count of the digits.
TRIALS = 16
NUM_PIXELS = int(np.prod(DIGIT_SHAPE))

#: The chapter's two recipes; :func:`diffbook.config.pick` chooses one.
RECIPE = {
    "cpu": dict(latent_dim=16, hidden=128, batch_size=128, steps=3000, peak_lr=2e-3,
                warmup=100, eval_samples=16),
    "accelerator": dict(latent_dim=16, hidden=128, batch_size=256, steps=6000, peak_lr=2e-3,
                        warmup=200, eval_samples=64),
}


class Encoder(nnx.Module):
    """Image ``(B, 8, 8, 1)`` -> mean and log-variance of ``q(z | x)``, each ``(B, latent_dim)``."""

    def __init__(self, latent_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 2 * latent_dim, rngs=rngs)

    def __call__(self, x: jax.Array):
        h = x.reshape(x.shape[0], -1)
        h = nnx.gelu(self.fc2(nnx.gelu(self.fc1(h))))
        mean, logvar = jnp.split(self.out(h), 2, axis=-1)
        return mean, logvar


class Decoder(nnx.Module):
    """Latent ``(B, latent_dim)`` -> pixel logits ``(B, 8, 8, 1)`` of the Binomial likelihood."""

    def __init__(self, latent_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(latent_dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 64, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = nnx.gelu(self.fc2(nnx.gelu(self.fc1(z))))
        return self.out(h).reshape(z.shape[0], 8, 8, 1)


class VAE(nnx.Module):
    """An :class:`Encoder` and a :class:`Decoder` with a standard-normal prior."""

    def __init__(self, latent_dim: int = 16, hidden: int = 128, *, rngs: nnx.Rngs):
        for name, value in (("latent_dim", latent_dim), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.latent_dim = int(latent_dim)
        self.encoder = Encoder(latent_dim, hidden, rngs=rngs)
        self.decoder = Decoder(latent_dim, hidden, rngs=rngs)

    def __call__(self, x: jax.Array, key: jax.Array):
        """Encode, draw one ``z`` per image, decode: ``(logits, mean, logvar)``."""
        mean, logvar = self.encoder(x)
        z = reparameterize(key, mean, logvar)
        return self.decoder(z), mean, logvar


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``z = mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``: a draw of
    ``N(mean, exp(logvar))`` that is differentiable in ``mean`` and ``logvar``."""
    if mean.shape != logvar.shape:
        raise ValueError(f"mean and logvar need the same shape, got {mean.shape} and {logvar.shape}")
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``KL(N(mean, diag(exp(logvar))) || N(0, I))`` per row, in nats: shape ``(B,)``.

    Closed form: ``0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)`` over the last axis.
    """
    if mean.shape != logvar.shape:
        raise ValueError(f"mean and logvar need the same shape, got {mean.shape} and {logvar.shape}")
    return 0.5 * jnp.sum(mean**2 + jnp.exp(logvar) - 1 - logvar, axis=-1)


def to_counts(images: jax.Array) -> jax.Array:
    """Images in ``[-1, 1]`` -> pixel counts ``0..16`` (floats), rounded to whole counts."""
    return jnp.round((images + 1.0) * (TRIALS / 2.0))


def binomial_log_likelihood(logits: jax.Array, images: jax.Array) -> jax.Array:
    """``log p(x | z)`` per image, in nats: independent Binomial(16, sigmoid(logit)) pixels.

    ``logits`` and ``images`` (in ``[-1, 1]``) both have shape ``(B, 8, 8, 1)``;
    the result has shape ``(B,)``.  ``log_sigmoid`` keeps it finite for any logit.
    """
    if logits.shape != images.shape:
        raise ValueError(f"logits and images need the same shape, got {logits.shape} and {images.shape}")
    k = jnp.round((images + 1) * 8)                    # to_counts(images), counts 0..16
    log_choose = gammaln(17) - gammaln(k + 1) - gammaln(17 - k)   # log of (16 choose k)
    log_p = k * jax.nn.log_sigmoid(logits) + (16 - k) * jax.nn.log_sigmoid(-logits)
    return jnp.sum(log_choose + log_p, axis=(1, 2, 3))


def _check_shape(images, name: str = "images"):
    if getattr(images, "ndim", None) != 4 or tuple(images.shape[1:]) != DIGIT_SHAPE:
        raise ValueError(f"{name} must have shape (B, 8, 8, 1), got {getattr(images, 'shape', None)}")


def elbo(model: VAE, images: jax.Array, key: jax.Array) -> jax.Array:
    """One-sample estimate of the ELBO per image, ``(B,)``, in nats:
    ``log p(x | z) - KL(q(z | x) || p(z))`` with ``z ~ q(z | x)``."""
    _check_shape(images)
    mean, logvar = model.encoder(images)
    z = reparameterize(key, mean, logvar)
    reconstruction = binomial_log_likelihood(model.decoder(z), images)
    return reconstruction - kl_to_standard_normal(mean, logvar)


def vae_loss(model: VAE, batch, key: jax.Array) -> jax.Array:
    """The training loss: minus the ELBO, averaged over the batch (nats per image).

    ``batch`` is images ``(B, 8, 8, 1)`` or a tuple ``(images, labels)``; labels are unused.
    """
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return -jnp.mean(elbo(model, images, key))


def evaluate_elbo(model: VAE, images, *, key: jax.Array, num_samples: int = 16) -> float:
    """Mean ELBO in nats per image over ``images``, each estimated with ``num_samples``
    latent draws (a lower-variance estimate of the same bound)."""
    images = jnp.asarray(check_images(images, name="images", shape=DIGIT_SHAPE))
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    graphdef, state = nnx.split(model)

    @jax.jit
    def one(state, k):
        return jnp.mean(elbo(nnx.merge(graphdef, state), images, k))

    return float(np.mean([one(state, k) for k in jax.random.split(key, int(num_samples))]))


def decode_mean(model: VAE, z: jax.Array) -> jax.Array:
    """The decoder's mean image ``2 sigmoid(logits) - 1`` in ``[-1, 1]`` for latents ``z``."""
    return 2.0 * jax.nn.sigmoid(model.decoder(z)) - 1.0


def sample_prior(model: VAE, key: jax.Array, n: int) -> jax.Array:
    """``n`` images from ``z ~ N(0, I)``, shown as the likelihood's mean: ``(n, 8, 8, 1)``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return decode_mean(model, jax.random.normal(key, (int(n), model.latent_dim)))


def make_model_and_optimizer(cfg, *, seed: int = 0):
    """The chapter's VAE and an Adam optimiser with warm-up and cosine decay."""
    model = VAE(cfg["latent_dim"], cfg["hidden"], rngs=nnx.Rngs(seed))
    tx = optax.adam(train.warmup_cosine(cfg["peak_lr"], cfg["steps"], cfg["warmup"]))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)
