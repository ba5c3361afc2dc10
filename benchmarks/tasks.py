"""The task suite is learnable and not already solved: train one agent on every task of ``textenv.TASKS``.

For each task (docs/tasks.md) the agent (default PPO, its default hyper-parameters) gets a FRESH env on the
embedded review model, built from ``task.env_kwargs()``, and trains for the same CPU-time budget
(``time.process_time``: CPU seconds of this process over all its threads; evaluation excluded), whole iterations
at a time, with the reward r_gold(x, y) − β·Σ_t KL_t (InstructGPT eq. 2) where r_gold is the task's gold scorer.

Before and after training the policy is scored on the task's held-out prompts (never trained on) with
:func:`textenv.apps.evaluation.evaluate_policy`: mean gold score over ``--eval-prompts`` prompts ×
``--eval-samples`` samples (same prompts and sampler seed before and after), and KL(π_θ‖π_ref) in nats per
completion (k1 estimator). The best possible gold score of every task is 1.

Prints the table  task | id | untrained → trained | change | KL | CPU-min | wall-min  and writes every number
(with a few trained completions per task) to ``--output`` (JSON).

    python benchmarks/tasks.py                        # 5 tasks × 1 CPU-min ≈ 7 min wall at 1 thread, idle machine
    python benchmarks/tasks.py --quick                # 5 tasks × 0.25 CPU-min, 32 held-out completions: a smoke run
    python benchmarks/tasks.py --agent rloo --tasks length avoid --cpu-minutes 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from textenv import TASKS, Task, get_task
from textenv.agents import agent_class, make_agent
from textenv.apps.cli import build_env
from textenv.apps.evaluation import evaluate_policy, save_eval_json
from textenv.models.loading import DEFAULT_MODEL
from textenv.validation import InputError

#: What the output file says it is; a file at ``--output`` without it is not replaced.
BENCHMARK = "benchmarks/tasks.py"


def held_out(env, task: Task, args: argparse.Namespace, rows: int) -> dict[str, Any]:
    """Mean held-out gold score and KL (nats / completion) of ``env.policy`` on ``task``; deterministic given
    ``args.seed``. ``rows``: completions kept in ``samples``."""
    return evaluate_policy(
        env.policy,
        prompts=task.held_out_prompts()[: args.eval_prompts],
        gold=env.reward_model,  # the task's gold scorer, already built
        reference=env.reference if env.reference is not None else args.model,  # β = 0: the start model
        tokenizer=env.tokenizer,
        num_samples=args.eval_samples,
        max_new_tokens=task.max_new_tokens,
        seed=args.seed + 10_000,
        batch_size=args.num_envs,
        max_table_rows=rows,
        device=env.device,
    )


def train_task(task: Task, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, train ``args.agent`` on ``task`` until ``args.cpu_minutes`` of process CPU time are spent, evaluate
    again; the row of the table."""
    env = build_env(
        {**task.env_kwargs(), "num_envs": args.num_envs, "kl_coef": args.kl_coef, "model": args.model},
        group_size=agent_class(args.agent).default_group_size,  # rloo, grpo: K completions per prompt
    )
    agent = make_agent(args.agent, env, seed=args.seed)
    before = held_out(env, task, args, rows=0)

    cpu_start, wall_start = time.process_time(), time.perf_counter()
    while time.process_time() - cpu_start < args.cpu_minutes * 60:
        agent.learn(agent.num_timesteps + 1, progress_bar=False)  # one iteration, with the base loop's bookkeeping
    cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - wall_start

    after = held_out(env, task, args, rows=args.show)
    return {
        "task": task.name, "env_id": task.env_id, "gold": task.gold, "max_new_tokens": task.max_new_tokens,
        "untrained": before["gold_reward"], "trained": after["gold_reward"],
        "change": after["gold_reward"] - before["gold_reward"], "kl": after["kl"],
        "untrained_distinct_2": before["distinct_2"], "trained_distinct_2": after["distinct_2"],
        "untrained_length": before["length"], "trained_length": after["length"],
        "cpu_min": cpu_s / 60, "wall_min": wall_s / 60, "tokens": agent.num_timesteps,
        "iterations": agent.iterations,
        "examples": [{"prompt": s["prompt"], "completion": s["completion"], "gold": s["gold"]}
                     for s in after["samples"]],
    }


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", default="ppo", help="agent trained on every task (textenv.agents)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"task names, of {list(TASKS)}")
    parser.add_argument("--cpu-minutes", type=float, default=1.0, help="training budget per task (CPU-min)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 0.25 CPU-min per task, 16 held-out prompts × 2 samples")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--num-envs", type=int, default=64, help="completions per iteration")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="β")
    parser.add_argument("--eval-prompts", type=int, default=150, help="held-out prompts (of the 150)")
    parser.add_argument("--eval-samples", type=int, default=2, help="samples per held-out prompt")
    parser.add_argument("--show", type=int, default=3, help="trained completions kept per task in the JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--output", type=Path, default=Path("tasks.json"), help="the JSON written")
    parser.add_argument("--overwrite", action="store_true", help="replace an --output this benchmark wrote")
    args = parser.parse_args()
    if args.quick:
        args.cpu_minutes, args.eval_prompts = 0.25, 16
    if not args.cpu_minutes > 0:
        parser.error("--cpu-minutes must be > 0")
    try:  # an unknown agent or task fails before anything runs
        agent_class(args.agent)
        args.tasks = [get_task(name).name for name in args.tasks]
    except InputError as err:
        parser.error(str(err))
    check_output(parser, args.output, args.overwrite)
    return args


