"""Swap the algorithm by changing one name.

Every textenv agent trains the same object, the env's causal-LM policy, through the same three lines:

    env = build_env({"num_envs": 32, "max_new_tokens": 24, "kl_coef": 0.05}, group_size=cls.default_group_size)
    agent = make_agent(NAME, env, seed=0, tensorboard_log="runs/.../tensorboard")
    agent.learn(total_timesteps=20_000)

This script runs them for several names on one task (the embedded 2.66M-parameter GPT-2 that writes product
reviews, rewarded by VADER sentiment, with the KL penalty R = r_φ − β·Σ_t KL_t of InstructGPT eq. 2), with the
same env settings and the same token budget, and then writes

1. ONE table: held-out VADER before → after, KL(π_θ‖π_ref) in nats per completion, training tokens/s and wall
   seconds (``comparison.md`` and ``comparison.json``);
2. ONE plot, ``curves.png``: the training batches' VADER score and KL against tokens generated. The curves are
   read back from the TensorBoard scalars every agent already writes under the same names
   (``rollout/rm_score``, ``rollout/kl``, step = tokens), so nothing agent-specific is needed.

    python examples/swap_algorithms.py                        # reinforce ppo rloo grpo sb3-ppo, 20k tokens each
    python examples/swap_algorithms.py --agents ppo rloo --total-timesteps 50000 --output runs/swap
    tensorboard --logdir runs/swap_algorithms                 # the same curves, interactively

Budget (measured with one torch thread): about 25 s per native agent at the default 20k tokens, 90 s for
sb3-ppo (SB3's own rollout buffer and 4-epoch update), 3.5 min for all five. A 20k-token run shows the trend
(+0.73 to +0.84 held-out VADER); the full gain of ~+0.85 takes ~2 CPU-minutes per agent
(``benchmarks/learning.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from textenv.agents import agent_class, make_agent
from textenv.apps.cli import build_env, held_out_eval
from textenv.models.loading import DEFAULT_MODEL

DEFAULT_AGENTS = ["reinforce", "ppo", "rloo", "grpo", "sb3-ppo"]
#: TensorBoard tags drawn in the two panels (every agent logs them each iteration, step = tokens so far).
CURVES = {"rollout/rm_score": "VADER score of the training samples", "rollout/kl": "KL(π_θ‖π_ref), nats / completion"}


# ---------------------------------------------------------------------------------------------- 1. train one agent
def train_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build a fresh env (fresh policy weights), evaluate, train ``name`` for the token budget, evaluate again.

    Returns one row of the comparison table: held-out VADER before/after (mean score in [−1, 1]), held-out KL
    (nats per completion), tokens trained, training wall seconds and tokens/s.
    """
    cls = agent_class(name)
    # The same env settings for every agent. Group-based agents (rloo, grpo) ask the env for K completions of
    # each prompt in K consecutive rows (default_group_size); num_envs, lengths, β and the reward are unchanged.
    env = build_env(
        {"num_envs": args.num_envs, "max_new_tokens": args.max_new_tokens, "kl_coef": args.kl_coef,
         "model": args.model, "reward_model": "vader"},
        group_size=cls.default_group_size,
    )
    logdir = args.output / name / "tensorboard"
    shutil.rmtree(logdir, ignore_errors=True)  # a rerun replaces this agent's curves instead of appending to them
    agent = make_agent(name, env, seed=args.seed, tensorboard_log=str(logdir))  # <- the one name that changes

    eval_seed = args.seed + 10_000  # the same held-out prompts and sampler seed before and after
    before = held_out_eval(env, args.eval_prompts, eval_seed)
    start = time.perf_counter()
    agent.learn(args.total_timesteps, progress_bar=not args.no_progress)
    wall = time.perf_counter() - start
    after = held_out_eval(env, args.eval_prompts, eval_seed)
    return {
        "agent": name,
        "vader_before": before["gold_reward"],
        "vader_after": after["gold_reward"],
        "kl_nats": after["kl"],
        "tokens": agent.num_timesteps,
        "tokens_per_s": agent.num_timesteps / wall,
        "wall_s": wall,
        "sample": after["samples"][0]["prompt"] + " | " + after["samples"][0]["completion"],
    }


# ---------------------------------------------------------------------------------------------- 2. the curves
def read_curves(logdir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{tag: (tokens, values)}`` for the :data:`CURVES` tags of one agent's TensorBoard directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    available = set(events.Tags()["scalars"])
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in CURVES if tag in available}


def plot_curves(curves: dict[str, dict[str, tuple[list[int], list[float]]]], path: Path) -> None:
    """Two panels, one line per agent: VADER score and KL of the training batches against tokens generated."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (tag, label) in zip(axes, CURVES.items()):
        for agent, series in curves.items():
            if tag in series:
                ax.plot(*series[tag], label=agent, marker=".", markersize=3, linewidth=1.2)
        ax.set_xlabel("tokens generated in training")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Same env, same token budget, different algorithm")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- 3. the table
def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a markdown table (VADER in [−1, 1]; KL in nats per completion)."""
    lines = ["| agent | held-out VADER before → after | change | KL (nats) | tokens | tokens/s | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['agent']} | {r['vader_before']:+.3f} → {r['vader_after']:+.3f} "
            f"| {r['vader_after'] - r['vader_before']:+.3f} | {r['kl_nats']:.2f} | {r['tokens']} "
            f"| {r['tokens_per_s']:.0f} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=DEFAULT_AGENTS, help="registered agent names")
    parser.add_argument("--total-timesteps", type=int, default=20_000, help="tokens generated per agent")
    parser.add_argument("--output", type=Path, default=Path("runs/swap_algorithms"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="policy (and reference) model: name or directory")
    parser.add_argument("--num-envs", type=int, default=32, help="episodes per rollout (a multiple of 4)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="β of the KL penalty")
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts (one sample each)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for name in args.agents:
        agent_class(name)  # an unknown name fails now, not after the first agent has trained
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.agents:
        print(f"== {name}: {args.total_timesteps} tokens")
        rows.append(train_one(name, args))

    table = markdown_table(rows)
    print("\n" + table)
    (args.output / "comparison.md").write_text(table + "\n")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.output / "comparison.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))

    curves = {name: read_curves(args.output / name / "tensorboard") for name in args.agents}
    plot_curves(curves, args.output / "curves.png")
    print(f"\nwrote {args.output / 'comparison.md'}, comparison.json and curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
