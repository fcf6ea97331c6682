"""tools/nbval_tolerance.py: cells tagged nbval-tolerance compare printed figures loosely."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "nbval_tolerance", ROOT / "tools" / "nbval_tolerance.py"
)
tolerance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tolerance)


@pytest.mark.parametrize(
    ("stored", "new", "agree"),
    [
        ("0.410", "0.430", True),  # two names of 100, seen between two CPUs
        ("0.943", "0.890", False),  # 0.053 apart
        ("18.55", "18.64", True),  # within 1% of 18.55
        ("22.25", "21.90", False),  # 0.35 apart, more than 1% of 22.25
        ("-0.000", "0.000", True),
        ("100", "100", True),
        ("100", "99", False),  # integers (counts) must be equal
        ("3", "3.0", False),
    ],
)
def test_numbers_agree(stored, new, agree):
    assert tolerance.numbers_agree(stored, new) is agree


def test_rule_bounds():
    assert tolerance.numbers_agree("0.900", "0.950")
    assert not tolerance.numbers_agree("0.900", "0.951")
    assert tolerance.numbers_agree("20.00", "20.20")
    assert not tolerance.numbers_agree("20.00", "20.21")


def test_align_takes_the_new_numbers_that_agree_and_keeps_the_others():
    stored = "s = 3: 100 names, top-1 0.220, top-5 0.410, PSNR 18.55 dB\n"
    new = "s = 3: 100 names, top-1 0.120, top-5 0.430, PSNR 18.64 dB\n"
    assert tolerance.align(stored, new) == (
        "s = 3: 100 names, top-1 0.220, top-5 0.430, PSNR 18.64 dB\n"
    )


def test_align_leaves_text_changes_alone():
    stored = "top-5 0.410 among the unseen emoji"
    for new in ("top-5 0.430 among the seen emoji", "top-5 0.430 0.1 among the unseen emoji"):
        assert tolerance.align(stored, new) == stored


def test_align_outputs_aligns_streams_and_plain_text_only_at_matching_positions():
    stored = [
        nbformat.v4.new_output("stream", name="stdout", text="top-1 0.941\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "0.5"}),
    ]
    new = [
        nbformat.v4.new_output("stream", name="stdout", text="top-1 0.952\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "0.51"}),
    ]
    aligned = tolerance.align_outputs(stored, new)
    assert aligned[0]["text"] == "top-1 0.952\n"
    assert aligned[1]["data"]["text/plain"] == "0.51"
    assert stored[0]["text"] == "top-1 0.941\n"  # a copy: the stored outputs are untouched
    assert tolerance.align_outputs(stored, new[:1])[0]["text"] == "top-1 0.941\n"
    stderr = [nbformat.v4.new_output("stream", name="stderr", text="top-1 0.952\n"), new[1]]
    assert tolerance.align_outputs(stored, stderr)[0]["text"] == "top-1 0.941\n"


# (stored output, tags, whether nbval accepts it); every cell prints "top-5 0.430 of 100 names".
CASES = [
    ("top-5 0.430 of 100 names\n", [], True),
    ("top-5 0.410 of 100 names\n", [], False),  # untagged: exact
    ("top-5 0.410 of 100 names\n", [tolerance.TAG], True),
    ("top-5 0.330 of 100 names\n", [tolerance.TAG], False),  # beyond the tolerance
    ("top-5 0.410 of 99 names\n", [tolerance.TAG], False),  # a count changed
    ("top-1 0.410 of 100 names\n", [tolerance.TAG], False),  # the text changed
]


def test_nbval_honours_the_tag(tmp_path):
    """The root conftest.py's hook, through nbval itself, on a notebook of one cell per case."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    for i, (stored, tags, _) in enumerate(CASES):
        cell = nbformat.v4.new_code_cell('print(f"top-5 {0.43:.3f} of {100} names")')
        cell.execution_count = i + 1
        cell.metadata["tags"] = tags
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored)]
        nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "chapter.ipynb")
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "nbval_tolerance.py", tmp_path / "tools")
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--nbval",
            "--nbval-current-env",
            "chapter.ipynb",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    outcomes = re.findall(r"chapter(?:\.|::)ipynb::Cell (\d+) (PASSED|FAILED)", result.stdout)
    assert len(outcomes) == len(CASES), result.stdout[-3000:]
    got = {int(i): outcome == "PASSED" for i, outcome in outcomes}
    assert got == {i: passes for i, (_, _, passes) in enumerate(CASES)}, result.stdout[-3000:]
