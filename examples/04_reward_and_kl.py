"""Lesson 04: your own reward function, and why the KL term matters.

    python examples/04_reward_and_kl.py          # two short trainings, < 1 CPU-minute; --quick: seconds

A reward model r_φ(x, y) is anything that scores a completion y of a prompt x. In textenv a plain Python function
``fn(prompts, completions) -> one float per completion`` is one (``reward_models/function.py`` wraps it as a
``CallableReward``): pass it as ``reward_model=fn``.

The reward we write here is deliberately naive: the share of the completion's words that are "enthusiastic".
Nothing in it asks for fluent, varied text, so a policy that maximises it alone finds the cheap optimum and
repeats one enthusiastic word: the reward is *hacked* (Goodhart: the proxy goes up, what we wanted does not).

InstructGPT's objective (eq. 2) guards against that with a KL penalty to the starting model π_ref:

    R(x, y) = r_φ(x, y) − β · Σ_t [log π_θ(y_t|s_t) − log π_ref(y_t|s_t)]

The sum is a sample of KL(π_θ ‖ π_ref): how far the policy has drifted, in nats. Every token the starting model
would not have written costs β times its log-ratio, so the policy may only raise r_φ in ways that stay
plausible text. We train the same agent twice, with β = 0 and β > 0, and print side by side the reward, the KL
to π_ref (measured the same way for both), distinct-n (the share of distinct n-grams: repetition drives it down)
and sample texts. Writes ``comparison.json`` to ``--output``.
"""

import argparse
import json
import re
from pathlib import Path

import torch

from textenv.agents import make_agent
from textenv.apps.evaluation import evaluate_policy
from textenv.prompts import builtin_prompts
from textenv.vector_env import TextGenVectorEnv

ENTHUSIASTIC = {"great", "amazing", "love", "loved", "perfect", "excellent", "fantastic", "wonderful", "best",
                "awesome", "superb", "outstanding", "delicious", "beautiful", "brilliant", "lovely"}


def enthusiasm(prompts: list[str], completions: list[str]) -> list[float]:
    """Our reward model: the share of words in each completion that are in ENTHUSIASTIC, in [0, 1]."""
    scores = []
    for text in completions:
        words = re.findall(r"[a-z']+", text.lower())
        scores.append(sum(word in ENTHUSIASTIC for word in words) / max(len(words), 1))
    return scores


def train_and_measure(beta: float, args: argparse.Namespace) -> dict:
    """Train REINFORCE on ``enthusiasm`` with KL coefficient β; measure it on held-out prompts."""
    env = TextGenVectorEnv(num_envs=args.num_envs, model=args.model, reward_model=enthusiasm,
                           max_new_tokens=args.max_new_tokens, kl_coef=beta, autoreset_mode="disabled")
    # β = 0 loads no reference model, so the env's own KL would read 0: we measure both runs against the same
    # π_ref (the starting model) with evaluate_policy instead.
    agent = make_agent("reinforce", env, learning_rate=args.learning_rate, seed=0)
    agent.learn(total_timesteps=args.total_timesteps, progress_bar=False)
    return {"beta": beta, **measure(env.policy, args)}


def measure(policy, args: argparse.Namespace) -> dict:
    """Our reward, the KL to π_ref (the starting model; nats per completion), distinct-n and samples, on held-out
    prompts (one sample each, the same seed for every policy)."""
    held_out = evaluate_policy(policy, prompts=builtin_prompts("eval")[: args.eval_prompts], gold=enthusiasm,
                               reference=args.model, max_new_tokens=args.max_new_tokens, seed=1, device="cpu")
    return {"reward": held_out["gold_reward"], "kl": held_out["kl"], "distinct_1": held_out["distinct_1"],
            "distinct_2": held_out["distinct_2"],
            "samples": [s["prompt"] + " |" + s["completion"] for s in held_out["samples"][:3]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Lesson 04: a reward function of your own, and the KL penalty.")
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny budget (what the tests run)")
    parser.add_argument("--output", type=Path, default=Path("runs/lessons/04_reward_and_kl"))
    parser.add_argument("--model", default="textenv/default", help="default: the embedded 2.7M-parameter GPT-2")
    parser.add_argument("--beta", type=float, default=0.02, help="β of the penalised run (the other has β = 0)")
    args = parser.parse_args(argv)
    args.num_envs, args.max_new_tokens, args.learning_rate = 32, 16, 3e-4
    args.total_timesteps, args.eval_prompts = (2_048, 16) if args.quick else (24_576, 64)
    torch.manual_seed(0)

    start = measure(args.model, args)  # the starting model π_ref itself (KL 0)
    runs = [train_and_measure(beta, args) for beta in (0.0, args.beta)]
    print(f"\n{'':24}{'start':>14}" + "".join(f"{'β = ' + format(r['beta'], 'g'):>14}" for r in runs))
    for key, label in (("reward", "enthusiasm r_φ"), ("kl", "KL to π_ref (nats)"), ("distinct_1", "distinct-1"),
                       ("distinct_2", "distinct-2")):
        print(f"{label:24}" + "".join(f"{r[key]:14.3f}" for r in [start, *runs]))
    for run in runs:
        print(f"\nsamples at β = {run['beta']:g}:")
        for text in run["samples"]:
            print("   ", text)
    hacked = runs[0]["kl"] > runs[1]["kl"] and runs[0]["distinct_2"] < runs[1]["distinct_2"]
    print("\nβ = 0 drifted further from π_ref" + (" and repeats itself more: the reward was hacked." if hacked
                                                  else "." if runs[0]["kl"] > runs[1]["kl"] else "? (tiny budget)"))
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "comparison.json").write_text(json.dumps({"start": start, "runs": runs}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
