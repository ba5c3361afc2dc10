"""`textenv label`: scripted key presses drive the ranking loop; every answer is saved at once; runs resume."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textenv.apps.label import LabelSession, labelled_keys, main, terminal_keys
from textenv.preferences import CompletionSet, JsonlWriter, PreferenceRanking, load_preferences

ITEMS = [
    CompletionSet("the film was", (" great", " fine", " awful")),
    CompletionSet("the soup", (" hot", " cold", " salty", " bland")),
    CompletionSet("the hotel", (" clean", " dirty")),
]


def label(items, output: Path, keys: str, **kwargs):
    screen = io.StringIO()
    stats = LabelSession(items, output, out=screen, shuffle=False, **kwargs).run(iter(keys))
    return stats, screen.getvalue()


def test_scripted_keys_rank_every_prompt(tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    # prompt 1: 3 then 1 (2 is implied), Enter; prompt 2: 2 4 1 (3 implied), Enter; prompt 3: 2 (1 implied), Enter
    stats, screen = label(ITEMS, out, "31\n241\n2\n", labeller="ann")
    assert (stats.saved, stats.skipped, stats.remaining, stats.quit) == (3, 0, 0, False)
    assert load_preferences(out) == [
        PreferenceRanking("the film was", (" awful", " great", " fine")),
        PreferenceRanking("the soup", (" cold", " bland", " hot", " salty")),
        PreferenceRanking("the hotel", (" dirty", " clean")),
    ]
    assert load_preferences(out)[0].meta == {"labeller": "ann"}
    assert "[1/3] prompt: the film was" in screen and "3) ... awful" in screen


def test_undo_invalid_keys_and_early_enter(tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    # 1 then u (undo), Enter too early, 9 (out of range), x (unknown), 3 then Backspace (undo), 3, 3 again
    # (ignored), 1 (2 implied), Enter
    stats, screen = label(ITEMS[:1], out, "1u\n9x3\x7f331\n")
    assert stats.saved == 1
    assert load_preferences(out) == [PreferenceRanking("the film was", (" awful", " great", " fine"))]
    assert "choose 2 more before saving" in screen and "does nothing here" in screen


def test_skip_and_quit_then_resume_where_it_stopped(tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    stats, _ = label(ITEMS, out, "s213\n2")  # skip 1st, rank 2nd, start the 3rd... and the keys run out (Ctrl-D)
    assert (stats.saved, stats.skipped, stats.quit) == (1, 1, True)
    assert [r.prompt for r in load_preferences(out)] == ["the soup"]
    # a torn partial answer was never written; a new session skips the labelled prompt
    stats, screen = label(ITEMS, out, "12\nq")
    assert stats.already_done == 1 and stats.saved == 1 and stats.quit and stats.remaining == 1
    assert "resuming: 1 prompt(s) already labelled" in screen and "run again to resume" in screen
    stats, _ = label(ITEMS, out, "1\n")
    assert stats.saved == 1 and stats.remaining == 0
    assert [r.prompt for r in load_preferences(out)] == ["the soup", "the film was", "the hotel"]
    stats, screen = label(ITEMS, out, "")
    assert stats.already_done == 3 and stats.saved == 0 and not stats.quit


def test_labelled_keys_ignore_completion_order_and_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    with JsonlWriter(out) as writer:
        writer.write(PreferenceRanking("the hotel", (" dirty", " clean")))
    assert labelled_keys(out) == {("the hotel", (" clean", " dirty"))}
    items = [CompletionSet("the hotel", (" clean", " dirty", " clean")), CompletionSet("the hotel", (" clean", " new"))]
    stats, _ = label(items, out, "2\n")
    assert stats.already_done == 1 and stats.saved == 1  # same prompt, different completions: a new task
    assert load_preferences(out)[-1] == PreferenceRanking("the hotel", (" new", " clean"))


def test_shuffled_order_is_stable_across_sessions(tmp_path: Path) -> None:
    items = [CompletionSet("p", tuple(f" c{i}" for i in range(6)))]
    first = LabelSession(items, tmp_path / "a.jsonl", out=io.StringIO(), seed=3)._display_order(items[0])
    again = LabelSession(items, tmp_path / "b.jsonl", out=io.StringIO(), seed=3)._display_order(items[0])
    assert first == again and sorted(first) == sorted(items[0].completions)
    stats = LabelSession(items, tmp_path / "a.jsonl", out=io.StringIO(), seed=3).run(iter("12345\n"))
    assert stats.saved == 1 and load_preferences(tmp_path / "a.jsonl")[0].ranked == tuple(first)


def test_too_many_completions_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 9"):
        LabelSession([CompletionSet("p", tuple(f" {i}" for i in range(10)))], tmp_path / "o.jsonl")


def write_sets(path: Path) -> Path:
    with JsonlWriter(path) as writer:
        for item in ITEMS:
            writer.write(item)
    return path


def test_cli_reads_keys_from_a_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    sets, out = write_sets(tmp_path / "sets.jsonl"), tmp_path / "labels.jsonl"
    monkeypatch.setattr(sys, "stdin", io.StringIO("21\nq"))
    assert main(["--input", str(sets), "--output", str(out), "--no-shuffle"]) == 0
    assert load_preferences(out) == [PreferenceRanking("the film was", (" fine", " great", " awful"))]
    assert main(["--input", str(tmp_path / "missing.jsonl"), "--output", str(out)]) == 2
    assert f"{tmp_path / 'missing.jsonl'}: no such file" in capsys.readouterr().err


def test_cli_takes_the_input_as_a_positional_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`textenv label FILE --output OUT`, as the README writes it (`--input FILE` stays an alias)."""
    sets, out = write_sets(tmp_path / "sets.jsonl"), tmp_path / "labels.jsonl"
    monkeypatch.setattr(sys, "stdin", io.StringIO("21\nq"))
    assert main([str(sets), "--output", str(out), "--no-shuffle"]) == 0
    assert load_preferences(out) == [PreferenceRanking("the film was", (" fine", " great", " awful"))]
    capsys.readouterr()
    assert main([str(sets), "--input", str(tmp_path / "other.jsonl"), "--output", str(out)]) == 2
    assert "give one" in capsys.readouterr().err
    assert main(["--output", str(out)]) == 2
    assert "textenv label INPUT --output FILE" in capsys.readouterr().err


