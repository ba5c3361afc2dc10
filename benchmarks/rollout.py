"""Rollout throughput: TextGen vector env against the `model.generate` limit, measured in one run.

Both sides use the same model, batch, prompts and lengths, and produce the same things:
  env:    sampled tokens with policy log-probs, reference log-probs and the reward, via the env's
          step() loop (one cached policy forward per step; the reference cache is fed lazily, in one
          multi-token cached forward when rows finish, as the env does with the terminal KL penalty),
          sampling with textenv's own sampler (`textenv.rollout.sample_actions`);
  limit:  `model.generate` (sampling, KV cache) + ONE reference forward over the full sequences +
          the reward on decoded completions (the cheapest way to get the same quantities).
EOS is suppressed on both sides so every row generates exactly T tokens. The two sides alternate, repeat
by repeat, and each keeps its best time, so a busy machine slows both alike.

Prints a table, tokens/s at 16, 64 and 256 new tokens (cost per token should stay flat), and as its last
line `rollout_vs_generate: <ratio>` (env tokens/s ÷ limit tokens/s at the main length; target ≥ 0.9).

    python benchmarks/rollout.py [--model DIR] [--batch 32] [--new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from textenv.models.loading import DEFAULT_MODEL, frozen_copy, load_causal_lm, load_tokenizer
from textenv.prompts import load_prompts
from textenv.reward_models import VaderSentimentReward, checked_scores
from textenv.rollout import sample_actions
from textenv.vector_env import TextGenVectorEnv


def env_rollout(env: TextGenVectorEnv, prompts: list[str], generator: torch.Generator) -> int:
    """One batch of episodes through env.reset/step; returns tokens generated."""
    env.reset(options={"prompts": prompts})
    eos = env.tokenizer.eos_token_id
    tokens = 0
    while not env.finished.all():
        logits = env.next_token_logits().clone()
        logits[:, eos] = float("-inf")
        env.step(sample_actions(logits, generator))
        tokens += env.num_envs
    return tokens


@torch.no_grad()
def generate_limit(policy, reference, tokenizer, reward, prompts: list[str], new_tokens: int) -> int:
    """`generate` + one reference forward + reward: the floor for the same quantities."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(policy.device)
    out = policy.generate(
        **enc, do_sample=True, top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        pad_token_id=tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True,
    )
    sequences = out.sequences
    mask = torch.cat([enc.attention_mask, torch.ones_like(sequences[:, enc.input_ids.shape[1]:])], dim=1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    width = enc.input_ids.shape[1]
    actions = sequences[:, width:]
    scores = torch.stack(out.scores, dim=1).float()  # policy logits per step (B, T, V)
    policy_lp = scores.log_softmax(-1).gather(2, actions[..., None]).squeeze(-1)
    ref_logits = reference(input_ids=sequences, attention_mask=mask, position_ids=positions).logits[:, width - 1 : -1]
    ref_lp = ref_logits.float().log_softmax(-1).gather(2, actions[..., None]).squeeze(-1)
    kl = (policy_lp - ref_lp).sum(1)
    texts = tokenizer.batch_decode(actions, skip_special_tokens=True)
    rm = torch.as_tensor(checked_scores(reward, prompts, texts))
    _ = rm - 0.05 * kl
    return actions.numel()


def measure(fns: list, repeats: int) -> list[float]:
    """Best-of-``repeats`` tokens/s of each function (after one warm-up call), the functions alternating."""
    for fn in fns:
        fn()
    best = [0.0] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            tokens = fn()
            best[i] = max(best[i], tokens / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="*", default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    tokenizer = load_tokenizer(args.model)
    policy = load_causal_lm(args.model).eval()
    reference = frozen_copy(policy)
    reward = VaderSentimentReward()
    prompts = load_prompts("builtin", "eval")[: args.batch]
    context = policy.config.max_position_embeddings
    print(f"model={args.model} params={sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M "
          f"batch={args.batch} threads={torch.get_num_threads()} device={policy.device}")
    print(f"{'new tokens':>10} {'env tok/s':>10} {'limit tok/s':>12} {'env/limit':>10}")

    ratios: dict[int, float] = {}
    for new_tokens in sorted({args.new_tokens, *args.lengths}):
        env = TextGenVectorEnv(
            num_envs=args.batch, model=policy, tokenizer=tokenizer, reference=reference, reward_model=reward,
            prompts=prompts, max_new_tokens=new_tokens, kl_coef=0.05, autoreset_mode="disabled",
        )
        if env.max_prompt_tokens + new_tokens > context:
            print(f"{new_tokens:>10} skipped: exceeds the model's context of {context}")
            continue
        generator = torch.Generator().manual_seed(0)
        env_tps, limit_tps = measure(
            [lambda: env_rollout(env, prompts, generator),
             lambda: generate_limit(policy, reference, tokenizer, reward, prompts, new_tokens)],
            args.repeats,
        )
        ratios[new_tokens] = env_tps / limit_tps
        print(f"{new_tokens:>10} {env_tps:>10.0f} {limit_tps:>12.0f} {ratios[new_tokens]:>10.2f}")
    print(f"rollout_vs_generate: {ratios[args.new_tokens]:.2f}")


if __name__ == "__main__":
    main()
