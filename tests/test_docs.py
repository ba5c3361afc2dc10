"""The pages of ``docs/`` say what the code does: their Python runs, their commands parse, their links resolve.

* Python: the ```python blocks of a page run in order, in one namespace (a page reads as one session), in a
  temporary directory, on the embedded default model with the tiny budgets the page shows. Before they run, the
  page's file blocks are written there: a block preceded by ``<!-- file: NAME -->`` is a file the page shows (a
  YAML config, say). A block preceded by ``<!-- not run: REASON -->`` is skipped and the reason must be given.
  Then every function the page defined whose name starts with ``test_`` is called (pages show pytest tests).
  Registries the pages add to (reward-model names, agents) are restored afterwards.
* Excerpts: a block preceded by ``<!-- excerpt: PATH -->`` shows lines of the repository file PATH and is not run;
  its lines must be in that file as written, consecutive, except where a line ``...`` marks lines left out (the
  pieces between them appear in order). So a page that walks through real code cannot drift from it.
* Commands: each ``textenv ...`` line of a ```bash block, and each inline ``textenv SUBCOMMAND ARGS...`` code
  span, parses with the real argument parser (``textenv eval`` alone names a command and is not checked).
* Links: every relative link of README.md and of the pages leads to a file of the repository, and an anchor
  ``FILE#heading`` to a heading of that file; no path in a link or code span leaves the repository.
"""

from __future__ import annotations

import copy
import re
import shlex
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_readme import as_textenv_argv, assert_command_parses

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

MARKER = re.compile(r"^<!--\s*(not run|file|excerpt):\s*(.*?)\s*-->$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")


@dataclass
class Block:
    """A fenced code block of a page: its language, first line number, text and the marker before it."""

    language: str
    line: int
    text: str
    marker: tuple[str, str] | None


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, with the ``<!-- not run: ... -->`` / ``<!-- file: ... -->`` /
    ``<!-- excerpt: ... -->`` marker on the last non-blank line before its opening fence, if any. A block inside a
    list item loses the item's indentation (that of its opening fence), as Markdown renders it."""
    found, current, previous, indent = [], None, "", ""
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if current is None and stripped.startswith("```"):
            match = MARKER.match(previous)
            current = Block(stripped[3:].strip(), number + 1, "", match.groups() if match else None)
            indent = line[: len(line) - len(line.lstrip())]
            lines: list[str] = []
        elif current is not None and stripped == "```":
            current.text = "\n".join(lines)
            found.append(current)
            current = None
        elif current is not None:
            lines.append(line.removeprefix(indent))
        if stripped and current is None and not stripped.startswith("```"):
            previous = stripped
    assert current is None, f"{page.name}: a code block opened at line {current.line - 1} is never closed"
    return found


def prose(page: Path) -> str:
    """``page`` without its fenced blocks (links and code spans of the text only)."""
    return re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.fixture
def registries(monkeypatch):
    """Reward-model names and agents that a page registers are forgotten after it."""
    from textenv import agents, reward_models

    for module, name in ((reward_models, "REWARD_MODELS"), (reward_models, "REWARD_MODEL_FAMILIES"),
                         (agents, "AGENTS")):
        monkeypatch.setattr(module, name, copy.deepcopy(getattr(module, name)))


