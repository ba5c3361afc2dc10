"""Lesson 07: the same env, several algorithms, one name apart.

    python examples/07_swap_algorithms.py        # 4 agents × 12k tokens, ~1 CPU-minute; --quick: seconds

Every textenv agent optimises the same objective on the same MDP, the KL-penalised return of InstructGPT eq. 2,
R = r_φ(x, y) − β·Σ_t KL_t, and trains the same object: the env's policy π_θ. They differ in how they estimate
the policy gradient ∇_θ E[R] (docs/rl-framing.md has each objective):

* ``reinforce``  (R − b)·∇ log π_θ(y|x) with a running-mean baseline b (Williams 1992; lesson 02 by hand);
* ``ppo``        a learned value V(s_t), GAE advantages and a clipped ratio (Schulman et al. 2017; InstructGPT);
* ``rloo``       K samples per prompt, each one's baseline the mean return of the other K − 1 (Ahmadian et al. 2024);
* ``grpo``       K samples per prompt, advantages standardised within the group (Shao et al. 2024);
* ``remax``, ``sb3-ppo``, ... (``textenv train --help`` lists them all).

Changing the algorithm is changing the name given to ``make_agent``. The group-based agents (rloo, grpo) need K
completions of each prompt side by side, so their env is built with ``group_size=K``
(``agent_class(name).default_group_size``); everything else is identical. ``examples/swap_algorithms.py`` is the
research version of this lesson (curves, more agents, any budget). Writes ``table.md`` to ``--output``.
"""

import argparse
import time
from pathlib import Path

import torch

from textenv.agents import agent_class, make_agent
from textenv.apps.evaluation import evaluate_policy
from textenv.prompts import builtin_prompts
from textenv.vector_env import TextGenVectorEnv


def train_and_evaluate(name: str, args: argparse.Namespace) -> dict:
    """A fresh env (fresh weights) → agent ``name`` → held-out sentiment and KL after training."""
    env = TextGenVectorEnv(num_envs=16, model=args.model, max_new_tokens=args.max_new_tokens, kl_coef=0.05,
                           group_size=agent_class(name).default_group_size, autoreset_mode="disabled")
    agent = make_agent(name, env, learning_rate=2e-4, seed=0)  # <- the one line that names the algorithm
    start = time.process_time()
    agent.learn(total_timesteps=args.total_timesteps, progress_bar=False)
    cpu_seconds = time.process_time() - start
    result = evaluate_policy(env.policy, prompts=builtin_prompts("eval")[: args.eval_prompts], gold="vader",
                             reference=args.model, max_new_tokens=args.max_new_tokens, seed=1, device="cpu")
    return {"agent": name, "sentiment": result["gold_reward"], "kl": result["kl"], "distinct_2": result["distinct_2"],
            "tokens": agent.num_timesteps, "cpu_seconds": cpu_seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Lesson 07: swap the algorithm by changing one name.")
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny budget (what the tests run)")
    parser.add_argument("--output", type=Path, default=Path("runs/lessons/07_swap_algorithms"))
    parser.add_argument("--model", default="textenv/default", help="default: the embedded 2.7M-parameter GPT-2")
    parser.add_argument("--agents", nargs="+", default=["reinforce", "ppo", "rloo", "grpo"])
    args = parser.parse_args(argv)
    for name in args.agents:
        agent_class(name)  # an unknown name fails now, before anything trains
    args.max_new_tokens = 8 if args.quick else 24
    args.total_timesteps, args.eval_prompts = (256, 8) if args.quick else (12_288, 64)
    torch.manual_seed(0)

    start = evaluate_policy(args.model, prompts=builtin_prompts("eval")[: args.eval_prompts], gold="vader",
                            reference=args.model, max_new_tokens=args.max_new_tokens, seed=1, device="cpu")
    rows = [train_and_evaluate(name, args) for name in args.agents]
    lines = [f"held-out sentiment of the starting model: {start['gold_reward']:+.3f}", "",
             "| agent | held-out sentiment | KL to π_ref (nats) | distinct-2 | tokens | CPU s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['agent']} | {r['sentiment']:+.3f} | {r['kl']:.2f} | {r['distinct_2']:.3f} | {r['tokens']} "
              f"| {r['cpu_seconds']:.1f} |" for r in rows]
    print("\n".join(lines))
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "table.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
