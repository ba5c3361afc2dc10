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

``--from FILE`` reports a finished comparison and trains nothing: it renders the table of a ``comparison.json`` with
its caption (seeds, tasks, runs per agent, tokens per run, bootstrap resamples, the untrained baselines, the command
that made the json and the one that rendered the table), prints it, and with ``--readme FILE [FILE ...]`` rewrites
the block between the lines ``<!-- comparison-table:begin -->`` and ``<!-- comparison-table:end -->`` of each
Markdown file (nothing else of the file changes); ``--plot FILE`` redraws the figure. The README's table is made so:

    python examples/swap_algorithms.py --from docs/results/comparison.json --readme README.md docs/tasks.md --plot docs/results/comparison.png

Budget: a native agent takes ~20–30 s per run at 20k tokens with one torch thread, sb3-ppo ~90 s.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shlex
import sys
import textwrap
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
from textenv.checkpoint import write_file_atomically
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


def row_label(agent: str) -> str:
    """An agent's name in tables and plots; the offline agents' rows say so."""
    return f"{agent} (offline)" if agent in OFFLINE_AGENTS else agent


def markdown_table(summary: dict[str, Any], tasks: Sequence[str], runs: Sequence[dict[str, Any]] = ()) -> str:
    """IQM [95 % CI] and mean KL per agent, then each task's mean normalised score; with ``runs`` (their
    ``wall_s``) a last column of each agent's mean wall-clock seconds of training per run."""
    wall = {agent: [r["wall_s"] for r in runs if r["agent"] == agent] for agent in summary}
    timed = bool(runs) and all(wall.values())
    header = ["agent", "IQM (normalised)", "95 % CI", "KL (nats)", *tasks, *(["s / run"] if timed else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for agent, row in summary.items():
        per_task = " | ".join(f"{row['tasks'][t]['normalised']:.2f}" for t in tasks)
        seconds = f" {np.mean(wall[agent]):.0f} |" if timed else ""
        lines.append(f"| {row_label(agent)} | {row['iqm']:.3f} | [{row['ci_low']:.3f}, {row['ci_high']:.3f}] "
                     f"| {row['kl']:.2f} | {per_task} |{seconds}")
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
    left.set_yticks(range(len(agents)), [row_label(agent) for agent in agents])
    left.set_xlabel("IQM of normalised score (0 = untrained, 1 = best run)")
    left.grid(alpha=0.3)
    taus = np.linspace(-0.25, 1.0, 101)
    for agent in agents:
        right.plot(taus, performance_profile(np.array(summary[agent]["normalised"]), taus), label=row_label(agent))
    right.set_xlabel("normalised score τ")
    right.set_ylabel("fraction of runs with score > τ")
    right.legend()
    right.grid(alpha=0.3)
    fig.suptitle("Same tasks, same token budget, different algorithm (95 % stratified bootstrap CIs)")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    write_file_atomically(Path(path), image.getvalue())


# ---------------------------------------------------------------------------------------------- 3. the published table
TABLE_BEGIN = "<!-- comparison-table:begin -->"
TABLE_END = "<!-- comparison-table:end -->"
#: How the block names this script: the commands it shows run from the repository's root.
SCRIPT = "examples/swap_algorithms.py"
#: The flags of the report mode (``--from``); every other flag is the comparison's own.
REPORT_FLAGS = ("from_json", "readme", "plot")
#: The keys of ``comparison.json`` the table and its caption are made of.
COMPARISON_KEYS = {"settings": ("agents", "tasks", "seeds", "seed", "total_timesteps", "num_envs", "kl_coef",
                                "eval_prompts", "bootstrap"),
                   "agent": ("iqm", "ci_low", "ci_high", "kl", "normalised", "tasks"),
                   "run": ("agent", "task", "seed", "wall_s")}


def read_comparison(path: Path) -> dict[str, Any]:
    """A ``comparison.json`` this script wrote, checked for every key the table needs (:class:`InputError` naming
    ``--from`` and the missing key otherwise)."""
    fix = ("give the comparison.json of a finished comparison (`python examples/swap_algorithms.py --output OUTPUT` "
           "writes OUTPUT/comparison.json; the README's is docs/results/comparison.json)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"--from {path}: no such file; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"--from {path} is not a readable JSON file ({err}); {fix}") from None
    missing = _missing_keys(data)
    if missing:
        raise InputError(f"--from {path} is not a complete comparison.json: {missing}; {fix}")
    return data


def _missing_keys(data: Any) -> str | None:
    """What the comparison ``data`` lacks, as ``'agents' is missing`` (``None``: nothing)."""
    if not isinstance(data, dict):
        return "it is not a JSON object"
    for key in ("settings", "untrained", "agents", "runs"):
        if not isinstance(data.get(key), list if key == "runs" else dict) or not data[key]:
            return f"{key!r} is missing or empty"
    settings = data["settings"]
    tasks = settings.get("tasks") if isinstance(settings.get("tasks"), list) else []
    lacking = [f"settings.{key}" for key in COMPARISON_KEYS["settings"] if key not in settings]
    lacking += ["settings.tasks"] if "tasks" in settings and not tasks else []
    lacking += [f"untrained.{task}" for task in tasks if not _is_number(data["untrained"].get(task))]
    for agent, row in data["agents"].items():
        row = _as_dict(row)
        lacking += [f"agents.{agent}.{key}" for key in COMPARISON_KEYS["agent"] if key not in row]
        lacking += [f"agents.{agent}.{key}" for key in ("iqm", "ci_low", "ci_high", "kl")
                    if key in row and not _is_number(row[key])]
        per_task = _as_dict(row.get("tasks"))
        lacking += [f"agents.{agent}.tasks.{task}.normalised" for task in tasks
                    if not _is_number(_as_dict(per_task.get(task)).get("normalised"))]
    lacking += [f"runs[{i}].{key}" for i, run in enumerate(data["runs"]) for key in COMPARISON_KEYS["run"]
                if key not in _as_dict(run)]
    return f"{', '.join(lacking[:4])} {'is' if len(lacking) == 1 else 'are'} missing or malformed" if lacking else None


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def reproduce_command(settings: dict[str, Any]) -> str:
    """The command line that trains the comparison ``settings`` describes: ``--agents`` and ``--seeds`` always,
    every other flag of the comparison that differs from its default."""
    defaults = vars(build_parser().parse_args([]))
    words = ["python", SCRIPT]
    for key, value in settings.items():
        if key not in defaults or key in REPORT_FLAGS:
            continue
        default = str(defaults[key]) if isinstance(defaults[key], Path) else defaults[key]
        if key in ("agents", "seeds") or value != default:
            words += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return shlex.join(words)


def caption(comparison: dict[str, Any]) -> str:
    """What the table's numbers are: how many seeds, tasks and runs, each run's budget, the untrained baselines (the
    0 of each task), the offline rows' data, then what each column is (two paragraphs)."""
    settings, tasks = comparison["settings"], comparison["settings"]["tasks"]
    seeds = range(settings["seed"], settings["seed"] + settings["seeds"])
    runs, threads = len(seeds) * len(tasks), settings.get("threads", 1)
    length = (f"{settings['max_new_tokens']} tokens per completion" if settings.get("max_new_tokens")
              else "each task's own completion length")
    setup = (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}) × {len(tasks)} tasks = {runs} runs per agent, each "
             f"a {settings['total_timesteps']:,}-token budget ({settings['num_envs']} rows per rollout, "
             f"β = {settings['kl_coef']}, {length}) scored by its task's gold scorer on {settings['eval_prompts']} "
             "held-out prompts. Untrained policy's held-out gold score (the 0 of each task): "
             + ", ".join(f"{task} {comparison['untrained'][task]:+.3f}" for task in tasks) + ".")
    offline = [agent for agent in comparison["agents"] if agent in OFFLINE_AGENTS]
    if offline:
        tuned = settings.get("offline_agents", {})
        own = "; ".join(f"{agent}: " + ", ".join(f"{k}={v}" for k, v in tuned[agent].items())
                        for agent in offline if tuned.get(agent))
        setup += (f" Offline rows ({', '.join(offline)}) train on {settings.get('offline_prompts', '?')} training "
                  "prompts × 4 completions of the untrained policy ranked by the task's gold"
                  + (f" ({own})." if own else "."))
    columns = (f"IQM: interquartile mean of an agent's {runs} normalised scores (0 = the untrained policy, 1 = the "
               f"best run of any agent on the task); 95 % CI: stratified bootstrap ({settings['bootstrap']:,} "
               "resamples, seeds resampled within each task; Agarwal et al. 2021); KL(π_θ‖π_ref): nats per "
               "completion, mean over the runs; task columns: mean normalised score; s / run: mean wall-clock "
               f"seconds of a run's training (each run in its own process with {threads} torch "
               f"thread{'s' if threads != 1 else ''}, {settings.get('jobs', 1)} at once; depends on the machine and "
               "its load).")
    return f"{setup}\n\n{columns}"