def test_there_are_pages():
    expected = {"rl-framing.md", "architecture.md", "adding-an-algorithm.md", "adding-a-reward-model.md", "engine.md"}
    assert expected <= {p.name for p in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_markers_say_what_they_do(page):
    for block in blocks(page):
        if block.marker is None:
            continue
        kind, value = block.marker
        assert value, f"{page.name}:{block.line}: <!-- {kind}: ... --> needs a reason or a file name"
        if kind == "file":
            assert "/" not in value and value not in ("", ".", ".."), f"{page.name}:{block.line}: file {value!r}"
        if kind == "excerpt":
            source = (ROOT / value).resolve()
            assert source.is_relative_to(ROOT) and source.is_file(), f"{page.name}:{block.line}: no file {value!r}"


def excerpt_pieces(text: str) -> list[list[str]]:
    """The runs of consecutive lines of an excerpt: its lines split at the lines ``...`` (lines left out)."""
    pieces: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == "...":
            pieces.append([])
        else:
            pieces[-1].append(line)
    return [piece for piece in pieces if piece]


def missing_piece(pieces: list[list[str]], source: list[str]) -> list[str] | None:
    """The first piece that is not in ``source`` as consecutive lines after the previous piece (``None``: all are)."""
    start = 0
    for piece in pieces:
        found = next((i for i in range(start, len(source) - len(piece) + 1) if source[i:i + len(piece)] == piece),
                     None)
        if found is None:
            return piece
        start = found + len(piece)
    return None


EXCERPTS = [(page, block) for page in PAGES for block in blocks(page) if block.marker and block.marker[0] == "excerpt"]


@pytest.mark.parametrize("page, block", EXCERPTS, ids=[f"{p.name}:{b.line}" for p, b in EXCERPTS])
def test_excerpts_are_in_their_files(page, block):
    path = block.marker[1]
    source = (ROOT / path).read_text(encoding="utf-8").splitlines()
    pieces = excerpt_pieces(block.text)
    assert pieces, f"{page.name}:{block.line}: an empty excerpt of {path}"
    missing = missing_piece(pieces, source)
    assert missing is None, (f"{page.name}:{block.line}: the excerpt of {path} is no longer in it (from "
                             f"{missing[0].strip()!r}); copy the current lines into the page")


def test_an_excerpt_that_differs_from_its_file_is_found():
    source = ["a", "b", "c", "d"]
    assert missing_piece(excerpt_pieces("a\nb\n...\nd"), source) is None
    assert missing_piece(excerpt_pieces("b\nd"), source) == ["b", "d"]  # not consecutive
    assert missing_piece(excerpt_pieces("c\n...\na"), source) == ["a"]  # out of order
    assert missing_piece(excerpt_pieces("a\nB"), source) == ["a", "B"]  # changed


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.language == "python" for b in blocks(p))],
                         ids=lambda p: p.name)
def test_python_blocks_of_the_page_run(page, tmp_path, monkeypatch, registries):
    monkeypatch.chdir(tmp_path)  # files the page writes (runs/...) land here
    page_blocks = blocks(page)
    for block in page_blocks:
        if block.marker and block.marker[0] == "file":
            (tmp_path / block.marker[1]).write_text(block.text + "\n", encoding="utf-8")
    # The page runs as a module of its own, as a reader's script would (dataclasses look their module up), and
    # without this file's `from __future__` imports.
    page_module = types.ModuleType(f"docs_{page.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, page_module.__name__, page_module)
    namespace = page_module.__dict__
    for block in page_blocks:
        if block.language == "python" and block.marker is None:
            code = compile(block.text, f"{page.relative_to(ROOT)}:{block.line}", "exec", dont_inherit=True)
            exec(code, namespace)  # noqa: S102 - our own pages
    for name, value in list(namespace.items()):
        if name.startswith("test_") and callable(value):
            value()


def doc_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv after "textenv")`` of every textenv command line the pages show."""
    commands = []
    for page in PAGES:
        for block in blocks(page):
            if block.language not in ("bash", "sh", "console"):
                continue
            for offset, line in enumerate(block.text.splitlines()):
                argv = as_textenv_argv(shlex.split(line, comments=True))
                if argv:
                    commands.append((f"{page.name}:{block.line + offset}", argv))
        text = prose(page)
        for match in CODE_SPAN.finditer(text):
            words = match.group(1).split()
            argv = as_textenv_argv(words) if words[:1] == ["textenv"] else None
            if argv and len(argv) > 1 and "--help" not in argv:
                commands.append((f"{page.name}: `{match.group(1)}`", argv))
    return commands


COMMANDS = doc_commands()


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_of_the_docs_parses(where, argv, capsys):
    assert_command_parses(where, argv, capsys)


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of ``page``: lower case, punctuation but ``-`` and ``_`` dropped, spaces as
    hyphens."""
    anchors = set()
    for line in prose(page).splitlines():
        if line.startswith("#"):
            title = re.sub(r"[`*]", "", line.lstrip("#").strip()).lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


MARKDOWN = [ROOT / "README.md", *PAGES]


@pytest.mark.parametrize("page", MARKDOWN, ids=[p.name for p in MARKDOWN])
def test_relative_links_resolve(page):
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or an anchor of the page itself
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve()
        assert file.is_relative_to(ROOT), f"{page.name}: link {target!r} leaves the repository"
        assert file.exists(), f"{page.name}: link {target!r}: {file.relative_to(ROOT)} does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in heading_anchors(file), f"{page.name}: link {target!r}: no heading #{anchor} there"


@pytest.mark.parametrize("page", MARKDOWN, ids=[p.name for p in MARKDOWN])
def test_no_path_leaves_the_repository(page):
    for span in CODE_SPAN.findall(page.read_text(encoding="utf-8")):
        for word in span.split():
            if word.startswith("../"):
                assert (page.parent / word).resolve().is_relative_to(ROOT), f"{page.name}: `{span}` leaves the repo"
