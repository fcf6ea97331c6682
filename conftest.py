import importlib.util
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# Stored notebook outputs and test logs stay free of progress bars.
os.environ.setdefault("DIFFBOOK_PROGRESS", "0")

# One persistent XLA compilation cache for the whole run, shared by the pytest-xdist
# workers, the chapters' kernels and the benches the tests start (all copy os.environ):
# a program compiled once, in any of them, is not compiled again.  A fresh folder each
# run, removed at the end, so no run reads another's; it made the unit tests about 10%
# quicker.  Set JAX_COMPILATION_CACHE_DIR yourself to keep one between runs.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="diffbook-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def _load_tolerance():
    spec = importlib.util.spec_from_file_location(
        "nbval_tolerance", Path(__file__).parent / "tools" / "nbval_tolerance.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    # Cells tagged nbval-tolerance compare their printed figures within a tolerance
    # (tools/nbval_tolerance.py says which and why); every other cell, exactly.
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval not installed: no chapter is collected anyway
        return
    _load_tolerance().install(IPyNbCell)


def pytest_unconfigure(config):
    if _OWN_CACHE:  # only the process that made it (the xdist controller, or -n 0)
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(session, config, items):
    """The chapters first, the later (heavier) ones first, then their smoke runs, then
    the unit tests.

    With ``-n 2 --dist loadscope`` each chapter is one unit of work that a worker runs
    from its first cell to its last, and so is each chapter's smoke run (a class of
    ``tests/book/test_smoke.py``); starting the longest units first lets the short unit
    tests fill the gaps instead of leaving one worker idle while the other finishes a
    long chapter.
    """

    def key(item):
        if item.path.suffix == ".ipynb":
            return (0, -_chapter_number(item.path.name))
        if item.path.name == "test_smoke.py":
            return (1, -_chapter_number(item.cls.chapter))
        return (2, 0)

    items.sort(key=key)  # stable: the cells of a chapter keep their order


def _chapter_number(name: str) -> int:
    digits = "".join(ch for ch in name.split("_")[0] if ch.isdigit())
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
    book_files = ("tests/book/test_book.py", "tests/book/test_browser.py")
    book = sum(_PHASE_SECONDS.get(name, 0.0) for name in book_files)
    smoke_file = "tests/book/test_smoke.py"
    smoke = _PHASE_SECONDS.get(smoke_file, 0.0)
    rest = {
        k: v
        for k, v in _PHASE_SECONDS.items()
        if k not in chapters and k not in book_files and k != smoke_file
    }
    # tests/unit is the library's suite; the other files of tests/book check the pipeline.
    units = {k: v for k, v in rest.items() if k.startswith("tests/unit/")}
    pipeline = {k: v for k, v in rest.items() if k not in units}
    write = terminalreporter.write_line
    terminalreporter.section("time by phase (seconds of test time; phases overlap under -n)")
    for name, seconds in sorted(chapters.items()):
        write(f"chapter {name:32s} {seconds:6.0f} s")
    write(f"{'smoke run (accelerator recipes)':40s} {smoke:6.0f} s")
    write(f"{'book build, checks, browser':40s} {book:6.0f} s")
    write(f"{'other pipeline tests (tests/book)':40s} {sum(pipeline.values()):6.0f} s")
    write(f"unit tests {'(tests/unit)':29s} {sum(units.values()):6.0f} s")
    for name, seconds in sorted(units.items(), key=lambda kv: -kv[1]):
        write(f"    {name:36s} {seconds:6.0f} s")
    write(f"wall clock {'':29s} {time.perf_counter() - _START:6.0f} s")
