"""The ``textenv`` command line (also ``python -m textenv``).

    textenv train --agent NAME [--total-timesteps N] [--output DIR] [--config FILE] [--seed S]
                  [--resume DIR] [--overwrite]
    textenv eval CHECKPOINT [--output FILE] [--reward-model SPEC] [--max-new-tokens N] [--num-prompts N] ...
    textenv collect --output FILE ...     # K completions per prompt, ranked by a gold scorer
    textenv label INPUT --output FILE     # rank completions by hand (keyboard, resumable)
    textenv train-rm --data FILE --output DIR   # Bradley-Terry preference reward model
    textenv pipeline --output DIR         # SFT? → collect → RM → PPO (+ β sweep) → eval.json + plots (resumable)

A YAML config file may set ``agent``, ``total_timesteps``, ``output``, ``seed``, ``checkpoint_every`` and
``eval_prompts``, plus ``env:`` (TextGenVectorEnv arguments) and ``agent_kwargs:`` (the agent's
hyper-parameters); flags given on the command line override the file. The file is checked (syntax with its
line number, unknown keys with a did-you-mean, value types) before any model loads.

Errors: a mistake in what the user gave (:class:`~textenv.validation.InputError`, or any exception whose class
sets ``user_facing = True``, such as a training run that diverged) and an operating-system error on a named
path (permission denied, read-only file system, disk full...) print one line ``textenv <command>: error: ...``
and exit with 2; Ctrl-C exits with 130. Anything else is a bug and keeps its traceback.

What ``textenv train`` writes: ``OUTPUT/summary.json``, ``OUTPUT/checkpoint/`` and ``OUTPUT/tensorboard/``,
nothing else (``textenv eval OUTPUT/checkpoint`` adds ``OUTPUT/eval.json``). It refuses an ``--output`` that is
a file or holds files textenv did not write, and one that holds an earlier run unless ``--resume
OUTPUT/checkpoint`` (continue it) or ``--overwrite`` (start again: removes only that run's summary.json,
checkpoint/, TensorBoard event files and eval.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import inspect
import json
import re
import shlex
import shutil
import sys
import textwrap
import time
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from textenv.config import Check, Choice, Config, Flag, Integer, Number, Seed, option
from textenv.validation import InputError

#: Arguments the CLI itself passes to every agent: not accepted in ``agent_kwargs:``.
CLI_AGENT_ARGUMENTS = {"env": "", "seed": "set `seed:` at the top level or --seed",
                       "tensorboard_log": "the run writes its events to OUTPUT/tensorboard"}


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
            switch.add_argument(flag, dest=item.name, action="store_true", default=item.default, help=described)
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
            kwargs["choices"] = check.choices
        elif hasattr(check, "parse"):
            kwargs["type"] = argument_type(check)
        target.add_argument(flag, **kwargs)


def _flag_text(value: Any) -> Any:
    """A default as a flag spells it: a sequence of numbers as ``"0.02,0.1"``."""
    if isinstance(value, (list, tuple)):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    return value


# ---------------------------------------------------------------------------------------------- config files
class ConfigLoader(yaml.SafeLoader):
    """YAML ``SafeLoader`` (no Python objects) that also reads ``1e-4`` as a float, as YAML 1.2 does (plain
    YAML 1.1 reads it as the string ``"1e-4"``), and refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

@dataclass(frozen=True)
class OfType:
    """A config-file value of type ``kind`` (a non-empty string for ``str``); ``None`` too with ``none_ok``."""

    kind: type
    none_ok: bool = False

    def __call__(self, name: str, value: Any) -> None:
        if not (value is None and self.none_ok):
            _check_type(name, value, self.kind)

    @property
    def description(self) -> str:
        return _describe_type(self.kind)


@dataclass(frozen=True)
class TrainConfig(Config):
    """The options of ``textenv train``: the top-level keys of its ``--config`` file; all but ``env`` and
    ``agent_kwargs`` are flags too (a flag beats the file). Defaults: the main job, REINFORCE on the embedded
    model and VADER reward."""

    agent: str = option("reinforce", "algorithm name (see `textenv.agents.AGENTS`; with --resume: the "
                                     "checkpoint's agent)", OfType(str), flag=True)
    total_timesteps: int = option(50_000, "tokens to generate in training", Integer(1), flag=True)
    output: str | None = option(None, "run directory for summary.json, checkpoint/ and tensorboard/ (default: "
                                      "runs/AGENT, or the run of --resume RUN/checkpoint); refused if it holds other "
                                      "files, or an earlier run without --resume/--overwrite",
                                OfType(str, none_ok=True), flag=True)
    seed: int = option(0, "seeds everything", Seed(), flag=True)
    checkpoint_every: int = option(25, "iterations between checkpoints; 0: only at the end", Integer(0), flag=True)
    eval_prompts: int = option(128, "built-in held-out prompts evaluated before and after training, 1..150",
                               Integer(1), flag=True)
    env: Mapping[str, Any] = option({"num_envs": 32, "max_new_tokens": 32, "kl_coef": 0.05},
                       "TextGenVectorEnv arguments (merged key by key over these)", OfType(dict))
    agent_kwargs: Mapping[str, Any] = option(
        {}, "the agent's hyper-parameters (`textenv train --agent NAME --help` lists them)", OfType(dict))

    @classmethod
    def flags(cls) -> list[str]:
        """The options that are also command-line flags."""
        return [item.name for item in cls.options() if item.metadata.get("flag")]


