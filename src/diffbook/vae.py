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

from . import checks, train
from .data import DIGIT_SHAPE, check_images

#: Trials of the Binomial likelihood, the largest pixel count of the digits.
TRIALS = 16
#: Pixels of one digit image (64).
NUM_PIXELS = int(np.prod(DIGIT_SHAPE))

#: The chapter's two recipes; :func:`diffbook.config.pick` chooses one.
RECIPE = {
    "cpu": dict(
        latent_dim=16,
        hidden=128,
        batch_size=128,
        steps=3000,
        peak_lr=2e-3,
        warmup=100,
        eval_samples=16,
    ),
    "accelerator": dict(
        latent_dim=16,
        hidden=128,
        batch_size=256,
        steps=6000,
        peak_lr=2e-3,
        warmup=200,
        eval_samples=64,
    ),
    # A smoke run of the chapter (see diffbook.config.pick): every cell, few steps.
    "smoke": dict(steps=20, warmup=2, eval_samples=2, batch_size=16),
}


class Encoder(nnx.Module):
    """Image ``(B, 8, 8, 1)`` -> mean and log-variance of ``q(z | x)``, each ``(B, latent_dim)``.

    Written out in chapter 1 (``notebooks/01_vae.md``): change the two together.

    An MLP with two GELU hidden layers of width ``hidden``.

    Args:
      latent_dim: size of the latent ``z``.
      hidden: width of the hidden layers.
      rngs: Flax's random streams for the initial weights.
    """

    def __init__(self, latent_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 2 * latent_dim, rngs=rngs)

    def __call__(self, x: jax.Array):
        """The posterior's parameters.

        Args:
          x: images ``(B, 8, 8, 1)`` in ``[-1, 1]``.

        Returns:
          ``(mean, logvar)``, each ``(B, latent_dim)``.
        """
        h = x.reshape(x.shape[0], -1)
        h = nnx.gelu(self.fc2(nnx.gelu(self.fc1(h))))
        mean, logvar = jnp.split(self.out(h), 2, axis=-1)
        return mean, logvar