def check_output(parser: argparse.ArgumentParser, path: Path, overwrite: bool) -> None:
    """Never replace a file this benchmark did not write, nor one it did without ``--overwrite``."""
    if path.is_dir():
        parser.error(f"--output {path} is a directory; give a file name such as {path / 'tasks.json'}")
    if not path.exists():
        return
    try:
        ours = json.loads(path.read_text(encoding="utf-8")).get("benchmark") == BENCHMARK
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        ours = False
    if not ours:
        parser.error(f"--output {path} exists and was not written by {BENCHMARK}; choose another --output")
    if not overwrite:
        parser.error(f"--output {path} holds results of an earlier run; pass --overwrite or choose another --output")


def main() -> None:
    args = parse_arguments()
    torch.set_num_threads(args.threads)
    print(f"agent={args.agent} model={args.model} envs={args.num_envs} beta={args.kl_coef} "
          f"held-out={args.eval_prompts}x{args.eval_samples} budget={args.cpu_minutes:g} CPU-min/task "
          f"threads={torch.get_num_threads()} seed={args.seed}")
    print(f"{'task':>8} | {'id':>18} | {'T':>2} | {'untrained → trained':>19} | {'change':>7} | {'KL':>5} | "
          f"{'CPU-min':>7} | {'wall-min':>8}", flush=True)
    rows, start = [], time.perf_counter()
    for name in args.tasks:
        r = train_task(TASKS[name], args)
        rows.append(r)
        print(f"{r['task']:>8} | {r['env_id']:>18} | {r['max_new_tokens']:>2} | {r['untrained']:+8.3f} → "
              f"{r['trained']:+8.3f} | {r['change']:+7.3f} | {r['kl']:5.2f} | {r['cpu_min']:7.2f} | "
              f"{r['wall_min']:8.2f}", flush=True)
    wall_min = (time.perf_counter() - start) / 60
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    save_eval_json(args.output, {"benchmark": BENCHMARK, "settings": settings, "rows": rows,
                                 "wall_min": wall_min, "torch": torch.__version__, "python": platform.python_version()})
    print(f"total wall time {wall_min:.1f} min; wrote {args.output}")


if __name__ == "__main__":
    main()
