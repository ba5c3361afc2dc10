"""``textenv train``: train one agent on TextGen-v0 from a YAML config file and flags, evaluate it on held-out
prompts before and after, and keep the run in a run directory (:mod:`textenv.apps.run_directory`).

The options are :class:`TrainConfig`'s fields: the top-level keys of the ``--config`` file, all but ``env:``
and ``agent_kwargs:`` also flags (a flag beats the file). ``env:`` holds
:class:`~textenv.vector_env.TextGenVectorEnv` arguments, ``agent_kwargs:`` the agent's hyper-parameters (fields of
its config dataclass: ``textenv train --agent NAME --help`` lists them). Everything is checked (syntax with its
line number, unknown keys with a did-you-mean, value types and ranges) before any model loads.
"""

from __future__ import annotations

import argparse
import inspect
import re
import shlex
import sys
import textwrap
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from textenv.apps.arguments import add_config_arguments, check_known_keys, errors_in
from textenv.apps.run_directory import prepare_run_dir, read_agent_json, resolve_checkpoint, write_json
from textenv.config import Check, Config, Integer, Number, Seed, option
from textenv.validation import InputError, decode_utf8

#: The native agents' memory and sharding options (:class:`~textenv.agents.config.NativeConfig`) that are also
#: flags of ``textenv train``: a flag sets ``agent_kwargs.NAME`` (and beats the config file).
AGENT_FLAGS = ("sharding", "micro_batch_size", "gradient_checkpointing", "autocast_dtype")

#: Arguments the CLI itself passes to every agent: not accepted in ``agent_kwargs:``.
CLI_AGENT_ARGUMENTS = {"env": "", "seed": "set `seed:` at the top level or --seed",
                       "tensorboard_log": "the run writes its events to OUTPUT/tensorboard"}


