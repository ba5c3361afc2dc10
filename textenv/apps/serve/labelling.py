"""The labelling desk of ``textenv serve``: which item each labeller ranks next, and the one writer of the output.

Input: the completion sets of :mod:`textenv.preferences` (``{"prompt", "completions": [...]}``, what ``textenv
collect --unranked`` writes and ``textenv label`` reads). Output: the same ranked preference rows ``textenv label``
writes (``{"prompt", "ranked": [best, ..., worst], "meta": {"labeller", "item"}}``), which ``textenv train-rm``
and ``textenv pipeline`` read.

* **Items** have an id made from what identifies a task in ``textenv label`` (:func:`textenv.apps.label.item_key`:
  the prompt and its set of distinct completions), so an item keeps its id across restarts and the rows already
  in the output file say which items are done (resume).
* **Sessions**: each labeller opens one with a name; the session remembers the item on screen and the items it
  saved or skipped (for "back").
* **Leases**: handing an item to a session leases it for ``lease_seconds``; while the lease holds, nobody else is
  given the item. An item wants ``labels_per_item`` labels (default 1: two people never get the same item at the
  same time), each from a different labeller name.
* **Writes** go through one lock and one :class:`LineAppender`: each row is one ``write`` of a whole line followed
  by ``fsync``, acknowledged only after that, so a killed server loses no acknowledged label and leaves no half
  line. A row is refused (409) when the item already has its labels, so no item is labelled twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textenv.apps.label import MAX_COMPLETIONS, item_key
from textenv.apps.serve.requests import Refused
from textenv.preferences import CompletionSet, PreferencePair, PreferenceRanking, load_preferences
from textenv.validation import InputError

#: Characters of an item id (hex of a SHA-256 of the item's key).
ITEM_ID_LENGTH = 16
#: Sessions kept at most; beyond it the longest idle one is forgotten (its leases end).
MAX_SESSIONS = 2000


def item_id(prompt: str, completions: Sequence[str]) -> str:
    """The stable id of the task "rank ``completions`` of ``prompt``" (16 hex characters)."""
    key = item_key(prompt, completions)
    return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode("utf-8")).hexdigest()[:ITEM_ID_LENGTH]


def display_order(prompt: str, completions: Sequence[str], shuffle: bool, seed: int) -> tuple[str, ...]:
    """The distinct completions in the order shown: the order ``textenv label`` shows (seeded per prompt, so the
    same item always looks the same), or the file order without ``shuffle``."""
    distinct = list(dict.fromkeys(completions))
    if shuffle:
        random.Random(f"{seed}\x00{prompt}\x00{sorted(distinct)}").shuffle(distinct)
    return tuple(distinct)


@dataclass(frozen=True)
class LabelItem:
    """One task: ``prompt`` and its distinct completions ``shown`` in display order."""

    id: str
    prompt: str
    shown: tuple[str, ...]


@dataclass
class Labeller:
    """A labelling session: its random ``id``, the labeller's ``name``, the item on screen (``current``), and the
    items saved or skipped here, oldest first (``history``: ``(item id, ranking as indices or None)``)."""

    id: str
    name: str
    current: str | None = None
    history: list[tuple[str, tuple[int, ...] | None]] = field(default_factory=list)
    skipped: set[str] = field(default_factory=set)
    saved: int = 0
    last_seen: float = 0.0


class LineAppender:
    """Append JSON lines to ``path`` so that a crash never leaves half a line.

    Each line is encoded first and handed to the kernel in one ``os.write`` on an ``O_APPEND`` descriptor, then
    ``fsync``-ed; :meth:`append` returns only after that. A short write (a full disk) is finished or, if it fails,
    cut back to where the line started (so is a line whose ``fsync`` fails: it was not acknowledged), so
    the file always ends with a whole line. Not thread-safe by itself: the
    :class:`LabelDesk` calls it under its lock.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        size = os.fstat(self._fd).st_size
        if size and not _ends_with_newline(self.path):  # a last row written by hand without its newline
            self._write_all(b"\n", size)

    def append(self, row: dict[str, Any]) -> None:
        """Write ``row`` as one line and make it durable (``fsync``) before returning. Under an exclusive ``flock``,
        as ``textenv play`` appends, so another textenv process appending to the same file waits (and a cut-back
        never removes its line)."""
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            start = os.fstat(self._fd).st_size
            self._write_all(data, start)
            try:
                os.fsync(self._fd)
            except OSError:
                os.ftruncate(self._fd, start)  # not acknowledged, so not kept: a retry must not write it twice
                raise
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _write_all(self, data: bytes, start: int) -> None:
        try:
            written = os.write(self._fd, data)
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            os.ftruncate(self._fd, start)  # our own partial line, never the user's rows
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def prepare_items(sets: Sequence[CompletionSet], shuffle: bool = True, seed: int = 0) -> list[LabelItem]:
    """The tasks of ``sets`` in file order: one per distinct item (a set listed twice is asked once), sets with
    fewer than 2 distinct completions left out; more than :data:`~textenv.apps.label.MAX_COMPLETIONS` distinct
    completions raise :class:`InputError` (the keys 1-9 rank them)."""
    items: dict[str, LabelItem] = {}
    for index, entry in enumerate(sets):
        shown = display_order(entry.prompt, entry.completions, shuffle, seed)
        if len(shown) > MAX_COMPLETIONS:
            raise InputError(f"--data item {index} (prompt {entry.prompt[:40]!r}) has {len(shown)} completions; "
                             f"textenv serve ranks at most {MAX_COMPLETIONS} per prompt (keys 1-9): split the set")
        if len(shown) >= 2:
            key = item_id(entry.prompt, shown)
            items.setdefault(key, LabelItem(key, entry.prompt, shown))
    return list(items.values())


