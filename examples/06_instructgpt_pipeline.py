"""Lesson 06: the InstructGPT pipeline, step by step, with textenv's library calls.

    python examples/06_instructgpt_pipeline.py   # < 1 CPU-minute; --quick: seconds

Lessons 02–04 trained against a reward we could write down. In RLHF nobody can: the reward model is *learned*
from human comparisons (Ouyang et al. 2022, "InstructGPT"; Stiennon et al. 2020). The recipe:

1. **Preferences.** Sample K completions per prompt from the starting policy and have a labeller rank them.
   Here the labeller is a "gold" scorer (VADER sentiment) standing in for people, so we can later check what
   the learned reward model gets wrong. (``textenv label`` lets you rank them yourself.)
2. **Reward model.** Fit r_φ(x, y) with the Bradley–Terry loss over every pair of a ranking (InstructGPT eq. 1):
       loss(φ) = −E_(x, y_w, y_l) [ log σ( r_φ(x, y_w) − r_φ(x, y_l) ) ]
   r_φ is the language model's trunk with a scalar head on the last token.
3. **RL.** PPO maximises the learned reward with the KL penalty (InstructGPT eq. 2):
       R(x, y) = r_φ(x, y) − β · Σ_t [log π_θ(y_t|s_t) − log π_ref(y_t|s_t)]
4. **Gold vs proxy.** r_φ is a *proxy*. On held-out prompts we measure both: while the proxy keeps rising the gold
   score may stall or fall (over-optimisation, Gao et al. 2022): the KL term is what keeps the two together.

``textenv pipeline`` runs the same stages resumably, with a β sweep and plots. Writes ``preferences.jsonl``,
``reward_model/`` and ``summary.json`` to ``--output``.
"""

import argparse
import json
from pathlib import Path

import torch

from textenv.agents import make_agent
from textenv.apps.collect import collect_preferences
from textenv.apps.evaluation import evaluate_policy
from textenv.preferences import JsonlWriter
from textenv.prompts import builtin_prompts
from textenv.reward_models.preference import train_preference_model
from textenv.vector_env import TextGenVectorEnv

MODEL = "textenv/default"  # the embedded 2.7M-parameter GPT-2 that writes product reviews


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Lesson 06: the InstructGPT pipeline step by step.")
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny budget (what the tests run)")
    parser.add_argument("--output", type=Path, default=Path("runs/lessons/06_instructgpt_pipeline"))
    args = parser.parse_args(argv)
    prompts, k, rm_epochs, ppo_tokens, held_out = (16, 2, 1, 512, 8) if args.quick else (200, 4, 2, 12_288, 64)
    args.output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    print(f"== 1. preferences: {prompts} training prompts × K={k} completions, ranked by the gold labeller (VADER)")
    collected = collect_preferences(model=MODEL, num_prompts=prompts, k=k, max_new_tokens=24, gold="vader", seed=0)
    path = args.output / "preferences.jsonl"
    path.unlink(missing_ok=True)  # this lesson's file of an earlier run
    with JsonlWriter(path) as writer:  # the format `textenv train-rm` and `textenv label` read
        for row in collected.rows:
            writer.write(row)
    example = collected.rows[0]
    print(f"{len(collected.rows)} rankings → {path}; e.g. {example.prompt!r}: best {example.ranked[0]!r}, "
          f"worst {example.ranked[-1]!r}")

    print("\n== 2. a Bradley–Terry reward model on the language model's trunk")
    reward_model, metrics = train_preference_model(collected.rows, backbone=MODEL, epochs=rm_epochs, eval_fraction=0.2,
                                                   seed=0, device="cpu")
    reward_model.save(args.output / "reward_model")
    print(f"pair accuracy: train {metrics['train/pair_accuracy']:.2f}, held-out {metrics['eval/pair_accuracy']:.2f} "
          f"(0.5 = chance) → {args.output / 'reward_model'}")

    print(f"\n== 3. PPO against the learned reward model, β = 0.05, {ppo_tokens} tokens")
    env = TextGenVectorEnv(num_envs=32, model=MODEL, reward_model=reward_model, max_new_tokens=24, kl_coef=0.05,
                           autoreset_mode="disabled")
    agent = make_agent("ppo", env, learning_rate=1e-4, seed=0)

    def measure() -> dict:
        """Gold (VADER) and proxy (r_φ) scores and the KL to π_ref on held-out prompts, one sample each."""
        result = evaluate_policy(env.policy, prompts=builtin_prompts("eval")[:held_out], gold="vader",
                                 proxy=reward_model, reference=MODEL, max_new_tokens=24, seed=1, device="cpu")
        return {key: result[key] for key in ("gold_reward", "proxy_reward", "kl", "distinct_2")} | {
            "sample": result["samples"][0]["prompt"] + " |" + result["samples"][0]["completion"]}

    before = measure()
    agent.learn(total_timesteps=ppo_tokens, progress_bar=False)
    after = measure()

    print(f"\n== 4. gold vs proxy on {held_out} held-out prompts")
    print(f"{'':10}{'gold (VADER)':>14}{'proxy (r_φ)':>14}{'KL (nats)':>12}{'distinct-2':>12}")
    for name, row in (("before", before), ("after", after)):
        print(f"{name:10}{row['gold_reward']:14.3f}{row['proxy_reward']:14.3f}{row['kl']:12.2f}"
              f"{row['distinct_2']:12.3f}")
    print(f"sample after: {after['sample']}")
    summary = {"rankings": len(collected.rows), "rm_metrics": {k: v for k, v in metrics.items() if k != "history"},
               "before": before, "after": after, "ppo_tokens": agent.num_timesteps}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