def table_block(comparison: dict[str, Any], json_file: str, command: str, figure: str | None) -> str:
    """The Markdown between the markers: the table, its caption, the figure's link, and the two commands (the one
    that made ``json_file``, the one that rendered this block). Paths are relative to the page it goes in."""
    table = markdown_table(comparison["agents"], comparison["settings"]["tasks"], comparison["runs"])
    figure_line = f" Figure: [IQM with CIs and performance profiles]({figure})." if figure else ""
    commands = (f"Trained by `{reproduce_command(comparison['settings'])}` ([{Path(json_file).name}]({json_file})); "
                f"this table rendered by `{command}`.")
    prose = [_wrapped(paragraph) for paragraph in (caption(comparison) + figure_line).split("\n\n") + [commands]]
    warning = f"<!-- generated by the command below from {Path(json_file).name}: do not edit by hand -->"
    return "\n\n".join([f"{warning}\n{table}", *prose])


def _wrapped(paragraph: str) -> str:
    """``paragraph`` in lines of at most 120 characters (as the README's prose), never breaking a word."""
    return textwrap.fill(paragraph, width=120, break_long_words=False, break_on_hyphens=False)


def replace_block(text: str, block: str, path: Path) -> str:
    """``text`` with the lines between its one ``TABLE_BEGIN`` line and its one ``TABLE_END`` line replaced by
    ``block``; every other byte stays (the file's line endings too). :class:`InputError` naming ``--readme``
    unless the markers are there once each, in order."""
    found = {marker: list(re.finditer(rf"^{re.escape(marker)}[ \t]*(\r?)$", text, re.MULTILINE))
             for marker in (TABLE_BEGIN, TABLE_END)}
    pair = f"the two lines {TABLE_BEGIN} and {TABLE_END}"
    for marker, matches in found.items():
        if not matches:
            raise InputError(f"--readme {path} has no line {marker}: put {pair} where the table goes (whatever "
                             "is between them is replaced)")
        if len(matches) > 1:
            raise InputError(f"--readme {path} has {len(matches)} lines {marker}: keep one pair, {pair}")
    begin, end = found[TABLE_BEGIN][0], found[TABLE_END][0]
    if end.start() < begin.end():
        raise InputError(f"--readme {path}: {TABLE_END} comes before {TABLE_BEGIN}; put {pair} in that order")
    newline = begin.group(1) + "\n"
    return text[:begin.end() + len(newline)] + block.replace("\n", newline) + newline + text[end.start():]


