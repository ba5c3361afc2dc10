"""examples/swap_algorithms.py: every (agent, task, seed) trains, the statistics are right, and runs resume."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from textenv.comparison import iqm

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_comparison(model_dir: Path, out: Path, agents: list[str], tasks: list[str], seeds: int,
                     *extra: str) -> list[str]:
    return ["--model", str(model_dir), "--agents", *agents, "--tasks", *tasks, "--seeds", str(seeds),
            "--total-timesteps", "32", "--num-envs", "8", "--max-new-tokens", "4", "--eval-prompts", "8",
            "--bootstrap", "200", "--output", str(out), *extra]


@pytest.fixture(scope="module")
def two_tasks():
    return ["length", "avoid"]  # their gold scores vary even for the random tiny model's text (VADER's stay 0)


def test_every_agent_task_and_seed_trains_and_the_summary_is_the_iqm_of_normalised_scores(
        tiny_model_dir, tmp_path, capsys, two_tasks):
    example = load_example("swap_algorithms")
    out = tmp_path / "swap"
    assert example.main(small_comparison(tiny_model_dir, out, ["reinforce", "rloo"], two_tasks, 2)) == 0

    report = json.loads((out / "comparison.json").read_text())
    runs = report["runs"]
    assert sorted((r["agent"], r["task"], r["seed"]) for r in runs) == sorted(
        (a, t, s) for a in ("reinforce", "rloo") for t in two_tasks for s in (0, 1))
    assert all(r["tokens"] >= 32 and np.isfinite(r["score"]) and np.isfinite(r["kl"]) for r in runs)

    for agent, row in report["agents"].items():
        scores = np.array(row["normalised"])
        assert scores.shape == (2, len(two_tasks))
        assert row["iqm"] == pytest.approx(iqm(scores))
        assert row["ci_low"] <= row["iqm"] <= row["ci_high"]
        for j, task in enumerate(two_tasks):  # 0 = the untrained policy, 1 = the task's best run
            untrained = report["untrained"][task]
            best = max(r["score"] for r in runs if r["task"] == task)
            mine = sorted((r for r in runs if (r["agent"], r["task"]) == (agent, task)), key=lambda r: r["seed"])
            raw = [r["score"] for r in mine]
            assert scores[:, j] == pytest.approx([(x - untrained) / (best - untrained) for x in raw])
            assert row["tasks"][task]["score"] == pytest.approx(np.mean(raw))
    assert max(np.max(row["normalised"]) for row in report["agents"].values()) == pytest.approx(1.0)

    table = (out / "comparison.md").read_text()
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["reinforce", "rloo"]
    assert table in capsys.readouterr().out  # the printed table is the saved one
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_finished_runs_are_skipped_and_a_new_seed_trains_only_its_runs(tiny_model_dir, tmp_path, capsys, two_tasks):
    example = load_example("swap_algorithms")
    out = tmp_path / "swap"
    task = two_tasks[:1]
    assert example.main(small_comparison(tiny_model_dir, out, ["reinforce"], task, 1)) == 0
    first = (out / "runs" / task[0] / "reinforce" / "seed0" / "result.json").read_bytes()
    capsys.readouterr()

    assert example.main(small_comparison(tiny_model_dir, out, ["reinforce"], task, 2)) == 0
    assert "1 runs already finished, 1 to train" in capsys.readouterr().out
    assert (out / "runs" / task[0] / "reinforce" / "seed0" / "result.json").read_bytes() == first
    assert len(json.loads((out / "comparison.json").read_text())["runs"]) == 2


def test_a_rerun_with_other_settings_never_mixes_in_the_earlier_runs(tiny_model_dir, tmp_path, capsys, two_tasks):
    """Finished runs (and the cached untrained score) are reused only under the settings they were made with: a
    rerun into the same --output with another budget or evaluation would normalise against stale numbers."""
    example = load_example("swap_algorithms")
    out = tmp_path / "swap"
    task = two_tasks[:1]
    assert example.main(small_comparison(tiny_model_dir, out, ["reinforce"], task, 1)) == 0
    before = {p: p.read_bytes() for p in out.rglob("*.json")}
    for changed in (["--eval-prompts", "4"], ["--kl-coef", "0.1"]):
        with pytest.raises(ValueError, match="--output"):
            example.main(small_comparison(tiny_model_dir, out, ["reinforce"], task, 1, *changed))
    assert {p: p.read_bytes() for p in out.rglob("*.json")} == before  # nothing retrained or rewritten
    capsys.readouterr()
    assert example.main(small_comparison(tiny_model_dir, out, ["reinforce"], task, 1, "--bootstrap", "100")) == 0
    assert "1 runs already finished, 0 to train" in capsys.readouterr().out  # settings that change no run


@pytest.mark.slow
def test_jobs_train_in_separate_processes_with_the_same_results(tiny_model_dir, tmp_path):
    example = load_example("swap_algorithms")
    example.main(small_comparison(tiny_model_dir, tmp_path / "serial", ["reinforce"], ["length"], 2))
    command = [sys.executable, str(EXAMPLES / "swap_algorithms.py"),  # as a user runs it: workers are spawned
               *small_comparison(tiny_model_dir, tmp_path / "parallel", ["reinforce"], ["length"], 2, "--jobs", "2")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("done: reinforce on length") == 2
    serial, parallel = (json.loads((tmp_path / d / "comparison.json").read_text())["runs"]
                        for d in ("serial", "parallel"))
    by_seed = lambda r: r["seed"]  # noqa: E731
    assert [(r["score"], r["kl"]) for r in sorted(serial, key=by_seed)] == [
        (r["score"], r["kl"]) for r in sorted(parallel, key=by_seed)]


def test_unknown_names_fail_before_any_training(tmp_path):
    example = load_example("swap_algorithms")
    with pytest.raises(ValueError, match="agent 'nope' is not registered"):
        example.main(["--agents", "ppo", "nope", "--output", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="nope"):
        example.main(["--tasks", "nope", "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_offline_agents_train_on_the_tasks_ranked_completions(tiny_model_dir, tmp_path):
    example = load_example("swap_algorithms")
    out = tmp_path / "swap"
    assert example.main(small_comparison(tiny_model_dir, out, ["dpo", "ilql"], ["length"], 2,
                                         "--offline-prompts", "8")) == 0
    data = [json.loads(line) for line in (out / "offline-data" / "length.jsonl").read_text().splitlines()]
    assert 0 < len(data) <= 8 and all(len(row["ranked"]) >= 2 for row in data)  # ranked by gold; ties dropped
    assert not [p for p in (out / "offline-data").iterdir() if "partial" in p.name]
    report = json.loads((out / "comparison.json").read_text())
    assert set(report["agents"]) == {"dpo", "ilql"}
    assert all(r["tokens"] >= 32 and np.isfinite(r["score"]) for r in report["runs"])
