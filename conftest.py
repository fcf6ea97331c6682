import os
import time
from collections import defaultdict

# Stored notebook outputs and test logs stay free of progress bars.
os.environ.setdefault("DIFFBOOK_PROGRESS", "0")


def pytest_collection_modifyitems(session, config, items):
    """Chapters first, the later (heavier) ones first, then the unit tests.

    With ``-n 2 --dist loadscope`` each chapter is one unit of work that a
    worker runs from its first cell to its last; starting the longest ones
    first lets the short unit tests fill the gaps instead of leaving one worker
    idle while the other finishes a long chapter.
    """
    def key(item):
        if item.path.suffix == ".ipynb":
            return (0, -_chapter_number(item))
        return (1, 0)

    items.sort(key=key)   # stable: the cells of a chapter keep their order


def _chapter_number(item) -> int:
    digits = "".join(ch for ch in item.path.name.split("_")[0] if ch.isdigit())
    return int(digits or 0)


_PHASE_SECONDS = defaultdict(float)
_START = time.perf_counter()


def pytest_runtest_logreport(report):
    # On the xdist controller this sees every worker's reports, durations included.
    _PHASE_SECONDS[report.nodeid.split("::")[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _PHASE_SECONDS or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    chapters = {k: v for k, v in _PHASE_SECONDS.items() if k.endswith(".ipynb")}
    book_files = ("tests/test_book.py", "tests/test_browser.py")
    book = sum(_PHASE_SECONDS.get(name, 0.0) for name in book_files)
    units = {k: v for k, v in _PHASE_SECONDS.items() if k not in chapters and k not in book_files}
    write = terminalreporter.write_line
    terminalreporter.section("time by phase (seconds of test time; phases overlap under -n)")
    for name, seconds in sorted(chapters.items()):
        write(f"chapter {name:32s} {seconds:6.0f} s")
    write(f"{'book build, checks, browser':40s} {book:6.0f} s")
    write(f"unit tests {'(all other files)':29s} {sum(units.values()):6.0f} s")
    for name, seconds in sorted(units.items(), key=lambda kv: -kv[1]):
        write(f"    {name:36s} {seconds:6.0f} s")
    write(f"wall clock {'':29s} {time.perf_counter() - _START:6.0f} s")
