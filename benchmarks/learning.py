"""Learning under a CPU budget: does every native agent raise the held-out gold score within a few CPU-minutes?

The tasks of the suite (``textenv.TASKS``, docs/tasks.md; ``--tasks``, default ``positive``) on the
2.66M-parameter review GPT-2 (``textenv/default``): the policy continues a task's training prompts; the reward
is the task's gold score of the completion (positive: the VADER compound score, in [−1, 1]) minus β·Σ_t KL_t to
the frozen start model (InstructGPT eq. 2), T = the task's completion length unless ``--max-new-tokens``. Each
agent gets a FRESH env and trains, on its default hyper-parameters, for the same CPU-time budget
(``time.process_time``: CPU seconds of this process, summed over its threads; evaluation excluded), whole
iterations at a time.

Before and after training, the policy is measured on the task's held-out prompts (never trained on) with
:func:`textenv.apps.evaluation.evaluate_policy`: mean gold score over ``--eval-prompts`` prompts ×
``--eval-samples`` samples (same prompts and sampler seed before and after), and KL(π_θ‖π_ref) in nats per
completion (k1 estimator, mean over samples).

Prints the table  agent | before → after | change | KL | CPU-min  and a final line saying whether every agent
met the bar "change ≥ +0.5 at KL ≤ 5 nats".

``--vs-trl``: head to head against TRL. TRL's ``RLOOTrainer`` and ``GRPOTrainer`` (the ``bench`` extra) train the
same model on the same prompts, reward (the task's gold scorer through TRL's ``reward_funcs``), B completions per
step, K per prompt, T new tokens, Adam step size (1e-4, constant: ``lr_scheduler_type="constant"``, AdamW with
weight decay 0 = Adam), gradient clip 1.0, seed and CPU budget as our agents (``benchmarks/trl_setup.py`` builds
them, as for the throughput benchmark ``train.py``). TRL's process CPU time is counted from ``on_train_begin`` and
training stops at the first step end past the budget, exactly as our loop stops at the first iteration end past it.
TRL's trained model is then scored by the same :func:`evaluate_policy` call as ours (same held-out prompts, sampler
seed, gold and reference). Every row runs in a fresh process with the same torch thread count, and the rows
alternate sides (ours, TRL, TRL, ours, ...), so neighbouring rows see the same load; ``--jobs 2`` runs two rows at a
time (each still one process with ``--threads`` threads), which pairs an ours row with a TRL row most of the time.
``--output FILE`` appends every finished row to a JSONL file and a second run with the same settings skips the rows
already there.

β and KL: β = ``--kl-coef`` (0.05) on every side. Our agents and TRL's RLOO pay it in the reward,
R = r − β·Σ_t (log π_θ − log π_ref) (InstructGPT eq. 2, the same k1 sum on both sides); TRL's RLOO also
normalises the advantages by their batch std as ours does (``normalize_advantages=True``). TRL's GRPO has no
reward-side penalty: it adds β·k3 per token to the loss (DeepSeekMath eq. 3-4; ``loss_type="grpo"``, rewards
scaled by the group std, as our GRPO's advantage). KL is measured the same way for every row, on held-out
samples (nats per completion); a row counts for the last line only if it ends within ``--max-kl`` nats (5).

The last line is ``learning_vs_trl: X`` = (best score of our agents) ÷ (best score of TRL's trainers); target
≥ 1.2. A trainer's score is its held-out gain as a fraction of the task's headroom, (after − before) ÷ (1 −
before) (every task's best possible score is 1), averaged over the tasks; only a trainer whose every task ends
within the KL bound counts. On one task that is the ratio of the gains. ``--seeds N`` runs every row with N
seeds (training and evaluation seed; the side that goes first alternates between seeds too) and compares the
means over seeds; each task also gets its own line ``learning_vs_trl[task]: X``. ``--eval-at 0.5`` also scores
every row halfway through its budget (evaluation time is paused out of the budget; TRL's model is evaluated on a
copy) and prints the ratio there. Both sides maximise the same objective, E[r] − β·KL, so on a task that both
learn to the objective's optimum within the budget (positive sentiment: about +0.85 held-out VADER at β =
0.05) the ratio tends to 1 whatever the speeds: the suite's harder tasks are where a difference in learning
speed still shows at the end of the budget.

    python benchmarks/learning.py                    # 4 agents × 10 CPU-min ≈ 45 min wall at 1 thread
    python benchmarks/learning.py --cpu-minutes 2 --agents ppo rloo
    python benchmarks/learning.py --vs-trl --jobs 2 --output runs/vs-trl.jsonl   # the reported run, ≈ 30 min
    python benchmarks/learning.py --vs-trl --output docs/results/learning_vs_trl.jsonl  # its rows: report only
    python benchmarks/learning.py --vs-trl --tasks positive --seeds 1   # one task, one seed: 5 rows
    python benchmarks/learning.py --vs-trl --quick   # a smoke run of seconds per row
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, TrainerCallback
from trl_setup import TRL_TRAINERS, CountingReward, TRLSettings, import_trl, make_trl_trainer

from textenv.agents import agent_class, make_agent
from textenv.apps.cli import build_env
from textenv.apps.evaluation import evaluate_policy
from textenv.apps.play import append_jsonl
from textenv.comparison import stratified_bootstrap_ci
from textenv.models.loading import DEFAULT_MODEL, load_tokenizer
from textenv.tasks import TASKS, Task

#: The issue's bar: held-out VADER gain of at least this much ...
MIN_GAIN = 0.5
#: ... while the policy stays within this many nats (per completion) of the reference.
MAX_KL = 5.0
#: ``--vs-trl`` rows: our agents, and TRL's trainers (named ``trl-<kind>``).
VS_TRL_AGENTS = ["rloo", "grpo", "ppo"]
VS_TRL_TRAINERS = ["rloo", "grpo"]
#: TRL config fields that make each TRL trainer do what our agent of the same name does (see the docstring).
TRL_MATCHING: dict[str, dict[str, Any]] = {
    "rloo": {"normalize_advantages": True},
    "grpo": {"loss_type": "grpo", "scale_rewards": "group"},
}
#: ``--quick``: a smoke run (seconds per row) of the same code paths.
QUICK = {"cpu_minutes": 0.05, "num_envs": 8, "max_new_tokens": 8, "eval_prompts": 8, "eval_samples": 1,
         "tasks": ["positive"], "seeds": 1}


def task_of(args: argparse.Namespace) -> Task:
    """The task a row trains (``args.task``, set per row)."""
    return TASKS[args.task]


def new_tokens(args: argparse.Namespace) -> int:
    """T: ``--max-new-tokens``, or the task's own completion length."""
    return args.max_new_tokens if args.max_new_tokens is not None else task_of(args).max_new_tokens


