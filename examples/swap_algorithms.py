"""Compare algorithms the honest way: several tasks, several seeds, IQM with 95 % confidence intervals.

Every textenv agent trains the same object, the env's causal-LM policy, through the same three lines:

    env = build_env({**task.env_kwargs(), "num_envs": 32}, group_size=agent_class(NAME).default_group_size)
    agent = make_agent(NAME, env, seed=SEED, tensorboard_log=".../tensorboard")
    agent.learn(total_timesteps=20_000)

This script runs that for every (agent, task, seed), with the same env settings and token budget per run, and
scores each run by its task's gold scorer on the task's held-out prompts. One seed on one task cannot tell two
algorithms apart, so it reports what Agarwal et al. 2021 ("Deep RL at the edge of the statistical precipice")
recommend (:mod:`textenv.comparison`):

1. each task's score normalised to 0 = the untrained policy, 1 = the best run of any agent on that task (if no
   run beat the untrained policy, −1 = the worst run);
2. per agent, the interquartile mean (IQM) of its normalised (seed, task) scores with a 95 % stratified
   bootstrap confidence interval (seeds resampled within each task), and its mean KL(π_θ‖π_ref) in nats;
3. ``comparison.json`` (per agent: ``iqm``, ``ci_low``, ``ci_high``, ``kl``, ``tasks``: per-task mean raw and
   normalised scores), ``comparison.md`` (the table, also printed) and ``comparison.png`` (IQM with its CI per
   agent, and the performance profiles: the fraction of runs above each normalised score τ).

Offline agents (``dpo``, ``lrml``, ``ilql``: the offline rows) train on the task's own data, made once per task:
K = 4 completions of its training prompts from the untrained policy, ranked by its gold scorer.

Every finished run leaves ``OUTPUT/runs/TASK/AGENT/seedS/result.json``; running the same command again skips
it (resume after a crash or add seeds), so only the missing runs train; a rerun into the same OUTPUT with
another budget, model or evaluation (``OUTPUT/settings.json``) is refused instead of mixing runs. ``--jobs N`` trains N runs at once in
separate processes (one torch thread each), never threads.

    python examples/swap_algorithms.py                                  # 5 agents × all tasks × 3 seeds
    python examples/swap_algorithms.py --agents ppo rloo --tasks TextGen-v0 --seeds 5 --jobs 2 --output runs/swap
    tensorboard --logdir runs/swap_algorithms/runs                      # every run's curves

Budget: a native agent takes ~20–30 s per run at 20k tokens with one torch thread, sb3-ppo ~90 s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from textenv.agents import agent_class, make_agent
from textenv.apps.evaluation import evaluate_policy, save_eval_json
from textenv.apps.train import build_env
from textenv.comparison import iqm, normalise, performance_profile, stratified_bootstrap_ci
from textenv.models.loading import DEFAULT_MODEL
from textenv.tasks import TASKS, get_task
from textenv.validation import InputError

DEFAULT_AGENTS = ["reinforce", "ppo", "rloo", "grpo", "sb3-ppo"]
#: Offline agents (the comparison's offline rows): the hyper-parameter that takes their data file, and settings of
#: their own. Their data is the task's: K completions of its training prompts from the untrained policy, ranked by
#: its gold scorer (``textenv collect``'s format: DPO/LRML read the rankings, ILQL the scored completions).
OFFLINE_AGENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpo": ("preferences", {}),
    # LRML's loss has a dip around ρ = 0 that small steps slide into at the default β = 0.1 (agents/dpo.py); its
    # docstring measured it learning as fast as DPO at β = 0.5
    "lrml": ("preferences", {"beta": 0.5}),
    # ILQL learns its Q/V heads from zero: at the default β = 1 and heads' rate 1e-3 its Q-weighting moves little in
    # a short run (docs/ilql.md); these are the settings docs/ilql.md measured a gain with
    "ilql": ("data", {"beta": 10.0, "heads_learning_rate": 3e-3}),
}


# ---------------------------------------------------------------------------------------------- 1. one run
def evaluate(policy: Any, task_name: str, args: argparse.Namespace, env: Any) -> dict[str, Any]:
    """The task's gold score (mean over held-out prompts, one sample each) and KL to the reference (nats per
    completion), with a fixed sampler seed so every run and the untrained policy see the same prompts."""
    task = get_task(task_name)
    result = evaluate_policy(policy, prompts=task.held_out_prompts()[:args.eval_prompts], gold=task.gold,
                             reference=env.reference if env.reference is not None else args.model,
                             tokenizer=env.tokenizer, max_new_tokens=env.max_new_tokens, seed=10_000,
                             batch_size=64, max_table_rows=3, device=env.device)
    return {"score": result["gold_reward"], "kl": result["kl"], "samples": result["samples"][:3]}


def make_env(task_name: str, args: argparse.Namespace, group_size: int = 1) -> Any:
    """The task's env with this comparison's shared settings (rows per rollout, β, the policy model)."""
    settings = {**get_task(task_name).env_kwargs(), "num_envs": args.num_envs, "kl_coef": args.kl_coef,
                "model": args.model}
    if args.max_new_tokens is not None:
        settings["max_new_tokens"] = args.max_new_tokens
    return build_env(settings, group_size=group_size)


def train_one(agent_name: str, task_name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``agent_name`` on ``task_name`` with ``seed`` from a fresh policy and score it on held-out prompts."""
    import torch

    torch.set_num_threads(args.threads)
    env = make_env(task_name, args, group_size=agent_class(agent_name).default_group_size)
    run_dir = run_path(args.output, task_name, agent_name, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    offline = OFFLINE_AGENTS.get(agent_name)
    extra = {} if offline is None else {offline[0]: str(offline_data(task_name, args)), **offline[1]}
    agent = make_agent(agent_name, env, seed=seed, tensorboard_log=str(run_dir / "tensorboard"),  # the one name
                       **extra)
    start = time.perf_counter()
    agent.learn(args.total_timesteps, progress_bar=False)
    wall = time.perf_counter() - start
    result = {"agent": agent_name, "task": task_name, "seed": seed, "tokens": agent.num_timesteps, "wall_s": wall,
              **evaluate(env.policy, task_name, args, env)}
    save_eval_json(run_dir / "result.json", result)  # atomic: a killed run leaves no result, so it reruns
    return result


def untrained_score(task_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The untrained policy's held-out score on ``task_name`` (the 0 of the normalised scale); cached on disk."""
    path = args.output / "untrained" / f"{task_name}.json"
    if path.exists():
        return json.loads(path.read_text())
    env = make_env(task_name, args)
    result = {"task": task_name, **evaluate(env.policy, task_name, args, env)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_eval_json(path, result)
    return result


def offline_data(task_name: str, args: argparse.Namespace) -> Path:
    """The offline agents' data of ``task_name``: ``--offline-prompts`` training prompts × 4 completions of the
    untrained policy, ranked by the task's gold scorer (:func:`textenv.apps.collect.collect_preferences`); made
    once, written whole (a killed run leaves no partial file) and shared by every offline run of the task."""
    from textenv.apps.collect import collect_preferences

    path = args.output / "offline-data" / f"{task_name}.jsonl"
    if not path.exists():
        task = get_task(task_name)
        partial = path.with_suffix(f".partial-{os.getpid()}")
        path.parent.mkdir(parents=True, exist_ok=True)
        collect_preferences(model=args.model, prompts=task.prompts, prompt_split=task.train_split,
                            num_prompts=args.offline_prompts, k=4, max_new_tokens=args.max_new_tokens or task.max_new_tokens,
                            gold=task.gold, output=partial, seed=0)
        os.replace(partial, path)
    return path


#: The flags that change a run's numbers (its training, its evaluation, the untrained score, the offline data).
RUN_SETTINGS = ("model", "total_timesteps", "num_envs", "max_new_tokens", "kl_coef", "eval_prompts",
                "offline_prompts")


def check_run_settings(args: argparse.Namespace) -> None:
    """Reuse ``OUTPUT``'s finished runs only under the settings they were made with (``OUTPUT/settings.json``,
    written by the first run): another budget, model or evaluation would mix runs (and the untrained score they
    are normalised by) that do not compare. Agents, tasks, seeds, jobs and bootstrap may change."""
    path = args.output / "settings.json"
    settings = {key: str(getattr(args, key)) if isinstance(getattr(args, key), Path) else getattr(args, key)
                for key in RUN_SETTINGS}
    if not path.exists():
        save_eval_json(path, settings)
        return
    saved = json.loads(path.read_text())
    changed = {key: (saved.get(key), value) for key, value in settings.items() if saved.get(key) != value}
    if changed:
        listed = ", ".join(f"--{key.replace('_', '-')} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise InputError(f"--output {args.output} holds runs made with other settings ({listed}); their scores do "
                         "not compare with these: choose another --output (or rerun with the same settings)")


def run_path(output: Path, task: str, agent: str, seed: int) -> Path:
    return output / "runs" / task / agent / f"seed{seed}"


def _train_in_worker(job: tuple[str, str, int, argparse.Namespace]) -> dict[str, Any]:
    return train_one(*job)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (agent, task, seed) result: finished runs are read back, the others train (``--jobs`` processes)."""
    jobs, results = [], []
    for task in args.tasks:
        for agent in args.agents:
            for seed in range(args.seed, args.seed + args.seeds):
                done = run_path(args.output, task, agent, seed) / "result.json"
                if done.exists():
                    results.append(json.loads(done.read_text()))
                else:
                    jobs.append((agent, task, seed, args))
    print(f"{len(results)} runs already finished, {len(jobs)} to train")
    for task in {task for agent, task, _, _ in jobs if agent in OFFLINE_AGENTS}:
        offline_data(task, args)  # once, before the workers start (they would race to make it)
    if args.jobs == 1:
        for number, job in enumerate(jobs, 1):
            print(f"[{number}/{len(jobs)}] {job[0]} on {job[1]}, seed {job[2]}", flush=True)
            results.append(train_one(*job))
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            for result in pool.map(_train_in_worker, jobs):
                print(f"done: {result['agent']} on {result['task']}, seed {result['seed']}", flush=True)
                results.append(result)
    return results


# ---------------------------------------------------------------------------------------------- 2. the statistics
def summarise(results: list[dict[str, Any]], untrained: dict[str, float], args: argparse.Namespace) -> dict[str, Any]:
    """Per agent: IQM of the normalised scores over (seed, task) with its 95 % stratified bootstrap CI, mean KL,
    and per-task means (raw and normalised)."""
    seeds = list(range(args.seed, args.seed + args.seeds))
    scale = {task: task_scale([r["score"] for r in results if r["task"] == task], untrained[task])
             for task in args.tasks}
    summary: dict[str, Any] = {}
    for agent in args.agents:
        raw = np.array([[_score(results, agent, task, seed) for task in args.tasks] for seed in seeds])
        scores = np.stack([normalise(raw[:, j], *scale[task]) for j, task in enumerate(args.tasks)],
                          axis=1)  # (seeds, tasks)
        low, high = stratified_bootstrap_ci(scores, iqm, repetitions=args.bootstrap, seed=0)
        kls = [r["kl"] for r in results if r["agent"] == agent]
        summary[agent] = {
            "iqm": iqm(scores), "ci_low": low, "ci_high": high, "kl": float(np.mean(kls)),
            "normalised": scores.tolist(),
            "tasks": {task: {"score": float(raw[:, j].mean()), "normalised": float(scores[:, j].mean())}
                      for j, task in enumerate(args.tasks)},
        }
    return summary


def task_scale(scores: Sequence[float], untrained: float) -> tuple[float, float]:
    """``(low, high)`` of a task's normalised scale: 0 = the untrained policy, 1 = the best run. When no run beat
    the untrained policy the best is the untrained policy itself, so the scale is its distance to the worst run
    (every run scores in [−1, 0]); when every run scored exactly the untrained score, every run scores 0."""
    best = max(scores)
    if best > untrained:
        return untrained, best
    worst = min(scores)
    print(f"note: no run beat the untrained policy's score {untrained:.4f} on a task (best run {best:.4f})")
    return (untrained, untrained + (untrained - worst)) if worst < untrained else (untrained, untrained + 1.0)


def _score(results: list[dict[str, Any]], agent: str, task: str, seed: int) -> float:
    return next(r["score"] for r in results if (r["agent"], r["task"], r["seed"]) == (agent, task, seed))


def markdown_table(summary: dict[str, Any], tasks: Sequence[str]) -> str:
    """IQM [95 % CI] and mean KL per agent, then each task's mean normalised score."""
    lines = ["| agent | IQM (normalised) | 95 % CI | KL (nats) | " + " | ".join(tasks) + " |",
             "|---|---|---|---|" + "---|" * len(tasks)]
    for agent, row in summary.items():
        per_task = " | ".join(f"{row['tasks'][t]['normalised']:.2f}" for t in tasks)
        lines.append(f"| {agent} | {row['iqm']:.3f} | [{row['ci_low']:.3f}, {row['ci_high']:.3f}] "
                     f"| {row['kl']:.2f} | {per_task} |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Left: IQM with its 95 % CI per agent. Right: performance profiles (fraction of runs with score > τ)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    agents = list(summary)
    for y, agent in enumerate(agents):
        row = summary[agent]
        left.errorbar(row["iqm"], y, xerr=[[row["iqm"] - row["ci_low"]], [row["ci_high"] - row["iqm"]]],
                      fmt="o", capsize=4)
    left.set_yticks(range(len(agents)), agents)
    left.set_xlabel("IQM of normalised score (0 = untrained, 1 = best run)")
    left.grid(alpha=0.3)
    taus = np.linspace(-0.25, 1.0, 101)
    for agent in agents:
        right.plot(taus, performance_profile(np.array(summary[agent]["normalised"]), taus), label=agent)
    right.set_xlabel("normalised score τ")
    right.set_ylabel("fraction of runs with score > τ")
    right.legend()
    right.grid(alpha=0.3)
    fig.suptitle("Same tasks, same token budget, different algorithm (95 % stratified bootstrap CIs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=DEFAULT_AGENTS, help="registered agent names")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="task ids (textenv.TASKS)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per (agent, task): SEED, SEED+1, ...")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--total-timesteps", type=int, default=20_000, help="tokens generated per run")
    parser.add_argument("--output", type=Path, default=Path("runs/swap_algorithms"))
    parser.add_argument("--model", default=DEFAULT_MODEL, help="policy (and reference) model: name or directory")
    parser.add_argument("--num-envs", type=int, default=32, help="episodes per rollout (a multiple of 4)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: each task's own")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="β of the KL penalty")
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts per task (one sample each)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap repetitions of the CIs")
    parser.add_argument("--offline-prompts", type=int, default=200,
                        help=f"training prompts (× 4 ranked completions) of the offline agents' data "
                             f"({', '.join(OFFLINE_AGENTS)})")
    args = parser.parse_args(argv)
    for name in args.agents:
        agent_class(name)  # an unknown name fails now, not after the first run has trained
    for name in args.tasks:
        get_task(name)
    for flag in ("seeds", "jobs", "threads", "bootstrap", "offline_prompts"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    check_run_settings(args)
    start = time.perf_counter()
    results = run_all(args)
    untrained = {task: untrained_score(task, args)["score"] for task in args.tasks}
    summary = summarise(results, untrained, args)

    table = markdown_table(summary, args.tasks)
    print("\n" + table)
    (args.output / "comparison.md").write_text(table + "\n")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    save_eval_json(args.output / "comparison.json",
                      {"settings": settings, "untrained": untrained, "agents": summary, "runs": results,
                       "wall_s": time.perf_counter() - start})
    plot(summary, args.output / "comparison.png")
    print(f"\nwrote {args.output / 'comparison.md'}, comparison.json and comparison.png "
          f"({os.cpu_count()} CPUs, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
