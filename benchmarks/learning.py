"""Learning under a CPU budget: does every native agent raise held-out sentiment within a few CPU-minutes?

The embedded sentiment task: the 2.66M-parameter review GPT-2 (``textenv/default``) continues training
prompts; the reward is the VADER compound score of the completion (in [−1, 1]) minus β·Σ_t KL_t to the frozen
start model (InstructGPT eq. 2). Each agent gets a FRESH env and trains, on its default hyper-parameters,
for the same CPU-time budget (``time.process_time``: CPU seconds of this process, summed over its threads;
evaluation excluded), whole iterations at a time.

Before and after training, the policy is measured on held-out prompts (the built-in ``"eval"`` split, never
trained on) with :func:`textenv.apps.evaluation.evaluate_policy`: mean VADER over ``--eval-prompts`` prompts ×
``--eval-samples`` samples (same prompts and sampler seed before and after), and KL(π_θ‖π_ref) in nats per
completion (k1 estimator, mean over samples).

Prints the table  agent | before → after | change | KL | CPU-min  and a final line saying whether every agent
met the bar "change ≥ +0.5 at KL ≤ 5 nats".

    python benchmarks/learning.py                    # 4 agents × 10 CPU-min ≈ 45 min wall at 1 thread
    python benchmarks/learning.py --cpu-minutes 2 --agents ppo rloo
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from textenv.agents import agent_class, make_agent
from textenv.apps.cli import build_env
from textenv.apps.evaluation import evaluate_policy
from textenv.models.loading import DEFAULT_MODEL
from textenv.prompts import load_prompts

#: The issue's bar: held-out VADER gain of at least this much ...
MIN_GAIN = 0.5
#: ... while the policy stays within this many nats (per completion) of the reference.
MAX_KL = 5.0


def held_out(env, args: argparse.Namespace) -> dict[str, Any]:
    """Mean held-out VADER and KL (nats / completion) of ``env.policy``; deterministic given ``args.seed``."""
    return evaluate_policy(
        env.policy,
        prompts=load_prompts("builtin", "eval")[: args.eval_prompts],
        gold=env.reward_model,
        reference=env.reference if env.reference is not None else args.model,  # β = 0: the start model
        tokenizer=env.tokenizer,
        num_samples=args.eval_samples,
        max_new_tokens=env.max_new_tokens,
        seed=args.seed + 10_000,
        batch_size=args.num_envs,
        max_table_rows=0,
        device=env.device,
    )


def train_for_cpu_budget(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, train ``name`` until ``args.cpu_minutes`` of process CPU time are spent, evaluate again."""
    cls = agent_class(name)
    env = build_env(
        {"num_envs": args.num_envs, "max_new_tokens": args.max_new_tokens, "kl_coef": args.kl_coef,
         "model": args.model},
        group_size=cls.default_group_size,  # rloo, grpo: K completions per prompt in the same num_envs rows
    )
    hyperparameters = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    agent = make_agent(name, env, seed=args.seed, **hyperparameters)
    before = held_out(env, args)

    budget_s = args.cpu_minutes * 60
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    while time.process_time() - cpu_start < budget_s:
        # One iteration per call (any iteration generates >= 1 token), through the base loop's bookkeeping.
        agent.learn(agent.num_timesteps + 1, progress_bar=False)
    cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - wall_start

    after = held_out(env, args)
    row = {
        "agent": name, "before": before["gold_reward"], "after": after["gold_reward"],
        "change": after["gold_reward"] - before["gold_reward"], "kl": after["kl"],
        "cpu_min": cpu_s / 60, "wall_min": wall_s / 60, "tokens": agent.num_timesteps,
        "iterations": agent.iterations,
    }
    row["met"] = row["change"] >= MIN_GAIN and row["kl"] <= MAX_KL
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=["reinforce", "ppo", "rloo", "grpo"])
    parser.add_argument("--cpu-minutes", type=float, default=10.0, help="training budget per agent (CPU-min)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--num-envs", type=int, default=64, help="completions per iteration")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="β")
    parser.add_argument("--learning-rate", type=float, default=None, help="override every agent's default α")
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts")
    parser.add_argument("--eval-samples", type=int, default=2, help="samples per held-out prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    if not args.cpu_minutes > 0:
        parser.error("--cpu-minutes must be > 0")
    torch.set_num_threads(args.threads)
    for name in args.agents:
        agent_class(name)  # unknown names fail before anything runs

    print(f"model={args.model} envs={args.num_envs} T={args.max_new_tokens} beta={args.kl_coef} "
          f"held-out={args.eval_prompts}x{args.eval_samples} budget={args.cpu_minutes} CPU-min "
          f"threads={torch.get_num_threads()}")
    print(f"{'agent':>10} | {'before → after':>15} | {'change':>7} | {'KL':>5} | {'CPU-min':>7} | "
          f"{'wall-min':>8} | {'tokens':>7}", flush=True)
    rows = []
    for name in args.agents:
        r = train_for_cpu_budget(name, args)
        rows.append(r)
        print(f"{r['agent']:>10} | {r['before']:+.3f} → {r['after']:+.3f} | {r['change']:+7.3f} | {r['kl']:5.2f} | "
              f"{r['cpu_min']:7.2f} | {r['wall_min']:8.2f} | {r['tokens']:>7}", flush=True)
    failed = [r["agent"] for r in rows if not r["met"]]
    verdict = "every agent met" if not failed else f"NOT met by {', '.join(failed)}:"
    print(f"{verdict} change >= +{MIN_GAIN} at KL <= {MAX_KL} nats in {args.cpu_minutes:g} CPU-min")


if __name__ == "__main__":
    main()
