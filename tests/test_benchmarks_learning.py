"""benchmarks/learning.py --vs-trl: our agents against TRL's RLOO and GRPO trainers under one CPU budget.

The slow test runs the benchmark's ``--quick`` smoke run end to end (every row in its own process, TRL's
trainers included) on the tiny test model and checks its output; the others test the pieces that decide the
last line.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: A table row: name | before → after | change | KL | CPU-min | wall-min | tokens (finite numbers only).
ROW = re.compile(r"^\s*(\S+) \| ([+-]\d+\.\d{3}) → ([+-]\d+\.\d{3}) \| +([+-]\d+\.\d{3}) \| +(-?\d+\.\d{2}) \| +"
                 r"(\d+\.\d{2}) \| +(\d+\.\d{2}) \| +(\d+)$")


@pytest.fixture(scope="module")
def learning():
    """benchmarks/learning.py as a module (it imports its neighbour ``trl_setup`` as the script does)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("learning")
    finally:
        sys.path.remove(str(BENCHMARKS))


def row(agent: str, change: float, kl: float) -> dict:
    return {"agent": agent, "change": change, "kl": kl}


def test_the_best_row_is_the_largest_gain_within_the_kl_bound(learning):
    rows = [row("ppo", 0.9, 6.0), row("rloo", 0.6, 4.9), row("grpo", math.nan, 1.0), row("reinforce", 0.5, 1.0)]
    assert learning.best_gain(rows, max_kl=5.0)["agent"] == "rloo"  # ppo is over the bound, nan never wins
    assert learning.best_gain(rows, max_kl=10.0)["agent"] == "ppo"
    assert learning.best_gain([row("ppo", 0.9, 6.0)], max_kl=5.0) is None


def test_the_ratio_is_ours_over_theirs_and_says_when_it_cannot_be_a_number(learning):
    assert learning.learning_ratio(row("ppo", 0.9, 1), row("trl-rloo", 0.6, 1)) == pytest.approx(1.5)
    assert learning.learning_ratio(row("ppo", 0.9, 1), None) == math.inf  # TRL has no row within the bound
    assert learning.learning_ratio(row("ppo", 0.9, 1), row("trl-rloo", -0.1, 1)) == math.inf
    assert learning.learning_ratio(None, row("trl-rloo", 0.6, 1)) == 0.0
    assert math.isnan(learning.learning_ratio(None, None))


def test_the_rows_alternate_sides(learning):
    schedule = learning.vs_trl_schedule(Namespace(agents=["rloo", "grpo", "ppo"], trl_trainers=["rloo", "grpo"]))
    assert schedule == [("ours", "rloo"), ("trl", "rloo"), ("trl", "grpo"), ("ours", "grpo"), ("ours", "ppo")]
    next_seed = learning.vs_trl_schedule(Namespace(agents=["rloo", "grpo"], trl_trainers=["rloo"]), first=1)
    assert next_seed == [("trl", "rloo"), ("ours", "rloo"), ("ours", "grpo")]  # TRL first in the next seed


def test_the_seeds_are_averaged_per_trainer_and_per_checkpoint(learning):
    def seed_row(change, kl, point_change):
        return {"agent": "ppo", "before": 0.0, "after": change, "change": change, "kl": kl, "cpu_min": 0.5,
                "wall_min": 1.0, "tokens": 100, "iterations": 3,
                "curve": [{"checkpoint_min": 0.25, "cpu_min": 0.26, "tokens": 50, "gold": point_change, "kl": 1.0,
                           "change": point_change}]}

    mean = learning.mean_row([seed_row(0.8, 2.0, 0.4), seed_row(0.6, 4.0, 0.2)])
    assert mean["agent"] == "ppo" and mean["change"] == pytest.approx(0.7) and mean["kl"] == pytest.approx(3.0)
    assert mean["change_std"] == pytest.approx(0.1414, abs=1e-4) and mean["tokens"] == 100
    assert [p["change"] for p in mean["curve"]] == pytest.approx([0.3]) and mean["curve"][0]["tokens"] == 50


