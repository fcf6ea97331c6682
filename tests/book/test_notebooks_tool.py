"""`tools/notebooks.py check`: a chapter definition marked `# twin: module.name` must be its
library twin up to names, docstrings, comments, annotations and argument checks."""

import importlib.util
import json
import shutil
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEADER = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A tiny chapter

"""

# The library side: validation, annotations, docstrings and comments that the chapter leaves out.
LIBRARY = '''\
"""A stand-in for a diffbook module."""
import jax.numpy as jnp

from diffbook import checks


def weighted_square_sum(x: "Array", scale: float = 2.0, *, axis: int = -1) -> "Array":
    """The library's docstring, with Args and Returns.

    Written out in chapter 1 (the tiny chapter).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    checks.finite_number(scale, "scale")
    axis = checks.positive_int(axis, "axis", minimum=-8)
    return jnp.sum(scale * x ** 2, axis=axis)   # a library comment


def normalised(x):
    """Written out in chapter 1."""
    return x / weighted_square_sum(x)


class Box:
    """A class whose method is a twin."""

    def area(self, width: float, height: float) -> float:
        """Width times height.  Written out in chapter 1."""
        return width * height
'''

CHAPTER_CELLS = [
    '''\
# twin: {module}.weighted_square_sum
def square_sum(x, scale=2.0, *, axis=-1):
    """The chapter's own docstring."""
    return jnp.sum(scale * x ** 2, axis=axis)      # sum over the last axis


# twin: {module}.normalised
def normalised(x):
    return x / square_sum(x)     # the chapter's name of a marked definition''',
    """\
%matplotlib inline
# twin: {module}.Box.area
def area(self, width, height):
    return width * height""",
]


