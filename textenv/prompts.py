"""Prompt sets: the built-in review openings, and loaders for user prompts.

A prompt source may be ``"builtin"`` (the packaged openings, ``split="train"`` or ``"eval"``), a list
of strings, a path to a ``.txt`` file (one prompt per line) or a ``.jsonl`` file (one object per line
with a ``"prompt"`` field), or a ``datasets.Dataset`` with a ``"prompt"`` (or ``"text"``) column.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

PromptSource = Any  # "builtin" | Sequence[str] | str | os.PathLike | datasets.Dataset


def builtin_prompts(split: str = "train") -> list[str]:
    """The packaged review openings: ``split`` is ``"train"`` or held-out ``"eval"``."""
    data = json.loads((resources.files("textenv") / "assets" / "prompts.json").read_text(encoding="utf-8"))
    if split not in data:
        raise ValueError(f"prompt_split={split!r} is not one of {sorted(data)}")
    return list(data[split])


def _from_file(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f'{path}:{number}: each line must be an object with a string "prompt" field')
            prompts.append(row["prompt"])
        return prompts
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_prompts(source: PromptSource = "builtin", split: str = "train") -> list[str]:
    """Normalise any supported prompt source to a non-empty list of non-empty strings."""
    if isinstance(source, str) and source == "builtin":
        prompts = builtin_prompts(split)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"prompts={str(source)!r} is neither 'builtin' nor an existing .txt/.jsonl file")
        prompts = _from_file(path)
    elif hasattr(source, "column_names"):  # a datasets.Dataset, without importing datasets
        column = next((c for c in ("prompt", "text") if c in source.column_names), None)
        if column is None:
            raise ValueError(f"prompts dataset needs a 'prompt' or 'text' column, has {source.column_names}")
        prompts = list(source[column])
    elif isinstance(source, Sequence):
        prompts = list(source)
    else:
        raise TypeError(f"prompts must be 'builtin', a list of str, a file path or a datasets.Dataset, got {type(source)}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompts[{i}]={prompt!r} is not a non-empty string")
    return prompts
