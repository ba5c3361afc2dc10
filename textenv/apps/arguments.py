"""What the ``textenv`` commands share to read user input: argparse types built from the config checks (a bad
flag value is one line naming the flag, before anything loads), flags generated from a config dataclass, the
one-line parser, and the helpers that name a config file in its errors."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from textenv.config import Check, Choice, Config, Flag, Integer, Number, Seed
from textenv.validation import InputError


# ---------------------------------------------------------------------------------------------- value checks
class ArgumentType:
    """An argparse ``type=``: parse the flag's text, then check the value with :mod:`textenv.validation`.

    A bad value becomes argparse's one-line error naming the flag, e.g.
    ``textenv collect: error: argument --k: '1' is not an integer >= 2``, before anything is loaded.
    """

    def __init__(self, parse: Callable[[str], Any], check: Callable[[str, Any], None], description: str) -> None:
        self.parse = parse
        self.check = check
        self.description = description
        self.__name__ = description  # argparse names the type with it in some messages

    def __call__(self, text: str) -> Any:
        try:
            value = self.parse(text)
            self.check("value", value)
        except ValueError:  # int()/float() of a non-number, and InputError from the check
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.description}") from None
        return value

    def __repr__(self) -> str:
        return f"ArgumentType({self.description!r})"


def argument_type(check: Check) -> ArgumentType:
    """argparse type of a config check (:class:`~textenv.config.Integer`, :class:`~textenv.config.Number`,
    :class:`~textenv.config.Seed`): parsed with its ``parse``, checked by it (``None`` is never a flag value)."""
    if getattr(check, "none_ok", False):
        check = dataclasses.replace(check, none_ok=False)
    return ArgumentType(check.parse, check, check.description)


def integer_at_least(minimum: int) -> ArgumentType:
    """argparse type: an integer ``>= minimum``."""
    return argument_type(Integer(minimum))


def number_in(low: float | None = None, high: float | None = None, low_open: bool = False,
              high_open: bool = False) -> ArgumentType:
    """argparse type: a finite real number in the given range (NaN and ±inf are refused)."""
    return argument_type(Number(low=low, high=high, low_open=low_open, high_open=high_open))


#: The flag types every subcommand shares.
COUNT = integer_at_least(1)                       # batch sizes, epochs, token budgets, prompts
COUNT_OR_ZERO = integer_at_least(0)               # 0 means "off" where the help says so
SEED = argument_type(Seed())
POSITIVE = number_in(low=0, low_open=True)        # learning rates, temperatures
NON_NEGATIVE = number_in(low=0)                   # β, weight decay, coefficients, gaps
PROBABILITY = number_in(low=0, high=1)            # label noise
HOLDOUT_FRACTION = number_in(low=0, high=1, high_open=True)  # 0 = no held-out set


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``textenv train: error: argument --seed: ...``."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type[Config],
                         names: Sequence[str] | None = None, given_only: bool = False) -> None:
    """One flag per field of ``config_class`` (those in ``names``, default all): ``--field-name`` with the field's
    check as its type (or its choices), its default and its help line. A ``section`` in a field's metadata puts
    the flag in that argument group; a ``True``/``False`` field becomes a pair of switches (``--name`` and the
    ``off_flag`` of its metadata, default ``--no-name``). With ``given_only`` the flags default to ``None`` (the
    caller merges what was given over other sources) and the help quotes the field's default."""
    groups: dict[str, Any] = {}
    for item in config_class.options():
        if names is not None and item.name not in names:
            continue
        section = item.metadata.get("section")
        target = parser if section is None else groups.setdefault(section, parser.add_argument_group(section))
        flag = "--" + item.name.replace("_", "-")
        described = item.help.replace("%", "%%")
        if isinstance(item.metadata.get("check"), Flag):
            switch = target.add_mutually_exclusive_group()
            switch.add_argument(flag, dest=item.name, action="store_true",
                                default=None if given_only else item.default, help=described)
            off = item.metadata.get("off_flag", f"--no-{flag[2:]}")
            switch.add_argument(off, dest=item.name, action="store_false",
                                help=f"the opposite of {flag}" + ("" if item.default else " (the default)"))
            continue
        default = None if given_only else _flag_text(item.default)
        shown = str(_flag_text(item.default)).replace("%", "%%") if given_only else "%(default)s"
        if not (given_only and item.default is None):
            described += f" (default: {shown})"
        kwargs: dict[str, Any] = {"dest": item.name, "default": default, "help": described}
        check = item.metadata.get("check")
        if isinstance(check, Choice):
            kwargs["choices"] = [choice for choice in check.choices if choice is not None]  # None: not given
        elif hasattr(check, "parse"):
            kwargs["type"] = argument_type(check)
        target.add_argument(flag, **kwargs)


def _flag_text(value: Any) -> Any:
    """A default as a flag spells it: a sequence of numbers as ``"0.02,0.1"``."""
    if isinstance(value, (list, tuple)):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    return value


# ---------------------------------------------------------------------------------------------- user input
@contextmanager
def errors_in(where: str) -> Iterator[None]:
    """An :class:`InputError` raised in the block gets ``where`` (the config file, or the command) in front."""
    try:
        yield
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def check_known_keys(where: str, given: Mapping[Any, Any], valid: Sequence[str] | Mapping[str, Any],
                     section: str = "") -> None:
    """Refuse keys of ``given`` that are not in ``valid``, with a did-you-mean and the valid list."""
    valid = sorted(valid)
    unknown = [key for key in given if key not in valid]
    if not unknown:
        return
    described = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        described.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    prefix = f"{where}: {section}" if section else f"{where}: "
    raise InputError(f"{prefix}unknown key(s) {', '.join(described)}; valid keys: {', '.join(valid)}")
