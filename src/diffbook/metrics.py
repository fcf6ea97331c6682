"""How good are generated digits?  Figures that come with their own reference.

Every figure here is computed twice: once for the samples, and once, in exactly
the same way, for *real* images that the generator did not see.  The second value
is what a perfect generator would score, so a reader can tell "good" from
"as good as the data allows".

* **recognised** -- the fraction of samples that an independent classifier (an
  RBF support-vector machine trained on all 1,797 sklearn digits, never on
  samples) assigns to the target digit.  Reference: the same rate for real images
  of that digit, each predicted by a classifier that did not train on it (5-fold
  cross-validation).
* **fd** -- Fréchet distance between Gaussians fitted to samples and to real
  images, in a fixed feature space: the first 20 principal components of all
  sklearn digits.  The real images of the digit are split in two halves A and B;
  the reference is FD(B, A) and the sample figure is FD(S, A) with S a random
  draw of |B| samples, so both carry the same small-sample bias.  Both are
  averaged over several random splits.
* **copies** -- the fraction of samples whose nearest real image is closer than
  a quarter of the typical distance between two neighbouring real images; a
  generator that memorises its training set scores high here.  ``nn_ratio`` is the
  median nearest-real distance of samples over that of real images (leave-one-out):
  about 1 for fresh samples, near 0 for copies.

With ``digit=None`` the samples are meant to cover all ten digits (a model trained
on the whole data set).  The real reference set is then all 1,797 images, and
"recognised" is replaced by **class_tv** -- the total-variation distance
between the histogram of the classifier's predicted classes for a draw of
samples and the histogram of true labels of half A of the real images.  Its
reference ``class_tv_ref`` does the same for half B of the real images (each
predicted by a cross-validated classifier), so both carry the same small-sample
noise.  0 means perfectly balanced classes; a generator that drops a digit
scores about 0.1 or more.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import linalg

from .data import DIGIT_SHAPE, check_images, load_digits

FEATURE_DIM = 20
COPY_FRACTION = 0.25


@functools.lru_cache(maxsize=1)
def _classifier():
    from sklearn.svm import SVC

    images, labels = load_digits()
    clf = SVC(C=10.0, gamma=0.05)
    clf.fit(_pixels01(images), labels)
    return clf


@functools.lru_cache(maxsize=1)
def _pca():
    from sklearn.decomposition import PCA

    images, _ = load_digits()
    return PCA(n_components=FEATURE_DIM, svd_solver="full").fit(_pixels01(images))


@functools.lru_cache(maxsize=1)
def _cross_validated_predictions() -> np.ndarray:
    """The class of every real image, predicted by a classifier that did not train on it."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.svm import SVC

    images, labels = load_digits()
    pred = cross_val_predict(SVC(C=10.0, gamma=0.05), _pixels01(images), labels,
                             cv=StratifiedKFold(5, shuffle=True, random_state=0))
    pred = pred.astype(np.int32)
    pred.setflags(write=False)
    return pred


@functools.lru_cache(maxsize=10)
def _reference_recognition(digit: int) -> float:
    """Cross-validated rate at which real images of ``digit`` are recognised."""
    _, labels = load_digits()
    pred = _cross_validated_predictions()
    return float(np.mean(pred[labels == digit] == digit))


def class_histogram(classes) -> np.ndarray:
    """Fraction of each class 0-9 among ``classes`` (ints), shape ``(10,)``."""
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.size == 0:
        raise ValueError(f"classes must be a non-empty 1-D array, got shape {classes.shape}")
    return np.bincount(classes, minlength=10)[:10] / classes.size


def total_variation(p, q) -> float:
    """Total-variation distance ``0.5 * sum |p - q|`` between two histograms (0 to 1)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"p and q must be 1-D histograms of the same length, got {p.shape} and {q.shape}")
    return float(0.5 * np.abs(p - q).sum())


def _pixels01(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8, 1) in [-1, 1] -> (N, 64) in [0, 1]."""
    return (np.asarray(images, np.float64).reshape(len(images), -1) + 1.0) / 2.0


def _check_digit(digit) -> int:
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)):
        raise TypeError(f"digit must be an int in 0..9 or None, got {digit!r}")
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    return int(digit)


def classify_digits(images) -> np.ndarray:
    """Predicted class (0-9) of each image, shape ``(N,)``; images in ``[-1, 1]``."""
    images = check_images(images, shape=DIGIT_SHAPE)
    return _classifier().predict(_pixels01(images)).astype(np.int32)


