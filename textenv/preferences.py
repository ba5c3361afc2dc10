"""Preference data: one JSONL format for pairwise and ranked comparisons, its loader, writer and pair expansion.

Format (UTF-8 JSON Lines, one object per line; blank lines are ignored). Each line is **either**

* a pair: ``{"prompt": str, "chosen": str, "rejected": str}`` — ``chosen`` is preferred to ``rejected``; or
* a ranking: ``{"prompt": str, "ranked": [best, ..., worst]}`` — K ≥ 2 distinct completions, best first.

Either form may carry an optional ``"meta"`` object (provenance: gold scores, labeller, model...), which
the loader keeps but training ignores. Any other key is an error (it catches typos such as ``"choosen"``).
A ranking of K completions stands for all C(K, 2) pairs (y_i ≻ y_j for i < j), as in InstructGPT's reward
model data (docs/rl-framing.md#the-reward-model); :func:`expand_pairs` does that expansion and
groups the pairs by prompt so a trainer can keep every pair of one prompt in the same batch.

A second, auxiliary format holds *unranked* completion sets to be labelled by a person
(``textenv collect --unranked`` writes it, ``textenv label`` reads it):
``{"prompt": str, "completions": [c1, ..., cK]}`` (K ≥ 2, optional ``"meta"``).

Example::

    {"prompt": "the film was", "chosen": " great fun.", "rejected": " a waste of time."}
    {"prompt": "the soup", "ranked": [" was lovely.", " was fine.", " was cold and bland."]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from textenv.prompts import read_text_lines
from textenv.validation import InputError

#: The two row forms of a preference file, said in every schema error.
PREFERENCE_FORMAT = ('each line is {"prompt": str, "chosen": str, "rejected": str} or {"prompt": str, "ranked": '
                     '[best, ..., worst]} (optional "meta": {...})')
#: The row form of an unranked completion-set file.
COMPLETION_SET_FORMAT = 'each line is {"prompt": str, "completions": [c1, ..., cK]} with K >= 2 (optional "meta")'


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: ``chosen`` ≻ ``rejected`` as completions of ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        if self.meta:
            row["meta"] = self.meta
        return row


@dataclass(frozen=True)
class PreferenceRanking:
    """K ≥ 2 distinct completions of ``prompt`` ordered best first."""

    prompt: str
    ranked: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def pairs(self) -> list[PreferencePair]:
        """All C(K, 2) pairs (ranked[i] ≻ ranked[j] for i < j), best-first order."""
        K = len(self.ranked)
        return [PreferencePair(self.prompt, self.ranked[i], self.ranked[j]) for i in range(K) for j in range(i + 1, K)]

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": self.prompt, "ranked": list(self.ranked)}
        if self.meta:
            row["meta"] = self.meta
        return row


PreferenceRow = PreferencePair | PreferenceRanking


@dataclass(frozen=True)
class CompletionSet:
    """K ≥ 2 unranked completions of ``prompt``, waiting for a labeller."""

    prompt: str
    completions: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": self.prompt, "completions": list(self.completions)}
        if self.meta:
            row["meta"] = self.meta
        return row


@dataclass
class ComparisonGroup:
    """Every comparison of one prompt: distinct ``completions`` and ``pairs`` of indices ``(winner, loser)``.

    A trainer scores each completion once and forms all pairs from those scores, so all pairs of one prompt
    are in the same batch.
    """

    prompt: str
    completions: list[str]
    pairs: list[tuple[int, int]]

    def as_pairs(self) -> list[PreferencePair]:
        return [PreferencePair(self.prompt, self.completions[w], self.completions[l]) for w, l in self.pairs]


# ---------------------------------------------------------------------------------------------- parsing
def parse_preference(obj: Any, where: str = "row") -> PreferenceRow:
    """Validate one decoded JSON object; ``where`` (e.g. ``"file.jsonl:12"``) prefixes every error, and every
    error (:class:`InputError`) ends with the expected format."""
    return _with_format(_parse_preference, obj, where, PREFERENCE_FORMAT)


def _with_format(parse: Any, obj: Any, where: str, expected: str) -> Any:
    """``parse(obj, where)``; an :class:`InputError` gains the ``expected`` format at its end."""
    try:
        return parse(obj, where)
    except InputError as err:
        raise InputError(f"{err}; {expected}") from None


def _json_object(obj: Any, where: str, keys: set[str]) -> dict[str, Any]:
    """``obj`` as a JSON object with only ``keys`` (:class:`InputError` otherwise)."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
    _check_keys(obj, where, keys)
    return obj