def _tools():
    spec = importlib.util.spec_from_file_location("notebooks_tool", ROOT / "tools" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def twins(tmp_path, monkeypatch):
    """A library module ``twinlib_*`` and a way to write a chapter that marks its functions."""
    module = f"twinlib_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(LIBRARY)
    monkeypatch.syspath_prepend(str(tmp_path))
    tools = _tools()

    def problems(*cells):
        md = tmp_path / "01_tiny.md"
        md.write_text(
            HEADER
            + "\n".join(
                f"```{{code-cell}} ipython3\n{cell.format(module=module)}\n```\n\nSome prose.\n"
                for cell in cells
            )
        )
        return tools.twin_problems(md), md.read_text().split("\n")

    return problems


def test_twins_that_differ_only_in_names_docstrings_comments_annotations_and_checks_pass(twins):
    problems, _ = twins(*CHAPTER_CELLS)
    assert problems == []


@pytest.mark.parametrize(
    "old, new, node",
    [
        ("jnp.sum(scale * x ** 2", "jnp.sum(scale * x ** 3", "Constant 3 vs 2"),
        ("jnp.sum(scale * x ** 2", "jnp.sum(scale + x ** 2", "operator + vs *"),
        ("jnp.sum(scale * x ** 2", "jnp.mean(scale * x ** 2", "Attribute jnp.mean vs jnp.sum"),
        ("scale=2.0, *", "scale=2.5, *", "Constant 2.5 vs 2.0"),
        ("scale=2.0, *", "scale=2, *", "Constant 2 vs 2.0"),  # an int is not a float
        ("axis=axis)", "dim=axis)", "keyword 'dim' vs 'axis'"),
        ("x / square_sum(x)", "x * square_sum(x)", "operator * vs /"),
        ("x / square_sum(x)", "x / abs(x)", "Name abs vs weighted_square_sum"),
        ("return width * height", "return width * height * 1", "BinOp"),
        ("(self, width, height)", "(self, w, height)", "argument 'w' vs 'width'"),
    ],
)
def test_a_change_of_behaviour_is_reported_at_its_line(twins, old, new, node):
    cells = [cell.replace(old, new, 1) for cell in CHAPTER_CELLS]
    assert cells != CHAPTER_CELLS
    problems, lines = twins(*cells)
    assert len(problems) == 1, problems
    where, rest = problems[0].split(": ", 1)
    path, line = where.rsplit(":", 1)
    assert path.endswith("01_tiny.md")
    assert new in lines[int(line) - 1]  # the line of the change
    assert " differs from twinlib_" in rest and node in rest, problems[0]


def test_a_marker_that_names_nothing_or_stands_above_no_definition_fails(twins):
    missing = CHAPTER_CELLS[0].replace(".normalised", ".normalized")
    problems, _ = twins(missing)
    assert len(problems) == 1 and "normalized, which does not exist" in problems[0]
    problems, _ = twins("# twin: nowhere_at_all.f\ndef f(x):\n    return x")
    assert len(problems) == 1 and "does not exist" in problems[0]
    problems, _ = twins("# twin: {module}.normalised\n\ndef normalised(x):\n    return x")
    assert len(problems) == 1 and "stands above no def or class" in problems[0]
    # A marker that does not parse as one is reported, not skipped: its function would
    # otherwise go unchecked.
    for bad in (
        "# Twin: {module}.normalised",
        "# twin: {module}.normalised  (a copy)",
        "# twin {module}.normalised",
    ):
        problems, _ = twins(bad + "\ndef normalised(x):\n    return x")
        assert len(problems) == 1 and "malformed twin marker" in problems[0], (bad, problems)


def test_a_call_that_does_more_than_check_is_compared():
    # checkpoint(...) and checkify(...) start with "check" but change what runs.
    import ast

    tools = _tools()
    for call in ("jax.checkpoint(f)", "checkify.checkify(f)", "self.checkpoint(x)"):
        assert not tools._is_check_call(ast.parse(call).body[0].value), call
    for call in ("checks.positive_int(n, 'n')", "positive_int(n, 'n')", "_check_shape(x)"):
        assert tools._is_check_call(ast.parse(call).body[0].value), call


def test_a_twin_whose_docstring_does_not_name_its_chapter_fails(twins, tmp_path):
    library = next(tmp_path.glob("twinlib_*.py"))
    library.write_text(library.read_text().replace('"""Written out in chapter 1."""', '"""x."""'))
    problems, _ = twins(*CHAPTER_CELLS)
    assert len(problems) == 1
    assert "normalised: the docstring of twinlib_" in problems[0]
    assert "must say 'Written out in chapter 1'" in problems[0]


def test_check_fails_when_a_chapter_twin_drifts_from_diffbook(tmp_path, capsys):
    """End to end on a copy of chapter 3, whose cfm_loss is marked as diffbook.flow's."""
    tools = _tools()
    for suffix in (".md", ".ipynb"):
        shutil.copy(ROOT / "notebooks" / f"03_flow_matching{suffix}", tmp_path)
    md, ipynb = tmp_path / "03_flow_matching.md", tmp_path / "03_flow_matching.ipynb"
    assert "# twin: diffbook.flow.cfm_loss" in md.read_text()
    assert tools.check(tmp_path) == 0, capsys.readouterr().out
    old, new = "xt = (1 - t_) * x0 + t_ * x1", "xt = (1 - t_) * x0 + 0.9 * t_ * x1"
    md.write_text(md.read_text().replace(old, new))  # the same edit in the pair:
    ipynb.write_text(ipynb.read_text().replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))
    capsys.readouterr()
    assert tools.check(tmp_path) == 1
    out = capsys.readouterr().out
    line = next(i for i, text in enumerate(md.read_text().split("\n"), 1) if new in text)
    assert f"03_flow_matching.md:{line}: cfm_loss differs from diffbook.flow.cfm_loss" in out
    assert "out of sync" not in out


def test_normalise_keeps_what_bears_behaviour():
    tools = _tools()
    import ast

    source = textwrap.dedent('''
        def f(x: int, n=3) -> int:
            """doc"""
            if n < 0:
                raise ValueError("n")
            if n > 10:
                n = 10
            return x * n
    ''')
    kept = ast.unparse(tools.normalise(ast.parse(source).body[0]))
    assert kept == "def (x, n=3):\n    if n > 10:\n        n = 10\n    return x * n"


def test_placing_a_batch_on_the_devices_does_not_count_as_behaviour():
    # The library shards its batches (train.shard_batch); a chapter's copy need not.
    import ast

    tools = _tools()

    def kept(source):
        return ast.unparse(tools.normalise(ast.parse(textwrap.dedent(source)).body[0]))

    plain = kept("def f(x, y):\n    return g(x) + y")
    for placed in ("g(shard_batch(x))", "g(train.shard_batch(x))", "_shard(g(_shard(x)))"):
        assert kept(f"def f(x, y):\n    return {placed} + y") == plain, placed
    # Anything else that takes the batch still counts, as does a second argument.
    assert kept("def f(x, y):\n    return g(shuffle(x)) + y") != plain
    assert kept("def f(x, y):\n    return g(shard_batch(x, y)) + y") != plain