def add_arguments(parser: argparse.ArgumentParser, agent: str | None = None) -> None:
    """Options of ``textenv train``: :class:`TrainConfig`'s flags and the run's; the help ends with the
    hyper-parameters of ``agent`` (:func:`agent_help`)."""
    parser.epilog = agent_help(agent)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    from textenv.agents.config import NativeConfig
    from textenv.models.setup import DTYPES

    add_config_arguments(parser, TrainConfig, TrainConfig.flags(), given_only=True)
    parser.add_argument("--config", help="YAML file with options, `env:` and `agent_kwargs:`")
    scale = parser.add_argument_group("precision, memory and sharding", "--dtype sets `env: dtype:`; the others "
                                      "set `agent_kwargs:` of the native agents (not SB3's); a flag beats the file")
    scale.add_argument("--dtype", choices=sorted(DTYPES), help="the models' weight dtype (default: the model's, "
                       "float32 for a model loaded by name): float32 master weights train best; bfloat16/float16 "
                       "halve the weights' memory (pair float32 with --autocast-dtype bfloat16 instead on a GPU)")
    add_config_arguments(scale, NativeConfig, AGENT_FLAGS, given_only=True)
    parser.add_argument("--resume", help="continue exactly from a checkpoint: RUN/checkpoint or the run directory RUN")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an --output that holds an earlier run (removes only that run's "
                             "summary.json, checkpoint/, TensorBoard event files and textenv eval's eval.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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
    task: str | None = option(None, "a task of the suite (textenv.TASKS, docs/tasks.md: positive, negative, length, "
                                    "topic, avoid): its reward model, training prompts and max_new_tokens, and its "
                                    "held-out prompts for the evaluation; `env:` keys still win",
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
    options["env"] = _env_options(config, recorded, _task_env(options["task"]))
    hyper = recorded.get("hyperparameters") if isinstance(recorded.get("hyperparameters"), dict) else {}
    recorded_kwargs = {k: v for k, v in hyper.items() if k in cls.config_class.names() and k not in CLI_AGENT_ARGUMENTS}
    options["agent_kwargs"] = {**recorded_kwargs, **config.get("agent_kwargs", {}), **_agent_flags(args, cls)}
    if getattr(args, "dtype", None) is not None:
        options["env"]["dtype"] = args.dtype
    saved_sharding = hyper.get("sharding", "ddp")
    if resume is not None and options["agent_kwargs"].get("sharding", "ddp") != saved_sharding:
        raise InputError(f"--resume {resume} was trained with sharding={saved_sharding!r}, and this run asks for "
                         f"sharding={options['agent_kwargs'].get('sharding', 'ddp')!r}; the optimizer state is stored "
                         f"differently. Resume with --sharding {saved_sharding} (or drop the flag), or start a new run "
                         f"from its weights with `model: {resume / 'policy'}`")
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


def _agent_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The :data:`AGENT_FLAGS` given on the command line, as ``agent_kwargs``; an agent that does not take one
    (SB3's) is an :class:`InputError` naming the flag."""
    given = {name: getattr(args, name) for name in AGENT_FLAGS if getattr(args, name, None) is not None}
    for name in given:
        if name not in cls.config_class.names():
            raise InputError(f"--{name.replace('_', '-')}: agent {cls.name!r} does not take it (it is an option of "
                             "the native agents' update); drop the flag or pick a native agent")
    return given


def _env_options(config: Mapping[str, Any], recorded: Mapping[str, Any],
                 task_env: Mapping[str, Any]) -> dict[str, Any]:
    """``env:`` settings: :class:`TrainConfig`'s defaults ← the resumed checkpoint's ← the task's ← the config
    file's (a resume asked to train another task is then refused by the checkpoint's env check)."""
    from textenv.vector_env import TextGenVectorEnv

    env_parameters = inspect.signature(TextGenVectorEnv.__init__).parameters
    recorded_env = recorded.get("env") if isinstance(recorded.get("env"), dict) else {}
    return {**TrainConfig().env, **{k: v for k, v in recorded_env.items() if k in env_parameters}, **task_env,
            **config.get("env", {})}


def _task_env(name: str | None) -> dict[str, Any]:
    """The env arguments of task ``name`` (:meth:`textenv.tasks.Task.env_kwargs`), ``{}`` without a task; an
    unknown name is an :class:`InputError` listing the tasks."""
    from textenv.tasks import get_task

    return {} if name is None else get_task(name).env_kwargs()


def _check_train_options(where: str, options: Mapping[str, Any], cls: type) -> None:
    """The merged options, before any model loads: env keys and values, agent_kwargs, seed, eval_prompts."""
    from textenv.prompts import builtin_prompts
    from textenv.vector_env import TextGenVectorEnv

    check_arguments(where, "env", options["env"], TextGenVectorEnv.__init__)
    for key, check in ENV_VALUE_CHECKS.items():
        if key in options["env"]:
            _in_file(where, check, f"env.{key}", options["env"][key])
    check_agent_kwargs(where, options["agent_kwargs"], cls)
    if options["agent_kwargs"].get("sharding") == "fsdp":
        _check_fsdp_options(options)
    _in_file(where, Seed(), "seed", options["seed"])
    held_out = len(builtin_prompts("eval"))
    if options["eval_prompts"] > held_out:
        raise InputError(f"eval_prompts={options['eval_prompts']} exceeds the {held_out} built-in held-out prompts")


def _check_fsdp_options(options: Mapping[str, Any]) -> None:
    """``sharding: fsdp`` needs torchrun's processes and no LoRA (the agent refuses both too, but after the model
    loads)."""
    from textenv import distributed

    if distributed.world_size() == 1:
        raise InputError("sharding='fsdp' shards the model over torchrun's processes: launch with `torchrun "
                         "--nproc-per-node N -m textenv train ...` (N >= 2), or use --sharding ddp")
    if options["env"].get("lora"):
        raise InputError("sharding='fsdp' with env.lora is not supported (a LoRA checkpoint merges the adapters into "
                         "a copy of the whole model, which textenv does not build from FSDP2's shards); use "
                         "--sharding ddp with LoRA")
    if options["agent_kwargs"].get("autocast_dtype") == "float16":
        raise InputError("sharding='fsdp' with autocast_dtype='float16' is not supported (its loss scaler would have "
                         "to find overflows across every rank's gradient shards); use --autocast-dtype bfloat16")


def checked_agent_class(name: str) -> type:
    """The registered agent class ``name``; an :class:`InputError` lists the valid names (and a did-you-mean)."""
    from textenv.agents import agent_class

    return agent_class(name)


# ---------------------------------------------------------------------------------------------- textenv train
def build_env(env_kwargs: dict[str, Any], group_size: int = 1):
    """The training env: a native ``TextGenVectorEnv`` with synchronised episodes."""
    from textenv.vector_env import TextGenVectorEnv

    kwargs = {"autoreset_mode": "disabled", **env_kwargs}
    kwargs.setdefault("group_size", group_size)
    return TextGenVectorEnv(**kwargs)


def held_out_eval(env, num_prompts: int, seed: int, task: str | None = None) -> dict[str, Any]:
    """Gold reward (the env's reward model) and KL to the env's reference on held-out prompts: the built-in ones,
    or those of ``task`` (:meth:`textenv.tasks.Task.held_out_prompts`)."""
    from textenv.apps.evaluation import evaluate_policy
    from textenv.prompts import load_prompts
    from textenv.tasks import get_task

    held_out = load_prompts("builtin", "eval") if task is None else get_task(task).held_out_prompts()
    return evaluate_policy(
        env.policy,
        prompts=held_out[:num_prompts],
        gold=env.reward_model,
        reference=env.reference if env.reference is not None else env.spec_kwargs.get("model", "textenv/default"),
        tokenizer=env.tokenizer,
        max_new_tokens=env.max_new_tokens,
        seed=seed,
        batch_size=64,
        max_table_rows=5,
        device=env.device,
    )


def run(args: argparse.Namespace) -> int:
    """``textenv train``: check everything, then build the env and agent, train, evaluate, write summary.json.

    Under torchrun (``torchrun --nproc-per-node N -m textenv train ...``) the N processes train one agent data-parallel
    (:mod:`textenv.distributed`): rank 0 prepares the run directory, evaluates, prints and writes summary.json,
    TensorBoard and the checkpoints; the other ranks only train (with ``sharding: fsdp`` they also evaluate, since
    the sharded policy's forwards are collectives, and take part in gathering each checkpoint).
    """
    from textenv import distributed

    distributed.init_from_environment()
    try:
        code = _run(args)
    except BaseException:
        distributed.shutdown(wait=False)
        raise
    distributed.shutdown()
    return code


def _run(args: argparse.Namespace) -> int:
    from textenv import distributed
    from textenv.agents.base import check_world_size

    main = distributed.is_main_process()
    args.resume_checkpoint = resolve_checkpoint(args.resume, "--resume") if args.resume else None
    options = resolve_train_options(args)
    cls = checked_agent_class(options["agent"])
    if distributed.world_size() > 1 and not cls.data_parallel:  # before any model loads
        from textenv.agents.sb3.agents import refuse_data_parallel

        refuse_data_parallel(cls.name)
    if args.resume_checkpoint is not None:
        check_world_size(read_agent_json(args.resume_checkpoint).get("world_size"), args.resume_checkpoint)
    output = Path(options["output"])
    if main:
        prepare_run_dir(output, args.resume_checkpoint, args.overwrite)
        output.mkdir(parents=True, exist_ok=True)
    distributed.barrier()  # the run directory is ready before any rank goes on

    from textenv.agents import make_agent

    env_kwargs = dict(options["env"])
    env = build_env(env_kwargs, group_size=cls.default_group_size)
    say = print if main else _silent
    world_size = distributed.world_size()
    say(f"textenv train: agent={cls.name} env={env_kwargs} output={output}"
        + (f" world_size={world_size} ({distributed.backend()})" if world_size > 1 else ""))
    agent = make_agent(options["agent"], env, seed=options["seed"], tensorboard_log=str(output / "tensorboard"),
                       **options["agent_kwargs"])
    if args.resume_checkpoint is not None:
        agent.load_state(args.resume_checkpoint)
        say(f"resumed from {args.resume_checkpoint} at step {agent.num_timesteps}")
    eval_seed = options["seed"] + 10_000
    # FSDP2: the policy's forwards gather its shards (collectives), so every rank evaluates, alike; else rank 0.
    evaluates = main or agent.sharded
    before = held_out_eval(env, options["eval_prompts"], eval_seed, options["task"]) if evaluates else {}
    say(f"held-out before: mean {env.reward_model.__class__.__name__} = {before.get('gold_reward', 0.0):+.3f}, "
        f"KL = {before.get('kl', 0.0):.3f} nats ({options['eval_prompts']} prompts)")
    start = time.perf_counter()
    try:
        agent.learn(
            options["total_timesteps"],
            progress_bar=not args.no_progress,
            checkpoint_dir=output / "checkpoint",
            checkpoint_every=options["checkpoint_every"],
        )
        minutes = (time.perf_counter() - start) / 60
        after = held_out_eval(env, options["eval_prompts"], eval_seed, options["task"]) if evaluates else {}
        if not main:
            return 0
    except KeyboardInterrupt:  # Agent.learn saved a checkpoint on the first Ctrl-C (not on a second one)
        if not main:
            return 130
        return _interrupted(args, options, output, agent.num_timesteps, before)
    print(f"held-out after:  mean {env.reward_model.__class__.__name__} = {after['gold_reward']:+.3f}, "
          f"KL = {after['kl']:.3f} nats; change {after['gold_reward'] - before['gold_reward']:+.3f} "
          f"in {minutes:.1f} min, {agent.num_timesteps} tokens")
    for row in after["samples"][:3]:
        print(f"  {row['prompt']} | {row['completion']}")
    summary = {"command": "textenv train", "agent": cls.name, "interrupted": False, "before": before,
               "after": after, "minutes": minutes, "num_timesteps": agent.num_timesteps, "world_size": world_size,
               "options": options}
    write_json(output / "summary.json", summary)
    print(f"checkpoint: {output / 'checkpoint'}   tensorboard: {output / 'tensorboard'}")
    return 0


def _silent(*args: Any, **kwargs: Any) -> None:
    """``print`` on the ranks other than 0 (one log per run)."""


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
    from textenv import distributed

    summary = {"command": "textenv train", "agent": options["agent"], "interrupted": True,
               "num_timesteps": num_timesteps, "world_size": distributed.world_size(),
               "checkpoint_num_timesteps": saved,
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
