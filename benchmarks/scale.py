"""Speed and memory at a realistic size: a GPT-2-small-shaped policy (12 layers × 768), measured in one run.

The model is random-initialised from a ``GPT2Config`` (no download) with the embedded model's tokenizer
(vocabulary 4096, so 89 M parameters instead of GPT-2's 124 M), saved once to a temporary directory and
loaded through the env's ``model=DIR`` path, as a user's checkpoint would be.

1. **Rollout vs generate.** The approach of ``benchmarks/rollout.py`` (its functions are reused) at this size:
   env rollout (the env's step loop with policy log-probs, the lazy reference's log-probs and the reward) against
   ``model.generate`` + ONE reference forward over the full sequences + the reward, same batch, same prompts, same
   number of new tokens (EOS suppressed on both sides), both sampling from the full softmax. The two sides
   alternate, repeat by repeat, and each keeps its best time. Last-but-one line:
   ``rollout_vs_generate_large: <env tok/s ÷ generate tok/s>`` (target ≥ 0.95).
2. **LoRA vs full fine-tuning memory.** Two fresh subprocesses each build the env on the saved model and run a few
   PPO iterations (``textenv.agents.PPO``): one with ``lora={...}`` (the reference is the policy with its adapters
   off: one copy of the weights), one full fine-tuning with a separate frozen reference copy and Adam over every
   weight. Each reports its peak resident set size (``ru_maxrss``: everything the process held at its peak,
   libraries included). Last line: ``lora_vs_full_memory: <LoRA peak RSS ÷ full peak RSS>`` (target ≤ 0.45). The
   peaks above the RSS right after the imports (what the models and training added) are printed too.

    python benchmarks/scale.py [--batch 16] [--new-tokens 64] [--repeats 5] [--ppo-batch 8] [--ppo-tokens 32]

Takes a few minutes on 2 CPU cores. CPU figures only: no GPU figure is claimed from this script.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rollout import env_rollout, generate_limit, measure  # benchmarks/rollout.py (this script's folder)
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as transformers_logging

from textenv.models.loading import DEFAULT_MODEL, load_tokenizer
from textenv.prompts import load_prompts
from textenv.reward_models import VaderSentimentReward
from textenv.vector_env import TextGenVectorEnv

LAYERS, HIDDEN, HEADS, CONTEXT = 12, 768, 12, 1024  # GPT-2 small (openai-community/gpt2 config.json)
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["c_attn", "c_proj", "c_fc"]}


def build_model(directory: Path) -> int:
    """Save a random GPT-2-small-shaped model and the embedded tokenizer to ``directory``; returns its parameters."""
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=CONTEXT, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def rollout_ratio(directory: Path, batch: int, new_tokens: int, repeats: int) -> float:
    """Env tokens/s ÷ (generate + reference forward + reward) tokens/s on the model in ``directory``."""
    prompts = load_prompts("builtin", "eval")[:batch]
    env = TextGenVectorEnv(
        num_envs=batch, model=str(directory), reward_model=VaderSentimentReward(), prompts=prompts,
        max_new_tokens=new_tokens, kl_coef=0.05, autoreset_mode="disabled",
    )
    generator = torch.Generator().manual_seed(0)
    env_tps, limit_tps = measure(
        [lambda: env_rollout(env, prompts, generator),
         lambda: generate_limit(env.policy, env.reference, env.tokenizer, env.reward_model, prompts, new_tokens)],
        repeats,
    )
    print(f"rollout: batch={batch} new_tokens={new_tokens} prompt_tokens<={env.max_prompt_tokens} "
          f"repeats={repeats} env={env_tps:.1f} tok/s generate+ref+reward={limit_tps:.1f} tok/s", flush=True)
    return env_tps / limit_tps


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """This process's resident set size now (``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def train_child(directory: str, mode: str, batch: int, new_tokens: int, iterations: int) -> None:
    """In a fresh process: PPO for ``iterations`` iterations in ``mode`` ("lora" or "full"); prints JSON."""
    from textenv.agents import PPO

    after_imports = current_rss_bytes()
    env = TextGenVectorEnv(
        num_envs=batch, model=directory, reward_model="vader", max_new_tokens=new_tokens, kl_coef=0.05,
        autoreset_mode="disabled", lora=LORA if mode == "lora" else None,
    )
    agent = PPO(env, num_minibatches=2, n_epochs=1, seed=0)
    after_setup = peak_rss_bytes()  # the models loaded, before any rollout or update
    start = time.perf_counter()
    agent.learn(total_timesteps=iterations * batch * new_tokens)
    trainable = sum(p.numel() for p in agent.policy.parameters() if p.requires_grad)
    print(json.dumps({"mode": mode, "peak_rss": peak_rss_bytes(), "after_imports": after_imports,
                      "peak_after_setup": after_setup, "trainable": trainable, "seconds": time.perf_counter() - start}))


def memory_ratio(directory: Path, batch: int, new_tokens: int, iterations: int) -> float:
    """Peak RSS of PPO with LoRA ÷ PPO full fine-tuning, each in a fresh subprocess of this script."""
    results = {}
    for mode in ("lora", "full"):
        command = [sys.executable, __file__, "--train-child", str(directory), mode, "--ppo-batch", str(batch),
                   "--ppo-tokens", str(new_tokens), "--ppo-iterations", str(iterations)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
        r = results[mode]
        print(f"ppo {mode}: batch={batch} new_tokens={new_tokens} iterations={iterations} "
              f"trainable={r['trainable'] / 1e6:.2f}M peak_rss={r['peak_rss'] / 2**20:.0f} MiB "
              f"(peak when the models were set up {r['peak_after_setup'] / 2**20:.0f} MiB; "
              f"after imports {r['after_imports'] / 2**20:.0f} MiB, added "
              f"{(r['peak_rss'] - r['after_imports']) / 2**20:.0f} MiB) in {r['seconds']:.0f} s", flush=True)
    lora, full = results["lora"], results["full"]
    added = (lora["peak_rss"] - lora["after_imports"]) / (full["peak_rss"] - full["after_imports"])
    print(f"lora_vs_full_memory above the imports: {added:.2f}")
    return lora["peak_rss"] / full["peak_rss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="rollout rows")
    parser.add_argument("--new-tokens", type=int, default=64, help="rollout tokens per row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ppo-batch", type=int, default=8, help="PPO episodes per iteration")
    parser.add_argument("--ppo-tokens", type=int, default=32, help="PPO tokens per episode")
    parser.add_argument("--ppo-iterations", type=int, default=2)
    parser.add_argument("--train-child", nargs=2, metavar=("DIR", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    if args.train_child:
        train_child(args.train_child[0], args.train_child[1], args.ppo_batch, args.ppo_tokens, args.ppo_iterations)
        return
    with tempfile.TemporaryDirectory(prefix="textenv-scale-") as tmp:
        directory = Path(tmp) / "gpt2-small-shaped"
        params = build_model(directory)
        print(f"model: GPT-2-small-shaped, {LAYERS} layers x {HIDDEN}, {params / 1e6:.1f}M parameters, "
              f"threads={torch.get_num_threads()}", flush=True)
        memory = memory_ratio(directory, args.ppo_batch, args.ppo_tokens, args.ppo_iterations)
        speed = rollout_ratio(directory, args.batch, args.new_tokens, args.repeats)
    print(f"rollout_vs_generate_large: {speed:.2f}")
    print(f"lora_vs_full_memory: {memory:.2f}")


if __name__ == "__main__":
    main()
