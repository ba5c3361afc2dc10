"""What ``textenv serve`` accepts in a request: the checks of every field of a JSON body, and the error they raise.

Every API request is a JSON object whose keys, types, lengths and ranges are checked here before anything acts on
it; a field that is missing, of another type, too long, out of range or unknown is refused with HTTP 400 and a
message naming the field. Nothing here imports the web framework, so the checks are plain functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: The largest request body accepted (bytes); larger ones get 413 before they are read further.
MAX_BODY_BYTES = 32 * 1024
#: Longest labeller name, typed text of the game and prompt of the game (characters).
MAX_NAME_CHARS = 64
MAX_TEXT_CHARS = 2000
#: Session and game ids are random URL-safe tokens; item ids are 16 hex characters.
TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
ITEM_ID = re.compile(r"[0-9a-f]{16}")
#: Control characters (C0 but tab/newline, DEL, C1) are refused in names.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Refused(Exception):
    """A request refused with HTTP ``status`` (400 bad field, 404 unknown id, 409 conflict, 413 too large, 415 not
    JSON, 503 model busy); the message says why and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_keys(body: Mapping[str, Any], required: set[str], optional: set[str] = frozenset()) -> None:
    """``body`` has every key of ``required`` and no key outside ``required | optional``."""
    missing = sorted(required - set(body))
    if missing:
        raise Refused(400, f"missing field(s) {missing}")
    unknown = sorted(set(body) - required - set(optional))
    if unknown:
        raise Refused(400, f"unknown field(s) {unknown}; allowed: {sorted(required | set(optional))}")


def token_id(body: Mapping[str, Any], key: str) -> str:
    """A session or game id: a string of 8-64 characters ``A-Z a-z 0-9 _ -``."""
    value = body.get(key)
    if not isinstance(value, str) or not TOKEN_ID.fullmatch(value):
        raise Refused(400, f"{key} must be the id the server gave (8-64 characters A-Z a-z 0-9 _ -)")
    return value


def item_id_field(body: Mapping[str, Any], key: str = "item") -> str:
    """An item id: 16 lower-case hex characters."""
    value = body.get(key)
    if not isinstance(value, str) or not ITEM_ID.fullmatch(value):
        raise Refused(400, f"{key} must be an item id (16 hex characters)")
    return value


def text(body: Mapping[str, Any], key: str, max_chars: int = MAX_TEXT_CHARS, allow_empty: bool = False) -> str:
    """A string of at most ``max_chars`` characters (non-blank unless ``allow_empty``), no NUL."""
    value = body.get(key)
    if not isinstance(value, str):
        raise Refused(400, f"{key} must be a string")
    if len(value) > max_chars:
        raise Refused(400, f"{key} is {len(value)} characters long; at most {max_chars}")
    if "\x00" in value or (not allow_empty and not value.strip()):
        raise Refused(400, f"{key} must be non-empty text without NUL characters")
    return value


def labeller_name(body: Mapping[str, Any], key: str = "name") -> str:
    """A labeller's name: 1-64 printable characters, surrounding spaces removed."""
    value = text(body, key, MAX_NAME_CHARS).strip()
    if CONTROL.search(value):
        raise Refused(400, f"{key} must be printable characters (no control characters)")
    return value


def integer(body: Mapping[str, Any], key: str, low: int, high: int) -> int:
    """An integer (not a bool, not a float) in ``[low, high]``."""
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Refused(400, f"{key} must be an integer in [{low}, {high}]")
    return value


def index_list(body: Mapping[str, Any], key: str, max_length: int) -> list[int]:
    """A list of at most ``max_length`` integers in ``[0, max_length)``."""
    value = body.get(key)
    if (not isinstance(value, list) or len(value) > max_length
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < max_length for v in value)):
        raise Refused(400, f"{key} must be a list of at most {max_length} integers in [0, {max_length - 1}]")
    return value


def choice(body: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    value = body.get(key)
    if value not in choices:
        raise Refused(400, f"{key} must be one of {list(choices)}")
    return value
