"""Numbers compared within a tolerance, for chapter cells tagged ``nbval-tolerance``.

nbval compares a cell's new outputs with the stored ones character by character.
That is right for almost every cell: our chapters seed every draw, so on one
machine they print the same figures every time. It is too strict for a few cells
that print figures of a long training run (fidelity, PSNR). Another CPU model can
round some floating-point sums in a different order (the kernel libraries inside
XLA pick their code for the CPU they find; limiting XLA's own instruction set with
``--xla_cpu_max_isa=AVX2`` did not change the figures), the training takes a
slightly different path, and a figure moves within its noise. Measured on two
2-core machines of the kind CI runs on, chapter 7's top-5 at s = 3 on 100 unseen
names was 0.410 on one and 0.430 on the other (two names).

For a cell with the tag, the root ``conftest.py`` lets nbval accept such a move.
The text around the numbers must be identical and there must be as many numbers;
integers (counts, steps, seeds) must be equal; each decimal number may differ
from the stored one by at most ``ATOL`` or ``RTOL`` of its size, whichever is
larger. A figure that moves further, a changed word or a missing line still fails.
"""

from __future__ import annotations

import copy
import re

TAG = "nbval-tolerance"
#: Largest accepted difference of a decimal number: max(ATOL, RTOL * |stored|).
ATOL = 0.05
RTOL = 0.01

# A number as the chapters print them: optional sign, digits, optional decimals,
# optional exponent.  Thousands separators ("1,500") split into two integers,
# which then must both be equal, as they should.
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _is_integer(token: str) -> bool:
    return "." not in token and "e" not in token.lower()


def numbers_agree(stored: str, new: str) -> bool:
    """Whether two printed numbers agree under the rule of this module.

    Args:
      stored: the number as the stored output prints it.
      new: the number as the new run prints it.

    Returns:
      True if both are the same integer, or both are decimal numbers within
      ``max(ATOL, RTOL * |stored|)`` of each other.
    """
    if _is_integer(stored) or _is_integer(new):
        return stored == new
    a, b = float(stored), float(new)
    # The 1e-9 absorbs the binary rounding of printed decimals (0.94 - 0.89).
    return abs(a - b) <= max(ATOL, RTOL * abs(a)) + 1e-9


def align(stored: str, new: str) -> str:
    """``stored`` with each number replaced by ``new``'s where the two agree.

    Comparing the result with ``new`` exactly then accepts exactly the
    differences this module allows: if the texts around the numbers differ, or
    the counts of numbers differ, ``stored`` comes back unchanged; a number that
    is out of tolerance stays as it was stored, so the comparison still fails and
    nbval's diff shows that number.

    Args:
      stored: an output text of the stored notebook.
      new: the same output of the new run.

    Returns:
      The aligned text.
    """
    stored_parts = _NUMBER.split(stored)
    new_parts = _NUMBER.split(new)
    if stored_parts != new_parts:
        return stored
    # Equal parts mean as many numbers on each side, in the same places.
    out = [stored_parts[0]]
    for s, n, text in zip(
        _NUMBER.findall(stored), _NUMBER.findall(new), stored_parts[1:], strict=True
    ):
        out.append(n if numbers_agree(s, n) else s)
        out.append(text)
    return "".join(out)


def align_outputs(stored: list, new: list) -> list:
    """Stored cell outputs with their texts aligned (:func:`align`) to the new ones.

    Args:
      stored: the stored outputs of a cell (nbformat nodes, streams coalesced).
      new: the new outputs, in the same form.

    Returns:
      A deep copy of ``stored``, its stream texts and ``text/plain`` data aligned
      to the output at the same position in ``new``; unchanged where the two
      lists differ in length or kind.
    """
    stored = copy.deepcopy(stored)
    if len(stored) != len(new):
        return stored
    for ref, out in zip(stored, new, strict=True):
        if ref.get("output_type") != out.get("output_type"):
            continue
        if ref.get("output_type") == "stream":
            if ref.get("name") == out.get("name"):
                ref["text"] = align(ref["text"], out["text"])
        elif "text/plain" in ref.get("data", {}) and "text/plain" in out.get("data", {}):
            ref["data"]["text/plain"] = align(ref["data"]["text/plain"], out["data"]["text/plain"])
    return stored


def install(cell_class) -> None:
    """Make ``cell_class.compare_outputs`` (nbval's ``IPyNbCell``) honour :data:`TAG`.

    An untagged cell is compared as before. A tagged cell that fails the exact
    comparison is compared again with its stored outputs aligned to the new ones.
    """
    exact = cell_class.compare_outputs
    if getattr(exact, "_tolerant", False):
        return

    def compare_outputs(self, test, ref, skip_compare=None):
        if exact(self, test, ref, skip_compare):
            return True
        if TAG not in self.cell.get("metadata", {}).get("tags", []):
            return False
        return exact(self, test, align_outputs(ref, test), skip_compare)

    compare_outputs._tolerant = True
    cell_class.compare_outputs = compare_outputs