def burn_cpu(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        sum(i * i for i in range(10_000))


def test_the_trl_trainers_stop_at_the_first_step_end_past_the_cpu_budget(learning):
    budget = learning.CPUBudget(learning.TrainingClock(budget_s=0.05))
    budget.on_train_begin(None, None, None)
    control = SimpleNamespace(should_training_stop=False)
    budget.on_step_end(None, None, control)
    assert not control.should_training_stop and budget.steps == 1
    while not control.should_training_stop:
        burn_cpu(0.01)
        budget.on_step_end(None, None, control)
    assert 0.05 <= budget.cpu_s < 0.5 and budget.steps > 2


def test_checkpoints_evaluate_once_each_and_their_time_is_not_charged_to_the_budget(learning):
    clock = learning.TrainingClock(budget_s=0.2, checkpoints_s=[0.05, 0.1, 0.3])  # 0.3 is past the budget
    evaluations = []

    def evaluate():  # slow: 0.1 CPU-s, half the budget, each time
        evaluations.append(clock.cpu_s)
        burn_cpu(0.1)
        return {"gold_reward": 0.5, "kl": 1.0}

    clock.start()
    steps = 0
    while not clock.done():
        burn_cpu(0.01)
        steps += 1
        clock.after_step(evaluate, tokens=steps)
    assert len(evaluations) == 2 and [p["checkpoint_min"] * 60 for p in clock.curve] == pytest.approx([0.05, 0.1])
    assert all(p["cpu_min"] * 60 >= p["checkpoint_min"] * 60 for p in clock.curve)
    assert 0.2 <= clock.cpu_s < 0.3, "the 0.2 CPU-s of evaluation were paused out of the clock"
    assert steps >= 15  # 0.2 CPU-s of 0.01-s steps, evaluation excluded


@pytest.mark.slow
def test_quick_run_scores_every_trainer_and_ends_with_the_ratio():
    """On the embedded model (VADER scores its reviews; a random tiny model's text scores 0): one native agent
    and both TRL trainers, each in its own process."""
    pytest.importorskip("trl")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "learning.py"), "--vs-trl", "--quick", "--agents", "rloo",
         "--trl-trainers", "rloo", "grpo", "--cpu-minutes", "0.02", "--eval-prompts", "4", "--eval-at", "0.5"],
        check=False, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    rows = {m.group(1): [float(g) for g in m.groups()[1:]] for m in map(ROW.match, lines) if m}
    assert set(rows) == {"rloo", "trl-rloo", "trl-grpo"}, result.stdout
    for name, (before, after, change, kl, cpu_min, _wall, tokens) in rows.items():
        assert all(math.isfinite(v) for v in (before, after, change, kl)), name
        assert change == pytest.approx(after - before, abs=2e-3) and tokens > 0 and cpu_min >= 0.02 - 0.005, name
    befores = {before for before, *_ in rows.values()}
    assert len(befores) == 1 and befores != {0.0}, f"every row starts from the same model and evaluation seed: {rows}"
    point = re.compile(r" +at \d+\.\d\d CPU-min, \d+ tokens: [+-]\d\.\d{3} \(KL -?\d+\.\d\d\)")
    assert sum(bool(point.fullmatch(line)) for line in lines) == 3, result.stdout  # --eval-at 0.5: one per row
    ratio = r"(-?\d+\.\d\d|inf|nan)"
    assert any(re.fullmatch(rf"learning_vs_trl after 0\.01 CPU-min: {ratio}", line) for line in lines), result.stdout
    assert re.fullmatch(rf"learning_vs_trl: {ratio}", lines[-1]), lines[-1]


def task_row(agent: str, before: float, change: float, kl: float = 1.0) -> dict:
    return {"agent": agent, "before": before, "change": change, "kl": kl}


def test_on_one_task_the_ratio_is_the_ratio_of_the_gains(learning):
    rows = {"positive": [task_row("ppo", 0.0, 0.9), task_row("trl-grpo", 0.0, 0.6), task_row("rloo", 0.0, 0.3)]}
    assert learning.suite_ratio(rows, max_kl=5.0) == pytest.approx(1.5)


def test_on_the_suite_the_ratio_compares_mean_fractions_of_the_headroom(learning):
    rows = {
        "positive": [task_row("ppo", 0.2, 0.4), task_row("trl-rloo", 0.2, 0.4)],  # both gain half the headroom
        "topic": [task_row("ppo", 0.0, 0.5), task_row("trl-rloo", 0.0, 0.1)],
    }
    suite = {r["agent"]: r for r in learning.suite_rows(rows)}
    assert suite["ppo"]["change"] == pytest.approx((0.5 + 0.5) / 2)
    assert suite["trl-rloo"]["change"] == pytest.approx((0.5 + 0.1) / 2)
    assert learning.suite_ratio(rows, max_kl=5.0) == pytest.approx(0.5 / 0.3)
    # a trainer counts only if it is within the KL bound on every task ...
    rows["topic"][0]["kl"] = 6.0
    assert learning.suite_rows(rows)[0]["kl"] == 6.0 and learning.suite_ratio(rows, max_kl=5.0) == 0.0
    # ... and only if it has a row on every task
    rows["topic"] = [task_row("trl-rloo", 0.0, 0.1)]
    assert [r["agent"] for r in learning.suite_rows(rows)] == ["trl-rloo"]