def held_out(policy: str | PreTrainedModel, reference: Any, tokenizer: Any, args: argparse.Namespace
             ) -> dict[str, Any]:
    """Mean held-out gold score of the task and KL (nats / completion) of ``policy`` against ``reference``;
    deterministic given ``args.seed`` (the same prompts and sampler seed for every row, before and after)."""
    task = task_of(args)
    return evaluate_policy(
        policy,
        prompts=task.held_out_prompts()[: args.eval_prompts],
        gold=task.gold,
        reference=reference,
        tokenizer=tokenizer,
        num_samples=args.eval_samples,
        max_new_tokens=new_tokens(args),
        seed=args.seed + 10_000,
        batch_size=args.num_envs,
        max_table_rows=0,
        device="cpu",
    )


def result_row(name: str, args: argparse.Namespace, before: dict[str, Any], after: dict[str, Any], cpu_s: float,
               wall_s: float, tokens: int, iterations: int, curve: list[dict[str, float]]) -> dict[str, Any]:
    """One table row of ``args.task`` and ``args.seed``: held-out gold before / after, its change, KL after, the
    training cost, and the checkpoints' ``curve`` (each with its ``change`` from ``before``)."""
    row = {
        "agent": name, "task": args.task, "seed": args.seed,
        "before": before["gold_reward"], "after": after["gold_reward"],
        "change": after["gold_reward"] - before["gold_reward"], "kl": after["kl"],
        "cpu_min": cpu_s / 60, "wall_min": wall_s / 60, "tokens": tokens, "iterations": iterations,
        "curve": [{**point, "change": point["gold"] - before["gold_reward"]} for point in curve],
    }
    row["met"] = row["change"] >= MIN_GAIN and row["kl"] <= MAX_KL
    return row


