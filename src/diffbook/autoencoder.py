"""A small convolutional autoencoder for colour emoji: stage 1 of latent diffusion.

Latent diffusion (Rombach et al. 2022) trains two models in turn.  First an
autoencoder squeezes each image into a small grid of latents and back; then a
diffusion model learns the distribution of those latents, and a sample is
decoded into an image.  This module holds the first stage for the latent
diffusion chapter: an :class:`Autoencoder` for RGB emoji ``(N, R, R, 3)`` in
``[-1, 1]`` (``R`` = 32 or 64, from :func:`diffbook.emoji.load_emoji`), its
training loss and the scale that brings its latents to unit variance; its
reconstructions are judged by :func:`diffbook.metrics.psnr`.

**KL regularisation.**  The encoder outputs a mean and a log-variance per latent
element, like the VAE of chapter 1, but the KL term is weighted so lightly that
the model is an autoencoder in all but name: the term only stops the latents
from drifting to huge or tiny scales.  The diffusion stage uses the *mean*
latents, multiplied by :func:`latent_scale_factor`.

**Space-to-depth.**  The usual encoder halves the resolution with stride-2
convolutions, so its first, widest layers run on every pixel; on a CPU that is
far too slow for a chapter.  Here every ``f x f`` block of pixels is first folded
into the channels of one position (:func:`space_to_depth`, ``(R, R, 3)`` ->
``(R/f, R/f, 3 f^2)``), and *every* convolution runs on the small latent grid;
the decoder ends with the inverse fold (:func:`depth_to_space`).  The learned
layers still see all the pixels, only arranged as channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import checks
from .data import check_images
from .nets.layers import num_groups, patchify, unpatchify
from .vae import kl_to_standard_normal, reparameterize

#: Colour channels of the images (RGB).
IMAGE_CHANNELS = 3
#: The encoder's log-variances are clipped to this range (variances from about
#: 1e-13 to 5e8), the bounds of Rombach et al.'s code: a guard that keeps ``exp``
#: finite early in training, not a limit the trained model is meant to touch.
LOGVAR_RANGE = (-30.0, 20.0)

#: The two recipes; :func:`diffbook.config.pick` chooses one.  Both give 8x8
#: latent grids: 32x32 images folded by 4 on a CPU, 64x64 images folded by 8 on an
#: accelerator.  ``kl_weight`` multiplies the KL per latent element against the
#: squared error per pixel (see :func:`autoencoder_loss`).
RECIPE = {
    "cpu": dict(
        resolution=32,
        factor=4,
        latent_channels=4,
        channels=64,
        num_blocks=2,
        kl_weight=1e-4,
        batch_size=32,
        steps=1200,
        peak_lr=2e-3,
        warmup=50,
        ema_decay=0.99,
    ),
    "accelerator": dict(
        resolution=64,
        factor=8,
        latent_channels=4,
        channels=128,
        num_blocks=4,
        kl_weight=1e-4,
        # Sized with stage 2's by diffbook.cost (chapter 7 in about 7 minutes on a Colab T4).
        batch_size=64,
        steps=6000,
        peak_lr=1e-3,
        warmup=200,
        ema_decay=0.999,
    ),
    # A smoke run of chapter 7 (see diffbook.config.pick): every cell, few steps.
    "smoke": dict(steps=10, warmup=2, batch_size=16),
}


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def space_to_depth(x: jax.Array, factor: int) -> jax.Array:
    """Fold every ``factor x factor`` block of pixels into the channels of one position.

    Built on :func:`diffbook.nets.layers.patchify`: the patches it lists row by row are
    laid back out on their grid.  Channel ``(i * factor + j) * C + c`` of output
    position ``(r, s)`` is channel ``c`` of input pixel
    ``(r * factor + i, s * factor + j)``.

    Args:
      x: ``(B, H, W, C)``; ``H`` and ``W`` divide by ``factor``.
      factor: side ``f`` of a block, in pixels.

    Returns:
      ``(B, H // f, W // f, f * f * C)``.

    Raises:
      TypeError: if ``factor`` is not an int.
      ValueError: if ``factor < 1``, ``x`` is not 4-D, or its height or width does
        not divide by ``factor``.
    """
    f = checks.positive_int(factor, "factor")
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, H, W, C), got {x.shape}")
    b, h, w, c = x.shape
    if h % f or w % f:
        raise ValueError(f"factor must divide x's height and width, got factor={f} for {h}x{w}")
    return patchify(x, f).reshape(b, h // f, w // f, f * f * c)


def depth_to_space(x: jax.Array, factor: int) -> jax.Array:
    """Unfold channels back into ``factor x factor`` blocks: the inverse of :func:`space_to_depth`.

    Args:
      x: ``(B, h, w, f * f * C)``.
      factor: side ``f`` of a block, in pixels.

    Returns:
      ``(B, h * f, w * f, C)``.

    Raises:
      TypeError: if ``factor`` is not an int.
      ValueError: if ``factor < 1``, ``x`` is not 4-D, or its channels do not
        divide by ``f * f``.
    """
    f = checks.positive_int(factor, "factor")
    x = jnp.asarray(x)
    if x.ndim != 4 or x.shape[-1] % (f * f):
        raise ValueError(f"x must have shape (B, h, w, {f * f} * C) for factor={f}, got {x.shape}")
    b, h, w, d = x.shape
    return unpatchify(x.reshape(b, h * w, d), f, h * f, w * f)


class Block(nnx.Module):
    """Two 3x3 convolutions with a residual connection, ``(B, h, w, C) -> (B, h, w, C)``.

    :class:`diffbook.nets.layers.ResBlock` without the time embedding, which an
    autoencoder does not have: GroupNorm, SiLU, convolution, twice.

    Args:
      channels: channels in and out.
      rngs: ``nnx.Rngs`` for the initial parameters.
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(channels, num_groups=num_groups(channels), rngs=rngs)
        self.conv1 = nnx.Conv(channels, channels, (3, 3), rngs=rngs)
        self.norm2 = nnx.GroupNorm(channels, num_groups=num_groups(channels), rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        return x + self.conv2(nnx.silu(self.norm2(h)))


class ConvStack(nnx.Module):
    """The body shared by :class:`Encoder` and :class:`Decoder`, at one resolution.

    A 3x3 convolution from ``in_channels`` to ``channels``, ``num_blocks``
    residual :class:`Block` s, GroupNorm, SiLU and a 3x3 convolution to
    ``out_channels``: ``(B, h, w, in_channels) -> (B, h, w, out_channels)``.

    Args:
      in_channels, out_channels: channels of the input and of the output.
      channels: width of the hidden layers.
      num_blocks: residual blocks (0 or more).
      rngs: ``nnx.Rngs`` for the initial parameters.

    Raises:
      TypeError, ValueError: if a width is not a positive int or ``num_blocks`` a
        non-negative one.
    """

    def __init__(
        self, in_channels: int, out_channels: int, channels: int, num_blocks: int, *, rngs: nnx.Rngs
    ):
        channels = checks.positive_int(channels, "channels")
        num_blocks = checks.positive_int(num_blocks, "num_blocks", minimum=0)
        self.conv_in = nnx.Conv(in_channels, channels, (3, 3), rngs=rngs)
        self.blocks = nnx.List([Block(channels, rngs=rngs) for _ in range(num_blocks)])
        self.norm_out = nnx.GroupNorm(channels, num_groups=num_groups(channels), rngs=rngs)
        self.conv_out = nnx.Conv(channels, out_channels, (3, 3), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h)
        return self.conv_out(nnx.silu(self.norm_out(h)))


class Encoder(nnx.Module):
    """Images ``(B, H, W, 3)`` -> mean and log-variance, each ``(B, H/f, W/f, latent_channels)``.

    Space-to-depth by ``factor``, then a :class:`ConvStack` to ``2 * latent_channels``
    (the means, then the log-variances, clipped to :data:`LOGVAR_RANGE`).

    Args:
      factor: side ``f`` of the pixel blocks folded into one latent position.
      latent_channels: channels of the latents.
      channels: width of the hidden layers.
      num_blocks: residual blocks.
      rngs: ``nnx.Rngs`` for the initial parameters.

    Raises:
      TypeError, ValueError: if an argument is not a positive int (``num_blocks``
        may be 0).
    """

    def __init__(
        self, factor: int, latent_channels: int, channels: int, num_blocks: int, *, rngs: nnx.Rngs
    ):
        self.factor = checks.positive_int(factor, "factor")
        latent_channels = checks.positive_int(latent_channels, "latent_channels")
        folded = self.factor**2 * IMAGE_CHANNELS
        self.stack = ConvStack(folded, 2 * latent_channels, channels, num_blocks, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The posterior's parameters.

        Args:
          x: images ``(B, H, W, 3)``; ``H`` and ``W`` divide by ``factor``.

        Returns:
          ``(mean, logvar)``, each ``(B, H/f, W/f, latent_channels)``.
        """
        mean, logvar = jnp.split(self.stack(space_to_depth(x, self.factor)), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class Decoder(nnx.Module):
    """Latents ``(B, h, w, latent_channels)`` -> images ``(B, h f, w f, 3)``.

    The mirror of :class:`Encoder`: a :class:`ConvStack` to ``3 f^2`` channels, then
    depth-to-space by ``factor``.

    The output is left unbounded (no ``tanh``): emoji are mostly white
    background, pixels at exactly ``+1``, which ``tanh`` reaches only in the limit,
    so the squared error would keep pushing those pre-activations up while their
    gradient vanishes.  Clip the output to ``[-1, 1]`` to show it (as
    :meth:`Autoencoder.reconstruct` does).

    Args:
      factor: side ``f`` of the pixel block that one latent position unfolds to.
      latent_channels: channels of the latents.
      channels: width of the hidden layers.
      num_blocks: residual blocks.
      rngs: ``nnx.Rngs`` for the initial parameters.

    Raises:
      TypeError, ValueError: if an argument is not a positive int (``num_blocks``
        may be 0).
    """

    def __init__(
        self, factor: int, latent_channels: int, channels: int, num_blocks: int, *, rngs: nnx.Rngs
    ):
        self.factor = checks.positive_int(factor, "factor")
        latent_channels = checks.positive_int(latent_channels, "latent_channels")
        folded = self.factor**2 * IMAGE_CHANNELS
        self.stack = ConvStack(latent_channels, folded, channels, num_blocks, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        """Decoded images.

        Args:
          z: latents ``(B, h, w, latent_channels)``.

        Returns:
          Images ``(B, h * factor, w * factor, 3)``, unbounded.
        """
        return depth_to_space(self.stack(z), self.factor)


class Autoencoder(nnx.Module):
    """KL-regularised autoencoder for ``(B, R, R, 3)`` images in ``[-1, 1]``.

    ``model(x, key)`` encodes, draws ``z ~ N(mean, exp(logvar))`` and decodes (for
    training); :meth:`encode` gives the deterministic latents (the means) that the
    diffusion stage learns, :meth:`decode` maps latents back to images.

    Args:
      resolution: side ``R`` of the images, a multiple of ``factor``.
      factor: downsampling factor; the latents are ``(B, R/f, R/f, latent_channels)``.
      latent_channels: channels of the latents.
      channels: width of the hidden layers of encoder and decoder.
      num_blocks: residual blocks in each of them.
      rngs: ``nnx.Rngs`` for the initial parameters.

    Raises:
      TypeError: if an argument is not an int.
      ValueError: if one is below 1 (``num_blocks`` below 0), or ``resolution`` is
        not a multiple of ``factor``.
    """

    def __init__(
        self,
        resolution: int,
        factor: int,
        latent_channels: int,
        channels: int,
        num_blocks: int,
        *,
        rngs: nnx.Rngs,
    ):
        resolution = checks.positive_int(resolution, "resolution")
        factor = checks.positive_int(factor, "factor")
        if resolution % factor:
            raise ValueError(
                f"resolution must be a multiple of factor, got resolution={resolution}, "
                f"factor={factor}"
            )
        self.resolution = resolution
        self.factor = factor
        self.latent_channels = checks.positive_int(latent_channels, "latent_channels")
        self.encoder = Encoder(factor, latent_channels, channels, num_blocks, rngs=rngs)
        self.decoder = Decoder(factor, latent_channels, channels, num_blocks, rngs=rngs)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(R, R, 3)``, the shape of one image."""
        return (self.resolution, self.resolution, IMAGE_CHANNELS)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(R/f, R/f, latent_channels)``, the shape of one image's latents."""
        side = self.resolution // self.factor
        return (side, side, self.latent_channels)

    def check_images(self, images, name: str = "images") -> jax.Array:
        """Check that ``images`` is a batch of this model's images; return it as an array.

        Under ``jit`` only the shape can be checked; outside it the values are
        checked too (finite, in ``[-1, 1]`` up to :func:`diffbook.data.check_images`'
        tolerance).

        Args:
          images: ``(B, R, R, 3)`` in ``[-1, 1]``.
          name: the argument's name for the error messages.

        Returns:
          ``images`` as a float JAX array.

        Raises:
          TypeError: if they are not numeric.
          ValueError: for a wrong shape, an empty batch, NaN or values outside ``[-1, 1]``.
        """
        if _is_traced(images):
            if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
                raise ValueError(
                    f"{name} must have shape (B, *{self.image_shape}), got {images.shape}"
                )
            return images
        return jnp.asarray(check_images(images, name=name, shape=self.image_shape))

    def _check_latents(self, z, name: str = "z") -> jax.Array:
        z = z if _is_traced(z) else jnp.asarray(z)
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"{name} must have shape (B, *{self.latent_shape}) for this autoencoder, "
                f"got {z.shape}"
            )
        return z

    def __call__(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Encode, draw latents from the posterior, decode.

        Args:
          x: images ``(B, R, R, 3)`` in ``[-1, 1]``.
          key: PRNG key for the latent draw.

        Returns:
          ``(reconstruction, mean, logvar)``: images ``(B, R, R, 3)`` (unbounded)
          and the posterior's parameters ``(B, R/f, R/f, latent_channels)``.

        Raises:
          ValueError: if ``x`` is not a batch of this model's images.
        """
        mean, logvar = self.encoder(self.check_images(x, "x"))
        return self.decoder(reparameterize(key, mean, logvar)), mean, logvar

    def encode(self, x: jax.Array) -> jax.Array:
        """The deterministic latents of ``x``: the posterior means.

        Args:
          x: images ``(B, R, R, 3)`` in ``[-1, 1]``.

        Returns:
          ``(B, R/f, R/f, latent_channels)``.

        Raises:
          ValueError: if ``x`` is not a batch of this model's images.
        """
        return self.encoder(self.check_images(x, "x"))[0]

    def decode(self, z: jax.Array) -> jax.Array:
        """Images decoded from latents.

        Args:
          z: latents ``(B, R/f, R/f, latent_channels)`` (unscaled: divide latents
            that were multiplied by :func:`latent_scale_factor` by it first).

        Returns:
          Images ``(B, R, R, 3)``, unbounded.

        Raises:
          ValueError: if ``z`` does not have this model's latent shape.
        """
        return self.decoder(self._check_latents(z))

    def reconstruct(self, x: jax.Array) -> jax.Array:
        """``decode(encode(x))`` clipped to ``[-1, 1]``: what the autoencoder keeps of ``x``.

        Args:
          x: images ``(B, R, R, 3)`` in ``[-1, 1]``.

        Returns:
          Images ``(B, R, R, 3)`` in ``[-1, 1]``.
        """
        return jnp.clip(self.decode(self.encode(x)), -1.0, 1.0)


def autoencoder_loss(
    model: Autoencoder, images: jax.Array, key: jax.Array, *, kl_weight: float
) -> jax.Array:
    """The training loss: squared error per pixel plus ``kl_weight`` x KL per latent element.

    Written out in chapter 7 (``notebooks/07_latent.md``): change the two together.

    The reconstruction error is the mean squared error over every pixel and
    channel of the batch.  Squared error rather than L1 because it *is* the
    figure the chapter reports: PSNR is ``10 log10(4 / MSE)``.  (Rombach et al.
    use L1 plus a perceptual and an adversarial loss, for sharper edges than a
    small model can afford.)

    The KL term is :func:`diffbook.vae.kl_to_standard_normal` of each image's
    flattened latents (a sum over its latent elements), divided by the number of
    latent elements: both terms are then means, independent of resolution and
    latent size.  The weight is tiny (:data:`RECIPE` uses ``1e-4``) on purpose.
    As in Rombach et al. 2022, the KL term is there only to keep the latents on a
    bounded scale and their posterior slightly noisy, so that nearby latents decode
    to similar images; a weight near 1, as in the VAE of chapter 1, trades detail
    for a Gaussian latent space and gives blurred reconstructions.  Matching the
    prior is the diffusion model's job here.

    Args:
      model: the :class:`Autoencoder`.
      images: ``(B, R, R, 3)`` in ``[-1, 1]``.
      key: PRNG key for the latent draw.
      kl_weight: weight of the KL term, a Python number ``>= 0`` (bind it with
        ``functools.partial`` to get the ``loss_fn(model, batch, key)`` of
        :func:`diffbook.train.fit`).

    Returns:
      A scalar.

    Raises:
      TypeError, ValueError: if ``kl_weight`` is not a finite number ``>= 0``, or
        ``images`` is not a batch of the model's images (named in the message).
    """
    kl_weight = checks.finite_number(kl_weight, "kl_weight", minimum=0.0)
    images = model.check_images(images, "images")
    mean, logvar = model.encoder(images)
    reconstruction = model.decoder(reparameterize(key, mean, logvar))
    mse = jnp.mean((reconstruction - images) ** 2)
    b = mean.shape[0]
    kl = kl_to_standard_normal(mean.reshape(b, -1), logvar.reshape(b, -1))
    return mse + kl_weight * jnp.mean(kl) / (mean.size // b)


def latent_scale_factor(latents) -> float:
    """``1 / std`` of the latents: the factor that gives them unit variance.

    Written out in chapter 7 (``notebooks/07_latent.md``): change the two together.

    Latent diffusion multiplies the encoder's latents by one constant computed
    from data before the diffusion model sees them (and divides the samples by it
    before decoding), because the noise schedules assume data of roughly unit
    scale.  The standard deviation is taken over every element, as in Rombach et
    al. 2022.

    Args:
      latents: the latents of (a large batch of) training images, any shape with
        at least two elements, e.g. ``model.encode(images)``.

    Returns:
      ``1 / std(latents)``, a Python float.

    Raises:
      TypeError: if ``latents`` is not numeric.
      ValueError: if it has fewer than two elements, holds NaN or infinite
        values, or is constant (zero standard deviation).
    """
    arr = np.asarray(latents)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"latents must be a numeric array, got dtype {arr.dtype}")
    if arr.size < 2:
        raise ValueError(f"latents must have at least two elements, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("latents contains NaN or infinite values")
    std = float(arr.std())
    if std == 0.0:
        raise ValueError("latents are constant (standard deviation 0): no scale to compute")
    return 1.0 / std


def make_autoencoder(cfg, *, seed: int = 0) -> Autoencoder:
    """The recipe's :class:`Autoencoder`.

    Args:
      cfg: a recipe from :data:`RECIPE` (as :func:`diffbook.config.pick` returns
        it), with ``resolution``, ``factor``, ``latent_channels``, ``channels`` and
        ``num_blocks``.
      seed: seed of the initial parameters.

    Returns:
      An untrained :class:`Autoencoder`.

    Raises:
      TypeError, ValueError: for a setting out of range (named in the message).
    """
    seed = checks.positive_int(seed, "seed", minimum=0)
    return Autoencoder(
        cfg.resolution,
        cfg.factor,
        cfg.latent_channels,
        cfg.channels,
        cfg.num_blocks,
        rngs=nnx.Rngs(seed),
    )
