"""Datasets that ship with packages: nothing is downloaded at run time.

Images are returned as ``float32`` arrays of shape ``(N, H, W, C)`` scaled to
``[-1, 1]``, the range that matches standard Gaussian noise in size.
"""

from __future__ import annotations

import functools

import numpy as np

from . import checks

#: Shape ``(H, W, C)`` of one digit image.
DIGIT_SHAPE = (8, 8, 1)

#: Share of each digit class kept out of training, to judge samples against.
HELD_OUT_FRACTION = 1 / 3
#: Seed of the one train/held-out split every chapter uses.
SPLIT_SEED = 0
#: The parts of the fixed split that :func:`load_digits` can return.
SPLITS = ("all", "train", "held_out")


@functools.lru_cache(maxsize=1)
def _sklearn_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # sklearn's pixels are integers 0..16; map them affinely onto [-1, 1].
    images = (bunch.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    images.setflags(write=False)
    labels = bunch.target.astype(np.int32)
    labels.setflags(write=False)
    return images, labels


def check_digit(digit) -> int:
    """Check a digit class, as the functions that take ``digit`` do.

    Args:
      digit: a digit class, an int in ``0..9``.

    Returns:
      ``digit`` as a Python int.

    Raises:
      TypeError: if ``digit`` is not an int (``bool`` is refused).
      ValueError: if it is outside ``0..9``.
    """
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)):
        raise TypeError(f"digit must be an int in 0..9 or None, got {digit!r}")
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    return int(digit)


@functools.lru_cache(maxsize=1)
def _held_out_mask() -> np.ndarray:
    _, labels = _sklearn_digits()
    rng = np.random.default_rng(SPLIT_SEED)
    held = np.zeros(len(labels), bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        held[rng.permutation(idx)[: round(HELD_OUT_FRACTION * len(idx))]] = True
    held.setflags(write=False)
    return held


def split_indices(split: str = "train", digit: int | None = None) -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of one part of the fixed split.

    The split is stratified: a third of every digit class (chosen with seed
    :data:`SPLIT_SEED`) is held out, so that the held-out part has about 60
    images per digit -- enough for a per-digit Fréchet reference that does not
    swing with the draw -- and models still train on two thirds (about 120 per
    digit, 1,198 in all).

    Args:
      split: ``"train"``, ``"held_out"`` or ``"all"``.
      digit: keep only this class (0-9); ``None`` keeps all ten.

    Returns:
      ``int64`` array of shape ``(N,)``, increasing.

    Raises:
      ValueError: if ``split`` is not one of :data:`SPLITS`, or ``digit`` is outside 0..9.
      TypeError: if ``digit`` is not an int (``bool`` included).
    """
    checks.one_of(split, "split", SPLITS)
    _, labels = _sklearn_digits()
    keep = np.ones(len(labels), bool)
    if split != "all":
        keep = _held_out_mask() if split == "held_out" else ~_held_out_mask()
    if digit is not None:
        keep = keep & (labels == check_digit(digit))
    return np.flatnonzero(keep)


def load_digits(digit: int | None = None, *, split: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """The sklearn 8x8 digits (1,797 in all) as ``(images, labels)``.

    Args:
      digit: keep only this class (0-9); ``None`` keeps all ten.
      split: ``"train"`` (what every model of the book trains on), ``"held_out"``
        (what samples are judged against) or ``"all"``; see :func:`split_indices`.

    Returns:
      ``images`` of shape ``(N, 8, 8, 1)``, ``float32`` in ``[-1, 1]``, and
      ``labels`` of shape ``(N,)``, ``int32``. Both are fresh copies.

    Raises:
      ValueError: if ``split`` or ``digit`` is out of range (see :func:`split_indices`).
      TypeError: if ``digit`` is not an int.
    """
    images, labels = _sklearn_digits()
    idx = split_indices(split, digit)
    return images[idx], labels[idx]


def check_images(
    images,
    *,
    name: str = "images",
    shape=None,
    low: float = -1.0,
    high: float = 1.0,
    tol: float = 1e-3,
) -> np.ndarray:
    """Validate a batch of images and return it as a float32 NumPy array.

    Args:
      images: array-like of shape ``(N, H, W, C)``, ``N >= 1``, integer or float.
      name: the argument's name, used in the error messages.
      shape: if given, the required per-image shape ``(H, W, C)``, e.g.
        :data:`DIGIT_SHAPE`.
      low: the smallest allowed pixel value.
      high: the largest allowed pixel value.
      tol: how far outside ``[low, high]`` a value may lie (rounding of samples).

    Returns:
      ``images`` as a ``float32`` array of shape ``(N, H, W, C)`` (a copy; values
      unchanged, not clipped).

    Raises:
      TypeError: if ``images`` is not numeric.
      ValueError: if it is not 4-D, has the wrong per-image ``shape``, is empty,
        holds NaN or infinite values, or values outside ``[low - tol, high + tol]``.
    """
    arr = np.asarray(images)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if arr.ndim != 4:
        raise ValueError(f"{name} must have shape (N, H, W, C), got shape {arr.shape}")
    if shape is not None and tuple(arr.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} must have per-image shape {tuple(shape)}, got {arr.shape[1:]}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < low - tol or hi > high + tol:
        raise ValueError(
            f"{name} must lie in [{low}, {high}] (clip samples first), "
            f"got values in [{lo:.3g}, {hi:.3g}]"
        )
    return arr
