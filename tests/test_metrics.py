import numpy as np
import pytest

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
    assert q["fd_mem"] > q["fd_gen"]        # replays repeat images: a narrower spread


def test_quality_of_other_digits_blur_and_noise():
    twos, _ = data.load_digits(2, split="train")
    sevens, _ = data.load_digits(7)
    wrong = metrics.digit_quality(sevens, 2)
    assert wrong["recognised"] < 0.05 and wrong["fd_ratio"] > 5.0
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(twos), (2, 400))
    blends = metrics.digit_quality(0.5 * twos[i] + 0.5 * twos[j], 2)   # blurry averages
    assert blends["fd_ratio"] > 1.2
    noisy = np.clip(twos[i] + 0.5 * rng.normal(size=twos[i].shape), -1, 1)
    assert metrics.digit_quality(noisy, 2)["fd_ratio"] > 2.0


def test_quality_bad_input():
    twos, _ = data.load_digits(2)
    with pytest.raises(ValueError, match="samples must lie"):
        metrics.digit_quality(twos * 3, 2)
    with pytest.raises(ValueError, match="at least 59"):
        metrics.digit_quality(twos[:10], 2)
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


def test_quality_of_all_digits_needs_enough_samples():
    images, _ = data.load_digits()
    with pytest.raises(ValueError, match="at least 599 images for all digits"):
        metrics.digit_quality(images[:500], None)


def test_total_variation_and_histogram():
    assert metrics.total_variation([1, 0], [0, 1]) == 1.0
    assert metrics.total_variation([0.5, 0.5], [0.5, 0.5]) == 0.0
    np.testing.assert_allclose(metrics.class_histogram([0, 0, 9, 3]),
                               [0.5, 0, 0, 0.25, 0, 0, 0, 0, 0, 0.25])
    with pytest.raises(ValueError, match="p and q"):
        metrics.total_variation([1, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="classes"):
        metrics.class_histogram([])