def labels_in(path: Path) -> tuple[Counter[str], set[tuple[str, str]]]:
    """What the output file already holds: labels per item id, and the ``(item id, labeller name)`` pairs."""
    counts: Counter[str] = Counter()
    by_whom: set[tuple[str, str]] = set()
    if not path.is_file():
        return counts, by_whom
    for row in load_preferences(path):
        texts = row.ranked if isinstance(row, PreferenceRanking) else (row.chosen, row.rejected)
        key = item_id(row.prompt, texts)
        counts[key] += 1
        name = row.meta.get("labeller") if isinstance(row, (PreferenceRanking, PreferencePair)) else None
        if isinstance(name, str):
            by_whom.add((key, name))
    return counts, by_whom


class LabelDesk:
    """Hands out items to labelling sessions and appends their rankings to ``output`` (see the module docstring).

    Thread-safe: every method takes one lock, so requests served on several threads see one consistent state and
    the output has one writer. ``clock`` (seconds, monotonic) is replaceable for tests of expiring leases.
    """

    def __init__(self, items: Sequence[LabelItem], output: str | os.PathLike, labels_per_item: int = 1,
                 lease_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.items = {item.id: item for item in items}
        self.order = [item.id for item in items]
        self.output = Path(output)
        self.labels_per_item = labels_per_item
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._counts, self._by_whom = labels_in(self.output)
        self._leases: dict[str, dict[str, float]] = {}  # item id -> {session id: expiry}
        self._sessions: dict[str, Labeller] = {}
        self._appender = LineAppender(self.output)
        self._done = sum(1 for key in self.order if self._counts[key] >= labels_per_item)
        self._first_open = 0  # every item before this index has all its labels (where the search starts)
        self.already_done = self._done

    # ------------------------------------------------------------------------------------------ sessions
    def open_session(self, name: str) -> Labeller:
        """A new session for the labeller ``name`` (its id is a random token)."""
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
                self._end_session(oldest.id)
            session = Labeller(secrets.token_urlsafe(12), name, last_seen=self.clock())
            self._sessions[session.id] = session
            return session

    def _session(self, session_id: str) -> Labeller:
        session = self._sessions.get(session_id)
        if session is None:
            raise Refused(404, "unknown session (the server restarted or it expired): start again with your name; "
                                 "what you saved is kept")
        session.last_seen = self.clock()
        return session

    def _end_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        for holders in self._leases.values():
            holders.pop(session_id, None)

    # ------------------------------------------------------------------------------------------ assignment
    def _holders(self, key: str, now: float) -> dict[str, float]:
        """The unexpired leases of item ``key`` (expired ones are dropped)."""
        holders = {sid: until for sid, until in self._leases.get(key, {}).items() if until > now}
        self._leases[key] = holders
        return holders

    def _wanted_by(self, key: str, session: Labeller, now: float) -> bool:
        """Whether item ``key`` may be given to ``session``: it still needs labels counting the other sessions'
        leases, this labeller has not labelled it, and this session did not skip it."""
        if key in session.skipped or (key, session.name) in self._by_whom:
            return False
        others = sum(1 for sid in self._holders(key, now) if sid != session.id)
        return self._counts[key] + others < self.labels_per_item

    def _lease(self, key: str, session: Labeller, now: float) -> None:
        self._leases.setdefault(key, {})[session.id] = now + self.lease_seconds

    def next_item(self, session_id: str) -> dict[str, Any]:
        """The item ``session_id`` should rank now: the one on its screen if still wanted (resume), else the first
        wanted item in file order, leased to it. ``{"item": None}`` when nothing is left for it."""
        with self._lock:
            session = self._session(session_id)
            now = self.clock()
            if session.current is not None and self._wanted_by(session.current, session, now):
                self._lease(session.current, session, now)
                return self._view(session, session.current, "todo")
            session.current = self._first_wanted(session, now)
            if session.current is None:
                return {"item": None, "progress": self._progress(session)}
            self._lease(session.current, session, now)
            return self._view(session, session.current, "todo")

    def renew(self, session_id: str, key: str) -> dict[str, Any]:
        """Extend the lease of ``session_id`` on item ``key`` (the page calls it while the item is on screen)."""
        with self._lock:
            session = self._session(session_id)
            self._item(key)
            now = self.clock()
            held = session.id in self._holders(key, now)
            if held or self._wanted_by(key, session, now):
                self._lease(key, session, now)
                return {"leased": True, "seconds": self.lease_seconds}
            return {"leased": False, "seconds": 0}

    def _first_wanted(self, session: Labeller, now: float) -> str | None:
        """The first item in file order that ``session`` may take (the search starts after the items that have
        all their labels, so it costs about the number of items on screens or skipped, not the file's length)."""
        while (self._first_open < len(self.order)
               and self._counts[self.order[self._first_open]] >= self.labels_per_item):
            self._first_open += 1
        for index in range(self._first_open, len(self.order)):
            if self._wanted_by(self.order[index], session, now):
                return self.order[index]
        return None

    def _item(self, key: str) -> LabelItem:
        item = self.items.get(key)
        if item is None:
            raise Refused(404, f"unknown item {key!r}")
        return item

    # ------------------------------------------------------------------------------------------ answers
    def submit(self, session_id: str, key: str, order: Sequence[int]) -> dict[str, Any]:
        """Save the ranking ``order`` (indices into the item's shown completions, best first, each once) of item
        ``key``: one line appended and fsync-ed before this returns. 409 when the item already has its labels or
        this labeller already labelled it."""
        with self._lock:
            session = self._session(session_id)
            item = self._item(key)
            if sorted(order) != list(range(len(item.shown))):
                raise Refused(400, f"order must rank each of the {len(item.shown)} completions once (indices "
                                     f"0-{len(item.shown) - 1}), got {list(order)}")
            if (key, session.name) in self._by_whom:
                raise Refused(409, f"{session.name} already labelled this item; it is saved")
            if self._counts[key] >= self.labels_per_item:
                raise Refused(409, "someone else saved this item meanwhile; take the next one")
            row = PreferenceRanking(item.prompt, tuple(item.shown[i] for i in order),
                                    {"labeller": session.name, "item": key})
            self._appender.append(row.to_json())
            self._counts[key] += 1
            self._done += self._counts[key] == self.labels_per_item
            self._by_whom.add((key, session.name))
            self._leases.get(key, {}).pop(session.id, None)
            session.skipped.discard(key)
            session.history.append((key, tuple(order)))
            session.saved += 1
            if session.current == key:
                session.current = None
            return {"saved": True, "progress": self._progress(session)}

    def skip(self, session_id: str, key: str) -> dict[str, Any]:
        """Leave item ``key`` for someone else (this session is not given it again; "back" can return to it)."""
        with self._lock:
            session = self._session(session_id)
            self._item(key)
            self._leases.get(key, {}).pop(session.id, None)
            session.skipped.add(key)
            session.history.append((key, None))
            if session.current == key:
                session.current = None
            return {"skipped": True, "progress": self._progress(session)}

    def back(self, session_id: str, steps: int) -> dict[str, Any]:
        """The item ``steps`` back in the session's history (1 = the last one saved or skipped): a saved one with
        its ranking (read-only: the output is append-only), a skipped one leased again so it can be ranked now."""
        with self._lock:
            session = self._session(session_id)
            if not 1 <= steps <= len(session.history):
                raise Refused(404, f"nothing {steps} step(s) back: this session has {len(session.history)} "
                                     "item(s) behind it")
            key, ranking = session.history[-steps]
            if ranking is not None or (key, session.name) in self._by_whom:
                return self._view(session, key, "saved", ranking)
            session.skipped.discard(key)
            now = self.clock()
            if not self._wanted_by(key, session, now):
                session.skipped.add(key)
                return self._view(session, key, "taken")
            self._lease(key, session, now)
            return self._view(session, key, "todo")

    def append_row(self, row: dict[str, Any]) -> None:
        """Append another preference row (the Play page's pair) through the same lock and writer, validated first."""
        from textenv.preferences import parse_preference

        parse_preference(row, where="the Play page's preference")
        with self._lock:
            self._appender.append(row)

    # ------------------------------------------------------------------------------------------ views
    def _progress(self, session: Labeller) -> dict[str, int]:
        return {"done": self._done, "total": len(self.order), "mine": session.saved, "history": len(session.history)}

    def _view(self, session: Labeller, key: str, status: str,
              ranking: tuple[int, ...] | None = None) -> dict[str, Any]:
        item = self.items[key]
        view: dict[str, Any] = {"item": {"id": item.id, "prompt": item.prompt, "completions": list(item.shown)},
                                "status": status, "progress": self._progress(session)}
        if ranking is not None:
            view["ranking"] = list(ranking)
        return view

    def summary(self) -> dict[str, int]:
        """Counts for the info endpoint: items, done, sessions open."""
        with self._lock:
            return {"items": len(self.order), "done": self._done, "sessions": len(self._sessions),
                    "labels_per_item": self.labels_per_item}

    def close(self) -> None:
        with self._lock:
            self._appender.close()
