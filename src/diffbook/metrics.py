"""How good are generated digits?  Figures framed by what real data scores.

The book holds a third of every digit class out of training
(:func:`diffbook.data.split_indices`).  Samples are judged against those
held-out images, which no model has seen, and every figure is printed beside two
references computed in exactly the same way:

* **generalises** -- real images the model never saw: what a perfect model,
  one that draws fresh digits from the data distribution, would score.
* **memorises** -- training images replayed at random: what a model that
  learnt its training set by heart would score.

The figures:

* **nn_ratio** (the headline) -- the median distance from a sample to its
  nearest *training* image, over the same median for held-out images.  About 1
  for fresh samples, 0 for replayed training images; a model that adds a little
  noise to training images lands in between (0.47 for noise of sigma 0.15).
* **copies** -- the fraction of samples closer to a training image than 95% of
  held-out images are (so 5% for real unseen images, by construction).
* **fd** -- the Fréchet distance between Gaussians fitted to the samples and to
  the held-out images, in a fixed feature space (the first 20 principal
  components of the training images).  It is the *squared* 2-Wasserstein
  distance between the two Gaussians, as in FID, and it carries a small-sample
  bias, so every set it compares with the held-out images has the same size
  (the number of held-out images), averaged over several random draws.  A
  memoriser scores about as well as a generalising model here: the Fréchet
  distance alone cannot tell a good model from a copying one.
* **recognised** -- the fraction of samples that an independent classifier (an
  RBF support-vector machine trained on the training images only) assigns to the
  target digit.  For samples of all ten digits (``digit=None``) it is replaced by
  **class_tv**, the total-variation distance between the classifier's histogram
  of predicted classes and the digits' true class frequencies.

For the text-to-image chapter, :func:`prompt_fidelity` asks whether a sample
drawn for an emoji's name looks like that emoji rather than the others: a
nearest-neighbour rank among the training images in a blurred-pixel feature
space (:func:`fidelity_features`).  For reconstructions and samples with a reference
image of their own (an autoencoder's, chapter 7's prompted emoji), :func:`psnr` and
:func:`pooled_psnr` measure the pixel error in dB.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import linalg

from . import checks
from .checks import positive_int
from .data import DIGIT_SHAPE, check_digit, check_images, load_digits

#: Dimension of the Fréchet distance's feature space (principal components).
FEATURE_DIM = 20
#: A sample is a copy when it is closer to a training image than this share of
#: held-out images are.
COPY_QUANTILE = 0.05


@functools.lru_cache(maxsize=1)
def _classifier():
    from sklearn.svm import SVC

    images, labels = load_digits(split="train")
    clf = SVC(C=10.0, gamma=0.05)
    clf.fit(_pixels01(images), labels)
    return clf


@functools.lru_cache(maxsize=1)
def _pca():
    from sklearn.decomposition import PCA

    images, _ = load_digits(split="train")
    return PCA(n_components=FEATURE_DIM, svd_solver="full").fit(_pixels01(images))


def class_histogram(classes) -> np.ndarray:
    """Fraction of each class 0-9 among ``classes``.

    Args:
      classes: predicted or true classes, ints in 0..9, shape ``(N,)``.

    Returns:
      Fractions of shape ``(10,)``, summing to 1.

    Raises:
      ValueError: if ``classes`` is not a non-empty 1-D array.
    """
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.size == 0:
        raise ValueError(f"classes must be a non-empty 1-D array, got shape {classes.shape}")
    return np.bincount(classes, minlength=10)[:10] / classes.size


def total_variation(p, q) -> float:
    """Total-variation distance ``0.5 * sum |p - q|`` between two histograms.

    Args:
      p: a histogram (fractions summing to 1), shape ``(K,)``.
      q: another, shape ``(K,)``.

    Returns:
      A float in ``[0, 1]``.

    Raises:
      ValueError: if ``p`` and ``q`` are not 1-D of the same length.
    """
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(
            f"p and q must be 1-D histograms of the same length, got {p.shape} and {q.shape}"
        )
    return float(0.5 * np.abs(p - q).sum())


def _pixels01(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8, 1) in [-1, 1] -> (N, 64) in [0, 1]."""
    return (np.asarray(images, np.float64).reshape(len(images), -1) + 1.0) / 2.0


