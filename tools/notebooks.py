"""Keep the chapters' jupytext pairs in order.

    python tools/notebooks.py execute [notebooks/NN_name.md ...]

reads each MyST source (``.md``), executes it in a fresh kernel and writes the
paired ``.ipynb`` with its outputs.  Execution is reproducible: no timing
metadata is recorded, progress bars are off (``DIFFBOOK_PROGRESS=0``), and JAX on
a CPU gives the same numbers on every run.

    python tools/notebooks.py check

fails if any ``.ipynb`` has inputs that differ from its ``.md``.
"""

from __future__ import annotations

import os
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


def execute(md: Path, timeout: int = 1200) -> None:
    nb = jupytext.read(md)
    os.environ["DIFFBOOK_PROGRESS"] = "0"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(md.parent)}})
    client.execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["jupytext"] = {"formats": "ipynb,md:myst"}
    nbformat.write(nb, md.with_suffix(".ipynb"))
    print(f"executed {md.relative_to(ROOT)} -> {md.with_suffix('.ipynb').name}")


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
    elif cmd == "check":
        sys.exit(check())
    else:
        sys.exit(__doc__)