def _shown(path: Path) -> str:
    """``path`` as the block shows it: relative to the working directory when it lies under it."""
    path = Path(path)
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())
    return path.as_posix()


def _relative_to_page(target: Path, page: Path) -> str:
    return Path(os.path.relpath(Path(target).absolute(), Path(page).absolute().parent)).as_posix()


def rendered_pages(args: argparse.Namespace, comparison: dict[str, Any]) -> dict[Path, tuple[str, str]]:
    """Each ``--readme`` file's text now and with its block rendered from ``comparison`` (links relative to it)."""
    pages = {}
    for page in args.readme or []:
        try:
            text = page.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"--readme {page} cannot be read ({err}); give a Markdown file with the lines "
                             f"{TABLE_BEGIN} and {TABLE_END}") from None
        block = table_block(comparison, _relative_to_page(args.from_json, page), report_command(args),
                            _relative_to_page(args.plot, page) if args.plot else None)
        pages[page] = (text, replace_block(text, block, page))
    return pages


def report_command(args: argparse.Namespace) -> str:
    """The command line of this report, as the block shows it."""
    return shlex.join(["python", SCRIPT, "--from", _shown(args.from_json),
                       *(["--readme", *map(_shown, args.readme)] if args.readme else []),
                       *(["--plot", _shown(args.plot)] if args.plot else [])])


