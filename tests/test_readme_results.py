"""The README's learning table is generated, never typed: ``examples/swap_algorithms.py --from FILE --readme ...``
renders ``docs/results/comparison.json`` (a real 8-agent × 5-task × 3-seed comparison) into the block between
``<!-- comparison-table:begin -->`` and ``<!-- comparison-table:end -->`` of README.md and docs/tasks.md.

* The blocks of the repository are exactly what the README's command renders from the shipped json, so a table
  edited by hand, or a json changed without rerunning the command, fails here.
* The command rewrites only the block (every other byte of the page stays, line endings and permissions too), and
  running it twice changes nothing.
* Bad inputs (no markers, two markers, a missing or incomplete json, flags that do not go together) are refused
  with an ``InputError`` naming the argument, before any file is written.
* The command runs as the README states it, in a fresh process.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_examples import load_example

from textenv.validation import InputError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "swap_algorithms.py"
RESULTS = ROOT / "docs" / "results" / "comparison.json"
#: The files the README's command reads and writes, relative to the repository's root.
PAGES = ("README.md", "docs/tasks.md")
#: The README's command, as a user types it from the repository's root (after ``python examples/swap_algorithms.py``).
COMMAND = ["--from", "docs/results/comparison.json", "--readme", *PAGES, "--plot", "docs/results/comparison.png"]
BEGIN, END = "<!-- comparison-table:begin -->", "<!-- comparison-table:end -->"


@pytest.fixture(scope="module")
def example():
    return load_example("swap_algorithms")


def block_of(text: str) -> str:
    """The text between the page's marker lines."""
    return text.split(BEGIN + "\n", 1)[1].split(END, 1)[0]


def page_with_block(tmp_path: Path, inside: str = "| a stale table |\n", newline: str = "\n") -> Path:
    """A Markdown page of a few paragraphs around a marker pair holding ``inside``."""
    text = (f"# My project\n\nIntro with a `code span` and trailing spaces   \n\n{BEGIN}\n{inside}{END}\n\n"
            "## After\n\nThe end, no final newline").replace("\n", newline)
    tmp_path.mkdir(exist_ok=True)
    page = tmp_path / "README.md"
    page.write_bytes(text.encode("utf-8"))
    return page


# ---------------------------------------------------------------------------------------------- (a) the repository
def test_the_readme_states_the_command_and_its_blocks_are_what_it_renders(example, monkeypatch):
    monkeypatch.chdir(ROOT)  # the command's paths are the repository's
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = " ".join(block_of(readme).split())  # the block's prose is wrapped at 120 columns
    assert "`python examples/swap_algorithms.py " + " ".join(COMMAND) + "`" in stated
    args = example.parse_args(COMMAND)
    for page, (now, rendered) in example.rendered_pages(args, example.read_comparison(args.from_json)).items():
        assert now == rendered, f"{page}'s comparison table is not what `{example.report_command(args)}` renders"


def test_the_readme_shows_every_agents_iqm_ci_kl_and_the_settings_of_the_json():
    comparison = json.loads(RESULTS.read_text(encoding="utf-8"))
    block = block_of((ROOT / "README.md").read_text(encoding="utf-8"))
    rows = {line.split("|")[1].strip(): line for line in block.splitlines() if line.startswith("| ")}
    for agent, row in comparison["agents"].items():
        label = f"{agent} (offline)" if agent in ("dpo", "lrml", "ilql") else agent
        assert f"| {row['iqm']:.3f} | [{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {row['kl']:.2f} |" in rows[label]
    settings, prose = comparison["settings"], " ".join(block.split())
    assert settings["seeds"] == 3 and len(settings["tasks"]) == 5 and len(comparison["runs"]) == 8 * 3 * 5
    assert "3 seeds (0, 1, 2) × 5 tasks = 15 runs per agent, each a 20,000-token budget" in prose
    assert "95 % CI: stratified bootstrap (2,000 resamples" in prose
    assert "positive +0.020, negative -0.020, length +0.259" in prose  # the untrained baselines
    assert "[IQM with CIs and performance profiles](docs/results/comparison.png)" in prose
    assert "/work/" not in RESULTS.read_text(encoding="utf-8")  # no machine path is committed


def test_docs_tasks_shows_the_same_block_with_links_relative_to_itself():
    text = (ROOT / "docs" / "tasks.md").read_text(encoding="utf-8")
    prose = " ".join(block_of(text).split())
    assert "(results/comparison.png)" in prose and "(results/comparison.json)" in prose
    assert "0.931" in prose and "0.931" not in text.replace(block_of(text), "")  # the numbers: in the block only


# ---------------------------------------------------------------------------------------------- (b) one block only
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_the_command_rewrites_only_the_block_and_twice_changes_nothing(example, tmp_path, newline, capsys):
    page = page_with_block(tmp_path, newline=newline)
    page.chmod(0o664)
    before = page.read_bytes()
    assert example.main(["--from", str(RESULTS), "--readme", str(page)]) == 0
    after = page.read_bytes()
    begin, end = (before.index(marker.encode()) for marker in (BEGIN, END))
    new_end = after.index(END.encode())
    assert after[:begin + len(BEGIN) + len(newline)] == before[:begin + len(BEGIN) + len(newline)]
    assert after[new_end:] == before[end:]  # every byte after the block, the missing final newline too
    inside = after[begin + len(BEGIN) + len(newline):new_end].decode("utf-8")
    assert "| a stale table |" not in inside and "| ppo | 0.931 | [0.918, 0.947] | 3.12 |" in inside
    assert inside.count(newline) == inside.count("\n")  # the page's line endings
    assert page.stat().st_mode & 0o777 == 0o664
    assert f"{page}: table rewritten" in capsys.readouterr().out

    assert example.main(["--from", str(RESULTS), "--readme", str(page)]) == 0
    assert page.read_bytes() == after
    assert f"{page}: table already up to date" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left


