"""The README says exactly what the code accepts: every ``textenv ...`` command line in it parses with the real
argument parser, and its Python snippets run.

* Commands: the lines of its ```bash blocks that start with ``textenv`` (or ``make train``, which runs
  ``textenv train --agent reinforce ARGS``), and the inline ``textenv ...`` code spans of the prose. A synopsis
  with ``[--flag VALUE]`` brackets is parsed with the brackets dropped and each placeholder (``NAME``, ``N``...)
  replaced by the example value of :data:`PLACEHOLDERS`.
* Python: each ```python block runs in a temporary directory. :data:`PYTHON_BLOCKS` lists every block by its
  first line, with how it runs: verbatim, or with listed substitutions that keep every API call and only
  shrink a training budget (and the reason). A new block fails this test until it is listed there.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from textenv.apps.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"

#: Example values for the placeholders of the README's synopsis lines.
PLACEHOLDERS = {"NAME": "reinforce", "N": "1000", "DIR": "runs/example", "FILE": "config.yaml", "S": "0",
                "RUN": "runs/example", "D": "runs/example", "CHECKPOINT": "runs/example/checkpoint"}

#: First line of each ```python block → ``None`` (run verbatim) or ``(reason, {old text: new text})``.
PYTHON_BLOCKS: dict[str, tuple[str, dict[str, str]] | None] = {
    "import gymnasium as gym": None,
    "from textenv.agents import make_agent": (
        "it trains 20,000 tokens (minutes on a CPU); the same calls with a 64-token budget",
        {"total_timesteps=20_000": "total_timesteps=64"},
    ),
}


def fenced_blocks(language: str) -> list[tuple[int, str]]:
    """``(first line number, text)`` of every fenced code block of ``language`` in the README."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if current is None and line.strip() == f"```{language}":
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def as_textenv_argv(words: list[str]) -> list[str] | None:
    """The ``textenv`` arguments a README command runs: ``textenv ARGS`` → ARGS, ``make train ARGS="X"`` →
    ``train --agent reinforce X`` (the Makefile's recipe); ``None`` for other commands."""
    if words[:1] == ["textenv"]:
        return words[1:]
    if words[:2] == ["make", "train"]:
        extra = [w.split("=", 1)[1] for w in words[2:] if w.startswith("ARGS=")]
        return ["train", "--agent", "reinforce", *shlex.split(" ".join(extra))]
    return None


def readme_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv after "textenv")`` for every textenv command line the README shows."""
    commands = []
    for start, text in fenced_blocks("bash"):
        for offset, line in enumerate(text.splitlines()):
            argv = as_textenv_argv(shlex.split(line, comments=True))
            if argv is not None:
                commands.append((f"README.md:{start + offset}", argv))
    text = README.read_text(encoding="utf-8")
    for match in re.finditer(r"`((?:textenv|make train)\b[^`]*)`", text):
        argv = as_textenv_argv(shlex.split(match.group(1)))
        if argv is not None and "--help" not in argv:
            commands.append((f"README.md:{text.count(chr(10), 0, match.start()) + 1}", argv))
    return commands


def with_examples(argv: list[str], where: str) -> list[str]:
    """A synopsis as a concrete command: ``[`` / ``]`` dropped, placeholders replaced by example values."""
    concrete = []
    for word in argv:
        word = word.strip("[]")
        if re.fullmatch(r"[A-Z][A-Z_]*", word):
            assert word in PLACEHOLDERS, f"{where}: placeholder {word} has no example value in PLACEHOLDERS"
            word = PLACEHOLDERS[word]
        concrete.append(word)
    return concrete


COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_every_kind():
    shown = {argv[0] for _, argv in COMMANDS}
    assert {"train", "eval", "collect", "label", "train-rm", "pipeline", "play", "serve"} <= shown


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[f"{w} {' '.join(a)[:40]}" for w, a in COMMANDS])
def test_readme_command_parses(where, argv, capsys):
    assert_command_parses(where, argv, capsys)


def assert_command_parses(where: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``textenv ARGV`` (placeholders filled with their examples) parses with the real parser, else the test fails
    naming ``where`` and argparse's message."""
    argv = with_examples(argv, where)
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `textenv {' '.join(argv)}` is refused: {capsys.readouterr().err.strip()}")


def test_label_command_of_the_readme_reads_its_positional_input():
    argv = next(argv for _, argv in COMMANDS if argv[0] == "label")
    args = build_parser().parse_args(argv)
    assert args.input == "unranked.jsonl" and args.output == "prefs.jsonl"


PYTHON = fenced_blocks("python")


def test_every_python_block_is_listed():
    first_lines = [text.splitlines()[0] for _, text in PYTHON]
    assert sorted(first_lines) == sorted(PYTHON_BLOCKS), "list each README python block in PYTHON_BLOCKS"


@pytest.mark.parametrize("start, code", PYTHON, ids=[f"README.md:{s}" for s, _ in PYTHON])
def test_readme_python_block_runs(start, code, tmp_path, monkeypatch):
    how = PYTHON_BLOCKS.get(code.splitlines()[0])
    for old, new in ({} if how is None else how[1]).items():
        assert old in code, f"README.md:{start}: the block no longer contains {old!r}; update PYTHON_BLOCKS"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)  # files a snippet writes (runs/my-run) land here
    exec(compile(code, f"README.md:{start}", "exec"), {"__name__": "readme"})  # noqa: S102 - our own README