def report(args: argparse.Namespace) -> int:
    """``--from``: the table of a finished comparison, printed, written into the ``--readme`` files' blocks and
    (``--plot``) drawn; trains nothing. Every file is checked before any is written."""
    comparison = read_comparison(args.from_json)
    pages = rendered_pages(args, comparison)
    print(table_block(comparison, _shown(args.from_json), report_command(args),
                      _shown(args.plot) if args.plot else None))
    if args.plot:
        plot(comparison["agents"], args.plot)
    for page, (old, new) in pages.items():
        if new != old:
            write_file_atomically(page, new.encode("utf-8"))
        print(f"{page}: {'table rewritten' if new != old else 'table already up to date'}")
    return 0


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
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
    report_mode = parser.add_argument_group("report a finished comparison (trains nothing)")
    report_mode.add_argument("--from", dest="from_json", type=Path, default=None, metavar="FILE",
                             help="a comparison.json: print its table with the caption")
    report_mode.add_argument("--readme", type=Path, nargs="+", default=None, metavar="FILE",
                             help=f"Markdown files whose block between the lines {TABLE_BEGIN} and {TABLE_END} "
                                  "becomes that table (nothing else in them changes)")
    report_mode.add_argument("--plot", type=Path, default=None, metavar="FILE",
                             help="also draw the comparison's figure to this PNG file")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_json is not None:
        check_report_args(args, parser)
        return args
    if args.readme is not None or args.plot is not None:
        flag = "--readme" if args.readme is not None else "--plot"
        raise InputError(f"{flag} renders a finished comparison: add --from OUTPUT/comparison.json (e.g. --from "
                         "docs/results/comparison.json); a comparison run writes its table to OUTPUT/comparison.md")
    for name in args.agents:
        agent_class(name)  # an unknown name fails now, not after the first run has trained
    for name in args.tasks:
        get_task(name)
    for flag in ("seeds", "jobs", "threads", "bootstrap", "offline_prompts"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def check_report_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--from`` takes only ``--readme`` and ``--plot``: the comparison's own flags would not change its table."""
    given = [key for key, value in vars(args).items() if key not in REPORT_FLAGS and value != parser.get_default(key)]
    if given:
        flags = " ".join(f"--{key.replace('_', '-')}" for key in given)
        raise InputError(f"--from reports the finished comparison in {args.from_json} and trains nothing: drop {flags} "
                         "(or drop --from to run a comparison)")
    if args.plot is not None:
        if args.plot.suffix.lower() != ".png":
            raise InputError(f"--plot {args.plot}: the figure is a PNG; give a file name ending in .png")
        if not args.plot.parent.is_dir():
            raise InputError(f"--plot {args.plot}: {args.plot.parent} is not a directory; create it first")
        if args.plot.exists() and (not args.plot.is_file() or args.plot.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n"):
            raise InputError(f"--plot {args.plot} exists and is not a PNG image; choose another --plot (an existing "
                             "figure is replaced, nothing else is)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        return report(args)
    args.output.mkdir(parents=True, exist_ok=True)
    check_run_settings(args)
    start = time.perf_counter()
    results = run_all(args)
    untrained = {task: untrained_score(task, args)["score"] for task in args.tasks}
    summary = summarise(results, untrained, args)

    table = markdown_table(summary, args.tasks, results)
    print("\n" + table)
    (args.output / "comparison.md").write_text(table + "\n")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in REPORT_FLAGS}
    settings["offline_agents"] = {agent: OFFLINE_AGENTS[agent][1] for agent in args.agents if agent in OFFLINE_AGENTS}
    save_eval_json(args.output / "comparison.json",
                      {"settings": settings, "untrained": untrained, "agents": summary, "runs": results,
                       "wall_s": time.perf_counter() - start})
    plot(summary, args.output / "comparison.png")
    print(f"\nwrote {args.output / 'comparison.md'}, comparison.json and comparison.png "
          f"({os.cpu_count()} CPUs, {time.perf_counter() - start:.0f} s); the table with its caption: "
          f"python {SCRIPT} --from {args.output / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except InputError as err:  # a user's mistake: one line that says what to fix, no traceback (as textenv's CLI)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