#: Range checks of the env's numeric arguments (``env:`` in a config), so a bad value fails before a model loads.
ENV_VALUE_CHECKS: dict[str, Check] = {
    "num_envs": Integer(1),
    "max_new_tokens": Integer(1),
    "max_prompt_tokens": Integer(1, none_ok=True),
    "kl_coef": Number(low=0),
    "target_kl": Number(low=0, low_open=True, none_ok=True),
    "kl_horizon": Integer(1),
    "group_size": Integer(1),
}


def load_config(path: str | None) -> dict[str, Any]:
    """Read a YAML ``--config`` file and check its top level: syntax (with the line number), UTF-8, a mapping,
    known keys (with a did-you-mean) and value types. Raises :class:`InputError` naming the file."""
    if path is None:
        return {}
    where = f"--config {path}"
    file = Path(path)
    if not file.exists():
        raise InputError(f"{where}: no such file")
    if not file.is_file():
        raise InputError(f"{where}: not a file; give a YAML file")
    text = decode_utf8(file.read_bytes(), where)
    try:
        data = yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        position = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = f" ({err.context}" if err.context else ""
        if context and err.context_mark is not None and mark is not None and err.context_mark.line != mark.line:
            context += f" started at line {err.context_mark.line + 1}"
        context += ")" if context else ""
        raise InputError(f"{where}{position}: invalid YAML: {err.problem}{context}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{where}: invalid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{where}: the file must hold a mapping of option: value, got a {type(data).__name__}")
    check_known_keys(where, data, TrainConfig.names())
    for key in ("env", "agent_kwargs"):
        if key in data and data[key] is None:
            data[key] = {}  # `env:` with nothing under it
    with errors_in(where):
        TrainConfig.check_values(data)
    return data


def decode_utf8(data: bytes, where: str) -> str:
    """``data`` as UTF-8 text; an :class:`InputError` names ``where`` and the line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(
            f"{where}, line {line}: not UTF-8 text (byte {data[err.start]:#04x}); save it as UTF-8"
        ) from None


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


@contextmanager
def errors_in(where: str) -> Iterator[None]:
    """An :class:`InputError` raised in the block gets ``where`` (the config file, or the command) in front."""
    try:
        yield
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def _in_file(where: str, check: Callable[[str, Any], None], name: str, value: Any) -> None:
    """Run ``check(name, value)``; its :class:`InputError` gets the config file's name in front."""
    with errors_in(where):
        check(name, value)


def _check_type(name: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind) or (kind is str and not value):
        raise InputError(f"{name}={value!r} must be {_describe_type(kind)}")


