"""Argument checks shared by diffbook's public functions.

Each raises a ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, bad
value) whose message names the argument, so a reader who passes ``steps=0`` or
``scale=float("nan")`` learns which argument was wrong and what was expected.
"""

from __future__ import annotations

import math

import numpy as np


def positive_int(value, name: str, *, allow_none: bool = False, minimum: int = 1):
    """``value`` as an ``int`` if it is an integer ``>= minimum`` (``bool`` is refused).

    Args:
      value: the argument to check.
      name: the argument's name, used in the error message.
      allow_none: accept ``None`` and return it unchanged.
      minimum: the smallest allowed value (1 by default; 0 for a count that may be
        zero).

    Returns:
      ``int(value)``, or ``None`` when ``value`` is ``None`` and ``allow_none``.

    Raises:
      TypeError: if ``value`` is not an integer (a float such as ``2.0`` included).
      ValueError: if ``value < minimum``.
    """
    if value is None and allow_none:
        return None
    what = f"an int >= {minimum}" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def finite_number(
    value, name: str, *, minimum: float | None = None, strictly: bool = False
) -> float:
    """``value`` as a ``float`` if it is a finite real number (optionally bounded below).

    Args:
      value: the argument to check (a Python or NumPy number, or a 0-d array).
      name: the argument's name, used in the error message.
      minimum: if given, the smallest allowed value.
      strictly: require ``value > minimum`` instead of ``>=``.

    Returns:
      ``float(value)``.

    Raises:
      TypeError: if ``value`` is not a real number.
      ValueError: if it is NaN, infinite, or below ``minimum``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (number <= minimum if strictly else number < minimum):
        bound = ">" if strictly else ">="
        raise ValueError(f"{name} must be {bound} {minimum}, got {value!r}")
    return number


def one_of(value, name: str, choices) -> str:
    """``value`` if it is one of ``choices``; else a ``ValueError`` listing them.

    Raises:
      ValueError: if ``value`` is not in ``choices``.
    """
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
