"""The ``textenv`` command line (also ``python -m textenv``).

    textenv train --agent NAME [--total-timesteps N] [--output DIR] [--config FILE] [--seed S]
                  [--resume DIR] [--overwrite]
    textenv eval CHECKPOINT [--output FILE] [--reward-model SPEC] [--max-new-tokens N] [--num-prompts N] ...
    textenv collect --output FILE ...     # K completions per prompt, ranked by a gold scorer
    textenv label INPUT --output FILE     # rank completions by hand (keyboard, resumable)
    textenv train-rm --data FILE --output DIR   # Bradley-Terry preference reward model
    textenv pipeline --output DIR         # SFT? → collect → RM → PPO (+ β sweep) → eval.json + plots (resumable)
    textenv play [--checkpoint RUN] [--output FILE] [--preferences FILE]   # be the policy, token by token
    textenv serve --data SETS --output FILE   # web app: Label (rank, several people) and Play (docs/serve.md)

Each subcommand is a module of :mod:`textenv.apps` with ``add_arguments(parser)`` and ``run(args)``: ``train``
(:mod:`~textenv.apps.train`: a YAML config file's ``agent``, ``total_timesteps``, ``output``, ``seed``,
``checkpoint_every``, ``eval_prompts``, ``env:`` and ``agent_kwargs:``, flags override it, all checked before any
model loads), ``eval`` (:mod:`~textenv.apps.eval_checkpoint`), ``collect``, ``label``, ``train-rm``
(:mod:`~textenv.apps.train_rm`), ``pipeline`` and ``play`` (:mod:`~textenv.apps.play`: a person is the policy).

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
import errno
import sys
from collections.abc import Sequence

from textenv.apps import collect, eval_checkpoint, label, pipeline, play, serve, train, train_rm
from textenv.apps.arguments import Parser
from textenv.apps.train import build_env, held_out_eval  # also imported from here by examples/ and benchmarks/
from textenv.validation import InputError

__all__ = ["build_env", "build_parser", "held_out_eval", "is_user_facing", "main", "one_line"]

#: Subcommand → (module with ``add_arguments`` and ``run``, one-line help).
COMMANDS = {
    "train": (train, "train a policy on TextGen-v0"),
    "eval": (eval_checkpoint, "evaluate a checkpoint on held-out prompts"),
    "collect": (collect, "sample K completions per prompt and rank them with a gold reward model"),
    "label": (label, "rank completions by hand in the terminal (resumable)"),
    "train-rm": (train_rm, "train a Bradley-Terry preference reward model"),
    "pipeline": (pipeline, "the whole InstructGPT pipeline in one resumable command"),
    "play": (play, "be the policy: choose the next token yourself, then compare with the policy's sample"),
    "serve": (serve, "a web app: rank completions (several people at once) and play the policy in the browser"),
}


# ---------------------------------------------------------------------------------------------- the parser
def build_parser(agent: str | None = None) -> argparse.ArgumentParser:
    """The ``textenv`` parser with every subcommand (no model is loaded); ``textenv train --help`` ends with the
    hyper-parameters of ``agent`` (:func:`textenv.apps.train.agent_help`)."""
    parser = Parser(prog="textenv", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary)
        if module is train:
            module.add_arguments(command, agent)
        else:
            module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


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
