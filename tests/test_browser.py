"""``textenv serve`` as a person uses it: a real server on 127.0.0.1 and headless Chromium clicking through it.

Debian's Chromium (``/usr/bin/chromium``, or ``TEXTENV_CHROMIUM``) is driven by Playwright's Python package with
``executable_path``: Playwright never downloads a browser. Missing either is a failure that says how to install
it, not a skip. The test plays one episode on the Play page and labels two items on the Label page (mouse for
one, keyboard for the other), saves a screenshot of each page and asserts the preference JSONL the server wrote.
The screenshots go to ``TEXTENV_SCREENSHOTS`` when set, else to a ``screenshots`` directory under pytest's
temporary directory (kept after the run); the path is printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textenv.preferences import PreferencePair, PreferenceRanking, load_preferences

ROOT = Path(__file__).resolve().parents[1]
expect = None  # playwright.sync_api.expect once the test imported Playwright (its waits run despite the page's CSP)
HTML_COMPLETION = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"


def chromium_executable() -> str:
    """Debian's Chromium, or ``TEXTENV_CHROMIUM``; fails the test with how to install it."""
    given = os.environ.get("TEXTENV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(given).is_file():
        pytest.fail("the browser test needs Chromium: `apt-get install chromium` (Debian/Ubuntu) or set "
                    "TEXTENV_CHROMIUM=/path/to/chromium; Playwright's own browser download is not used")
    return given


def sync_playwright():
    global expect
    try:
        from playwright.sync_api import expect
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.fail("the browser test needs Playwright's Python package: pip install 'textenv[test]' (or pip "
                    "install playwright; no `playwright install` needed, the system Chromium is used)")
    return start()


def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("TEXTENV_SCREENSHOTS")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    return tmp_path_factory.mktemp("screenshots", numbered=False)


def start_server(argv: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """``textenv serve ARGV --port 0`` in a subprocess; returns it and its base URL once it listens."""
    with open(log, "w", encoding="utf-8") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, "-m", "textenv", "serve", *argv, "--port", "0"], cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+/)", log.read_text(encoding="utf-8"))
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"textenv serve did not start:\n{log.read_text(encoding='utf-8')}")


