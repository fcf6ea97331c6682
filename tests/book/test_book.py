"""The book's pipeline: chapter pairs in sync, and the HTML build clean."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_chapter_pair_is_in_sync():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "notebooks.py"), "check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_chapter_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    for md in sorted((ROOT / "notebooks").glob("*.md")):
        assert f"notebooks/{md.stem}" in toc, f"{md.name} is missing from _toc.yml"


def test_book_builds_without_warnings(built_book):
    # built_book (tests/conftest.py): built once per run, shared with tests/book/test_browser.py.
    assert built_book.returncode == 0, built_book.log
    html = built_book.html
    chapter = (html / "notebooks" / "03_flow_matching.html").read_text()
    assert "Flow matching" in chapter and "<img" in chapter  # stored figures are rendered
    assert (html / "book" / "references.html").exists()
