"""The book's pipeline: chapter pairs in sync, and the HTML build clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_chapter_pair_is_in_sync():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "notebooks.py"), "check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_chapter_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    for md in sorted((ROOT / "notebooks").glob("*.md")):
        assert f"notebooks/{md.stem}" in toc, f"{md.name} is missing from _toc.yml"


def test_book_builds_without_warnings(tmp_path):
    exe = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    if exe is None:
        pytest.fail("jupyter-book is not installed: pip install -r requirements.txt")
    # Build a copy so the test never touches the reader's own _build/.
    result = subprocess.run([exe, "build", str(ROOT), "--path-output", str(tmp_path), "-W", "-n",
                             "--keep-going"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    html = tmp_path / "_build" / "html"
    chapter = (html / "notebooks" / "03_flow_matching.html").read_text()
    assert "Flow matching" in chapter and "<img" in chapter   # stored figures are rendered
    assert (html / "book" / "references.html").exists()
