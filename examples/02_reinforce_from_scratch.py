"""Lesson 02: REINFORCE from scratch, with nothing but ``gym.make``, the env's policy and ``next_token_logits()``.

    python examples/02_reinforce_from_scratch.py  # ~2 CPU-minutes; --quick: seconds

The RL framing (lesson 01): the state s_t is the prompt plus the tokens so far, the action a_t is the next token,
the policy π_θ(a_t | s_t) is the language model's next-token softmax, and the episode's return is paid on the
last step: R = r_φ(x, y) − β·Σ_t [log π_θ(y_t|s_t) − log π_ref(y_t|s_t)] (InstructGPT eq. 2; r_φ = VADER
sentiment, π_ref = a frozen copy of the starting model). REINFORCE (Williams 1992) climbs the gradient

    ∇_θ J(θ) = E[ (R − b) · Σ_t ∇_θ log π_θ(a_t | s_t) ]      (the policy-gradient theorem; b: a baseline)

estimated from a batch of sampled episodes. No textenv agent is used (only ``textenv.logprobs.position_ids``, the
rule that numbers the tokens of a left-padded observation). It prints the held-out sentiment (built-in "eval"
prompts, never trained on) before and after training, and writes ``summary.json`` to ``--output``.
"""

import argparse
import json
from pathlib import Path

import gymnasium as gym
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.logprobs import position_ids
from textenv.prompts import builtin_prompts


def run_episode(env, generator, prompt=None):
    """Sample one completion a_t ~ π_θ(·|s_t); returns (the last observation, R, info)."""
    env.reset(options=None if prompt is None else {"prompt": prompt})
    done = False
    while not done:
        # The env already ran π_θ on s_t (one cached forward per step): sample a_t from those logits, no 2nd forward.
        action = int(torch.multinomial(torch.softmax(env.unwrapped.next_token_logits(), -1), 1, generator=generator))
        obs, reward, terminated, truncated, info = env.step(action)  # reward is 0 until the last step, then R
        done = terminated or truncated
    return obs, reward, info


def completion_logprob(policy, obs, num_tokens):
    """Σ_t log π_θ(a_t | s_t) over the episode's actions (its last ``num_tokens`` columns), WITH gradients, from
    one forward over the last observation (every s_t is a prefix of it)."""
    ids, mask = (torch.as_tensor(obs[key])[None] for key in ("input_ids", "attention_mask"))  # (1, W) each
    # Observations are LEFT-padded: position_ids(mask) numbers the real tokens from 0 as if there were no padding
    # (without it every position is shifted). textenv.logprobs.observation_logprobs scores single steps this way.
    logits = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[0]
    # The logits at column c predict the token at column c + 1; the actions are the last num_tokens columns.
    return torch.log_softmax(logits[-num_tokens - 1 : -1], dim=-1).gather(1, ids[0, -num_tokens:, None]).sum()


def held_out_sentiment(env, prompts, generator):
    """Mean r_φ (VADER, in [−1, 1]) of one sample per held-out prompt (same generator seed: same draws)."""
    return sum(run_episode(env, generator, p)[2]["rm_score"] for p in prompts) / len(prompts)


def train(env, iterations, batch_size, learning_rate, seed):
    """REINFORCE with the batch-mean baseline; returns one {return, rm_score, kl} record per iteration."""
    policy = env.unwrapped.policy  # π_θ: the env samples with it and computes the KL with it, so train it in place
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    generator, history = torch.Generator().manual_seed(seed), []
    env.reset(seed=seed)  # seeds the env's draw of training prompts
    for iteration in range(iterations):
        episodes = [run_episode(env, generator) for _ in range(batch_size)]
        returns = torch.tensor([float(reward) for _, reward, _ in episodes])
        advantages = (returns - returns.mean()) / (returns.std() + 1e-6)  # R − b, scaled: a steadier step size
        # The surrogate loss whose gradient is −(R − b)·Σ_t ∇ log π_θ(a_t|s_t), averaged over the batch.
        loss = -sum(a * completion_logprob(policy, o, i["num_tokens"]) for a, (o, _, i) in zip(advantages, episodes))
        optimizer.zero_grad()
        (loss / batch_size).backward()
        optimizer.step()  # the env's next reset() generates with the new weights
        history.append({"iteration": iteration, "return": returns.mean().item(),  # R, r_φ (VADER) and KL (nats)
                        "rm_score": sum(i["rm_score"] for *_, i in episodes) / batch_size,
                        "kl": sum(i["episode_kl"] for *_, i in episodes) / batch_size})
        print(f"iteration {iteration:3d}  " + "  ".join(f"{k} {v:+.3f}" for k, v in list(history[-1].items())[1:]))
    return history


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Lesson 02: REINFORCE from scratch on TextGen-v0.")
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny budget (what the tests run)")
    parser.add_argument("--output", type=Path, default=Path("runs/lessons/02_reinforce_from_scratch"))
    args = parser.parse_args(argv)
    iterations, batch_size, held_out = (3, 4, 8) if args.quick else (60, 16, 64)
    # The embedded 2.7M-parameter GPT-2 (model=... takes any Hugging Face causal LM), VADER reward, β = 0.05.
    env = gym.make("TextGen-v0", max_new_tokens=8 if args.quick else 24, kl_coef=0.05)
    prompts = builtin_prompts("eval")[:held_out]
    before = held_out_sentiment(env, prompts, torch.Generator().manual_seed(1))
    history = train(env, iterations, batch_size, learning_rate=3e-4, seed=0)
    after = held_out_sentiment(env, prompts, torch.Generator().manual_seed(1))
    print(f"held-out sentiment ({held_out} prompts): before {before:+.3f} → after {after:+.3f}")
    print("sample:", prompts[0], "|" + run_episode(env, torch.Generator().manual_seed(2), prompts[0])[2]["text"])
    args.output.mkdir(parents=True, exist_ok=True)
    summary = {"before": before, "after": after, "held_out_prompts": held_out, "history": history}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