def _parse_preference(obj: Any, where: str) -> PreferenceRow:
    obj = _json_object(obj, where, {"prompt", "chosen", "rejected", "ranked", "meta"})
    prompt = _string(obj, "prompt", where)
    meta = _meta(obj, where)
    has_pair = "chosen" in obj or "rejected" in obj
    if has_pair and "ranked" in obj:
        raise InputError(f'{where}: give either "chosen"/"rejected" or "ranked", not both')
    if has_pair:
        chosen = _string(obj, "chosen", where, allow_empty=True)
        rejected = _string(obj, "rejected", where, allow_empty=True)
        if chosen == rejected:
            raise InputError(f'{where}: "chosen" and "rejected" are the same text; a comparison needs two different '
                             "completions")
        return PreferencePair(prompt, chosen, rejected, meta)
    if "ranked" not in obj:
        raise InputError(f'{where}: missing "chosen"/"rejected" (a pair) or "ranked" (a ranking, best first)')
    ranked = _string_list(obj, "ranked", where)
    return PreferenceRanking(prompt, ranked, meta)


def parse_completion_set(obj: Any, where: str = "row") -> CompletionSet:
    """Validate one ``{"prompt", "completions": [...]}`` object (the unranked format)."""
    return _with_format(_parse_completion_set, obj, where, COMPLETION_SET_FORMAT)


def _parse_completion_set(obj: Any, where: str) -> CompletionSet:
    obj = _json_object(obj, where, {"prompt", "completions", "meta"})
    prompt = _string(obj, "prompt", where)
    if "completions" not in obj:
        raise InputError(f'{where}: missing "completions" (a list of at least 2 strings)')
    completions = _string_list(obj, "completions", where, distinct=False)
    return CompletionSet(prompt, completions, _meta(obj, where))


def _check_keys(obj: dict, where: str, allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}")