class TrainingClock:
    """Process CPU and wall seconds spent training, with held-out evaluations at checkpoints along the way.

    ``budget_s``: CPU seconds of training; ``checkpoints_s``: CPU seconds (< budget) after which the next step end
    evaluates the policy. Evaluation time is paused out of both clocks, so a checkpointed run trains as long as
    one without. ``curve`` holds ``{"checkpoint_min", "cpu_min", "tokens", "gold", "kl"}`` per checkpoint
    (``cpu_min``: the CPU minutes actually spent at that step end, ≥ ``checkpoint_min``).
    """

    def __init__(self, budget_s: float, checkpoints_s: Sequence[float] = ()) -> None:
        self.budget_s = budget_s
        self.pending = sorted(c for c in checkpoints_s if c < budget_s)
        self.cpu_start = self.wall_start = self.paused_cpu = self.paused_wall = 0.0
        self.curve: list[dict[str, float]] = []

    def start(self) -> None:
        self.cpu_start, self.wall_start = time.process_time(), time.perf_counter()

    @property
    def cpu_s(self) -> float:
        return time.process_time() - self.cpu_start - self.paused_cpu

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.wall_start - self.paused_wall

    def done(self) -> bool:
        """Whether the budget is spent (checked at every step end: the last step may overshoot it)."""
        return self.cpu_s >= self.budget_s

    def after_step(self, evaluate: Callable[[], dict[str, Any]], tokens: int) -> None:
        """At a step end: ``evaluate()`` the policy if a checkpoint has passed (and the budget has not)."""
        cpu_s = self.cpu_s
        if not self.pending or cpu_s < self.pending[0] or cpu_s >= self.budget_s:
            return
        while self.pending and cpu_s >= self.pending[0]:
            checkpoint_s = self.pending.pop(0)  # the last checkpoint passed (one step may pass several)
        pause_cpu, pause_wall = time.process_time(), time.perf_counter()
        result = evaluate()
        self.curve.append({"checkpoint_min": checkpoint_s / 60, "cpu_min": cpu_s / 60, "tokens": tokens,
                           "gold": result["gold_reward"], "kl": result["kl"]})
        self.paused_cpu += time.process_time() - pause_cpu
        self.paused_wall += time.perf_counter() - pause_wall


def training_clock(args: argparse.Namespace) -> TrainingClock:
    """The clock of ``args.cpu_minutes`` with checkpoints at the fractions ``args.eval_at`` of it."""
    budget_s = args.cpu_minutes * 60
    return TrainingClock(budget_s, [f * budget_s for f in args.eval_at])


