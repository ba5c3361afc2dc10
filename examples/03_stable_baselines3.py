"""Lesson 03: the same task with stable-baselines3's PPO, unmodified, in a few lines.

    python examples/03_stable_baselines3.py      # ~1 CPU-minute; --quick: seconds

Lesson 02 wrote REINFORCE by hand. Here stable-baselines3 (SB3) does the RL: its PPO (Schulman et al. 2017)
collects rollouts, estimates advantages with GAE(γ = 1, λ) from a learned value V(s_t), and maximises the
clipped surrogate E_t[min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)] with ρ_t = π_θ(a_t|s_t) / π_θ_old(a_t|s_t).
The env and its reward are unchanged: R = r_φ(x, y) − β·KL(π_θ ‖ π_ref) on the last step (InstructGPT eq. 2),
which makes SB3's PPO exactly the RLHF PPO of InstructGPT.

Two textenv pieces connect them (``agents/sb3/``):

* ``TextGenSB3VecEnv``: an SB3 ``VecEnv`` whose sub-environments are the rows of one batched TextGen env;
* ``TextGenActorCriticPolicy``: an SB3 policy whose actor IS the env's language model (the same object the env
  computes the KL with) and whose critic is a linear value head on its last hidden state.

(``make_agent("sb3-ppo", env)`` / ``textenv train --agent sb3-ppo`` wrap the same thing as a textenv agent.)
Writes SB3's TensorBoard events and ``summary.json`` to ``--output``.
"""

import argparse
import json
from pathlib import Path

from stable_baselines3 import PPO

from textenv.agents.sb3 import TextGenActorCriticPolicy, TextGenSB3VecEnv
from textenv.apps.evaluation import evaluate_policy
from textenv.prompts import builtin_prompts


def held_out_sentiment(venv: TextGenSB3VecEnv, model: str, prompts: list[str]) -> dict:
    """Mean VADER score and KL to π_ref (nats) of one sample per held-out prompt (fixed seed)."""
    result = evaluate_policy(venv.env.policy, prompts=prompts, gold="vader", reference=model,
                             max_new_tokens=venv.env.max_new_tokens, seed=1, device="cpu")
    return {"sentiment": result["gold_reward"], "kl": result["kl"], "sample": result["samples"][0]["completion"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Lesson 03: stable-baselines3 PPO on TextGen-v0.")
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny budget (what the tests run)")
    parser.add_argument("--output", type=Path, default=Path("runs/lessons/03_stable_baselines3"))
    parser.add_argument("--model", default="textenv/default", help="default: the embedded 2.7M-parameter GPT-2")
    args = parser.parse_args(argv)
    num_envs, max_new_tokens, timesteps, held_out = (4, 8, 64, 8) if args.quick else (16, 24, 16_384, 64)
    prompts = builtin_prompts("eval")[:held_out]

    # --- the few lines: an SB3 VecEnv over TextGen, SB3's PPO with the LM as its actor, learn --------------------
    venv = TextGenSB3VecEnv(num_envs=num_envs, model=args.model, max_new_tokens=max_new_tokens, kl_coef=0.05)
    model = PPO(TextGenActorCriticPolicy, venv, policy_kwargs=venv.policy_kwargs(),
                n_steps=max_new_tokens,             # env steps per row per rollout: every row finishes an episode
                batch_size=num_envs * max_new_tokens,  # one minibatch = the whole rollout
                gamma=1.0,                          # the return is undiscounted: R is paid once, at the end
                learning_rate=1e-4, n_epochs=4, vf_coef=0.1, seed=0, tensorboard_log=str(args.output / "tensorboard"))
    before = held_out_sentiment(venv, args.model, prompts)
    model.learn(total_timesteps=timesteps)
    after = held_out_sentiment(venv, args.model, prompts)
    # ------------------------------------------------------------------------------------------------------------

    print(f"held-out sentiment ({held_out} prompts): before {before['sentiment']:+.3f} → after "
          f"{after['sentiment']:+.3f}   (KL to π_ref {after['kl']:.2f} nats)")
    print(f"sample after: {prompts[0]} |{after['sample']}")
    # SB3's own API works as usual, e.g. predict the next token of a state (an observation of the VecEnv):
    actions, _ = model.predict(venv.reset(), deterministic=True)
    for info, action in list(zip(venv.reset_infos, actions))[:2]:
        print(f"PPO.predict: {info['prompt']!r} → greedy next token {venv.env.tokenizer.decode([action])!r}")
    args.output.mkdir(parents=True, exist_ok=True)
    summary = {"before": before, "after": after, "timesteps": model.num_timesteps, "held_out_prompts": held_out}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