class Decoder(nnx.Module):
    """Latent ``(B, latent_dim)`` -> pixel logits ``(B, 8, 8, 1)`` of the Binomial likelihood.

    Written out in chapter 1 (``notebooks/01_vae.md``): change the two together.

    An MLP with two GELU hidden layers of width ``hidden``.

    Args:
      latent_dim: size of the latent ``z``.
      hidden: width of the hidden layers.
      rngs: Flax's random streams for the initial weights.
    """

    def __init__(self, latent_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(latent_dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 64, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        """Pixel logits of ``p(x | z)``.

        Args:
          z: latents ``(B, latent_dim)``.

        Returns:
          Logits ``(B, 8, 8, 1)``.
        """
        h = nnx.gelu(self.fc2(nnx.gelu(self.fc1(z))))
        return self.out(h).reshape(z.shape[0], 8, 8, 1)


class VAE(nnx.Module):
    """An :class:`Encoder` and a :class:`Decoder` with a standard-normal prior.

    Args:
      latent_dim: size of the latent ``z``.
      hidden: width of the hidden layers of both networks.
      rngs: Flax's random streams for the initial weights.

    Raises:
      TypeError: if ``latent_dim`` or ``hidden`` is not an int.
      ValueError: if either is below 1.
    """

    def __init__(self, latent_dim: int = 16, hidden: int = 128, *, rngs: nnx.Rngs):
        latent_dim = checks.positive_int(latent_dim, "latent_dim")
        hidden = checks.positive_int(hidden, "hidden")
        self.latent_dim = latent_dim
        self.encoder = Encoder(latent_dim, hidden, rngs=rngs)
        self.decoder = Decoder(latent_dim, hidden, rngs=rngs)

    def __call__(self, x: jax.Array, key: jax.Array):
        """Encode, draw one ``z`` per image, decode.

        Args:
          x: images ``(B, 8, 8, 1)`` in ``[-1, 1]``.
          key: PRNG key for the draw of ``z``.

        Returns:
          ``(logits, mean, logvar)``: pixel logits ``(B, 8, 8, 1)`` and the
          posterior's mean and log-variance, each ``(B, latent_dim)``.
        """
        mean, logvar = self.encoder(x)
        z = reparameterize(key, mean, logvar)
        return self.decoder(z), mean, logvar


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """A draw of ``N(mean, exp(logvar))`` that is differentiable in ``mean`` and ``logvar``.

    Written out in chapter 1 (``notebooks/01_vae.md``): change the two together.

    ``z = mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``.

    Args:
      key: PRNG key for ``eps``.
      mean: means, any shape, e.g. ``(B, latent_dim)``.
      logvar: log-variances, the shape of ``mean``.

    Returns:
      ``z``, the shape and dtype of ``mean``.

    Raises:
      ValueError: if ``mean`` and ``logvar`` differ in shape.
    """
    if mean.shape != logvar.shape:
        raise ValueError(
            f"mean and logvar need the same shape, got {mean.shape} and {logvar.shape}"
        )
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``KL(N(mean, diag(exp(logvar))) || N(0, I))`` per row, in nats.

    Written out in chapter 1 (``notebooks/01_vae.md``): change the two together.

    Closed form: ``0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)`` over the last axis.

    Args:
      mean: posterior means ``(B, latent_dim)``.
      logvar: posterior log-variances ``(B, latent_dim)``.

    Returns:
      The divergence per row, shape ``(B,)``.

    Raises:
      ValueError: if ``mean`` and ``logvar`` differ in shape.
    """
    if mean.shape != logvar.shape:
        raise ValueError(
            f"mean and logvar need the same shape, got {mean.shape} and {logvar.shape}"
        )
    return 0.5 * jnp.sum(mean**2 + jnp.exp(logvar) - 1 - logvar, axis=-1)


def to_counts(images: jax.Array) -> jax.Array:
    """Images in ``[-1, 1]`` -> pixel counts ``0..16``, rounded to whole counts.

    Args:
      images: any shape, e.g. ``(B, 8, 8, 1)``, in ``[-1, 1]``.

    Returns:
      ``round(8 (images + 1))`` as floats, the shape of ``images``.
    """
    return jnp.round((images + 1.0) * (TRIALS / 2.0))


def binomial_log_likelihood(logits: jax.Array, images: jax.Array) -> jax.Array:
    """``log p(x | z)`` per image, in nats: independent Binomial(16, sigmoid(logit)) pixels.

    Written out in chapter 1 (``notebooks/01_vae.md``): change the two together.

    ``log_sigmoid`` keeps it finite for any logit.

    Args:
      logits: decoder output ``(B, 8, 8, 1)``.
      images: ``(B, 8, 8, 1)`` in ``[-1, 1]`` (mapped to counts by :func:`to_counts`).

    Returns:
      Log-likelihood per image, shape ``(B,)``.

    Raises:
      ValueError: if ``logits`` and ``images`` differ in shape.
    """
    if logits.shape != images.shape:
        raise ValueError(
            f"logits and images need the same shape, got {logits.shape} and {images.shape}"
        )
    k = jnp.round((images + 1) * 8)  # to_counts(images), counts 0..16
    log_choose = gammaln(17) - gammaln(k + 1) - gammaln(17 - k)  # log of (16 choose k)
    log_p = k * jax.nn.log_sigmoid(logits) + (16 - k) * jax.nn.log_sigmoid(-logits)
    return jnp.sum(log_choose + log_p, axis=(1, 2, 3))


def _check_shape(images, name: str = "images"):
    if getattr(images, "ndim", None) != 4 or tuple(images.shape[1:]) != DIGIT_SHAPE:
        shape = getattr(images, "shape", None)
        raise ValueError(f"{name} must have shape (B, 8, 8, 1), got {shape}")


def elbo(model: VAE, images: jax.Array, key: jax.Array) -> jax.Array:
    """One-sample estimate of the ELBO per image, in nats.

    Written out in chapter 1 (``notebooks/01_vae.md``): change the two together.

    ``log p(x | z) - KL(q(z | x) || p(z))`` with one ``z ~ q(z | x)`` per image.

    Args:
      model: the VAE.
      images: ``(B, 8, 8, 1)`` in ``[-1, 1]``.
      key: PRNG key for the draws of ``z``.

    Returns:
      The estimate per image, shape ``(B,)``.

    Raises:
      ValueError: if ``images`` is not of shape ``(B, 8, 8, 1)``.
    """
    _check_shape(images)
    mean, logvar = model.encoder(images)
    z = reparameterize(key, mean, logvar)
    reconstruction = binomial_log_likelihood(model.decoder(z), images)
    return reconstruction - kl_to_standard_normal(mean, logvar)


def vae_loss(model: VAE, batch, key: jax.Array) -> jax.Array:
    """The training loss: minus the ELBO, averaged over the batch (nats per image).

    Args:
      model: the VAE.
      batch: images ``(B, 8, 8, 1)`` in ``[-1, 1]``, or a tuple ``(images, labels)``
        (labels are unused).
      key: PRNG key for the draws of ``z``.

    Returns:
      A scalar.

    Raises:
      ValueError: if the images are not of shape ``(B, 8, 8, 1)``.
    """
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return -jnp.mean(elbo(model, images, key))


def evaluate_elbo(model: VAE, images, *, key: jax.Array, num_samples: int = 16) -> float:
    """Mean ELBO in nats per image over ``images``, averaged over ``num_samples`` draws.

    Each draw is one-sample :func:`elbo` of every image; the average is a
    lower-variance estimate of the same bound.  The images are split over the
    devices (:func:`diffbook.train.shard_batch`).

    Args:
      model: the VAE.
      images: ``(N, 8, 8, 1)`` in ``[-1, 1]``.
      key: PRNG key for the draws of ``z``.
      num_samples: latent draws per image.

    Returns:
      The mean ELBO (nats per image), a Python float.

    Raises:
      TypeError: if ``images`` is not numeric or ``num_samples`` not an int.
      ValueError: if ``images`` has the wrong shape or range, or ``num_samples < 1``.
    """
    images = jnp.asarray(check_images(images, name="images", shape=DIGIT_SHAPE))
    num_samples = checks.positive_int(num_samples, "num_samples")
    graphdef, state = nnx.split(model)

    @jax.jit
    def one(state, k):
        # The images are split over the devices, as fit splits a batch.
        return jnp.mean(elbo(nnx.merge(graphdef, state), train.shard_batch(images), k))

    return float(np.mean([one(state, k) for k in jax.random.split(key, int(num_samples))]))


def decode_mean(model: VAE, z: jax.Array) -> jax.Array:
    """The decoder's mean image ``2 sigmoid(logits) - 1`` for latents ``z``.

    Args:
      model: the VAE.
      z: latents ``(B, latent_dim)``.

    Returns:
      Images ``(B, 8, 8, 1)`` in ``[-1, 1]``.
    """
    return 2.0 * jax.nn.sigmoid(model.decoder(z)) - 1.0


def sample_prior(model: VAE, key: jax.Array, n: int) -> jax.Array:
    """``n`` images decoded from ``z ~ N(0, I)``, shown as the likelihood's mean.

    The latents are split over the devices (:func:`diffbook.train.shard_batch`).

    Args:
      model: the VAE.
      key: PRNG key for the latents.
      n: number of images.

    Returns:
      Images ``(n, 8, 8, 1)`` in ``[-1, 1]``.

    Raises:
      TypeError: if ``n`` is not an int.
      ValueError: if ``n < 1``.
    """
    n = checks.positive_int(n, "n")
    return decode_mean(model, train.shard_batch(jax.random.normal(key, (n, model.latent_dim))))


def make_model_and_optimizer(cfg, *, seed: int = 0):
    """The chapter's VAE and an Adam optimiser with warm-up and cosine decay.

    Args:
      cfg: a recipe (see :data:`RECIPE`) with ``latent_dim``, ``hidden``,
        ``peak_lr``, ``steps`` and ``warmup``.
      seed: seed of the initial weights.

    Returns:
      ``(model, optimizer)``: a :class:`VAE` and an ``nnx.Optimizer`` over its
      parameters.
    """
    model = VAE(cfg["latent_dim"], cfg["hidden"], rngs=nnx.Rngs(seed))
    tx = optax.adam(train.warmup_cosine(cfg["peak_lr"], cfg["steps"], cfg["warmup"]))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)