def test_without_readme_it_prints_the_block_and_writes_nothing(example, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert example.main(["--from", str(RESULTS)]) == 0
    out = capsys.readouterr().out
    assert "| sb3-ppo | 0.957 | [0.936, 0.982] | 5.76 |" in out and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- (c) bad inputs
def incomplete_json(tmp_path: Path, drop: str) -> Path:
    data = json.loads(RESULTS.read_text(encoding="utf-8"))
    if drop == "agents":
        del data["agents"]
    elif drop == "ci_high":
        del data["agents"]["ppo"]["ci_high"]
    else:  # not JSON at all
        path = tmp_path / "broken.json"
        path.write_text(RESULTS.read_text(encoding="utf-8")[:500])
        return path
    path = tmp_path / f"no-{drop}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.bad_input
@pytest.mark.parametrize("inside, message", [
    (None, f"--readme .*README.md has no line {BEGIN}: put the two lines"),
    (f"{BEGIN}\n| old |\n", f"--readme .*README.md has 2 lines {BEGIN}: keep one pair"),
    (f"| old |\n{END}\n", f"--readme .*README.md has 2 lines {END}"),
], ids=["no-markers", "two-begin-markers", "two-end-markers"])
def test_pages_without_exactly_one_marker_pair_are_refused_and_untouched(example, tmp_path, inside, message):
    page = page_with_block(tmp_path, inside=inside or "")
    if inside is None:
        page.write_text(page.read_text().replace(BEGIN + "\n", "").replace(END + "\n", ""))
    good = page_with_block(tmp_path / "other")  # given first: it is not rewritten either
    before = {p: p.read_bytes() for p in (page, good)}
    with pytest.raises(InputError, match=message):
        example.main(["--from", str(RESULTS), "--readme", str(good), str(page)])
    assert {p: p.read_bytes() for p in (page, good)} == before  # checked before any file is written


@pytest.mark.bad_input
def test_markers_in_the_wrong_order_are_refused(example, tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"{END}\ntext\n{BEGIN}\n")
    with pytest.raises(InputError, match=re.escape(f"--readme {page}: {END} comes before {BEGIN}")):
        example.main(["--from", str(RESULTS), "--readme", str(page)])


@pytest.mark.bad_input
@pytest.mark.parametrize("drop, message", [
    ("agents", "--from .*no-agents.json is not a complete comparison.json: 'agents' is missing"),
    ("ci_high", "--from .*no-ci_high.json is not a complete comparison.json: agents.ppo.ci_high is missing"),
    ("text", "--from .*broken.json is not a readable JSON file"),
])
def test_an_incomplete_or_broken_json_is_refused(example, tmp_path, drop, message):
    page = page_with_block(tmp_path)
    before = page.read_bytes()
    with pytest.raises(InputError, match=message):
        example.main(["--from", str(incomplete_json(tmp_path, drop)), "--readme", str(page)])
    assert page.read_bytes() == before


@pytest.mark.bad_input
@pytest.mark.parametrize("argv, message", [
    (["--from", "{tmp}/missing.json"], "--from .*missing.json: no such file; give the comparison.json"),
    (["--readme", "README.md"], "--readme renders a finished comparison: add --from"),
    (["--from", "{results}", "--agents", "ppo", "--seeds", "5"], "drop --agents --seeds"),
    (["--from", "{results}", "--plot", "{tmp}/figure.pdf"], "--plot .*figure.pdf: the figure is a PNG"),
    (["--from", "{results}", "--plot", "{tmp}/notes.png"], "--plot .*notes.png exists and is not a PNG image"),
    (["--from", "{results}", "--plot", "{tmp}/nowhere/figure.png"], "--plot .*is not a directory"),
], ids=["missing-json", "readme-without-from", "training-flags", "plot-not-png", "plot-over-a-file", "plot-no-dir"])
def test_report_flags_that_cannot_work_are_refused(example, tmp_path, argv, message):
    (tmp_path / "notes.png").write_text("my notes, not a figure")
    argv = [word.format(tmp=tmp_path, results=RESULTS) for word in argv]
    with pytest.raises(InputError, match=message):
        example.main(argv)
    assert (tmp_path / "notes.png").read_text() == "my notes, not a figure"


# ---------------------------------------------------------------------------------------------- (d) as a user runs it
def test_the_readme_command_runs_as_stated(tmp_path):
    """A copy of the repository's pages and json: the README's command (a fresh process, from the root) finds
    them up to date, draws the figure, and a mistake is one line on stderr with exit status 2."""
    for name in (*PAGES, "docs/results/comparison.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, tmp_path / name)
    done = subprocess.run([sys.executable, str(SCRIPT), *COMMAND], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert all((tmp_path / name).read_bytes() == (ROOT / name).read_bytes() for name in PAGES)
    assert "README.md: table already up to date" in done.stdout
    png = (tmp_path / "docs" / "results" / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    (tmp_path / "README.md").write_text("no markers here\n")
    done = subprocess.run([sys.executable, str(SCRIPT), *COMMAND], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: --readme README.md has no line {BEGIN}")