def check_arguments(where: str, section: str, given: Mapping[str, Any], function: Callable[..., Any]) -> None:
    """Check the ``section:`` mapping of a config (``env``), keyword arguments of ``function``, without calling it:
    unknown names (did-you-mean) and values a YAML file cannot make or that have the wrong type for the annotation
    (``num_envs: "abc"``)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return  # takes **kwargs: the callee checks
    accepted = [n for n, p in parameters.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    check_known_keys(where, given, accepted, f"{section}: ")
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve: the constructor checks the values itself
        hints = {}
    _check_types(where, section, given, hints)


def check_agent_kwargs(where: str, given: Mapping[str, Any], agent: type) -> None:
    """Check ``agent_kwargs:`` against the agent's ``config_class`` before any model loads: names the CLI sets
    itself (:data:`CLI_AGENT_ARGUMENTS`, with the reason), unknown names (did-you-mean), value types (from the
    field annotations) and values (the fields' checks, named ``agent_kwargs.NAME``). ``verbose`` is accepted too."""
    for name, reason in CLI_AGENT_ARGUMENTS.items():
        if name in given:
            raise InputError(f"{where}: agent_kwargs.{name} is set by textenv train itself"
                             + (f": {reason}" if reason else ""))
    config_class = agent.config_class
    check_known_keys(where, given, [*config_class.names(), "verbose"], "agent_kwargs: ")
    _check_types(where, "agent_kwargs", given, {**typing.get_type_hints(config_class), "verbose": int})
    with errors_in(where):
        config_class.check_values({k: v for k, v in given.items() if k != "verbose"}, prefix="agent_kwargs.")


def _check_types(where: str, section: str, given: Mapping[str, Any], hints: Mapping[str, Any]) -> None:
    for name, value in given.items():
        if name in hints and _accepts(hints[name], value) is False:
            raise InputError(f"{where}: {section}.{name}={value!r} must be {_describe_type(hints[name])}")


def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether a YAML ``value`` fits the annotation ``hint`` (``None``: cannot tell, e.g. ``Any``)."""
    if hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        answers = [_accepts(arm, value) for arm in typing.get_args(hint)]
        return True if True in answers else None if None in answers else False
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    base = origin or hint
    if base in (dict, Mapping):
        return isinstance(value, dict)
    if base in (list, tuple, Sequence):
        return isinstance(value, (list, tuple))
    if isinstance(base, type):
        return isinstance(value, base)  # str, or a class a YAML value never is (a loaded model)
    return None


def _describe_type(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(arm) for arm in typing.get_args(hint))
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping (key: value lines)", list: "a list"}
    base = origin or hint
    if base in names:
        return names[base]
    return f"a {getattr(base, '__name__', str(base))} object (Python only, not in a config file)"


# ---------------------------------------------------------------------------------------------- train options
def resolve_train_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults (:class:`TrainConfig`) ← the ``--resume`` checkpoint's settings ← config file ← command-line flags
    (``env`` and ``agent_kwargs`` merge key by key).

    Everything is checked here, before any model loads: the config file, the agent name, the ``env:`` keys
    against :class:`~textenv.vector_env.TextGenVectorEnv`'s arguments and ``agent_kwargs:`` against the agent's
    config. With ``--resume``, the checkpoint's agent, env settings, hyper-parameters and seed (its
    ``agent.json``) are the defaults, and so is its run directory as ``--output``: ``textenv train --resume RUN``
    continues the run as it was, in place.
    """
    from textenv.agents.base import read_checkpoint_meta

    config = load_config(args.config)
    where = f"--config {args.config}" if args.config else "textenv train"
    resume = getattr(args, "resume_checkpoint", None)
    recorded = read_checkpoint_meta(resume) if resume is not None else {}  # refuses pickles and old formats early
    options = {**TrainConfig().to_dict(), **config}
    options.update({key: getattr(args, key) for key in TrainConfig.flags() if getattr(args, key, None) is not None})
    options["agent"] = _resumed_agent(args, config, options["agent"], recorded, resume)
    cls = checked_agent_class(options["agent"])
    options["env"] = _env_options(config, recorded)
    hyper = recorded.get("hyperparameters") if isinstance(recorded.get("hyperparameters"), dict) else {}
    recorded_kwargs = {k: v for k, v in hyper.items() if k in cls.config_class.names() and k not in CLI_AGENT_ARGUMENTS}
    options["agent_kwargs"] = {**recorded_kwargs, **config.get("agent_kwargs", {})}
    if args.seed is None and "seed" not in config and isinstance(hyper.get("seed"), int):
        options["seed"] = hyper["seed"]
    _check_train_options(where, options, cls)
    if options["output"] is None and resume is not None and resume.name == "checkpoint":
        options["output"] = str(resume.parent)  # continue the run where it is
    elif options["output"] is None:
        options["output"] = str(Path("runs") / options["agent"])
    return options


def _resumed_agent(args: argparse.Namespace, config: Mapping[str, Any], agent: str, recorded: Mapping[str, Any],
                   resume: Path | None) -> str:
    """The agent to train: the checkpoint's when resuming without ``--agent``/``agent:``; a different one asked
    for is an :class:`InputError`."""
    recorded_agent = recorded.get("agent")
    if resume is None or not isinstance(recorded_agent, str):
        return agent
    if args.agent is None and "agent" not in config:
        return recorded_agent
    if recorded_agent != agent:
        raise InputError(f"--resume {resume} holds a {recorded_agent!r} agent, but this run asks for agent "
                         f"{agent!r}; drop --agent (the checkpoint's agent is used) or resume another")
    return agent


def _env_options(config: Mapping[str, Any], recorded: Mapping[str, Any]) -> dict[str, Any]:
    """``env:`` settings: :class:`TrainConfig`'s defaults ← the resumed checkpoint's ← the config file's."""
    from textenv.vector_env import TextGenVectorEnv

    env_parameters = inspect.signature(TextGenVectorEnv.__init__).parameters
    recorded_env = recorded.get("env") if isinstance(recorded.get("env"), dict) else {}
    return {**TrainConfig().env, **{k: v for k, v in recorded_env.items() if k in env_parameters},
            **config.get("env", {})}


def _check_train_options(where: str, options: Mapping[str, Any], cls: type) -> None:
    """The merged options, before any model loads: env keys and values, agent_kwargs, seed, eval_prompts."""
    from textenv.prompts import builtin_prompts
    from textenv.vector_env import TextGenVectorEnv

    check_arguments(where, "env", options["env"], TextGenVectorEnv.__init__)
    for key, check in ENV_VALUE_CHECKS.items():
        if key in options["env"]:
            _in_file(where, check, f"env.{key}", options["env"][key])
    check_agent_kwargs(where, options["agent_kwargs"], cls)
    _in_file(where, Seed(), "seed", options["seed"])
    held_out = len(builtin_prompts("eval"))
    if options["eval_prompts"] > held_out:
        raise InputError(f"eval_prompts={options['eval_prompts']} exceeds the {held_out} built-in held-out prompts")


def checked_agent_class(name: str) -> type:
    """The registered agent class ``name``; an :class:`InputError` lists the valid names (and a did-you-mean)."""
    from textenv.agents import agent_class

    return agent_class(name)


# ---------------------------------------------------------------------------------------------- run directories
#: What a ``textenv train`` run directory holds (``eval.json``: written there by ``textenv eval RUN/checkpoint``).
RUN_ENTRIES = ("summary.json", "checkpoint", "tensorboard", "eval.json")
_OWN_TEMPORARY = re.compile(r"^\.(?:checkpoint|summary\.json|eval\.json)\.(?:tmp|old|new)\b.*$")
_TENSORBOARD_EVENTS = "events.out.tfevents."


def run_entries(output: Path) -> list[str]:
    """Names of the entries of a previous ``textenv train`` run in ``output`` (``[]`` if none or missing).

    Raises :class:`InputError` when ``output`` is a file or holds anything ``textenv train`` did not write (a
    file or directory of another name, a ``checkpoint/`` without ``agent.json``, a file in ``tensorboard/``
    that is not a TensorBoard event file): such a directory is never written into.
    """
    if not output.exists():
        return []
    if not output.is_dir():
        raise InputError(f"--output {output} is a file; give a directory (textenv train writes summary.json, "
                         "checkpoint/ and tensorboard/ in it)")
    ours, foreign = [], []
    for entry in sorted(output.iterdir()):
        if _OWN_TEMPORARY.match(entry.name):
            continue  # litter of an interrupted save of ours; the next save cleans it
        if entry.name == "summary.json" and entry.is_file():
            ours.append(entry.name)
        elif entry.name == "eval.json" and entry.is_file() and _written_by_textenv_eval(entry):
            ours.append(entry.name)
        elif entry.name == "checkpoint" and entry.is_dir() and (entry / "agent.json").is_file():
            ours.append(entry.name + "/")
        elif entry.name == "tensorboard" and entry.is_dir():
            strangers = [e.name for e in entry.iterdir()
                         if not (e.is_file() and e.name.startswith(_TENSORBOARD_EVENTS))]
            if strangers:
                foreign.append(f"tensorboard/{strangers[0]}")
            else:
                ours.append(entry.name + "/")
        else:
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(f"--output {output} holds files textenv did not write ({shown}); textenv never writes "
                         "beside your files: choose a new or empty --output directory")
    return ours


def _written_by_textenv_eval(file: Path) -> bool:
    from textenv.apps.evaluation import results_writer

    return results_writer(file) == "textenv eval"


def prepare_run_dir(output: Path, resume: Path | None, overwrite: bool) -> None:
    """Make ``output`` ready for a run, or refuse with :class:`InputError` (nothing is removed unless ``overwrite``).

    * missing or empty: fine;
    * holds a run of ours and ``resume`` is its own checkpoint: continue it;
    * holds a run of ours otherwise: refuse, naming ``--resume`` and ``--overwrite``; with ``overwrite`` its
      ``summary.json``, ``checkpoint/`` and TensorBoard event files are removed (only those);
    * a file, or a directory holding anything else: refuse (:func:`run_entries`).
    """
    ours = run_entries(output)
    if not ours:
        return
    checkpoint = output / "checkpoint"
    same_run = resume is not None and resume.resolve() == checkpoint.resolve()
    if same_run:
        if overwrite:
            raise InputError(f"--overwrite would delete {checkpoint}, the checkpoint --resume continues from; "
                             "drop --overwrite to continue the run, or --resume to start again")
        return
    if not overwrite:
        cont = (f"--resume {checkpoint} to continue it" if "checkpoint/" in ours
                else "it has no checkpoint to --resume from")
        raise InputError(f"--output {output} holds a run ({', '.join(ours)}): {cont}, --overwrite to start again "
                         "(removes that run's summary.json, checkpoint/, TensorBoard events and eval.json), or "
                         "choose another --output")
    remove_run(output)


def _check_checkpoint_replaceable(checkpoint: Path) -> None:
    """:class:`InputError` unless ``checkpoint`` holds only files of a textenv agent checkpoint (its manifest)."""
    from textenv.agents.base import CHECKPOINT_KIND
    from textenv.checkpoint import check_replaceable

    try:
        check_replaceable(checkpoint, CHECKPOINT_KIND)
    except InputError as err:
        raise InputError(f"--output: {err}") from None


def remove_run(output: Path) -> None:
    """Delete the previous run's files in ``output``: ``summary.json``, ``checkpoint/``, the TensorBoard event
    files (``tensorboard/`` too when that leaves it empty) and the ``eval.json`` of ``textenv eval``. Call only
    after :func:`run_entries` found nothing foreign in ``output``. Nothing is removed when the checkpoint holds
    files its manifest does not list."""
    checkpoint = output / "checkpoint"
    if checkpoint.exists():
        _check_checkpoint_replaceable(checkpoint)  # every file in it is listed in its textenv.json manifest
    (output / "summary.json").unlink(missing_ok=True)
    if (output / "eval.json").is_file() and _written_by_textenv_eval(output / "eval.json"):
        (output / "eval.json").unlink()  # the evaluation of the run being replaced
    events = output / "tensorboard"
    if events.is_dir():
        for file in events.glob(f"{_TENSORBOARD_EVENTS}*"):
            file.unlink()
        if not any(events.iterdir()):
            events.rmdir()
    if checkpoint.exists():
        shutil.rmtree(checkpoint)


def resolve_checkpoint(path: str | Path, flag: str) -> Path:
    """An agent checkpoint directory from ``path``: the checkpoint itself (it holds ``agent.json``) or a
    ``textenv train`` run directory (its ``checkpoint/``). :class:`InputError` otherwise."""
    from textenv.checkpoint import recover_directory

    given = Path(path)
    for candidate in (given, given / "checkpoint"):
        if candidate.parent.is_dir():
            recover_directory(candidate)  # a save killed between its two renames
    if (given / "agent.json").is_file():
        return given
    if (given / "checkpoint" / "agent.json").is_file():
        return given / "checkpoint"
    if not given.exists():
        raise InputError(f"{flag} {given}: no such directory")
    raise InputError(f"{flag} {given} is not a textenv checkpoint (no agent.json); give the directory "
                     "Agent.save or textenv train wrote (RUN/checkpoint) or its run directory")


def read_agent_json(checkpoint: Path) -> dict[str, Any]:
    """``checkpoint/agent.json`` as a dict; a damaged file is an :class:`InputError` naming it."""
    file = checkpoint / "agent.json"
    try:
        meta = json.loads(decode_utf8(file.read_bytes(), str(file)))
    except json.JSONDecodeError as err:
        raise InputError(f"{file}, line {err.lineno}: not valid JSON ({err.msg}); the checkpoint is damaged") from None
    if not isinstance(meta, dict):
        raise InputError(f"{file} must hold a JSON object; the checkpoint is damaged")
    return meta


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a crash leaves the old file or the new one)."""
    from textenv.apps.evaluation import save_eval_json

    save_eval_json(path, data)


# ---------------------------------------------------------------------------------------------- textenv train
def build_env(env_kwargs: dict[str, Any], group_size: int = 1):
    """The training env: a native ``TextGenVectorEnv`` with synchronised episodes."""
    from textenv.vector_env import TextGenVectorEnv

    kwargs = {"autoreset_mode": "disabled", **env_kwargs}
    kwargs.setdefault("group_size", group_size)
    return TextGenVectorEnv(**kwargs)


def held_out_eval(env, num_prompts: int, seed: int) -> dict[str, Any]:
    """Gold reward (the env's reward model) and KL to the env's reference on held-out prompts."""
    from textenv.apps.evaluation import evaluate_policy
    from textenv.prompts import load_prompts

    return evaluate_policy(
        env.policy,
        prompts=load_prompts("builtin", "eval")[:num_prompts],
        gold=env.reward_model,
        reference=env.reference if env.reference is not None else env.spec_kwargs.get("model", "textenv/default"),
        tokenizer=env.tokenizer,
        max_new_tokens=env.max_new_tokens,
        seed=seed,
        batch_size=64,
        max_table_rows=5,
        device=env.device,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """``textenv train``: check everything, then build the env and agent, train, evaluate, write summary.json."""
    args.resume_checkpoint = resolve_checkpoint(args.resume, "--resume") if args.resume else None
    options = resolve_train_options(args)
    output = Path(options["output"])
    prepare_run_dir(output, args.resume_checkpoint, args.overwrite)

    from textenv.agents import make_agent

    cls = checked_agent_class(options["agent"])
    output.mkdir(parents=True, exist_ok=True)
    env_kwargs = dict(options["env"])
    env = build_env(env_kwargs, group_size=cls.default_group_size)
    print(f"textenv train: agent={cls.name} env={env_kwargs} output={output}")
    agent = make_agent(options["agent"], env, seed=options["seed"], tensorboard_log=str(output / "tensorboard"),
                       **options["agent_kwargs"])
    if args.resume_checkpoint is not None:
        agent.load_state(args.resume_checkpoint)
        print(f"resumed from {args.resume_checkpoint} at step {agent.num_timesteps}")
    eval_seed = options["seed"] + 10_000
    before = held_out_eval(env, options["eval_prompts"], eval_seed)
    print(f"held-out before: mean {env.reward_model.__class__.__name__} = {before['gold_reward']:+.3f}, "
          f"KL = {before['kl']:.3f} nats ({options['eval_prompts']} prompts)")
    start = time.perf_counter()
    try:
        agent.learn(
            options["total_timesteps"],
            progress_bar=not args.no_progress,
            checkpoint_dir=output / "checkpoint",
            checkpoint_every=options["checkpoint_every"],
        )
        minutes = (time.perf_counter() - start) / 60
        after = held_out_eval(env, options["eval_prompts"], eval_seed)
    except KeyboardInterrupt:  # Agent.learn saved a checkpoint on the first Ctrl-C (not on a second one)
        return _interrupted(args, options, output, agent.num_timesteps, before)
    print(f"held-out after:  mean {env.reward_model.__class__.__name__} = {after['gold_reward']:+.3f}, "
          f"KL = {after['kl']:.3f} nats; change {after['gold_reward'] - before['gold_reward']:+.3f} "
          f"in {minutes:.1f} min, {agent.num_timesteps} tokens")
    for row in after["samples"][:3]:
        print(f"  {row['prompt']} | {row['completion']}")
    summary = {"command": "textenv train", "agent": cls.name, "interrupted": False, "before": before,
               "after": after, "minutes": minutes, "num_timesteps": agent.num_timesteps, "options": options}
    write_json(output / "summary.json", summary)
    print(f"checkpoint: {output / 'checkpoint'}   tensorboard: {output / 'tensorboard'}")
    return 0


def _interrupted(args: argparse.Namespace, options: dict[str, Any], output: Path, num_timesteps: int,
                 before: dict[str, Any]) -> int:
    """Ctrl-C during training: ``Agent.learn`` saved a checkpoint on the first Ctrl-C (a second one stops at once;
    then the last periodic checkpoint, if any, is the one to resume). Record the run in ``summary.json``
    (``"interrupted": true``), say how to continue, exit 130."""
    checkpoint = output / "checkpoint"
    saved = None
    if (checkpoint / "agent.json").is_file():
        try:
            saved = read_agent_json(checkpoint).get("num_timesteps")
        except InputError:
            saved = None
    summary = {"command": "textenv train", "agent": options["agent"], "interrupted": True,
               "num_timesteps": num_timesteps, "checkpoint_num_timesteps": saved,
               "checkpoint": str(checkpoint) if saved is not None else None, "before": before, "options": options}
    write_json(output / "summary.json", summary)
    if saved is None:
        print(f"\ntextenv train: interrupted at {num_timesteps} tokens, before any checkpoint was saved; "
              f"start again with --overwrite", file=sys.stderr)
    else:
        command = resume_command(getattr(args, "argv", None) or [], checkpoint)
        print(f"\ntextenv train: interrupted at {num_timesteps} tokens; the checkpoint in {checkpoint} holds "
              f"{saved} tokens. Continue with:\n  {command}", file=sys.stderr)
    return 130


def resume_command(argv: Sequence[str], checkpoint: Path) -> str:
    """The ``textenv train`` command line ``argv`` with ``--resume checkpoint`` instead of any ``--resume`` /
    ``--overwrite`` it had."""
    kept: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == "--resume":
            skip = True
        elif not (item.startswith("--resume=") or item == "--overwrite"):
            kept.append(item)
    if not kept or kept[0] != "train":
        kept = ["train", *kept]
    return shlex.join(["textenv", *kept, "--resume", str(checkpoint)])


# ---------------------------------------------------------------------------------------------- textenv eval
def eval_settings(args: argparse.Namespace, checkpoint: Path) -> dict[str, Any]:
    """The arguments of :func:`~textenv.apps.evaluation.evaluate_policy` for ``textenv eval``: what the checkpoint
    was trained with (its ``agent.json`` ``"env"``), overridden by the flags given. Refuses a reward model or
    base model that ``agent.json`` cannot rebuild (a Python object at training time) unless the flag is given."""
    meta = read_agent_json(checkpoint)
    env = meta.get("env") if isinstance(meta.get("env"), dict) else {}
    recorded_rm = env.get("reward_model")
    if args.reward_model is not None:
        gold = args.reward_model
    elif isinstance(recorded_rm, str):
        gold = recorded_rm
    else:
        raise InputError(f"{checkpoint} was trained with a reward model given as a Python object, which agent.json "
                         "cannot rebuild; pass --reward-model SPEC (e.g. --reward-model vader, or the spec of the "
                         "model you trained with)")
    recorded_model = env.get("model")
    if args.reference is not None:
        reference = args.reference
    elif isinstance(recorded_model, str):
        reference = recorded_model
    else:
        raise InputError(f"{checkpoint} was trained from a model given as a Python object, which agent.json cannot "
                         "name; pass --reference MODEL (the base model the policy started from) to measure KL")
    recorded_length = env.get("max_new_tokens", 32)
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else recorded_length
    kl_coef = env.get("kl_coef")
    return {
        "gold": gold, "reference": reference, "max_new_tokens": max_new_tokens,
        "kl_coef": kl_coef if isinstance(kl_coef, (int, float)) and not isinstance(kl_coef, bool) else None,
        "num_timesteps": meta.get("num_timesteps"), "agent": meta.get("agent"),
        "trained_prompts": env.get("prompts", "builtin"),
    }


def cmd_eval(args: argparse.Namespace) -> int:
    """``textenv eval``: evaluate a checkpoint with the settings it was trained with (flags override)."""
    from textenv.apps.evaluation import check_results_path

    from textenv.agents.base import CHECKPOINT_KIND
    from textenv.checkpoint import verify_directory

    checkpoint = resolve_checkpoint(args.checkpoint, "CHECKPOINT")
    verify_directory(checkpoint, CHECKPOINT_KIND)  # truncated or corrupted weights: a clear error, not a traceback
    settings = eval_settings(args, checkpoint)
    output = Path(args.output) if args.output is not None else checkpoint.parent / "eval.json"
    check_results_path(output, overwrite=args.overwrite)
    prompts = args.prompts if args.prompts is not None else "builtin"
    if args.prompts is None and settings["trained_prompts"] != "builtin":
        print(f"textenv eval: the checkpoint trained on prompts={settings['trained_prompts']!r}; evaluating on the "
              f"built-in held-out prompts (pass --prompts to choose)", file=sys.stderr)

    from textenv.apps.evaluation import evaluate_policy, save_eval_json
    from textenv.prompts import load_prompts

    result = evaluate_policy(
        checkpoint, prompts=load_prompts(prompts, args.prompt_split)[: args.num_prompts], gold=settings["gold"],
        reference=settings["reference"], num_samples=args.num_samples, max_new_tokens=settings["max_new_tokens"],
        temperature=args.temperature, seed=args.seed, batch_size=args.batch_size, max_table_rows=5,
        device=args.device,
    )
    beta = settings["kl_coef"]  # the run's β: objective = gold − β·KL, the quantity its training maximised
    objective = None if beta is None else result["gold_reward"] - beta * result["kl"]
    result["settings"].update({"prompts": str(prompts), "prompt_split": args.prompt_split, "kl_coef": beta})
    result = {"command": "textenv eval", "checkpoint": str(checkpoint), "agent": settings["agent"],
              "num_timesteps": settings["num_timesteps"], "objective": objective, **result}
    save_eval_json(output, result)
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2, default=str))
    print(f"textenv eval: wrote {output}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- the parser
def agent_help(name: str | None) -> str:
    """The end of ``textenv train --help``: with ``--agent NAME``, NAME's hyper-parameters (name, default, what it
    is, accepted values: its config's fields), else how to list them."""
    from textenv.agents import AGENTS, agent_class

    if name is None:
        return textwrap.fill(f"`textenv train --agent NAME --help` lists the hyper-parameters of agent NAME (set them "
                             f"under `agent_kwargs:` in the --config file). Agents: {', '.join(sorted(AGENTS))}.",
                             width=100)
    try:
        cls = agent_class(name)
    except InputError as err:
        return str(err)
    lines = textwrap.wrap(f"{name} hyper-parameters ({cls.config_class.__name__}): set them under `agent_kwargs:` "
                          "in the --config file, except seed (--seed or `seed:`).", width=100)
    for item in cls.config_class.options():
        lines.append(f"  {item.name} = {item.default!r}" + (f"   ({item.accepts})" if item.accepts else ""))
        lines.extend(textwrap.wrap(item.help, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def _agent_in_help_request(argv: Sequence[str]) -> str | None:
    """``NAME`` of ``textenv train ... --agent NAME ... --help`` (``None`` for any other command line)."""
    if not argv or argv[0] != "train" or not {"-h", "--help"} & set(argv):
        return None
    for index, item in enumerate(argv):
        if item == "--agent" and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith("--agent="):
            return item.split("=", 1)[1]
    return None


def build_parser(agent: str | None = None) -> argparse.ArgumentParser:
    """The ``textenv`` parser with every subcommand (no model is loaded); ``textenv train --help`` ends with the
    hyper-parameters of ``agent`` (see :func:`agent_help`)."""
    parser = Parser(prog="textenv", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a policy on TextGen-v0", epilog=agent_help(agent),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(train, TrainConfig, TrainConfig.flags(), given_only=True)
    train.add_argument("--config", help="YAML file with options, `env:` and `agent_kwargs:`")
    train.add_argument("--resume", help="continue exactly from a checkpoint: RUN/checkpoint or the run directory RUN")
    train.add_argument("--overwrite", action="store_true",
                       help="start again in an --output that holds an earlier run (removes only that run's "
                            "summary.json, checkpoint/, TensorBoard event files and textenv eval's eval.json)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "eval", help="evaluate a checkpoint on held-out prompts",
        description="Sample from a checkpoint's policy on held-out prompts and report the gold reward, the KL to "
                    "the base model, perplexity and distinct-n. By default it uses what the checkpoint was trained "
                    "with (agent.json: reward model, base model, max_new_tokens); flags override.",
    )
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT", help="RUN/checkpoint (or the run directory RUN)")
    evaluate.add_argument("--output", help="results JSON to write (default: eval.json beside the checkpoint, i.e. "
                                           "RUN/eval.json); an existing file is replaced only with --overwrite, "
                                           "and only if textenv wrote it")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing results file of textenv")
    evaluate.add_argument("--reward-model", dest="reward_model",
                          help="gold reward model spec (default: the one the checkpoint was trained with)")
    evaluate.add_argument("--reference", help="base model for KL and perplexity (default: the checkpoint's base model)")
    evaluate.add_argument("--max-new-tokens", dest="max_new_tokens", type=COUNT,
                          help="completion length limit (default: the checkpoint's)")
    evaluate.add_argument("--num-prompts", dest="num_prompts", type=COUNT, default=128,
                          help="held-out prompts to use (default: %(default)s)")
    evaluate.add_argument("--num-samples", dest="num_samples", type=COUNT, default=1,
                          help="completions per prompt (default: %(default)s)")
    evaluate.add_argument("--prompts", help="prompt source: 'builtin' or a .txt/.jsonl file (default: builtin)")
    evaluate.add_argument("--prompt-split", dest="prompt_split", default="eval", choices=["train", "eval"],
                          help="split of the built-in prompts (default: %(default)s, the held-out one)")
    evaluate.add_argument("--temperature", type=POSITIVE, default=1.0,
                          help="sampling temperature; 1 gives an unbiased KL estimate (default: %(default)s)")
    evaluate.add_argument("--batch-size", dest="batch_size", type=COUNT, default=32,
                          help="rows generated together (default: %(default)s)")
    evaluate.add_argument("--seed", type=SEED, default=0, help="seeds the sampler (default: %(default)s)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda... (default: %(default)s)")
    evaluate.set_defaults(func=cmd_eval)

    from textenv.apps import collect as collect_cmd
    from textenv.apps import label as label_cmd
    from textenv.apps import train_rm as train_rm_cmd

    collect = sub.add_parser("collect", help="sample K completions per prompt and rank them with a gold reward model")
    collect_cmd.add_arguments(collect)
    collect.set_defaults(func=collect_cmd.run)

    label = sub.add_parser("label", help="rank completions by hand in the terminal (resumable)")
    label_cmd.add_arguments(label)
    label.set_defaults(func=label_cmd.run)

    train_rm = sub.add_parser("train-rm", help="train a Bradley-Terry preference reward model")
    train_rm_cmd.add_arguments(train_rm)
    train_rm.set_defaults(func=train_rm_cmd.run)

    from textenv.apps import pipeline as pipeline_cmd

    pipeline = sub.add_parser("pipeline", help="the whole InstructGPT pipeline in one resumable command")
    pipeline_cmd.add_arguments(pipeline)
    pipeline.set_defaults(func=pipeline_cmd.run)
    return parser


# ---------------------------------------------------------------------------------------------- errors and main
#: Operating-system errors that are about the machine, never a bug: reported as one line even without a path.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def is_user_facing(err: BaseException) -> bool:
    """Whether ``err`` is reported as one line: an :class:`InputError`, an exception whose class sets
    ``user_facing = True`` (e.g. a training run that diverged), or an ``OSError`` on a named path (permission
    denied, read-only file system, disk full, a directory where a file was expected...)."""
    if isinstance(err, InputError) or getattr(type(err), "user_facing", False) is True:
        return True
    return isinstance(err, OSError) and (err.filename is not None or err.errno in ENVIRONMENT_ERRNOS)


def one_line(err: BaseException) -> str:
    """The message of a user-facing error on one line (an ``OSError`` as ``PATH: reason``)."""
    if isinstance(err, OSError) and not isinstance(err, InputError) and err.strerror:
        paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
        text = f"{' -> '.join(paths)}: {err.strerror}" if paths else err.strerror
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            text += " (free some space and run again)"
    else:
        text = str(err)
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run ``textenv`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code: 0 done, 2 a user error
    (one line on stderr), 130 Ctrl-C. Other exceptions (bugs) propagate with their traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(_agent_in_help_request(argv)).parse_args(argv)
    except SystemExit as done:  # --help (0) or a bad flag (2, its one line already printed)
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 2
    args.argv = argv
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\ntextenv {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_facing(err):
            raise
        print(f"textenv {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
