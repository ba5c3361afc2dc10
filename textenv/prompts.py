"""Prompt sets: the built-in review openings, and loaders for user prompts.

A prompt source may be ``"builtin"`` (the packaged openings, ``split="train"`` or ``"eval"``), a list
of strings, a path to a ``.txt`` file (one prompt per line) or a ``.jsonl`` file (one object per line
with a ``"prompt"`` field), or a ``datasets.Dataset`` with a ``"prompt"`` (or ``"text"``) column.

Chat models: with ``chat=True`` (the env's setting) a prompt may also be a list of chat messages,
``[{"role": "system", "content": ...}, {"role": "user", "content": ...}]`` (a ``.jsonl`` line's ``"prompt"`` may be
such a list); the env renders it with the tokenizer's chat template (:func:`render_chat`), generation prompt added.

Files must be UTF-8; a line that is not, a malformed JSON line, a line without a string ``"prompt"``, an empty
file or a directory raises :class:`~textenv.validation.InputError` naming the file (and line).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from textenv.validation import InputError

PromptSource = Any  # "builtin" | Sequence[str | ChatMessages] | str | os.PathLike | datasets.Dataset
#: One chat prompt: messages ``{"role": str, "content": str}`` in order.
ChatMessages = list[dict[str, str]]

#: Names of the built-in splits.
PROMPT_SPLITS = ("train", "eval")

_JSONL_FORMAT = 'one JSON object per line with a string "prompt" field, e.g. {"prompt": "the film was"}'


def builtin_prompts(split: str = "train") -> list[str]:
    """The packaged review openings: ``split`` is ``"train"`` or held-out ``"eval"``."""
    data = json.loads((resources.files("textenv") / "assets" / "prompts.json").read_text(encoding="utf-8"))
    if split not in data:
        raise InputError(f"prompt_split={split!r} is not one of {sorted(data)}")
    return list(data[split])


#: Reviews in ``assets/reviews.txt``: ``tools.corpus.generate_reviews(2048, seed=0)``, one per line.
NUM_BUILTIN_REVIEWS = 2048


def builtin_reviews(n: int, seed: int = 0) -> list[str]:
    """``n`` reviews of the embedded model's pre-training corpus (the default PPO-ptx and SFT text).

    The package ships the first 2048 reviews of the corpus grammar (``tools/corpus.py``, seed 0): ``seed=0``
    gives the first ``n`` of them (the grammar's own stream); another seed a seeded sample without replacement.
    """
    texts = (resources.files("textenv") / "assets" / "reviews.txt").read_text(encoding="utf-8").splitlines()
    if not 1 <= n <= len(texts):
        raise InputError(f"n={n!r}: the built-in corpus holds {len(texts)} reviews; ask for 1 to {len(texts)}, "
                         "or pass your own texts")
    if seed == 0:
        return texts[:n]
    order = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in order]


def read_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 file (newline stripped, a BOM dropped); a line that is
    not UTF-8 raises :class:`InputError` ``"FILE:LINE: not UTF-8 ..."``."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(
                    f"{path}:{number}: not UTF-8 text (byte {raw[err.start:err.start + 1]!r} at column "
                    f"{err.start + 1}); save the file as UTF-8"
                ) from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            yield number, line.rstrip("\r\n")


def is_chat(prompt: Any) -> bool:
    """Whether ``prompt`` is a non-empty list of chat messages (dicts with string ``"role"`` and ``"content"``)."""
    return (isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt))


def render_chat(messages: ChatMessages, tokenizer: Any) -> str:
    """The text of a chat prompt: ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``, ready for
    the assistant's reply (special tokens such as BOS included, so it is tokenized without adding them again).
    A tokenizer without a chat template raises :class:`InputError`."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("prompts holds chat messages but the tokenizer has no chat template; give prompts as strings, "
                         "or a chat model's tokenizer (tokenizer.chat_template set)")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def _from_jsonl(path: Path, chat: bool = False) -> list[str]:
    prompts = []
    for number, line in read_text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}); "
                             f"a .jsonl prompt file holds {_JSONL_FORMAT}") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise InputError(f'{path}:{number}: no "prompt" field; a .jsonl prompt file holds {_JSONL_FORMAT}')
        if chat and is_chat(row["prompt"]):
            prompts.append(list(row["prompt"]))
            continue
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise InputError(f'{path}:{number}: "prompt" is {row["prompt"]!r}, not a non-empty string; a .jsonl '
                             f"prompt file holds {_JSONL_FORMAT}")
        prompts.append(row["prompt"])
    return prompts


def _from_file(path: Path, chat: bool = False) -> list[str]:
    if path.suffix == ".jsonl":
        prompts = _from_jsonl(path, chat)
    else:
        prompts = [line for _, line in read_text_lines(path) if line.strip()]
    if not prompts:
        kind = _JSONL_FORMAT if path.suffix == ".jsonl" else "one prompt per line"
        raise InputError(f"prompts file {path} has no prompts (it is empty or blank); give {kind}")
    return prompts


def _check_path(source: str | os.PathLike) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        raise InputError(f"prompts={str(source)!r} is a directory; give a .txt (one prompt per line) or .jsonl file")
    if not path.is_file():
        raise InputError(f"prompts={str(source)!r} is neither 'builtin' nor an existing .txt/.jsonl file")
    return path


def load_prompts(source: PromptSource = "builtin", split: str = "train", chat: bool = False) -> list[Any]:
    """Normalise any supported prompt source to a non-empty list of non-empty strings (with ``chat``, also lists of
    chat messages, :func:`is_chat`)."""
    if isinstance(source, str) and source == "builtin":
        prompts = builtin_prompts(split)
    elif isinstance(source, (str, os.PathLike)):
        prompts = _from_file(_check_path(source), chat)
    elif hasattr(source, "column_names"):  # a datasets.Dataset, without importing datasets
        column = next((c for c in ("prompt", "text") if c in source.column_names), None)
        if column is None:
            raise InputError(f"prompts dataset needs a 'prompt' or 'text' column, has {source.column_names}")
        prompts = list(source[column])
    elif isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        prompts = list(source)
    else:
        raise InputError(f"prompts must be 'builtin', a list of str, a file path or a datasets.Dataset, got "
                         f"{type(source).__name__}")
    if not prompts:
        raise InputError("prompts is empty: give at least one prompt")
    for i, prompt in enumerate(prompts):
        if chat and is_chat(prompt):
            continue
        if not isinstance(prompt, str) or not prompt.strip():
            chats = " or a list of chat messages [{'role': ..., 'content': ...}]" if chat else ""
            raise InputError(f"prompts[{i}]={prompt!r:.120} is not a non-empty string{chats}")
    return prompts
