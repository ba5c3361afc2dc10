"""``textenv label``: rank K completions per prompt by hand, in the terminal, keyboard only.

Input: the unranked JSONL of :mod:`textenv.preferences` (``{"prompt", "completions": [...]}``, K ≤ 9 distinct
completions), e.g. from ``textenv collect --unranked``. Output: the preference JSONL (ranked form), one line
per labelled prompt, appended, flushed and fsync-ed right after each answer, so quitting, Ctrl-C or a crash
loses at most the prompt on screen. Running again resumes: prompts whose completion set is already ranked in
the output file are skipped.

Keys (single key presses, no Enter needed in a terminal):

* ``1``–``9``: the next best completion (press them best first; the last one is implied);
* ``Enter``: save the complete ranking (``y`` also works);
* ``u`` / Backspace: undo the last choice;
* ``s``: skip this prompt (not saved: it comes back next run);
* ``q``, Ctrl-C or Ctrl-D (end of input): quit.

The loop (:class:`LabelSession`) reads keys from any iterator of one-character strings, so it can be driven
by a script; :func:`terminal_keys` turns a TTY into such an iterator (cbreak mode, restored on exit) and reads
plain characters when stdin is a pipe.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from textenv.apps.arguments import SEED
from textenv.preferences import (
    CompletionSet,
    JsonlWriter,
    PreferenceRanking,
    load_completion_sets,
    load_preferences,
)
from textenv.validation import InputError

MAX_COMPLETIONS = 9
CONFIRM_KEYS = ("\r", "\n", "y")
UNDO_KEYS = ("u", "\x7f", "\b")
QUIT_KEYS = ("q", "\x03", "\x04")  # q, Ctrl-C and Ctrl-D as raw characters


def item_key(prompt: str, completions: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    """Identity of a labelling task: the prompt and its set of distinct completions."""
    return prompt, tuple(sorted(set(completions)))


def labelled_keys(path: str | os.PathLike) -> set[tuple[str, tuple[str, ...]]]:
    """Keys of the tasks already ranked in the output file (empty if it does not exist)."""
    if not Path(path).is_file():
        return set()
    keys = set()
    for row in load_preferences(path):
        texts = row.ranked if isinstance(row, PreferenceRanking) else (row.chosen, row.rejected)
        keys.add(item_key(row.prompt, texts))
    return keys


@dataclass
class LabelStats:
    """Outcome of a session: prompts saved / skipped now, already done before, left, and whether the user quit."""

    saved: int = 0
    skipped: int = 0
    already_done: int = 0
    remaining: int = 0
    quit: bool = False


class LabelSession:
    """The labelling loop over ``items``, writing ranked rows to ``output``.

    Args:
        items: completion sets to rank (duplicates within a set are shown once).
        output: preference JSONL to append to (created if missing; also read to resume).
        out: where the screen text goes (a terminal or any text stream).
        labeller: optional name stored in each row's ``meta``.
        shuffle: show completions in a random order (seeded per prompt, so a resumed run shows the same order);
            avoids position bias when the input is sorted.
        seed: seed of that order.
    """

    def __init__(
        self,
        items: Sequence[CompletionSet],
        output: str | os.PathLike,
        out: TextIO = sys.stdout,
        labeller: str | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        for index, item in enumerate(items):
            distinct = list(dict.fromkeys(item.completions))
            if len(distinct) > MAX_COMPLETIONS:
                raise InputError(f"item {index} (prompt {item.prompt[:40]!r}) has {len(distinct)} completions; "
                                 f"textenv label ranks at most {MAX_COMPLETIONS} per prompt (keys 1-9)")
        self.items = list(items)
        self.output = Path(output)
        self.out = out
        self.labeller = labeller
        self.shuffle = shuffle
        self.seed = seed

    def _say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _display_order(self, item: CompletionSet) -> list[str]:
        distinct = list(dict.fromkeys(item.completions))
        if self.shuffle:
            random.Random(f"{self.seed}\x00{item.prompt}\x00{sorted(distinct)}").shuffle(distinct)
        return distinct

    def run(self, keys: Iterator[str]) -> LabelStats:
        """Label until the items run out or the user quits; every finished ranking is saved at once."""
        done = labelled_keys(self.output)
        todo = []
        stats = LabelStats()
        for item in self.items:
            key = item_key(item.prompt, item.completions)
            if key in done:
                stats.already_done += 1
            elif len(key[1]) >= 2:
                todo.append(item)
                done.add(key)  # an input listing the same task twice is asked once
        stats.remaining = len(todo)
        if stats.already_done:
            self._say(f"resuming: {stats.already_done} prompt(s) already labelled in {self.output}")
        with JsonlWriter(self.output, fsync=True) as writer:
            for number, item in enumerate(todo, start=1):
                answer = self._rank_one(item, number, len(todo), keys)
                if answer is None:
                    stats.quit = True
                    break
                if answer == "skip":
                    stats.skipped += 1
                    stats.remaining -= 1
                    continue
                meta = {"labeller": self.labeller} if self.labeller else {}
                writer.write(PreferenceRanking(item.prompt, tuple(answer), meta))
                stats.saved += 1
                stats.remaining -= 1
                self._say(f"saved ({stats.saved} this session)")
        self._say(f"{stats.saved} saved, {stats.skipped} skipped, {stats.remaining} left"
                  + (" - run again to resume" if stats.remaining else ""))
        return stats

    def _rank_one(self, item: CompletionSet, number: int, total: int, keys: Iterator[str]) -> list[str] | str | None:
        """Ranking (best first) of one item, ``"skip"``, or ``None`` to quit."""
        shown = self._display_order(item)
        K = len(shown)
        self._say("")
        self._say(f"=== [{number}/{total}] prompt: {item.prompt}")
        for i, text in enumerate(shown, start=1):
            self._say(f"  {i}) ...{text}" if text.strip() else f"  {i}) (empty completion)")
        self._say(f"rank best first with 1-{K}, Enter saves, u undo, s skip, q quit")
        picks: list[int] = []
        while True:
            key = next(keys, None)
            if key is None or key in QUIT_KEYS:
                self._say("quit")
                return None
            if key == "s":
                self._say("skipped")
                return "skip"
            if key in UNDO_KEYS:
                if picks:
                    picks.pop()
            elif key.isdigit() and 1 <= int(key) <= K:
                choice = int(key) - 1
                if choice not in picks and len(picks) < K:
                    picks.append(choice)
                    if len(picks) == K - 1:  # the last one is implied
                        picks.append(next(i for i in range(K) if i not in picks))
            elif key in CONFIRM_KEYS:
                if len(picks) == K:
                    return [shown[i] for i in picks]
                self._say(f"choose {K - 1 - len(picks)} more before saving")
                continue
            else:
                if not key.isspace():
                    self._say(f"key {key!r} does nothing here: 1-{K}, Enter, u, s, q")
                continue
            order = " > ".join(str(i + 1) for i in picks) or "(none)"
            status = "complete - Enter to save, u to undo" if len(picks) == K else "next best?"
            self._say(f"ranking: {order}   {status}")


# ---------------------------------------------------------------------------------------------- key input
@contextmanager
def terminal_keys(stream: TextIO = sys.stdin) -> Iterator[Iterator[str]]:
    """Yield an iterator of single key presses from ``stream``.

    On a TTY the terminal is put in cbreak mode (keys arrive without Enter, no echo; Ctrl-C still raises
    KeyboardInterrupt) and restored on exit. On a pipe or file, characters are read one at a time.
    """
    try:
        fd: int | None = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.StringIO and other streams without a descriptor
        fd = None
    if fd is not None and os.isatty(fd):
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)

        def tty_keys() -> Iterator[str]:
            while True:
                data = os.read(fd, 1)
                if not data:
                    return
                yield data.decode("utf-8", errors="replace")

        try:
            yield tty_keys()
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    else:

        def stream_keys() -> Iterator[str]:
            while True:
                char = stream.read(1)
                if not char:
                    return
                yield char

        yield stream_keys()


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``textenv label``: ``textenv label INPUT --output FILE`` (``--input INPUT`` also works)."""
    parser.add_argument("input", nargs="?", metavar="INPUT",
                        help="unranked JSONL of {prompt, completions} (e.g. from `textenv collect --unranked`)")
    parser.add_argument("--input", dest="input_flag", metavar="INPUT", help="the same as the positional INPUT")
    parser.add_argument("--output", required=True, help="preference JSONL to append rankings to (also resumes from it)")
    parser.add_argument("--labeller", default=None, help="your name, stored in each row's meta")
    parser.add_argument("--no-shuffle", action="store_true", help="show completions in file order")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the shuffled display order")