def test_terminal_keys_reads_characters_from_a_stream() -> None:
    with terminal_keys(io.StringIO("ab\n")) as keys:
        assert list(keys) == ["a", "b", "\n"]


def _read_until(fd: int, needle: bytes, buffer: bytearray, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; screen so far: {bytes(buffer)[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"terminal closed before {needle!r}; screen: {bytes(buffer)[-500:]!r}")
            buffer.extend(chunk)


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_real_run_under_a_pseudo_terminal(tmp_path: Path) -> None:
    """Single key presses without Enter reach the program in cbreak mode; Ctrl-C keeps every finished answer
    and restores the terminal."""
    import fcntl
    import pty
    import termios

    sets, out = write_sets(tmp_path / "sets.jsonl"), tmp_path / "labels.jsonl"
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [sys.executable, "-m", "textenv.apps.label", "--input", str(sets), "--output", str(out), "--no-shuffle"],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        # a new session whose controlling terminal is the pty, so Ctrl-C there sends SIGINT to the child
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    screen = bytearray()
    try:
        _read_until(master, b"[1/3]", screen)
        _read_until(master, b"q quit", screen)
        time.sleep(0.2)  # let the child switch to cbreak mode before the first key
        for key in (b"2", b"1", b"\r"):
            os.write(master, key)
            time.sleep(0.05)
        _read_until(master, b"saved (1 this session)", screen)
        assert load_preferences(out) == [PreferenceRanking("the film was", (" fine", " great", " awful"))]  # on disk now
        os.write(master, b"3")  # half an answer to the 2nd prompt, then Ctrl-C
        time.sleep(0.05)
        os.write(master, b"\x03")
        assert proc.wait(timeout=30) == 130
        _read_until(master, b"run again to resume", screen)
    finally:
        if proc.poll() is None:
            proc.kill()
        after = termios.tcgetattr(slave)
        os.close(master)
        os.close(slave)
    assert after[3] == before[3]  # local modes (ICANON, ECHO) restored
    assert len(load_preferences(out)) == 1