def train_for_cpu_budget(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, train ``name`` until ``args.cpu_minutes`` of process CPU time are spent, evaluate again."""
    torch.set_num_threads(args.threads)  # again: a spawned process (--vs-trl) starts with torch's default
    cls = agent_class(name)
    env = build_env(
        {**task_of(args).env_kwargs(), "num_envs": args.num_envs, "max_new_tokens": new_tokens(args),
         "kl_coef": args.kl_coef, "model": args.model},
        group_size=cls.default_group_size,  # rloo, grpo: K completions per prompt in the same num_envs rows
    )
    hyperparameters = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    agent = make_agent(name, env, seed=args.seed, **hyperparameters)
    reference = env.reference if env.reference is not None else args.model  # β = 0: the start model
    before = held_out(env.policy, reference, env.tokenizer, args)

    clock = training_clock(args)
    clock.start()
    while not clock.done():
        # One iteration per call (any iteration generates >= 1 token), through the base loop's bookkeeping.
        agent.learn(agent.num_timesteps + 1, progress_bar=False)
        clock.after_step(lambda: held_out(env.policy, reference, env.tokenizer, args), agent.num_timesteps)
    cpu_s, wall_s = clock.cpu_s, clock.wall_s

    after = held_out(env.policy, reference, env.tokenizer, args)
    return result_row(name, args, before, after, cpu_s, wall_s, agent.num_timesteps, agent.iterations,
                      clock.curve)


class CPUBudget(TrainerCallback):
    """Runs a :class:`TrainingClock` in a ``transformers.Trainer``: starts it at ``on_train_begin``, evaluates a
    copy of the model at its checkpoints, and stops training at the first step end past the budget (what our
    loop does per iteration); records the CPU and wall seconds and the steps."""

    def __init__(self, clock: TrainingClock, evaluate: Callable[[Any], dict[str, Any]] | None = None,
                 tokens: Callable[[], int] = lambda: 0) -> None:
        self.clock, self.evaluate, self.tokens = clock, evaluate, tokens
        self.cpu_s = self.wall_s = 0.0
        self.steps = 0

    def on_train_begin(self, *_: Any, **__: Any) -> None:
        self.clock.start()

    def on_step_end(self, _args: Any, _state: Any, control: Any, model: Any = None, **__: Any) -> None:
        self.steps += 1
        if self.evaluate is not None:  # on a copy: evaluating in place would change the model TRL trains
            self.clock.after_step(lambda: self.evaluate(copy.deepcopy(model)), self.tokens())
        self.cpu_s, self.wall_s = self.clock.cpu_s, self.clock.wall_s
        if self.clock.done():
            control.should_training_stop = True


def train_trl_for_cpu_budget(kind: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """:func:`train_for_cpu_budget` for TRL's ``kind`` trainer (``"rloo"`` / ``"grpo"``); ``None`` (with a
    message) when TRL is not installed."""
    torch.set_num_threads(args.threads)
    trl = import_trl()
    if trl is None:
        return None
    tokenizer = load_tokenizer(args.model)
    before = held_out(args.model, args.model, tokenizer, args)  # the start model, loaded as ours loads it
    reward = CountingReward(task_of(args).make_gold())
    budget = CPUBudget(training_clock(args), lambda model: held_out(model, args.model, tokenizer, args),
                       lambda: reward.tokens)
    settings = TRLSettings(
        model=args.model, batch=args.num_envs, group_size=agent_class(kind).default_group_size,
        new_tokens=new_tokens(args), beta=args.kl_coef,
        learning_rate=1e-4 if args.learning_rate is None else args.learning_rate, seed=args.seed,
        prompts=tuple(task_of(args).train_prompts()),
    )
    with make_trl_trainer(trl, kind, settings, reward, max_steps=10**9, callbacks=[budget],
                          lr_scheduler_type="constant", **TRL_MATCHING[kind]) as trainer:
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.model)
    if torch.get_num_threads() != args.threads:
        print(f"warning: TRL ran with {torch.get_num_threads()} torch threads, ours with {args.threads}")
    after = held_out(model, args.model, tokenizer, args)
    return result_row(trainer_name("trl", kind), args, before, after, budget.cpu_s, budget.wall_s, reward.tokens,
                      budget.steps, budget.clock.curve)


# ---------------------------------------------------------------------------------------------- report
def print_header(args: argparse.Namespace) -> None:
    lengths = ", ".join(f"{t}={TASKS[t].max_new_tokens}" for t in args.tasks)
    print(f"model={args.model} tasks={' '.join(args.tasks)} envs={args.num_envs} "
          f"T={args.max_new_tokens or lengths} beta={args.kl_coef} "
          f"held-out={args.eval_prompts}x{args.eval_samples} budget={args.cpu_minutes:g} CPU-min "
          f"threads={args.threads} jobs={args.jobs}")
    print(f"{'agent':>12} | {'before → after':>15} | {'change':>7} | {'KL':>5} | {'CPU-min':>7} | "
          f"{'wall-min':>8} | {'tokens':>7}", flush=True)


def print_row(r: dict[str, Any]) -> None:
    print(f"{r['agent']:>12} | {r['before']:+.3f} → {r['after']:+.3f} | {r['change']:+7.3f} | {r['kl']:5.2f} | "
          f"{r['cpu_min']:7.2f} | {r['wall_min']:8.2f} | {r['tokens']:>7}", flush=True)
    for point in r["curve"]:
        print(f"{'':>12}   at {point['cpu_min']:.2f} CPU-min, {point['tokens']} tokens: {point['change']:+.3f} "
              f"(KL {point['kl']:.2f})", flush=True)


def vs_trl_schedule(args: argparse.Namespace, first: int = 0) -> list[tuple[str, str]]:
    """The rows in run order, ``("ours", agent)`` / ``("trl", kind)``, alternating sides: ours, TRL, TRL,
    ours, ours, TRL, ... (each side goes first in every other pair; ``first`` odd: TRL goes first in the first
    pair) until both lists are used up."""
    ours, theirs = [("ours", a) for a in args.agents], [("trl", k) for k in args.trl_trainers]
    schedule = []
    for i in range(max(len(ours), len(theirs))):
        pair = ours[i:i + 1] + theirs[i:i + 1]
        schedule += pair if (i + first) % 2 == 0 else pair[::-1]
    return schedule


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One trainer's rows over seeds as one row of means (``change_std``: the seeds' standard deviation of the
    gain); the curve's points are averaged per checkpoint."""
    numbers = ("before", "after", "change", "kl", "cpu_min", "wall_min", "tokens", "iterations")
    mean = {key: statistics.fmean(r[key] for r in rows) for key in numbers}
    checkpoints = sorted({p["checkpoint_min"] for r in rows for p in r["curve"]})
    curve = [{key: statistics.fmean(p[key] for r in rows for p in r["curve"] if p["checkpoint_min"] == c)
              for key in ("checkpoint_min", "cpu_min", "tokens", "gold", "kl", "change")} for c in checkpoints]
    for point in curve:
        point["tokens"] = round(point["tokens"])
    return {**mean, "agent": rows[0]["agent"], "tokens": round(mean["tokens"]), "curve": curve,
            "change_std": statistics.stdev(r["change"] for r in rows) if len(rows) > 1 else 0.0}