def input_path(args: argparse.Namespace) -> Path:
    """The input file of ``textenv label``: the positional INPUT or ``--input`` (one of them, existing)."""
    given = [value for value in (args.input, args.input_flag) if value is not None]
    if not given:
        raise InputError("give the unranked JSONL to label: textenv label INPUT --output FILE")
    if len(given) == 2 and given[0] != given[1]:
        raise InputError(f"two inputs given ({given[0]} and --input {given[1]}); give one")
    path = Path(given[0])
    if not path.is_file():
        raise InputError(f"INPUT {path}: " + ("is a directory; give a .jsonl file" if path.is_dir() else "no such file"))
    return path


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Execute ``textenv label``; returns the exit code (0 done or quit, 130 on Ctrl-C)."""
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    source = input_path(args)
    if Path(args.output).is_dir():
        raise InputError(f"--output {args.output} is a directory; give a .jsonl file name")
    session = LabelSession(load_completion_sets(source), args.output, out=stdout, labeller=args.labeller,
                           shuffle=not args.no_shuffle, seed=args.seed)
    try:
        with terminal_keys(stdin) as keys:
            session.run(keys)
    except KeyboardInterrupt:
        stdout.write(f"\ninterrupted: every finished ranking is saved in {args.output}; run again to resume\n")
        stdout.flush()
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m textenv.apps.label`` is ``textenv label``."""
    from textenv.apps.cli import main as cli_main

    return cli_main(["label", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
