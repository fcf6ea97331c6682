"""Masked (absorbing-state) diffusion on tokens: the digits as 64 tokens over 17 values.

The sklearn digits are discrete already: each of the 64 pixels is an integer 0..16.
Read row by row, an image is a sequence of 64 *tokens* over a vocabulary of
:data:`NUM_VALUES` = 17 values, plus one extra state, :data:`MASK` = 17, that no
pixel ever takes.

**Forward process.**  Time ``t`` runs from data (``t = 0``) to "all masked"
(``t = 1``).  Each token, independently, is still itself at time ``t`` with
probability ``alpha_t`` and has been replaced by :data:`MASK` otherwise; once masked
it stays masked (the mask is *absorbing*).  This module uses the linear schedule
``alpha_t = 1 - t`` (:func:`alpha`), so a token is masked with probability ``t``.

**Model.**  A network ``model(x_t) -> logits`` of shape ``(B, 64, 17)`` predicts the
clean value of every position from the partly masked sequence ``x_t`` of shape
``(B, 64)``.  It has no logit for :data:`MASK` (the clean data are never masked: the
"zero-masking" of Sahoo et al. 2024), and :func:`log_probs` overrides its output at
positions that are not masked with the token they hold (the "carry-over"): an
unmasked token is known exactly.  The network needs no time input: given *which*
tokens are masked, the masked ones' clean values do not depend on ``t`` (every
token is masked with the same probability, so the pattern carries all there is to
know).

**Loss.**  :func:`masked_diffusion_loss` is the continuous-time negative ELBO, a
cross-entropy on the masked tokens weighted by ``1 / t``; :func:`elbo_nats` evaluates
the same bound per image with low variance, in nats (Austin et al. 2021; Sahoo et
al. 2024, "MDLM"; Shi et al. 2024, "MD4").

**Sampling.**  :func:`sample` runs the reverse process from an all-masked sequence,
unmasking tokens on a grid of ``steps`` times; :func:`infill` does the same with
some tokens known and kept.

**Nats for a continuous model.**  :func:`dequantise` and :func:`dequantised_nats`
turn a density over the ``[-1, 1]``-scaled pixels (a flow or DDPM, through
:func:`diffbook.likelihood.ode_log_likelihood`) into an upper bound on the discrete
negative log-likelihood in the same units, nats per image.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import checks
from .data import DIGIT_SHAPE, check_images

#: How many values a pixel can take (sklearn's digits are integers 0..16).
NUM_VALUES = 17
#: The mask token, one past the pixel values, so token ids run ``0..17``.  It is
#: never the value of a clean pixel and the model never predicts it.
MASK = NUM_VALUES
#: How many tokens make one digit image (its 8 x 8 pixels in raster, row, order).
NUM_TOKENS = int(np.prod(DIGIT_SHAPE))
#: Width of one pixel level in the ``[-1, 1]`` scaling of :func:`diffbook.data.load_digits`
#: (value ``v`` is stored as ``v / 8 - 1``).
BIN_WIDTH = 2.0 / (NUM_VALUES - 1)


# --------------------------------------------------------------------- tokens
def to_tokens(images, *, tol: float = 1e-3) -> np.ndarray:
    """Digit images in ``[-1, 1]`` -> tokens, the inverse of :func:`from_tokens`.

    A pixel ``x`` holds the value ``v = 8 (x + 1)``, rounded to the nearest integer.

    Args:
      images: ``(N, 8, 8, 1)`` in ``[-1, 1]`` as :func:`diffbook.data.load_digits`
        returns them (value ``v`` stored as ``v / 8 - 1``).
      tol: how far (in units of ``v``) a pixel may lie from an integer level; the
        default accepts the data and float rounding, and refuses continuous
        samples (round those yourself with a larger ``tol`` if that is meant).

    Returns:
      ``int32`` tokens of shape ``(N, 64)`` in ``0..16``, raster order.

    Raises:
      TypeError: if ``images`` is not numeric.
      ValueError: if it is not of shape ``(N, 8, 8, 1)``, holds NaN or values outside
        ``[-1, 1]``, or a pixel lies farther than ``tol`` from a level.
    """
    tol = checks.finite_number(tol, "tol", minimum=0.0)
    arr = check_images(images, shape=DIGIT_SHAPE, tol=tol / 8)
    v = 8.0 * (arr.astype(np.float64) + 1.0)
    levels = np.rint(v)
    off = float(np.max(np.abs(v - levels)))
    if off > tol:
        raise ValueError(
            f"images must hold the 17 levels v / 8 - 1 (v = 0..16); a pixel lies {off:.3g} "
            f"from a level (tol={tol})"
        )
    return np.clip(levels, 0, NUM_VALUES - 1).astype(np.int32).reshape(len(arr), NUM_TOKENS)


def check_tokens(tokens, name: str = "tokens", *, allow_mask: bool = False):
    """Check a batch of token sequences; return it as an ``int32`` JAX array.

    The values are checked only when they are concrete: inside ``jax.jit`` the
    shape and dtype are checked and the values trusted.

    Args:
      tokens: integer array of shape ``(B, L)``, ``B, L >= 1``.
      name: the argument's name, used in the error messages.
      allow_mask: accept :data:`MASK` as well as ``0..16``.

    Returns:
      ``tokens`` as an ``int32`` ``jax.Array`` of shape ``(B, L)``.

    Raises:
      TypeError: if ``tokens`` is not an integer array.
      ValueError: if it is not 2-D with both sizes ``>= 1``, or a value lies outside
        the vocabulary.
    """
    if isinstance(tokens, jax.core.Tracer):
        dtype, shape = tokens.dtype, tokens.shape
    else:
        tokens = np.asarray(tokens)
        dtype, shape = tokens.dtype, tokens.shape
    if not jnp.issubdtype(dtype, jnp.integer):  # booleans are not integers here
        raise TypeError(f"{name} must be an integer array, got dtype {dtype}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"{name} must have shape (batch, length) with both >= 1, got {shape}")
    if not isinstance(tokens, jax.core.Tracer):
        top = MASK if allow_mask else NUM_VALUES - 1
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi > top:
            raise ValueError(f"{name} must lie in 0..{top}, got values in {lo}..{hi}")
    return jnp.asarray(tokens, jnp.int32)


def from_tokens(tokens) -> np.ndarray:
    """Tokens -> digit images in ``[-1, 1]``, value ``v`` as ``v / 8 - 1``.

    Args:
      tokens: ``(N, 64)`` integers in ``0..16`` (no :data:`MASK`), raster order.

    Returns:
      ``float32`` images of shape ``(N, 8, 8, 1)``.

    Raises:
      TypeError: if ``tokens`` is not an integer array.
      ValueError: if it is not of shape ``(N, 64)`` or holds a value outside
        ``0..16`` (a :data:`MASK` left in included).
    """
    tokens = np.asarray(check_tokens(tokens))
    if tokens.shape[1] != NUM_TOKENS:
        raise ValueError(f"tokens must have shape (N, {NUM_TOKENS}), got {tokens.shape}")
    return (tokens.astype(np.float32) / 8.0 - 1.0).reshape(len(tokens), *DIGIT_SHAPE)


# ------------------------------------------------------------ forward process
def alpha(t) -> jax.Array:
    """The linear schedule ``alpha_t = 1 - t``: the probability a token is unmasked.

    Args:
      t: times in ``[0, 1]``, any shape.

    Returns:
      ``1 - t``, the shape of ``t``.
    """
    return 1.0 - jnp.asarray(t, jnp.float32)


def _check_times(t, batch: int) -> jax.Array:
    """``t`` broadcast to ``(batch,)``; concrete values must lie in ``[0, 1]``."""
    if not isinstance(t, jax.core.Tracer):
        arr = np.asarray(t, np.float64)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != batch):
            raise ValueError(f"t must be a number or of shape ({batch},), got shape {arr.shape}")
        if not np.all((arr >= 0) & (arr <= 1)):
            raise ValueError(f"t must lie in [0, 1], got {arr}")
    return jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))


def mask_tokens(tokens, t, key: jax.Array) -> jax.Array:
    """Draw ``x_t ~ q(x_t | x_0)``: each token masked, independently, with probability ``t``.

    That is ``1 - alpha_t``, the chance that a token is no longer itself at time ``t``.

    Args:
      tokens: clean tokens ``(B, L)`` in ``0..16``.
      t: one time in ``[0, 1]`` for the whole batch, or times of shape ``(B,)``.
      key: PRNG key.

    Returns:
      ``x_t``: ``int32`` of shape ``(B, L)``, each entry the clean token or :data:`MASK`.

    Raises:
      TypeError: if ``tokens`` is not an integer array.
      ValueError: if ``tokens`` is not ``(B, L)`` in ``0..16``, or ``t`` is not a
        number or ``(B,)`` in ``[0, 1]``.
    """
    tokens = check_tokens(tokens)
    t = _check_times(t, tokens.shape[0])
    # Masked where a uniform draw falls below t: probability t, and at t = 0 never.
    masked = jax.random.uniform(key, tokens.shape) < t[:, None]
    return jnp.where(masked, MASK, tokens)


# ----------------------------------------------------------------- the model
def log_probs(model: Callable, x_t) -> jax.Array:
    """The model's ``log p_theta(x_0 | x_t)`` with the carry-over of unmasked tokens.

    At a masked position it is the log-softmax of the model's 17 logits; at an
    unmasked one it is 0 for the token there and ``-inf`` for every other value.

    Args:
      model: ``model(x_t) -> logits`` with ``x_t`` of shape ``(B, L)`` (tokens
        ``0..17``) and logits of shape ``(B, L, 17)``.
      x_t: partly masked tokens ``(B, L)``.

    Returns:
      ``float32`` log-probabilities ``(B, L, 17)`` over the values ``0..16``.

    Raises:
      TypeError: if ``x_t`` is not an integer array.
      ValueError: if ``x_t`` is not ``(B, L)`` in ``0..17``, or the logits are not
        of shape ``(B, L, 17)``.
    """
    x_t = check_tokens(x_t, "x_t", allow_mask=True)
    logits = model(x_t)
    if tuple(logits.shape) != (*x_t.shape, NUM_VALUES):
        raise ValueError(
            f"model(x_t) must return logits of shape {(*x_t.shape, NUM_VALUES)}, "
            f"got {tuple(logits.shape)}"
        )
    predicted = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # Carry-over: an unmasked token is its own clean value with probability 1.
    # (jnp.minimum keeps the index in range at masked positions; they are not used.)
    known = jax.nn.one_hot(jnp.minimum(x_t, NUM_VALUES - 1), NUM_VALUES, dtype=bool)
    carried = jnp.where(known, 0.0, -jnp.inf)
    return jnp.where((x_t == MASK)[..., None], predicted, carried)


def _masked_nll(model, tokens, x_t) -> jax.Array:
    """``sum over masked positions of -log p_theta(x_0^i | x_t)``, per image ``(B,)``."""
    lp = log_probs(model, x_t)
    true_lp = jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0]
    # Unmasked positions contribute 0 (their carried log-probability); where() keeps
    # a -inf from leaking in through a 0 * inf.
    return -jnp.sum(jnp.where(x_t == MASK, true_lp, 0.0), axis=-1)


def masked_diffusion_loss(model: Callable, tokens, key: jax.Array) -> jax.Array:
    r"""The continuous-time negative ELBO, in nats per image, averaged over the batch.

    **Derivation.**  Split ``[0, 1]`` into steps ``s < t``.  A token masked at ``t``
    was unmasked at ``s`` with probability ``(alpha_s - alpha_t) / (1 - alpha_t)``,
    and then held its clean value ``x_0``: that is the true posterior
    ``q(x_s | x_t, x_0)``.  The reverse model does the same with ``x_0`` drawn from
    ``p_theta(. | x_t)``, so the KL divergence of one step, per masked token, is
    ``(alpha_s - alpha_t) / (1 - alpha_t) * (-log p_theta(x_0 | x_t))`` (the two agree
    on staying masked; unmasked tokens are carried over and cost nothing).  As the
    steps shrink, the sum of these KLs becomes

    .. math::

       -\log p_\theta(x_0) \le \int_0^1 \frac{-\alpha'_t}{1 - \alpha_t}\,
       \mathbb{E}_{x_t \sim q(x_t | x_0)}\Big[\sum_{i:\,x_t^i = \mathrm{MASK}}
       -\log p_\theta(x_0^i \mid x_t)\Big]\,dt .

    The prior term vanishes (at ``t = 1`` everything is masked, exactly the
    reverse process's start) and so does the reconstruction term (at ``t = 0``
    nothing is).  For ``alpha_t = 1 - t`` the weight is ``1 / t``.

    **Estimate.**  One time per image, ``t = 1 - u``, with the ``u`` of the batch
    spread evenly over ``[0, 1)`` (one uniform offset shared by ``B`` strata, the
    low-discrepancy sampler of Kingma et al. 2021): unbiased for the mean over the
    batch, with less variance than independent times.  ``t`` lies in ``(0, 1]``, so
    ``1 / t`` is finite, but it has a heavy tail: a token masked at a small ``t``
    weighs ``1 / t`` (for the exact model of 16 independent tokens, one batch of
    8192 rows still spreads by about 0.4 nats).  :func:`elbo_nats` with
    ``estimator="count"`` evaluates the same bound with weights at most ``L``.

    Args:
      model: ``model(x_t) -> logits (B, L, 17)``, see :func:`log_probs`.
      tokens: clean tokens ``(B, L)`` in ``0..16``.
      key: PRNG key for the times and the masks.

    Returns:
      The batch mean of the one-sample bound, a scalar in nats per image.

    Raises:
      TypeError: if ``tokens`` is not an integer array.
      ValueError: if ``tokens`` is not ``(B, L)`` in ``0..16``, or the model's
        logits have the wrong shape.
    """
    tokens = check_tokens(tokens)
    batch = tokens.shape[0]
    k_t, k_mask = jax.random.split(key)
    u = (jax.random.uniform(k_t) + jnp.arange(batch) / batch) % 1.0
    t = 1.0 - u
    x_t = mask_tokens(tokens, t, k_mask)
    return jnp.mean(_masked_nll(model, tokens, x_t) / t)


def elbo_nats(
    model: Callable, tokens, key: jax.Array, num_t: int = 64, *, estimator: str = "count"
) -> jax.Array:
    r"""The negative ELBO of each image in nats: an upper bound on ``-log p_theta(x_0)``.

    ``num_t`` masked copies of every image are scored, with two estimators of the
    same integral (see :func:`masked_diffusion_loss`):

    * ``"time"``: stratified times ``t_j = 1 - (j + u) / num_t``, ``j = 0..num_t-1``,
      with one uniform ``u`` per image, each copy masked at its ``t_j`` and weighted
      by ``1 / t_j``.  Unbiased, but the weight makes the rare token masked at a
      small ``t`` costly: its variance grows like ``log(num_t)`` per token.
    * ``"count"`` (default): the integral over ``t`` done in closed form.  Given that
      ``k`` of the ``L`` tokens are masked, the pattern is a uniform random subset of
      size ``k`` whatever ``t`` is, and ``P(k | t)`` is binomial, so
      ``int_0^1 (1/t) P(k | t) dt = C(L, k) B(k, L - k + 1) = 1 / k``.  Hence

      .. math::

         \text{bound} = \sum_{k=1}^{L} \frac{1}{k}\,
         \mathbb{E}_{|S| = k}\Big[\sum_{i \in S} -\log p_\theta(x_0^i \mid x_{\bar S})\Big]
         = L\,\mathbb{E}_{k \sim U\{1..L\}}\Big[\frac{1}{k}\sum_{i \in S} \cdots\Big],

      the "any-order autoregressive" form (Shi et al. 2024; Ou et al. 2024).  The
      counts are stratified, ``k_j = 1 + floor((j + u) L / num_t)``, so with
      ``num_t = L`` every count is used once; weights are at most ``L``.

    Both are exact in expectation for a model that ignores ``t``, as
    :func:`log_probs` requires.

    Args:
      model: ``model(x_t) -> logits (B, L, 17)``.
      tokens: clean tokens ``(B, L)`` in ``0..16``.
      key: PRNG key.
      num_t: masked copies per image (times or counts), ``>= 1``; the model runs on
        ``B * num_t`` sequences, in ``num_t`` calls of batch ``B``.
      estimator: ``"count"`` or ``"time"``.

    Returns:
      ``float32`` bounds of shape ``(B,)``, nats per image.

    Raises:
      TypeError: if ``tokens`` is not an integer array or ``num_t`` not an int.
      ValueError: if ``tokens`` is not ``(B, L)`` in ``0..16``, ``num_t < 1``, or
        ``estimator`` is not one of the two.
    """
    tokens = check_tokens(tokens)
    num_t = checks.positive_int(num_t, "num_t")
    checks.one_of(estimator, "estimator", ("count", "time"))
    batch, length = tokens.shape
    k_u, k_mask = jax.random.split(key)
    u = jax.random.uniform(k_u, (batch,))

    def one(j, k):
        if estimator == "time":
            t = 1.0 - (j + u) / num_t  # in (0, 1]
            x_t = mask_tokens(tokens, t, k)
            return _masked_nll(model, tokens, x_t) / t
        count = 1 + jnp.floor((j + u) * length / num_t).astype(jnp.int32)  # 1..L
        # A uniform subset of `count` positions: those of the `count` smallest of
        # L uniform draws.
        draws = jax.random.uniform(k, tokens.shape)
        rank = jnp.argsort(jnp.argsort(draws, axis=-1), axis=-1)
        x_t = jnp.where(rank < count[:, None], MASK, tokens)
        return length * _masked_nll(model, tokens, x_t) / count

    terms = jax.lax.map(
        lambda args: one(*args), (jnp.arange(num_t), jax.random.split(k_mask, num_t))
    )
    return jnp.mean(terms, axis=0)


# ------------------------------------------------------------------- sampling
def _unmask_loop(model, x, key, steps):
    """The reverse process from ``x`` (tokens or MASK) on ``steps`` equal steps of ``t``.

    From ``t`` to ``s < t`` each still-masked token is revealed with probability
    ``(alpha_s - alpha_t) / (1 - alpha_t) = (t - s) / t``, its value drawn from the
    model; the last step (``s = 0``) reveals all that remain.
    """
    grid = jnp.linspace(1.0, 0.0, steps + 1)

    def body(x, inputs):
        t, s, k = inputs
        k_reveal, k_value = jax.random.split(k)
        lp = log_probs(model, x)
        value = jax.random.categorical(k_value, lp, axis=-1)  # carried where unmasked
        reveal = jax.random.uniform(k_reveal, x.shape) < (t - s) / t
        reveal = reveal | (s <= 0.0)  # exactly all at the last step
        return jnp.where((x == MASK) & reveal, value, x), None

    x, _ = jax.lax.scan(body, x, (grid[:-1], grid[1:], jax.random.split(key, steps)))
    return x


def sample(model: Callable, key: jax.Array, n: int, steps: int, *, length: int = NUM_TOKENS):
    """``n`` sequences drawn by unmasking, from all-masked at ``t = 1`` to ``t = 0``.

    The times are ``1, 1 - 1/steps, ..., 0``; one model call per step.  With
    ``steps = 1`` every token is drawn at once, independently given nothing; with
    ``steps = L`` about one token is revealed per step.

    Args:
      model: ``model(x_t) -> logits (n, length, 17)``.
      key: PRNG key.
      n: number of sequences.
      steps: number of unmasking steps (model calls), ``>= 1``.
      length: tokens per sequence (64 for a digit).

    Returns:
      ``(tokens, nfe)``: ``int32`` tokens ``(n, length)`` in ``0..16`` and
      ``nfe = steps``.

    Raises:
      TypeError: if ``n``, ``steps`` or ``length`` is not an int.
      ValueError: if one of them is below 1.
    """
    n = checks.positive_int(n, "n")
    steps = checks.positive_int(steps, "steps")
    length = checks.positive_int(length, "length")
    x = jnp.full((n, length), MASK, jnp.int32)
    return _unmask_loop(model, x, key, steps), steps


def infill(model: Callable, key: jax.Array, tokens, known_mask, steps: int):
    """Complete sequences whose tokens at ``known_mask`` are given and kept.

    The unknown tokens start masked and are revealed as in :func:`sample`; the
    known ones are never changed (the model sees them, carry-over keeps them).

    Args:
      model: ``model(x_t) -> logits (B, L, 17)``.
      key: PRNG key.
      tokens: ``(B, L)``; values at known positions in ``0..16``; elsewhere ignored
        (they may be :data:`MASK`).
      known_mask: booleans ``(B, L)``, or ``(L,)`` for one pattern for all, ``True``
        where the token is known.  Every sequence needs at least one known and one
        unknown token.
      steps: number of unmasking steps (model calls), ``>= 1``.

    Returns:
      ``(tokens, nfe)``: the completed ``int32`` tokens ``(B, L)`` in ``0..16``,
      equal to ``tokens`` where known, and ``nfe = steps``.

    Raises:
      TypeError: if ``tokens`` is not an integer array, ``known_mask`` not boolean,
        or ``steps`` not an int.
      ValueError: if the shapes disagree, a known token lies outside ``0..16``, a
        sequence has nothing or everything to infill, or ``steps < 1``.
    """
    tokens = np.asarray(check_tokens(tokens, allow_mask=True))
    steps = checks.positive_int(steps, "steps")
    known = np.asarray(known_mask)
    if known.dtype != bool:
        raise TypeError(f"known_mask must be a boolean array, got dtype {known.dtype}")
    try:
        known = np.broadcast_to(known, tokens.shape)
    except ValueError:
        raise ValueError(
            f"known_mask must have shape {tokens.shape} or ({tokens.shape[1]},), "
            f"got {np.shape(known_mask)}"
        ) from None
    if np.any(known.all(axis=1)):
        raise ValueError("known_mask leaves nothing to infill in some sequence (all True)")
    if not np.all(known.any(axis=1)):
        raise ValueError("known_mask gives no known token in some sequence (all False)")
    if np.any(tokens[known] >= NUM_VALUES):
        raise ValueError(f"tokens must lie in 0..{NUM_VALUES - 1} where known_mask is True")
    x = jnp.asarray(np.where(known, tokens, MASK), jnp.int32)
    return _unmask_loop(model, x, key, steps), steps


# ------------------------------------------------ nats for a continuous model
def dequantise(key: jax.Array, images) -> jax.Array:
    """Uniform dequantisation: each pixel plus noise uniform over its level's bin.

    A level ``x = v / 8 - 1`` owns the bin ``[x - w/2, x + w/2)`` of width
    ``w = 1/8`` (:data:`BIN_WIDTH`); the bins tile ``[-1 - w/2, 1 + w/2)``.

    Args:
      key: PRNG key.
      images: ``(N, ...)`` pixels on the levels, e.g. ``(N, 8, 8, 1)`` in ``[-1, 1]``.

    Returns:
      ``float32`` points of the shape of ``images``.
    """
    images = jnp.asarray(images, jnp.float32)
    u = jax.random.uniform(key, images.shape, minval=-0.5, maxval=0.5)
    return images + BIN_WIDTH * u


def dequantised_nats(log_density, dim: int = NUM_TOKENS, *, bin_width: float = BIN_WIDTH):
    r"""A continuous model's log-density of dequantised images -> discrete nats per image.

    **Derivation.**  A density ``p`` on the continuous pixels defines a discrete
    model: the probability of an image ``x`` is the mass of its bin,
    ``P(x) = int_{[0, w)^D} p(x + u) du`` (here ``u`` centred on the level, see
    :func:`dequantise`).  With ``u`` uniform over the bin (density ``w^{-D}``),
    ``P(x) = w^D E_u[p(x + u)]``, and by Jensen's inequality

    .. math::

       -\log P(x) \le -\mathbb{E}_u[\log p(x + u)] - D \log w .

    So ``-log p(x + u) - D log w`` for a dequantised ``x + u`` is an unbiased estimate
    of an upper bound on the discrete negative log-likelihood, in the units of the
    masked and autoregressive models (Theis et al. 2016).  A uniform density over
    the ``D`` bins' union gives ``D log 17`` exactly: no better than chance.

    Args:
      log_density: ``log p(x + u)`` of dequantised images, any shape (e.g. ``(N,)``
        from :func:`diffbook.likelihood.ode_log_likelihood`).
      dim: pixels per image ``D`` (64 for a digit).
      bin_width: the width ``w`` of one level's bin in the density's coordinates
        (1/8 for pixels in ``[-1, 1]``).

    Returns:
      ``-log_density - dim * log(bin_width)``, the shape of ``log_density``.

    Raises:
      TypeError: if ``dim`` is not an int or ``bin_width`` not a number.
      ValueError: if ``dim < 1`` or ``bin_width <= 0``.
    """
    dim = checks.positive_int(dim, "dim")
    bin_width = checks.finite_number(bin_width, "bin_width", minimum=0.0, strictly=True)
    return -jnp.asarray(log_density, jnp.float32) - dim * np.log(bin_width)