def test_every_seed_and_task_gets_every_row_and_the_first_side_alternates(learning):
    args = Namespace(agents=["rloo", "ppo"], trl_trainers=["rloo"], seed=3, seeds=2, tasks=["positive", "topic"])
    schedule = learning.row_schedule(args)
    assert len(schedule) == 2 * 2 * 3 and len(set(schedule)) == len(schedule)
    assert [s[2] for s in schedule[::3]] == ["ours", "trl", "ours", "trl"]  # who goes first, per (seed, task)
    assert {s[0] for s in schedule} == {3, 4}


def test_a_rows_file_is_resumed_only_with_the_same_settings(learning, tmp_path):
    args = Namespace(**{key: 1 for key in learning.ROW_SETTINGS})
    path = tmp_path / "rows.jsonl"
    assert learning.finished_rows(path, args) == []  # a new file: nothing finished yet
    row = {"agent": "ppo", "task": "topic", "seed": 0, "change": 0.5}
    path.write_text(json.dumps({"settings": vars(args)}) + "\n" + json.dumps({"row": row}) + "\n")
    assert learning.finished_rows(path, args) == [row]
    with pytest.raises(SystemExit, match="cpu_minutes.*use a new --output"):
        learning.finished_rows(path, Namespace(**{**vars(args), "cpu_minutes": 2}))
    path.write_text(json.dumps({"row": row}) + "\n")
    with pytest.raises(SystemExit, match="not a learning.py rows file"):
        learning.finished_rows(path, args)


def seed_rows(agent: str, task: str, changes: list[float], kl: float = 1.0, before: float = 0.0) -> list[dict]:
    return [{"agent": agent, "task": task, "seed": seed, "before": before, "after": before + change,
             "change": change, "kl": kl, "cpu_min": 0.5, "wall_min": 0.5, "tokens": 100, "iterations": 2,
             "curve": []} for seed, change in enumerate(changes)]


def test_the_ratio_interval_resamples_the_seeds_of_the_trainers_within_the_bound(learning):
    args = Namespace(tasks=["positive", "topic"], max_kl=5.0, seed=0)

    def interval(rows):
        means = {t: [learning.mean_row([r for r in rows if (r["agent"], r["task"]) == (a, t)])
                     for a in sorted({r["agent"] for r in rows if r["task"] == t})] for t in args.tasks}
        return learning.ratio_interval(rows, means, args)

    rows = (seed_rows("ppo", "positive", [0.6, 0.6, 0.6]) + seed_rows("ppo", "topic", [0.2, 0.2, 0.2])
            + seed_rows("trl-grpo", "positive", [0.3, 0.3, 0.3]) + seed_rows("trl-grpo", "topic", [0.1, 0.1, 0.1]))
    assert interval(rows) == pytest.approx((2.0, 2.0))  # no spread over seeds: no width
    noisy = rows + seed_rows("rloo", "positive", [0.0, 0.9, 0.9]) + seed_rows("rloo", "topic", [0.0, 0.3, 0.3])
    low, high = interval(noisy)
    point = learning.suite_ratio({t: [learning.mean_row([r for r in noisy if (r["agent"], r["task"]) == (a, t)])
                                      for a in ("ppo", "rloo", "trl-grpo")] for t in args.tasks}, 5.0)
    assert low == pytest.approx(2.0) and high == pytest.approx(3.0) and low <= point <= high
    # rloo over the KL bound does not count, in the point estimate or in the resamples
    over = rows + seed_rows("rloo", "positive", [0.0, 0.9, 0.9], kl=9.0) + seed_rows("rloo", "topic", [0.0, 0.3, 0.3])
    assert interval(over) == pytest.approx((2.0, 2.0))
    assert interval(rows[:-1]) is None  # a trainer is missing a seed: no interval


def test_the_shipped_rows_reproduce_the_published_ratio():
    """docs/results/learning_vs_trl.jsonl is the reported run: reporting it trains nothing and gives the numbers the
    docs quote (docs/engine.md and the README)."""
    root = BENCHMARKS.parent
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "learning.py"), "--vs-trl", "--output",
         str(root / "docs/results/learning_vs_trl.jsonl")],
        check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "75 rows read from" in result.stdout and "0 to train" in result.stdout
    ratio = re.fullmatch(r"learning_vs_trl: (\d+\.\d\d)", lines[-1]).group(1)
    interval = re.fullmatch(r"learning_vs_trl 95 % CI over the seeds .*: (\[\d+\.\d\d, \d+\.\d\d\])",
                            lines[-2]).group(1)
    for page in ("docs/engine.md", "README.md"):
        text = (root / page).read_text()
        assert f"learning_vs_trl: {ratio}" in text and interval in text, page
