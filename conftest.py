import os
import shutil
import tempfile
import time
from collections import defaultdict

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


def _pin_this_worker() -> None:
    """Give pytest-xdist worker i of n the cores ``cpus[i::n]``, and only those.

    Unpinned, every worker's XLA runs a thread pool as large as the machine, and on two
    cores the two workers' pools keep preempting each other.  Pinned, with the pools kept
    at their size (``NPROC`` below), chapters 6 and 7 run side by side in 630 s and 482 s
    instead of 720 s and 557 s.  A worker's kernels and subprocesses inherit its cores.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    index = int(worker[2:])
    mine = set(cpus[index::count]) or {cpus[index % len(cpus)]}
    # Every thread the worker already has (execnet's among them); later ones inherit.
    for thread in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(thread), mine)


# XLA on a CPU sizes its intra-op thread pool to the cores the process may use, or to
# NPROC where that is set, and the pool's size decides how a large contraction is split,
# so it can change the last bits of a result (chapter 7's figures moved in the third
# decimal with one thread).  The stored outputs come from runs on the whole machine:
# every process of the run, pinned or not, keeps a pool of that size.
if hasattr(os, "sched_getaffinity"):
    os.environ.setdefault("NPROC", str(len(os.sched_getaffinity(0))))
_pin_this_worker()


def pytest_unconfigure(config):
    if _OWN_CACHE:  # only the process that made it (the xdist controller, or -n 0)
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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

    items.sort(key=key)  # stable: the cells of a chapter keep their order


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
