"""Configs written once: a frozen dataclass per algorithm (or trainer, or command) whose every field carries its
default, a one-line description and its check.

    @dataclass(frozen=True)
    class ClipConfig(Config):
        clip_range: float = option(0.2, "ε of the clipped surrogate", Number(low=0, low_open=True))

Everything else derives from the fields:

* ``ClipConfig(clip_range=-1)`` raises :class:`~textenv.validation.InputError` naming ``clip_range``: every
  check runs in :meth:`Config.validate`, the one place (a subclass adds rules that involve several fields by
  overriding it and calling ``super().validate(prefix)``);
* :meth:`Config.build` merges keyword overrides into a config (what ``PPO(env, clip_range=0.1)`` does) and
  refuses an unknown name with a did-you-mean;
* :meth:`Config.to_dict` is the JSON-able record a checkpoint keeps (``agent.json`` ``"hyperparameters"``);
* :meth:`Config.options` lists name, default, description and accepted values, for ``--help``;
* the type annotations let a YAML loader refuse a value of the wrong type before anything loads.

The checks (:class:`Integer`, :class:`Number`, :class:`Seed`, :class:`Choice`, :class:`Flag`) call
:mod:`textenv.validation`, describe what they accept in words (``"an integer >= 1"``) and parse command-line
text (``parse``), so a flag generated from a field checks it exactly as the library does.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from textenv.validation import MAX_SEED, InputError, check_choice, check_int, check_number, check_seed

#: A check: ``check(name, value)`` raises :class:`InputError` naming ``name`` when ``value`` is not accepted.
Check = Callable[[str, Any], None]


# ---------------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Integer:
    """An integer (not a bool) ``>= minimum``; ``None`` too with ``none_ok``."""

    minimum: int = 1
    none_ok: bool = False
    parse: ClassVar[Callable[[str], Any]] = int

    def __call__(self, name: str, value: Any) -> None:
        if not (value is None and self.none_ok):
            check_int(name, value, self.minimum)

    @property
    def description(self) -> str:
        return f"an integer >= {self.minimum}" + (" or None" if self.none_ok else "")

    def normalize(self, value: Any) -> Any:
        return None if value is None else int(value)


@dataclass(frozen=True)
class Number:
    """A finite real number in ``[low, high]`` (open ends with ``low_open`` / ``high_open``); ``None`` too with
    ``none_ok``. NaN and ±inf are refused."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none_ok: bool = False
    parse: ClassVar[Callable[[str], Any]] = float

    def __call__(self, name: str, value: Any) -> None:
        check_number(name, value, low=self.low, high=self.high, low_open=self.low_open, high_open=self.high_open,
                     none_ok=self.none_ok)

    @property
    def description(self) -> str:
        bounds = [f"{'>' if self.low_open else '>='} {self.low:g}"] if self.low is not None else []
        bounds += [f"{'<' if self.high_open else '<='} {self.high:g}"] if self.high is not None else []
        text = " ".join(["a finite number", " and ".join(bounds)]).strip()
        return text + (" or None" if self.none_ok else "")

    def normalize(self, value: Any) -> Any:
        return None if value is None else float(value)


@dataclass(frozen=True)
class Seed:
    """A seed: an integer in ``[0, 2**32 - 1]`` (NumPy's range); ``None`` too with ``none_ok``."""

    none_ok: bool = False
    parse: ClassVar[Callable[[str], Any]] = int

    def __call__(self, name: str, value: Any) -> None:
        if not (value is None and self.none_ok):
            check_seed(name, value)

    @property
    def description(self) -> str:
        return f"an integer in [0, {MAX_SEED}]" + (" or None" if self.none_ok else "")

    def normalize(self, value: Any) -> Any:
        return None if value is None else int(value)


@dataclass(frozen=True)
class Choice:
    """One of ``choices``."""

    choices: tuple[Any, ...]
    parse: ClassVar[Callable[[str], Any]] = str

    def __call__(self, name: str, value: Any) -> None:
        check_choice(name, value, self.choices)

    @property
    def description(self) -> str:
        return "one of " + ", ".join(repr(choice) for choice in self.choices)


