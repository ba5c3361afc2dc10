"""The run directory of ``textenv train``: what it may hold (``summary.json``, ``checkpoint/``, ``tensorboard/``,
``eval.json``), when it may be written into, and how an earlier run in it is continued or replaced; and how a
checkpoint is found from a path a user gives (``RUN`` or ``RUN/checkpoint``)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from textenv.validation import InputError, decode_utf8

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
