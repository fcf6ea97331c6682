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


def test_classifier_knows_real_digits():
    images, labels = data.load_digits()
    assert np.mean(metrics.classify_digits(images) == labels) > 0.99


def test_quality_of_copies_and_of_other_digits():
    twos, _ = data.load_digits(2)
    copies = metrics.digit_quality(twos, 2)
    assert copies["recognised"] == 1.0 and copies["recognised_ref"] > 0.97
    assert copies["copies"] == 1.0 and copies["nn_ratio"] == 0.0
    assert copies["copies_ref"] < 0.05
    sevens, _ = data.load_digits(7)
    wrong = metrics.digit_quality(sevens, 2)
    assert wrong["recognised"] < 0.05
    assert wrong["fd_ratio"] > 5.0


def test_quality_penalises_blur_and_noise():
    twos, _ = data.load_digits(2)
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
    with pytest.raises(ValueError, match="at least 89"):
        metrics.digit_quality(twos[:10], 2)
    with pytest.raises(ValueError, match="per-image shape"):
        metrics.digit_quality(np.zeros((100, 16, 16, 1)), 2)
    with pytest.raises(ValueError, match="digit"):
        metrics.digit_quality(twos, 12)


def test_format_quality_lists_reference_values():
    twos, _ = data.load_digits(2)
    text = metrics.format_quality(metrics.digit_quality(twos, 2))
    assert "real data" in text and "Fréchet" in text and "100.0%" in text


def test_quality_of_all_digits_and_class_balance():
    images, _ = data.load_digits()
    real = metrics.digit_quality(images, None)
    assert real["digit"] is None and "recognised" not in real
    assert real["copies"] == 1.0 and real["nn_ratio"] == 0.0
    assert real["class_tv"] < 0.1 and real["class_tv_ref"] < 0.1
    assert len(real["class_hist"]) == 10 and abs(sum(real["class_hist"]) - 1.0) < 1e-3
    # Only 2s: the classes are badly unbalanced (TV = 1 - 1/10) and the features are off.
    twos, _ = data.load_digits(2)
    only_twos = metrics.digit_quality(np.concatenate([twos] * 6), None)
    assert only_twos["class_tv"] > 0.85
    assert only_twos["fd_ratio"] > 5.0
    assert "class imbalance" in metrics.format_quality(only_twos)


def test_quality_of_all_digits_needs_enough_samples():
    images, _ = data.load_digits()
    with pytest.raises(ValueError, match="at least 899 images for all digits"):
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