def stop_server(process: subprocess.Popen) -> None:
    """Ctrl-C, as a person stops it; SIGKILL if it does not stop in 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def rank_item(page, keyboard: bool) -> list[str]:
    """Rank the item on screen best first: the completions in reverse screen order (so the order differs from the
    one shown), by clicking them or pressing their numbers, then save. Returns the texts in the ranking."""
    buttons = page.locator("#completions button.completion")
    count = buttons.count()
    texts = [buttons.nth(i).locator(".text").text_content() for i in range(count)]
    order = list(range(count))[::-1]
    for index in order[:-1]:  # the last one is implied
        if keyboard:
            page.keyboard.press(str(index + 1))
        else:
            buttons.nth(index).click()
    assert page.locator("#completions .completion.ranked").count() == count
    return [texts[i] for i in order]


def label_two_items(page, base: str, shots: Path) -> list[tuple[str, list[str]]]:
    """On /label: log in, rank item 1 with the mouse and item 2 with the keyboard; returns (prompt, ranking)."""
    page.goto(base + "label")
    page.fill("#name", "Ada")
    page.click("#start")
    page.wait_for_selector("#completions button.completion")
    saved = []
    prompt = page.text_content("#prompt")
    ranking = rank_item(page, keyboard=False)
    assert HTML_COMPLETION in ranking  # the completion holding HTML is shown as its text
    assert page.evaluate("window.__pwned") is None  # ... and nothing of it ran
    page.screenshot(path=str(shots / "label.png"), full_page=True)
    page.click("#save")
    expect(page.locator("#counts")).to_have_text(re.compile("^1 of"))
    saved.append((prompt, ranking))
    page.wait_for_selector("#completions button.completion")
    prompt = page.text_content("#prompt")
    ranking = rank_item(page, keyboard=True)
    page.keyboard.press("Enter")
    expect(page.locator("#counts")).to_have_text(re.compile("^2 of"))
    saved.append((prompt, ranking))
    assert page.evaluate("window.__pwned") is None
    page.keyboard.press("b")  # back: the item just saved, read-only
    expect(page.locator("#where")).to_have_text(re.compile("1 back · saved"))
    expect(page.locator("#completions .completion.ranked")).to_have_count(len(ranking))
    page.keyboard.press("n")  # forward: the next item to rank again
    expect(page.locator("#where")).to_be_hidden()
    return saved


def play_one_episode(page, base: str, shots: Path) -> dict:
    """On /play: a new game; choose a candidate, type text, let the policy sample, undo, end; returns the figures."""
    page.goto(base + "play")
    page.fill("#prompt-input", "The pasta at this restaurant")
    page.click("#new-game")
    page.wait_for_selector("#candidates button.candidate", timeout=120_000)
    assert page.locator("#candidates button.candidate").count() == 5
    page.locator("#candidates button.candidate").nth(1).click()  # the policy's second choice
    expect(page.locator("#episode .tok")).to_have_count(1)
    page.fill("#type-input", " was")
    page.click("#type")
    expect(page.locator("#episode .tok.typed").first).to_be_visible()
    page.click("#sample")
    expect(page.locator("#episode .tok.sampled")).to_have_count(1)
    page.screenshot(path=str(shots / "play-state.png"), full_page=True)
    page.click("#undo")
    expect(page.locator("#episode .tok.sampled")).to_have_count(0)
    page.keyboard.press("Space")  # the policy samples again
    expect(page.locator("#episode .tok.sampled")).to_have_count(1)
    page.click("#end")
    expect(page.locator("#result")).to_be_visible()
    page.click("#prefer-policy")  # which completion is better: saved as a preference pair
    expect(page.locator("#status")).to_have_text(re.compile("saved|same text"))
    page.screenshot(path=str(shots / "play.png"), full_page=True)
    cells = page.locator("#figures tbody tr")
    figures = {cells.nth(i).locator("td").nth(0).text_content(): (cells.nth(i).locator("td.mine").text_content(),
                                                                   cells.nth(i).locator("td.theirs").text_content())
               for i in range(cells.count())}
    return {"mine": page.text_content("#mine"), "theirs": page.text_content("#theirs"), "figures": figures}


@pytest.mark.slow
def test_play_one_episode_and_label_two_items_in_chromium(tmp_path, tmp_path_factory, capsys):
    executable = chromium_executable()
    playwright = sync_playwright()
    shots = screenshot_dir(tmp_path_factory)
    data = tmp_path / "sets.jsonl"
    rows = [{"prompt": "The hotel room was", "completions": [" clean and quiet.", HTML_COMPLETION, " small."]},
            {"prompt": "This blender", "completions": [" works well.", " broke in a week.", " is loud.",
                                                       " is fine."]},
            {"prompt": "The book", "completions": [" was great.", " was dull."]}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    output = tmp_path / "prefs.jsonl"
    server, base = start_server(["--data", str(data), "--output", str(output), "--top-k", "5",
                                 "--max-new-tokens", "6"], tmp_path / "server.log")
    try:
        with playwright as p:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            labelled = label_two_items(page, base, shots)
            played = play_one_episode(page, base, shots)
            page.goto(base)
            expect(page.locator("#label-info")).to_have_text(re.compile("2 of 3"))
            page.screenshot(path=str(shots / "start.png"), full_page=True)
            browser.close()
    finally:
        stop_server(server)
    with capsys.disabled():
        print(f"\nscreenshots of textenv serve: {shots}/start.png, label.png, play-state.png, play.png")
    assert not errors, errors
    assert server.returncode == 0, (tmp_path / "server.log").read_text()
    saved = load_preferences(output)
    rankings = [row for row in saved if isinstance(row, PreferenceRanking)]
    assert [(row.prompt, list(row.ranked)) for row in rankings] == labelled
    assert all(row.meta["labeller"] == "Ada" for row in saved)
    assert played["mine"] and played["theirs"]
    pairs = [row for row in saved if isinstance(row, PreferencePair)]  # the Play page's answer
    assert len(saved) == 3 and len(pairs) == 1 and pairs[0].prompt == "The pasta at this restaurant"
    assert (pairs[0].chosen, pairs[0].rejected) == (played["theirs"], played["mine"])
    mine_reward, _ = played["figures"]["reward r_φ"]
    mine_kl, _ = played["figures"]["KL (nats)"]
    mine_beta, _ = played["figures"]["β"]
    mine_return, _ = played["figures"]["return R = r − β·KL"]
    assert float(mine_return) == pytest.approx(float(mine_reward) - float(mine_beta) * float(mine_kl), abs=2e-3)
    for name in ("start.png", "label.png", "play-state.png", "play.png"):
        assert (shots / name).stat().st_size > 10_000, name
