"""Keep the chapters' jupytext pairs in order.

    python tools/notebooks.py execute [notebooks/NN_name.md ...]

reads each MyST source (``.md``), executes it in a fresh kernel, prints how long
each code cell took and writes the paired ``.ipynb`` with its outputs.  Execution
is reproducible: no timing metadata is stored, progress bars are off
(``DIFFBOOK_PROGRESS=0``), and JAX on a CPU gives the same numbers on every run.

    python tools/notebooks.py check

fails if any ``.ipynb`` has inputs that differ from its ``.md``.

    python tools/notebooks.py timings [notebooks/NN_name.md ...]

executes each chapter without writing anything and prints how long each code
cell took (the figures of the teachers' page).
"""

from __future__ import annotations

import os
from datetime import datetime
import sys
from pathlib import Path

import jupytext
import nbformat
from jupytext.compare import compare_notebooks
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def chapters(args) -> list[Path]:
    if args:
        return [Path(a).resolve().with_suffix(".md") for a in args]
    return sorted(p for p in NOTEBOOKS.glob("*.md") if p.name != "README.md")


def _run(md: Path, timeout: int = 1200):
    """Execute a chapter's MyST source in a fresh kernel; the notebook, with timings."""
    nb = jupytext.read(md)
    os.environ["DIFFBOOK_PROGRESS"] = "0"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(md.parent)}})
    client.execute()
    return nb


def _print_timings(md: Path, nb) -> None:
    total = 0.0
    print(f"## {md.stem}")
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        times = cell.metadata["execution"]
        start = datetime.fromisoformat(times["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(times["shell.execute_reply"].replace("Z", "+00:00"))
        seconds = (end - start).total_seconds()
        total += seconds
        first = next((line for line in cell.source.splitlines()
                      if line.strip() and not line.startswith(("#", ":"))), "")
        print(f"{i:3d} {seconds:7.1f} s  {first[:70]}")
    print(f"    {total:7.1f} s  in all")


def execute(md: Path) -> None:
    nb = _run(md)
    _print_timings(md, nb)
    # The stored notebook keeps no timing metadata, so re-running changes nothing.
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["jupytext"] = {"formats": "ipynb,md:myst"}
    nbformat.write(nb, md.with_suffix(".ipynb"))
    print(f"executed {md.relative_to(ROOT)} -> {md.with_suffix('.ipynb').name}")


def timings(md: Path) -> None:
    _print_timings(md, _run(md))


def check() -> int:
    bad = 0
    for md in chapters([]):
        ipynb = md.with_suffix(".ipynb")
        if not ipynb.exists():
            print(f"missing: {ipynb.relative_to(ROOT)}")
            bad += 1
            continue
        try:
            compare_notebooks(jupytext.read(ipynb), jupytext.read(md), fmt="md:myst",
                              allow_expected_differences=False)
        except Exception as err:  # jupytext raises its own NotebookDifference
            print(f"out of sync: {md.relative_to(ROOT)}\n{err}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:] or ["check"]
    if cmd == "execute":
        for md in chapters(rest):
            execute(md)
    elif cmd == "timings":
        for md in chapters(rest):
            timings(md)
    elif cmd == "check":
        sys.exit(check())
    else:
        sys.exit(__doc__)
