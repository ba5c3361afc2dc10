"""Argument checks at the library's boundary: a bad value raises :class:`InputError` (a ``ValueError``) naming
the argument and what it must be, before any work starts (the ``check_env`` spirit of stable-baselines3).

:class:`InputError` marks a mistake in what the *user* gave (an argument, a config, a file, a checkpoint):
the CLI prints its message as one line. Any other exception, a ``ValueError`` raised inside torch included,
is a bug of ours or of a library and keeps its traceback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


class InputError(ValueError):
    """A mistake in user input: an argument, a config file, a data file, a path or a checkpoint.

    The message names the argument or file and says how to fix it; ``textenv`` commands print it as one
    line (exit code 2) instead of a traceback.
    """


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """``value`` must be an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name}={value!r} must be an integer >= {minimum}")


#: The largest seed NumPy accepts (``np.random.seed``); torch and Python take it too.
MAX_SEED = 2**32 - 1


def check_seed(name: str, value: Any) -> None:
    """``value`` must be an integer in ``[0, 2**32 - 1]`` (NumPy's seed range)."""
    check_int(name, value, minimum=0)
    if value > MAX_SEED:
        raise InputError(f"{name}={value!r} must be an integer <= {MAX_SEED} (2**32 - 1)")


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    none_ok: bool = False,
    high_open: bool = False,
) -> None:
    """``value`` must be a finite real number in ``[low, high]`` (open at ``low`` with ``low_open``, at
    ``high`` with ``high_open``); ``None`` passes when ``none_ok``."""
    if value is None and none_ok:
        return
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = [f"{'>' if low_open else '>='} {low}"] if low is not None else []
        bounds += [f"{'<' if high_open else '<='} {high}"] if high is not None else []
        raise InputError(
            f"{name}={value!r} must be a finite number {' and '.join(bounds)}".rstrip()
            + (" (or None)" if none_ok else "")
        )


def check_positive(name: str, value: Any) -> None:
    """``value`` must be a finite number > 0."""
    check_number(name, value, low=0, low_open=True)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name}={value!r} is not one of {list(choices)}")


def decode_utf8(data: bytes, where: str) -> str:
    """``data`` (the bytes of the file ``where``) as text; bytes that are not UTF-8 raise :class:`InputError`
    ``"WHERE:LINE: not UTF-8 text (byte ... at column C); save the file as UTF-8"``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line = data[: err.start].count(b"\n") + 1
        raise InputError(f"{where}:{line}: not UTF-8 text (byte {data[err.start:err.start + 1]!r} at column "
                         f"{err.start - line_start + 1}); save the file as UTF-8") from None