@dataclass(frozen=True)
class Flag:
    """``True`` or ``False``."""

    def __call__(self, name: str, value: Any) -> None:
        check_choice(name, value, (True, False))

    @property
    def description(self) -> str:
        return "true or false"

    def normalize(self, value: Any) -> bool:
        return bool(value)


def describe(check: Check | None) -> str:
    """What ``check`` accepts, in words (``""`` when it does not say)."""
    return getattr(check, "description", "") if check is not None else ""


# ---------------------------------------------------------------------------------------------- fields
def option(default: Any, help: str, check: Check | None = None, **extra: Any) -> Any:
    """A config field: its ``default``, a one-line ``help`` (what it is, units, what ``None``/0 mean) and the
    ``check`` its values must pass. ``extra`` is kept in the field's metadata for the command line (``section=``:
    the argument group of its flag; ``off_flag=``: the opposite switch of a :class:`Flag` field; ``flag=True``:
    one of ``textenv train``'s flags). A list or dict default is copied for every instance."""
    metadata = {"help": help, "check": check, **extra}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Option:
    """One config field as ``--help`` shows it."""

    name: str
    default: Any
    help: str
    accepts: str
    metadata: Mapping[str, Any]


ConfigT = TypeVar("ConfigT", bound="Config")


@dataclass(frozen=True)
class Config:
    """Base of every config: validation in :meth:`validate`, merging in :meth:`build`, records in :meth:`to_dict`.

    Subclasses are ``@dataclass(frozen=True)`` and declare each field with :func:`option`.
    """

    def __post_init__(self) -> None:
        self.validate()
        for item in fields(self):  # 1 → 1.0 for number fields, np.int64 → int for integer fields
            normalize = getattr(item.metadata.get("check"), "normalize", None)
            if normalize is not None:
                object.__setattr__(self, item.name, normalize(getattr(self, item.name)))

    def validate(self, prefix: str = "") -> None:
        """Raise :class:`InputError` naming the first field (as ``prefix + name``) whose value is refused.
        Subclasses add rules over several fields here (after ``super().validate(prefix)``)."""
        for item in fields(self):
            check = item.metadata.get("check")
            if check is not None:
                check(prefix + item.name, getattr(self, item.name))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in declaration order (base class fields first)."""
        return tuple(item.name for item in fields(cls))

    @classmethod
    def check_values(cls, values: Mapping[str, Any], prefix: str = "") -> None:
        """Run the checks of the fields in ``values`` alone (names reported as ``prefix + name``; unknown names
        are the caller's to refuse), then the whole config's (:meth:`validate`)."""
        for item in fields(cls):
            check = item.metadata.get("check")
            if item.name in values and check is not None:
                check(prefix + item.name, values[item.name])
        cls(**{name: value for name, value in values.items() if name in cls.names()})

    @classmethod
    def build(cls: type[ConfigT], config: Config | None = None, overrides: Mapping[str, Any] | None = None,
              owner: str = "") -> ConfigT:
        """``config`` (default: the defaults) with ``overrides`` replacing fields, checked. An unknown override is
        an :class:`InputError` listing the accepted names (``owner`` names what takes them, e.g. ``agent 'ppo'``)."""
        overrides = dict(overrides or {})
        if config is not None and not isinstance(config, cls):
            raise InputError(f"config must be a {cls.__name__}{f' for {owner}' if owner else ''}, "
                             f"got {type(config).__name__}")
        unknown = sorted(set(overrides) - set(cls.names()))
        if unknown:
            hint = "".join(did_you_mean(name, cls.names()) for name in unknown)
            where = f" for {owner}" if owner else ""
            raise InputError(f"unknown hyper-parameter(s) {unknown}{where}; it accepts {list(cls.names())}{hint}")
        if config is None:
            return cls(**overrides)
        return dataclasses.replace(config, **overrides) if overrides else config

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-able values (paths as strings, rows with ``to_json`` as dicts, tuples as lists)."""
        return {item.name: _jsonable(getattr(self, item.name)) for item in fields(self)}

    @classmethod
    def options(cls) -> list[Option]:
        """Every field with its default, help line and accepted values (for ``--help``)."""
        rows = []
        for item in fields(cls):
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            rows.append(Option(item.name, default, item.metadata.get("help", ""),
                               describe(item.metadata.get("check")), item.metadata))
        return rows


def did_you_mean(word: str, candidates: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate name, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value