def digit_features(images) -> np.ndarray:
    """The fixed feature space of the Fréchet distance: ``(N, 20)``."""
    images = check_images(images, shape=DIGIT_SHAPE)
    # x2: report distances in the book's [-1, 1] pixel units.
    return 2.0 * _pca().transform(_pixels01(images))


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet (2-Wasserstein) distance between Gaussians fitted to two sets.

    ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` for feature arrays
    of shape ``(N_a, D)`` and ``(N_b, D)``, each with at least two rows.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    for name, x in (("feats_a", a), ("feats_b", b)):
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"{name} must have shape (N >= 2, D), got {x.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a and feats_b need the same width, got {a.shape[1]} and {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(covmean)):
        # A singular product: nudge both covariances, as is usual for FID.
        eps = 1e-6 * np.eye(a.shape[1])
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    value = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def nearest_distances(queries, references, *, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance (pixel space, [-1, 1] scale) from each query to its nearest reference."""
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    r = np.asarray(references, np.float64).reshape(len(references), -1)
    d2 = (q ** 2).sum(1)[:, None] + (r ** 2).sum(1)[None, :] - 2.0 * q @ r.T
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


def digit_quality(samples, digit: int | None, *, repeats: int = 10, seed: int = 0) -> dict:
    """All quality figures of generated digits, each next to its real-data reference.

    Args:
      samples: ``(N, 8, 8, 1)`` images in ``[-1, 1]`` (clip sampler output first);
        N must be at least half the number of real images of ``digit`` (~90), or
        of all images (899) when ``digit`` is ``None``.
      digit: the class the generator was trained on, or ``None`` for a generator
        of all ten digits.
      repeats: random half-splits to average the Fréchet (and class-balance)
        figures over.
      seed: seed of those splits.

    Returns:
      dict with ``fd``/``fd_ref``/``fd_ratio``, ``copies``/``copies_ref`` and
      ``nn_ratio``, plus ``recognised``/``recognised_ref`` for one digit, or
      ``class_tv``/``class_tv_ref`` and ``class_hist`` (predicted-class fractions of
      all samples) for ``digit=None`` (see the module docstring).
    """
    if digit is not None:
        digit = _check_digit(digit)
    samples = check_images(samples, name="samples", shape=DIGIT_SHAPE)
    if not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    real, real_labels = load_digits(digit)
    n_half = len(real) // 2
    n_other = len(real) - n_half
    if len(samples) < n_other:
        which = "all digits" if digit is None else f"digit {digit}"
        raise ValueError(f"samples needs at least {n_other} images for {which}, got {len(samples)}")

    rng = np.random.default_rng(seed)
    real_f, samp_f = digit_features(real), digit_features(samples)
    samp_classes = classify_digits(samples)
    real_classes = _cross_validated_predictions() if digit is None else None
    fd, fd_ref, tv, tv_ref = [], [], [], []
    for _ in range(repeats):
        perm = rng.permutation(len(real))
        a, b = perm[:n_half], perm[n_half:]
        draw = rng.choice(len(samples), size=n_other, replace=False)
        fd_ref.append(frechet_distance(real_f[b], real_f[a]))
        fd.append(frechet_distance(samp_f[draw], real_f[a]))
        if digit is None:
            target = class_histogram(real_labels[a])
            tv_ref.append(total_variation(class_histogram(real_classes[b]), target))
            tv.append(total_variation(class_histogram(samp_classes[draw]), target))

    d_samples = nearest_distances(samples, real)
    d_real = nearest_distances(real, real, exclude_self=True)
    threshold = COPY_FRACTION * np.median(d_real)
    out = {"digit": digit, "n_samples": int(len(samples))}
    if digit is None:
        out.update(class_tv=float(np.mean(tv)), class_tv_ref=float(np.mean(tv_ref)),
                   class_hist=[round(float(f), 4) for f in class_histogram(samp_classes)])
    else:
        out.update(recognised=float(np.mean(samp_classes == digit)),
                   recognised_ref=_reference_recognition(digit))
    out.update({
        "fd": float(np.mean(fd)),
        "fd_ref": float(np.mean(fd_ref)),
        "fd_ratio": float(np.mean(fd) / np.mean(fd_ref)),
        "copies": float(np.mean(d_samples < threshold)),
        "copies_ref": float(np.mean(d_real < threshold)),
        "nn_ratio": float(np.median(d_samples) / np.median(d_real)),
    })
    return out


def format_quality(q: dict) -> str:
    """A short table of :func:`digit_quality` figures (for one digit or for ``digit=None``),
    rounded so reruns print the same."""
    if q.get("digit") is None:
        first = ("class imbalance (TV distance)", f"{q['class_tv']:.3f}", f"{q['class_tv_ref']:.3f}")
    else:
        first = ("recognised as a %d" % q["digit"], f"{q['recognised']:.1%}", f"{q['recognised_ref']:.1%}")
    rows = [
        first,
        ("Fréchet distance (PCA-20)", f"{q['fd']:.2f}", f"{q['fd_ref']:.2f}"),
        ("copies of training images", f"{q['copies']:.1%}", f"{q['copies_ref']:.1%}"),
        ("nearest-image distance ratio", f"{q['nn_ratio']:.2f}", "1.00"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'samples':>9}  {'real data':>9}"]
    lines += [f"{a:{width}}  {b:>9}  {c:>9}" for a, b, c in rows]
    return "\n".join(lines)