def classify_digits(images) -> np.ndarray:
    """The independent classifier's digit for each image.

    An RBF support-vector machine fitted once, on the training split only.

    Args:
      images: ``(N, 8, 8, 1)`` in ``[-1, 1]``.

    Returns:
      Predicted classes 0-9, ``int32`` of shape ``(N,)``.

    Raises:
      TypeError: if ``images`` is not numeric.
      ValueError: if ``images`` has the wrong shape or range (see
        :func:`diffbook.data.check_images`).
    """
    images = check_images(images, shape=DIGIT_SHAPE)
    return _classifier().predict(_pixels01(images)).astype(np.int32)


def digit_features(images) -> np.ndarray:
    """The fixed feature space of the Fréchet distance.

    The first :data:`FEATURE_DIM` principal components of the training images,
    scaled to the book's ``[-1, 1]`` pixel units.

    Args:
      images: ``(N, 8, 8, 1)`` in ``[-1, 1]``.

    Returns:
      Features of shape ``(N, 20)``, float64.

    Raises:
      TypeError: if ``images`` is not numeric.
      ValueError: if ``images`` has the wrong shape or range.
    """
    images = check_images(images, shape=DIGIT_SHAPE)
    # x2: report distances in the book's [-1, 1] pixel units.
    return 2.0 * _pca().transform(_pixels01(images))


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features.

    It is the *squared* 2-Wasserstein distance between the two Gaussians,
    ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, the quantity FID
    reports; ratios of it are ratios of squared distances.

    Args:
      feats_a: ``(N_a, D)`` features, ``N_a >= 2``.
      feats_b: ``(N_b, D)`` features, ``N_b >= 2``.

    Returns:
      A float ``>= 0`` (squared feature units).

    Raises:
      ValueError: a set is not 2-D with two rows or more, or the widths differ.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    for name, x in (("feats_a", a), ("feats_b", b)):
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"{name} must have shape (N >= 2, D), got {x.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feats_a and feats_b need the same width, got {a.shape[1]} and {b.shape[1]}"
        )
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


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a_i - b_j|^2`` for all pairs of rows, as ``|a|^2 + |b|^2 - 2 a.b`` (clipped at 0)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def nearest_distances(queries, references, *, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance from each query to its nearest reference.

    Args:
      queries: ``(M, ...)`` images or feature vectors, flattened per row (images
        in [-1, 1] give distances in those pixel units).
      references: ``(N, ...)``, each row of the same size as a query's.
      exclude_self: ignore the pair ``(i, i)``, for ``queries`` that are
        ``references`` (the distance to the nearest *other* one).

    Returns:
      ``(M,)`` float64 distances.
    """
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    r = np.asarray(references, np.float64).reshape(len(references), -1)
    d2 = _squared_distances(q, r)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    return np.sqrt(d2.min(axis=1))


def digit_quality(samples, digit: int | None, *, repeats: int = 20, seed: int = 0) -> dict:
    """All quality figures of generated digits, judged against held-out images.

    Each figure comes with two references, computed the same way (see the module
    docstring): ``*_gen`` for real images the model never saw (what a model that
    generalises scores) and ``*_mem`` for replayed training images (what a
    memoriser scores).

    Args:
      samples: ``(N, 8, 8, 1)`` images in ``[-1, 1]`` (clip sampler output first),
        ``N >= 2``.  The figures are meant for N at least the number of held-out
        images of ``digit`` (59 for a 2; 599 for all ten digits when ``digit`` is
        ``None``); with fewer, as in a smoke run, they are judged against as many
        held-out images drawn at random (``n_held_out`` says how many), and are noisier.
      digit: the class the samples should show, or ``None`` for samples of all ten.
      repeats: random draws to average the Fréchet (and class-balance) figures over.
      seed: seed of those draws.

    Returns:
      dict with ``digit``, ``n_samples``, ``n_held_out``; ``nn_ratio`` (``_gen`` is
      1 by definition, ``_mem`` 0); ``copies``/``copies_gen``/``copies_mem``;
      ``fd``/``fd_gen``/``fd_mem`` and ``fd_ratio`` (``fd / fd_gen``); plus
      ``recognised``/``recognised_gen``/``recognised_mem`` for one digit, or
      ``class_tv``/``class_tv_gen``/``class_tv_mem`` and ``class_hist``
      (predicted-class fractions of all samples) for ``digit=None``.

    Raises:
      ValueError: if ``samples`` has the wrong shape or range or fewer than two
        images, ``digit`` is outside 0..9, or ``repeats < 1``.
      TypeError: if ``samples`` is not numeric, ``digit`` is not an int or None, or
        ``repeats`` is not an int.
    """
    if digit is not None:
        digit = check_digit(digit)
    samples = check_images(samples, name="samples", shape=DIGIT_SHAPE)
    repeats = checks.positive_int(repeats, "repeats")
    train, train_labels = load_digits(digit, split="train")
    held, held_labels = load_digits(digit, split="held_out")
    n = len(held)
    if len(samples) < 2:
        raise ValueError(f"samples needs at least 2 images, got {len(samples)}")
    if len(samples) < n:
        # Fewer samples than held-out images (a smoke run's): judge them against as many
        # held-out images, drawn at random, so that every figure and its references still
        # compare sets of one size.  The figures are then noisier than a full run's.
        keep = np.random.default_rng(seed).choice(n, size=len(samples), replace=False)
        held, held_labels, n = held[keep], held_labels[keep], len(samples)

    rng = np.random.default_rng(seed)
    train_f, held_f, samp_f = digit_features(train), digit_features(held), digit_features(samples)
    samp_classes = classify_digits(samples)
    held_classes, train_classes = classify_digits(held), classify_digits(train)
    target = class_histogram(train_labels) if digit is None else None
    fd, fd_gen, fd_mem, tv, tv_gen, tv_mem = ([] for _ in range(6))
    for _ in range(repeats):
        s = rng.choice(len(samples), size=n, replace=False)
        g = rng.choice(len(train), size=n, replace=False)  # real images unseen by the judge
        m = rng.choice(len(train), size=n, replace=True)  # a memoriser replays at random
        fd.append(frechet_distance(samp_f[s], held_f))
        fd_gen.append(frechet_distance(train_f[g], held_f))
        fd_mem.append(frechet_distance(train_f[m], held_f))
        if digit is None:
            h = rng.choice(n, size=n, replace=True)
            tv.append(total_variation(class_histogram(samp_classes[s]), target))
            tv_gen.append(total_variation(class_histogram(held_classes[h]), target))
            tv_mem.append(total_variation(class_histogram(train_classes[m]), target))

    d_samples = nearest_distances(samples, train)
    d_held = nearest_distances(held, train)
    threshold = np.quantile(d_held, COPY_QUANTILE)
    out = {
        "digit": digit,
        "n_samples": int(len(samples)),
        "n_held_out": int(n),
        "nn_ratio": float(np.median(d_samples) / np.median(d_held)),
        "nn_ratio_gen": 1.0,
        "nn_ratio_mem": 0.0,
        "copies": float(np.mean(d_samples < threshold)),
        "copies_gen": float(np.mean(d_held < threshold)),
        "copies_mem": 1.0,
        "fd": float(np.mean(fd)),
        "fd_gen": float(np.mean(fd_gen)),
        "fd_mem": float(np.mean(fd_mem)),
        "fd_ratio": float(np.mean(fd) / np.mean(fd_gen)),
    }
    if digit is None:
        out.update(
            class_tv=float(np.mean(tv)),
            class_tv_gen=float(np.mean(tv_gen)),
            class_tv_mem=float(np.mean(tv_mem)),
            class_hist=[round(float(f), 4) for f in class_histogram(samp_classes)],
        )
    else:
        out.update(
            recognised=float(np.mean(samp_classes == digit)),
            recognised_gen=float(np.mean(held_classes == digit)),
            recognised_mem=float(np.mean(train_classes == digit)),
        )
    return out


def class_conditional_quality(
    samples, labels, *, per_digit: bool = True, repeats: int = 20, seed: int = 0
) -> dict:
    """Figures of samples drawn for given digit labels, judged against held-out images.

    Args:
      samples: ``(N, 8, 8, 1)`` in ``[-1, 1]``; meant for at least 599 (the held-out
        images), as :func:`digit_quality` explains.
      labels: ``(N,)`` the digit each sample was drawn for.
      per_digit: also judge each digit's samples alone (meant for at least 61 of
        each; two at least).
      repeats: random draws of the Fréchet figures (see :func:`digit_quality`).
      seed: seed of those draws.

    Returns:
      dict with ``accuracy`` (the fraction the independent classifier of
      :func:`classify_digits` assigns to the requested digit) beside
      ``accuracy_gen`` (its accuracy on the held-out real images) and
      ``accuracy_mem`` (on the training images); the overall ``fd``, ``fd_gen``,
      ``fd_mem``, ``fd_ratio``, ``nn_ratio`` and ``copies`` of
      :func:`digit_quality` with ``digit=None``; and with ``per_digit``,
      ``fd_ratio_per_digit`` (10 floats) and their mean ``fd_ratio_digits``.

    Raises:
      ValueError: for samples of the wrong shape or range, fewer than two of them (or
        of one digit, with ``per_digit``), or labels that do not match them.
      TypeError: for labels that are not integers.
    """
    samples = check_images(samples, name="samples", shape=DIGIT_SHAPE)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers 0..9, got dtype {labels.dtype}")
    if labels.shape != (len(samples),):
        raise ValueError(f"labels must have shape ({len(samples)},), got {labels.shape}")
    if np.any((labels < 0) | (labels > 9)):
        raise ValueError("labels must lie in 0..9")
    held, held_labels = load_digits(split="held_out")
    train, train_labels = load_digits(split="train")
    overall = digit_quality(samples, None, repeats=repeats, seed=seed)
    out = {
        "accuracy": float(np.mean(classify_digits(samples) == labels)),
        "accuracy_gen": float(np.mean(classify_digits(held) == held_labels)),
        "accuracy_mem": float(np.mean(classify_digits(train) == train_labels)),
        **{k: overall[k] for k in ("fd", "fd_gen", "fd_mem", "fd_ratio", "nn_ratio", "copies")},
    }
    if per_digit:
        ratios = [
            digit_quality(samples[labels == d], d, repeats=repeats, seed=seed)["fd_ratio"]
            for d in range(10)
        ]
        out["fd_ratio_per_digit"] = [round(r, 4) for r in ratios]
        out["fd_ratio_digits"] = float(np.mean(ratios))
    return out


def format_quality(q: dict) -> str:
    """A short table of :func:`digit_quality` figures, each beside its two references.

    Figures are rounded so that reruns print the same.  Read it row by row against
    the middle column: a good model scores like real unseen images there, and far
    from the replayed training images on the first two rows.

    Args:
      q: the dict that :func:`digit_quality` returns.

    Returns:
      The table, several lines of text.

    Raises:
      KeyError: if ``q`` lacks a figure (it is not from :func:`digit_quality`).
    """

    def row(label, key, fmt):
        return (label, *(format(q[k], fmt) for k in (key, f"{key}_gen", f"{key}_mem")))

    if q.get("digit") is None:
        first = row("class imbalance (TV distance)", "class_tv", ".3f")
    else:
        first = row(f"recognised as a {q['digit']}", "recognised", ".1%")
    rows = [
        row("nearest-training-image ratio", "nn_ratio", ".2f"),
        row("copies of training images", "copies", ".1%"),
        row("Fréchet distance² (PCA-20)", "fd", ".2f"),
        first,
    ]
    width = max(len(r[0]) for r in rows)
    head = f"{'':{width}}  {'samples':>8}  {'unseen real':>11}  {'replayed train':>14}"
    lines = [f"judged against {q['n_held_out']} held-out images", head]
    lines += [f"{a:{width}}  {b:>8}  {c:>11}  {d:>14}" for a, b, c, d in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ prompt fidelity (emoji)
#: Side of the grid that :func:`fidelity_features` samples, at any resolution.
FEATURE_GRID = 16


def _blur_matrix(resolution: int) -> np.ndarray:
    """``(FEATURE_GRID, resolution)`` weights: row ``j`` is a Gaussian of standard
    deviation one grid cell (``resolution / FEATURE_GRID`` pixels) centred on grid
    cell ``j``, cut at the image border and renormalised to sum 1."""
    cell = resolution / FEATURE_GRID
    centres = (np.arange(FEATURE_GRID) + 0.5) * cell - 0.5
    offsets = np.arange(resolution)[None, :] - centres[:, None]
    weights = np.exp(-0.5 * (offsets / cell) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


def fidelity_features(images) -> np.ndarray:
    """The feature space of :func:`prompt_fidelity`, shape ``(N, 768)``, ``float64``.

    Each channel is blurred with a Gaussian whose standard deviation is one
    sixteenth of the image side (1 pixel at 16x16) and sampled on a 16x16 grid,
    then everything is flattened and divided by ``sqrt(768)``.  So the Euclidean
    distance of two feature vectors is the root-mean-square difference of the
    blurred images, in the units of ``[-1, 1]`` pixels, comparable across
    resolutions; the blur makes it forgiving of shifts by a pixel.

    Args:
      images: ``(N, R, R, 3)`` images in ``[-1, 1]``, any square side ``R``.

    Returns:
      ``(N, 768)`` float64 features.

    Raises:
      ValueError: ``images`` are not of shape ``(N, R, R, 3)`` or leave ``[-1, 1]``.
    """
    arr = check_images(images, name="images")
    if arr.shape[1] != arr.shape[2] or arr.shape[3] != 3:
        raise ValueError(f"images must have shape (N, R, R, 3), got {arr.shape}")
    blur = _blur_matrix(arr.shape[1])
    feats = np.einsum("ir,nrsc,js->nijc", blur, arr.astype(np.float64), blur, optimize=True)
    return feats.reshape(len(arr), -1) / np.sqrt(FEATURE_GRID * FEATURE_GRID * 3)


def prompt_fidelity(samples, sample_labels, train_images, *, k: int = 5) -> dict:
    """Do samples look like the emoji their prompt names?  Nearest-neighbour scores.

    Every sample and training image is mapped to :func:`fidelity_features`
    (blurred pixels; Euclidean distance = RMS pixel difference after the blur).

    Args:
      samples: ``(M, R, R, 3)`` generated images in ``[-1, 1]``.
      sample_labels: ``(M,)`` ints; ``sample_labels[i]`` is the index in
        ``train_images`` of the emoji whose name prompted sample ``i``.
      train_images: ``(N, R, R, 3)`` training images in ``[-1, 1]``, same ``R``.
      k: neighbourhood size for the top-k score, ``1 <= k <= N``.

    Returns:
      A dict of floats:

      * ``top1`` -- fraction of samples whose own emoji is the nearest training
        image (ties count for the sample);
      * ``top{k}`` (``top5`` by default) -- fraction whose own emoji is among
        the ``k`` nearest;
      * ``chance_top1`` = ``1/N`` and ``chance_top{k}`` = ``k/N``: what samples
        unrelated to their prompts score on average;
      * ``nn_distance`` -- median distance from a sample to its nearest
        training image;
      * ``train_spacing`` -- median distance from a training image to its
        nearest *other* training image;
      * ``distance_ratio`` = ``nn_distance / train_spacing``: near 0 for copies
        of training images, about 1 for images as close to the data as the
        data is to itself, well above 1 for off-manifold images (noise, blobs).

    Raises:
      TypeError: ``sample_labels`` are not integers, or ``k`` is not an int.
      ValueError: bad shapes or values outside ``[-1, 1]``, labels that do not
        index ``train_images``, ``k`` outside ``1..N``, or fewer than 2 training
        images.
    """
    x = check_images(samples, name="samples")
    train = check_images(train_images, name="train_images")
    if x.shape[1] != x.shape[2] or x.shape[3] != 3:
        raise ValueError(f"samples must have shape (M, R, R, 3), got {x.shape}")
    if train.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"train_images must have per-image shape {x.shape[1:]} like samples, "
            f"got {train.shape[1:]}"
        )
    labels = np.asarray(sample_labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"sample_labels must be integers, got dtype {labels.dtype}")
    if labels.shape != (len(x),):
        raise ValueError(
            f"sample_labels must have shape ({len(x)},) to match samples, got {labels.shape}"
        )
    n_train = len(train)
    if labels.min() < 0 or labels.max() >= n_train:
        raise ValueError(
            f"sample_labels must index train_images (0..{n_train - 1}), "
            f"got values in {labels.min()}..{labels.max()}"
        )
    k = positive_int(k, "k")
    if k > n_train:
        raise ValueError(f"k must be at most {n_train} (the number of training images), got {k}")
    if n_train < 2:
        raise ValueError("train_images must hold at least 2 images")

    f_train = fidelity_features(train)
    centre = f_train.mean(axis=0)  # centring keeps |a|^2 + |b|^2 - 2ab accurate
    f_train -= centre
    f_x = fidelity_features(x) - centre

    d2 = _squared_distances(f_x, f_train)  # (M, N)
    own = d2[np.arange(len(x)), labels]
    closer = (d2 < own[:, None] - 1e-12).sum(axis=1)  # rank of the own emoji
    nn_distance = float(np.median(np.sqrt(d2.min(axis=1))))
    train_spacing = float(np.median(nearest_distances(f_train, f_train, exclude_self=True)))

    return {
        "top1": float(np.mean(closer == 0)),
        f"top{k}": float(np.mean(closer < k)),
        "chance_top1": 1.0 / n_train,
        f"chance_top{k}": k / n_train,
        "nn_distance": nn_distance,
        "train_spacing": train_spacing,
        "distance_ratio": nn_distance / train_spacing if train_spacing > 0 else float("inf"),
    }


# ------------------------------------------------------------ images against references


def psnr(images, references) -> np.ndarray:
    """Peak signal-to-noise ratio of each image against its reference, in dB.

    ``10 log10(peak^2 / MSE)`` with ``peak = 2``, the range of ``[-1, 1]``; the MSE
    is over the pixels and channels of one image.  Identical images give ``inf``.

    Args:
      images: ``(N, H, W, C)`` in ``[-1, 1]``, e.g. reconstructions (clip decoder
        output first, see :meth:`diffbook.autoencoder.Autoencoder.reconstruct`).
      references: the originals, the same shape, in ``[-1, 1]``.

    Returns:
      ``(N,)`` float64 PSNRs.

    Raises:
      TypeError: if either is not numeric.
      ValueError: if either is not a non-empty 4-D batch of finite values in
        ``[-1, 1]``, or their shapes differ.
    """
    images = check_images(images, name="images").astype(np.float64)
    references = check_images(references, name="references").astype(np.float64)
    if images.shape != references.shape:
        raise ValueError(
            f"references must have the shape of images, got {references.shape} and {images.shape}"
        )
    mse = np.mean((images - references) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(4.0 / mse)


def pooled_psnr(images, references, resolution: int = 32) -> np.ndarray:
    """PSNR of each image against its reference after both are average-pooled.

    Pooling to a common ``resolution`` puts models of different resolutions on one
    scale; at the images' own resolution it is the plain PSNR of :func:`psnr`.

    Args:
      images: ``(N, R, R, 3)`` in ``[-1, 1]``.
      references: the same shape.
      resolution: side to pool to; must divide ``R``.

    Returns:
      ``(N,)`` PSNRs in dB.

    Raises:
      TypeError, ValueError: bad shapes or values (named), or ``R`` not a multiple
        of ``resolution``.
    """
    resolution = checks.positive_int(resolution, "resolution")
    images, references = np.asarray(images), np.asarray(references)
    side = images.shape[1] if images.ndim == 4 else 0
    if side % resolution:
        raise ValueError(
            f"resolution must divide the images' side {side}, got resolution={resolution}"
        )
    f = side // resolution

    def pool(x):
        if x.ndim != 4 or f == 1:
            return x
        n, h, w, c = x.shape
        return x.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))

    return psnr(pool(images), pool(references))
