"""benchmarks/learning.py --vs-trl: our agents against TRL's RLOO and GRPO trainers under one CPU budget.

The slow test runs the benchmark's ``--quick`` smoke run end to end (every row in its own process, TRL's
trainers included) on the tiny test model and checks its output; the others test the pieces that decide the
last line.
"""

from __future__ import annotations

import importlib
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
