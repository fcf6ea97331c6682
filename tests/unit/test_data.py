import numpy as np
import pytest

from diffbook import data


def test_all_digits_scaled_to_unit_interval():
    images, labels = data.load_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert images.min() == -1.0 and images.max() == 1.0
    assert sorted(np.unique(labels)) == list(range(10))


def test_one_digit_and_fresh_copies():
    twos, labels = data.load_digits(2)
    assert len(twos) == 177 and set(labels) == {2}
    twos[:] = 0.0  # must not corrupt the cache
    again, _ = data.load_digits(2)
    assert again.std() > 0.5


def test_split_is_fixed_disjoint_and_stratified():
    train, held = data.split_indices("train"), data.split_indices("held_out")
    assert len(train) + len(held) == 1797 and not set(train) & set(held)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(1797))
    _, labels = data.load_digits()
    for c in range(10):
        n_c = np.sum(labels == c)
        assert np.sum(labels[held] == c) == round(n_c / 3)  # a third of every class
        np.testing.assert_array_equal(data.split_indices("held_out", c), held[labels[held] == c])
    # load_digits(split=...) returns exactly those images, in that order.
    images, _ = data.load_digits()
    twos, twos_labels = data.load_digits(2, split="train")
    np.testing.assert_array_equal(twos, images[data.split_indices("train", 2)])
    assert set(twos_labels) == {2} and len(twos) == 118


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        data.load_digits(split="test")
    with pytest.raises(ValueError, match="split"):
        data.split_indices("validation")


@pytest.mark.parametrize(
    "digit, error",
    [(10, ValueError), (-1, ValueError), ("2", TypeError), (2.0, TypeError), (True, TypeError)],
)
def test_bad_digit(digit, error):
    with pytest.raises(error, match="digit"):
        data.load_digits(digit)


def test_check_images_messages():
    good = np.zeros((3, 8, 8, 1), np.float32)
    assert data.check_images(good, shape=(8, 8, 1)).shape == (3, 8, 8, 1)
    with pytest.raises(ValueError, match="samples must have shape"):
        data.check_images(np.zeros((8, 8, 1)), name="samples")
    with pytest.raises(ValueError, match=r"per-image shape \(8, 8, 1\)"):
        data.check_images(np.zeros((3, 16, 16, 1)), shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"must lie in \[-1.0, 1.0\]"):
        data.check_images(good + 2.0)
    with pytest.raises(ValueError, match="NaN"):
        data.check_images(np.full((1, 8, 8, 1), np.nan))
    with pytest.raises(TypeError, match="numeric"):
        data.check_images(np.array([["a"]]))