def best_gain(rows: list[dict[str, Any]], max_kl: float) -> dict[str, Any] | None:
    """The row with the largest finite held-out gain among those within ``max_kl`` nats; ``None`` if none is."""
    within = [r for r in rows if math.isfinite(r["change"]) and r["kl"] <= max_kl]
    return max(within, key=lambda r: r["change"], default=None)


def learning_ratio(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> float:
    """Our best gain ÷ TRL's best gain (``inf`` when TRL gained nothing within the bound and we did; ``nan`` when
    neither side has a row within it)."""
    if ours is None:
        return math.nan if theirs is None else 0.0
    if theirs is None or theirs["change"] <= 0:
        return math.inf if ours["change"] > 0 else math.nan
    return ours["change"] / theirs["change"]


def row_schedule(args: argparse.Namespace) -> list[tuple[int, str, str, str]]:
    """Every ``(seed, task, side, name)`` row in run order: per seed, per task, the sides alternate
    (:func:`vs_trl_schedule`), and the side that goes first alternates from one (seed, task) to the next."""
    schedule = []
    for index, seed in enumerate(range(args.seed, args.seed + args.seeds)):
        for task_index, task in enumerate(args.tasks):
            first = index * len(args.tasks) + task_index
            schedule += [(seed, task, side, name) for side, name in vs_trl_schedule(args, first=first)]
    return schedule


#: The arguments that change a row's result: a ``--output`` file written with other values is not resumed.
ROW_SETTINGS = ("model", "num_envs", "max_new_tokens", "kl_coef", "learning_rate", "eval_prompts", "eval_samples",
                "threads", "cpu_minutes", "eval_at", "max_kl")


def trainer_name(side: str, name: str) -> str:
    """How rows name a trainer: our agent's name, or ``trl-<kind>`` for TRL's."""
    return name if side == "ours" else f"trl-{name}"


def row_key(row: dict[str, Any]) -> tuple[str, str, int]:
    """``(task, trainer, seed)`` of a finished row (the trainer's name says its side: ``trl-…`` is TRL's)."""
    return row["task"], row["agent"], row["seed"]


def finished_rows(path: Path | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows already in the ``--output`` JSONL (none without one, or when it does not exist yet). Its first
    line holds the settings it was written with: other settings, or a file that is not such a JSONL, stop the
    run (a resumed comparison must not mix rows measured differently)."""
    settings = {key: getattr(args, key) for key in ROW_SETTINGS}
    if path is None or not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or lines[0].get("settings") is None:
        raise SystemExit(f"--output {path}: not a learning.py rows file (no settings line); choose a new file")
    if lines[0]["settings"] != json.loads(json.dumps(settings)):
        raise SystemExit(f"--output {path} was written with {lines[0]['settings']}, this run has {settings}: "
                         "use a new --output file, or the same settings to resume")
    return [line["row"] for line in lines[1:]]


def run_rows(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """Train every row of :func:`row_schedule` not yet in ``--output``, ``--jobs`` at a time, each in a fresh
    (spawned) process; append each finished row to ``--output``. ``None`` when TRL is not installed."""
    schedule = [(seed, task, side, name, (task, trainer_name(side, name), seed))
                for seed, task, side, name in row_schedule(args)]
    wanted = {key for *_, key in schedule}
    rows = [r for r in finished_rows(args.output, args) if row_key(r) in wanted]  # this run's rows only
    done = {row_key(r) for r in rows}
    if args.output is not None and not args.output.exists():
        args.output.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(args.output, {"settings": {key: getattr(args, key) for key in ROW_SETTINGS}})
    todo = [(seed, task, side, name) for seed, task, side, name, key in schedule if key not in done]
    if len(rows):
        print(f"{len(rows)} rows read from {args.output}; {len(todo)} to train", flush=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(train_for_cpu_budget if side == "ours" else train_trl_for_cpu_budget, name,
                               argparse.Namespace(**{**vars(args), "seed": seed, "task": task}))
                   for seed, task, side, name in todo]
        for future in futures:  # in schedule order: the printed table reads the same whatever --jobs is
            row = future.result()
            if row is None:  # TRL is not installed: the message is printed
                for other in futures:
                    other.cancel()
                return None
            if args.output is not None:
                append_jsonl(args.output, {"row": row})
            rows.append({**row, "trained_now": True})
            print_row({**row, "agent": row_label(row, args)})
    return rows


def row_label(row: dict[str, Any], args: argparse.Namespace) -> str:
    """A row's name in the table: the trainer, then its task and seed when the run has several."""
    return (row["agent"] + (f"/{row['task']}" if len(args.tasks) > 1 else "")
            + (f"/s{row['seed']}" if args.seeds > 1 else ""))


def headroom_gain(row: dict[str, Any]) -> float:
    """The held-out gain as a fraction of the task's headroom, (after − before) ÷ (1 − before): every task's best
    possible score is 1, so 1 means the untrained policy's whole distance to a perfect score was gained."""
    return row["change"] / (1.0 - row["before"])


def suite_rows(task_rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per trainer that has a row on every task: ``change`` = its :func:`headroom_gain` averaged over the
    tasks, ``kl`` = its largest KL over the tasks (so "within the bound" means within it on every task)."""
    names = set.intersection(*({r["agent"] for r in rows} for rows in task_rows.values()))
    suite = []
    for name in sorted(names):
        rows = [next(r for r in task_rows[task] if r["agent"] == name) for task in task_rows]
        suite.append({"agent": name, "change": statistics.fmean(headroom_gain(r) for r in rows),
                      "kl": max(r["kl"] for r in rows)})
    return suite


def ratio_rows(task_rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows the ratio compares: one task's own rows (gains in the gold's units), or :func:`suite_rows`."""
    return next(iter(task_rows.values())) if len(task_rows) == 1 else suite_rows(task_rows)


def suite_ratio(task_rows: dict[str, list[dict[str, Any]]], max_kl: float) -> float:
    """``learning_vs_trl`` of rows grouped by task: best of ours ÷ best of TRL's (:func:`learning_ratio`)."""
    rows = ratio_rows(task_rows)
    return learning_ratio(best_gain([r for r in rows if not r["agent"].startswith("trl-")], max_kl),
                          best_gain([r for r in rows if r["agent"].startswith("trl-")], max_kl))


def checkpoint_rows(task_rows: dict[str, list[dict[str, Any]]], checkpoint_min: float
                    ) -> dict[str, list[dict[str, Any]]]:
    """The rows as they stood at one ``--eval-at`` checkpoint (its gain and KL in place of the final ones)."""
    return {task: [{"agent": r["agent"], "before": r["before"], "change": p["change"], "kl": p["kl"]}
                   for r in rows for p in r["curve"] if p["checkpoint_min"] == checkpoint_min]
            for task, rows in task_rows.items()}


def print_suite_table(task_rows: dict[str, list[dict[str, Any]]], max_kl: float) -> None:
    """Per trainer, its headroom gain on each task and their mean (several tasks), and per task its ratio."""
    tasks = list(task_rows)
    print("held-out gain as a fraction of the headroom, (after - before) / (1 - before):")
    print(f"{'trainer':>12} | " + " | ".join(f"{t:>8}" for t in tasks) + f" | {'mean':>6} | {'max KL':>6}")
    for row in suite_rows(task_rows):
        gains = [headroom_gain(next(r for r in task_rows[t] if r["agent"] == row["agent"])) for t in tasks]
        print(f"{row['agent']:>12} | " + " | ".join(f"{g:+8.3f}" for g in gains)
              + f" | {row['change']:+6.3f} | {row['kl']:6.2f}")
    for task in tasks:
        print(f"learning_vs_trl[{task}]: {suite_ratio({task: task_rows[task]}, max_kl):.2f}")


def ratio_interval(rows: list[dict[str, Any]], task_rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace,
                   repetitions: int = 2000) -> tuple[float, float] | None:
    """95 % stratified bootstrap interval of ``learning_vs_trl`` over seeds: every (trainer, task) resamples its own
    seeds (:func:`textenv.comparison.stratified_bootstrap_ci`, as the comparison's IQM intervals do), each task's
    untrained score is held at its mean, and the trainers that count are those within the KL bound on the means
    (``task_rows``: the means over seeds of ``rows``, per task). ``None`` when a side has no such trainer or the
    trainers do not all have the same seeds."""
    counted = [r["agent"] for r in ratio_rows(task_rows) if math.isfinite(r["change"]) and r["kl"] <= args.max_kl]
    ours, theirs = [n for n in counted if not n.startswith("trl-")], [n for n in counted if n.startswith("trl-")]
    columns = [(name, task) for name in counted for task in task_rows]
    seeds = [sorted(r["seed"] for r in rows if (r["agent"], r["task"]) == column) for column in columns]
    if not ours or not theirs or any(s != seeds[0] for s in seeds):
        return None
    changes = np.array([[next(r["change"] for r in rows if (r["agent"], r["task"], r["seed"]) == (*column, seed))
                         for column in columns] for seed in seeds[0]])  # (seeds, trainers × tasks)
    headroom = np.array([1.0 - next(r["before"] for r in task_rows[task]) for _, task in columns])

    def ratio(matrix: np.ndarray) -> float:
        score = dict(zip(counted, (matrix.mean(axis=0) / headroom).reshape(len(counted), -1).mean(axis=1)))
        best_theirs = max(score[n] for n in theirs)
        return max(score[n] for n in ours) / best_theirs if best_theirs > 0 else math.inf

    return stratified_bootstrap_ci(changes, ratio, repetitions=repetitions, seed=args.seed)


def report_vs_trl(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The means over seeds, the ratio at each checkpoint and per task, and the last line ``learning_vs_trl``."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        grouped.setdefault(row["task"], {}).setdefault(row["agent"], []).append(row)
    task_rows = {task: [mean_row(r) for r in grouped[task].values()] for task in args.tasks if task in grouped}
    if args.seeds > 1:
        print(f"means over {args.seeds} seeds (change ± std over seeds):")
        for task, means in task_rows.items():
            for row in means:
                print_row({**row, "agent": row["agent"] + (f"/{task}" if len(task_rows) > 1 else "")})
                print(f"{'':>12}   change {row['change']:+.3f} ± {row['change_std']:.3f}")
    checkpoints = sorted({p["checkpoint_min"] for m in task_rows.values() for r in m for p in r["curve"]})
    for checkpoint_min in checkpoints:
        ratio = suite_ratio(checkpoint_rows(task_rows, checkpoint_min), args.max_kl)
        print(f"learning_vs_trl after {checkpoint_min:.2f} CPU-min: {ratio:.2f}")
    if len(task_rows) > 1:
        print_suite_table(task_rows, args.max_kl)
    compared = ratio_rows(task_rows)
    what = "gain" if len(task_rows) == 1 else f"mean fraction of the headroom over {len(task_rows)} tasks"
    for side, trl in (("ours", False), ("TRL", True)):
        best = best_gain([r for r in compared if r["agent"].startswith("trl-") == trl], args.max_kl)
        print(f"best of {side} within KL <= {args.max_kl:g} nats ({what}): "
              + ("none" if best is None else f"{best['agent']} {best['change']:+.3f} (KL {best['kl']:.2f})"))
    interval = ratio_interval(rows, task_rows, args) if args.seeds > 1 else None
    if interval is not None:
        print(f"learning_vs_trl 95 % CI over the seeds (stratified bootstrap, 2000 resamples): "
              f"[{interval[0]:.2f}, {interval[1]:.2f}]")
    print(f"learning_vs_trl: {suite_ratio(task_rows, args.max_kl):.2f}")


def run_vs_trl(args: argparse.Namespace) -> None:
    """``--vs-trl``: every row in a fresh process, alternating sides, for each of ``args.seeds`` seeds and each
    task; prints the rows, their means over seeds, the ratios and the last line."""
    start = time.perf_counter()
    rows = run_rows(args)
    if rows is None:
        return
    trained = sum(r.get("trained_now", False) for r in rows)
    print(f"wall time of this run: {(time.perf_counter() - start) / 60:.1f} min for {trained} rows (with "
          "evaluation and process start-up)")
    for row in rows:
        row.pop("trained_now", None)
    report_vs_trl(rows, args)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=None,
                        help="native agents (default: reinforce ppo rloo grpo; with --vs-trl: "
                             f"{' '.join(VS_TRL_AGENTS)})")
    parser.add_argument("--cpu-minutes", type=float, default=None,
                        help="training budget per agent (CPU-min; default 10, with --vs-trl 0.5)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--num-envs", type=int, default=64, help="completions per iteration")
    parser.add_argument("--tasks", nargs="+", default=None, choices=[*TASKS, "all"],
                        help="tasks of the suite (textenv.TASKS) every row trains, or 'all' (default: positive; "
                             "with --vs-trl: all)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="T (default: each task's own)")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="β")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="override every agent's default α (and TRL's, default 1e-4)")
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts")
    parser.add_argument("--eval-samples", type=int, default=2, help="samples per held-out prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=None,
                        help="--vs-trl: run every row with seeds --seed .. --seed+N-1 (the side that goes first "
                             "alternates between seeds; default 3); the ratios compare the means over seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (every row)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="--vs-trl: rows trained at once, each in its own process with --threads threads")
    parser.add_argument("--output", type=Path, default=None,
                        help="--vs-trl: append every finished row to this JSONL; a rerun with the same settings "
                             "skips the rows already there")
    parser.add_argument("--vs-trl", action="store_true", help="also train TRL's trainers; last line learning_vs_trl")
    parser.add_argument("--trl-trainers", nargs="+", default=VS_TRL_TRAINERS, choices=sorted(TRL_TRAINERS))
    parser.add_argument("--max-kl", type=float, default=MAX_KL,
                        help="--vs-trl: only rows within this KL (nats / completion) count for the last line")
    parser.add_argument("--eval-at", type=float, nargs="*", default=None,
                        help="also evaluate at these fractions of the budget, e.g. 0.25 0.5 (evaluation time is "
                             "not charged to the budget; default none, with --vs-trl 0.5); --vs-trl prints the "
                             "ratio at each")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    args = parser.parse_args()
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args()
    if args.agents is None:
        args.agents = VS_TRL_AGENTS if args.vs_trl else ["reinforce", "ppo", "rloo", "grpo"]
    if args.cpu_minutes is None:
        args.cpu_minutes = 0.5 if args.vs_trl else 10.0
    # --vs-trl's defaults are the reported run: every task, 3 seeds, a halfway evaluation.
    if args.tasks is None:
        args.tasks = list(TASKS) if args.vs_trl else ["positive"]
    if args.seeds is None:
        args.seeds = 3 if args.vs_trl else 1
    if args.eval_at is None:
        args.eval_at = [0.5] if args.vs_trl else []
    if not args.cpu_minutes > 0:
        parser.error("--cpu-minutes must be > 0")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if "all" in args.tasks:
        args.tasks = list(TASKS)
    if len(set(args.tasks)) != len(args.tasks):
        parser.error("--tasks: each task once")
    if not all(0 < f < 1 for f in args.eval_at):
        parser.error("--eval-at fractions must be in (0, 1): the end of the budget is always evaluated")
    return args


def main() -> None:
    args = parse_arguments()
    torch.set_num_threads(args.threads)
    for name in args.agents:
        agent_class(name)  # unknown names fail before anything runs
    print_header(args)
    if args.vs_trl:
        run_vs_trl(args)
        return
    rows, one_seed = [], argparse.Namespace(**{**vars(args), "seeds": 1})
    for task in args.tasks:
        for name in args.agents:
            rows.append(train_for_cpu_budget(name, argparse.Namespace(**{**vars(args), "task": task})))
            print_row({**rows[-1], "agent": row_label(rows[-1], one_seed)})
    failed = [row_label(r, one_seed) for r in rows if not r["met"]]
    verdict = "every agent met" if not failed else f"NOT met by {', '.join(failed)}:"
    print(f"{verdict} change >= +{MIN_GAIN} at KL <= {MAX_KL} nats in {args.cpu_minutes:g} CPU-min")


if __name__ == "__main__":
    main()