def _string(obj: dict, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in obj:
        raise InputError(f'{where}: missing "{key}"')
    value = obj[key]
    if not isinstance(value, str):
        raise InputError(f'{where}: "{key}" must be a string, got {type(value).__name__}')
    if not allow_empty and not value.strip():
        raise InputError(f'{where}: "{key}" is empty')
    return value


def _string_list(obj: dict, key: str, where: str, distinct: bool = True) -> tuple[str, ...]:
    value = obj[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f'{where}: "{key}" must be a list of strings')
    if len(value) < 2:
        raise InputError(f'{where}: "{key}" has {len(value)} completion(s); give at least 2')
    if distinct and len(set(value)) != len(value):
        raise InputError(f'{where}: "{key}" lists the same completion twice; remove the duplicates')
    return tuple(value)


def _meta(obj: dict, where: str) -> dict[str, Any]:
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise InputError(f'{where}: "meta" must be an object, got {type(meta).__name__}')
    return meta


def _read_jsonl(path: str | os.PathLike, expected: str) -> Iterator[tuple[str, Any]]:
    """Yield ``("path:line", decoded object)`` for every non-blank line; a missing file, a directory, a line
    that is not UTF-8 or not JSON raises :class:`InputError` naming the file (and line) and ``expected``."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a JSONL file; {expected}")
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file")
    for number, line in read_text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); {expected}") from None
        yield where, obj


def load_preferences(path: str | os.PathLike) -> list[PreferenceRow]:
    """Read and validate a preference JSONL file (an empty file gives ``[]``); a bad row raises
    :class:`InputError` ``"path:line: ..."``."""
    return [parse_preference(obj, where) for where, obj in _read_jsonl(path, PREFERENCE_FORMAT)]


def load_completion_sets(path: str | os.PathLike) -> list[CompletionSet]:
    """Read and validate an unranked ``{"prompt", "completions"}`` JSONL file (an empty file gives ``[]``)."""
    return [parse_completion_set(obj, where) for where, obj in _read_jsonl(path, COMPLETION_SET_FORMAT)]


def as_preference_rows(data: str | os.PathLike | Iterable[Any]) -> list[PreferenceRow]:
    """A path, or an iterable of rows / JSON-like dicts, as validated preference rows; at least one row (an
    empty file or dataset raises :class:`InputError` naming it)."""
    if isinstance(data, (str, os.PathLike)):
        rows = load_preferences(data)
        if not rows:
            raise InputError(f"preference file {data} has no rows (it is empty or blank); {PREFERENCE_FORMAT}")
        return rows
    if isinstance(data, (bytes, dict)) or not isinstance(data, Iterable):
        raise InputError(f"preference data must be a JSONL path or a list of rows, got {type(data).__name__}")
    rows = []
    for index, item in enumerate(data):
        if isinstance(item, (PreferencePair, PreferenceRanking)):
            rows.append(item)
        else:
            rows.append(parse_preference(item, where=f"dataset[{index}]"))
    if not rows:
        raise InputError("the preference dataset is empty; give at least one row")
    return rows


# ---------------------------------------------------------------------------------------------- expansion
def expand_pairs(rows: Iterable[PreferenceRow]) -> list[ComparisonGroup]:
    """Expand rankings to their C(K, 2) pairs and group every pair by prompt.

    Rows with the same prompt text merge into one :class:`ComparisonGroup` (groups keep the order in
    which prompts first appear); a completion that appears in several rows of a prompt is stored once, and
    a repeated comparison is kept as often as it was given (it carries that much more weight).
    """
    groups: dict[str, ComparisonGroup] = {}
    index: dict[str, dict[str, int]] = {}
    for row in rows:
        group = groups.setdefault(row.prompt, ComparisonGroup(row.prompt, [], []))
        ids = index.setdefault(row.prompt, {})

        def idx(text: str) -> int:
            if text not in ids:
                ids[text] = len(group.completions)
                group.completions.append(text)
            return ids[text]

        if isinstance(row, PreferencePair):
            group.pairs.append((idx(row.chosen), idx(row.rejected)))
        elif isinstance(row, PreferenceRanking):
            order = [idx(text) for text in row.ranked]
            K = len(order)
            group.pairs.extend((order[i], order[j]) for i in range(K) for j in range(i + 1, K))
        else:
            raise TypeError(f"expand_pairs expects PreferencePair / PreferenceRanking rows, got {type(row)}")
    return list(groups.values())


# ---------------------------------------------------------------------------------------------- writing
class JsonlWriter:
    """Append rows to a JSONL file, flushing (and optionally fsync-ing) after every row.

    Appending never rewrites earlier rows, so a crash or Ctrl-C loses at most the row being written; if the
    file does not end with a newline (a torn last line), one is added first so the new row starts cleanly.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        needs_newline = self.path.is_file() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        self._handle: TextIO = open(self.path, "a", encoding="utf-8")
        if needs_newline:
            self._handle.write("\n")
        self.rows_written = 0

    def write(self, row: PreferencePair | PreferenceRanking | CompletionSet | dict[str, Any]) -> None:
        obj = row if isinstance(row, dict) else row.to_json()
        self._handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())
        self.rows_written += 1

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def write_preferences(path: str | os.PathLike, rows: Sequence[PreferenceRow | dict[str, Any]], fsync: bool = False) -> None:
    """Append ``rows`` to ``path`` (created if missing), validating dicts first."""
    with JsonlWriter(path, fsync=fsync) as writer:
        for index, row in enumerate(rows):
            writer.write(row if not isinstance(row, dict) else parse_preference(row, where=f"rows[{index}]"))
