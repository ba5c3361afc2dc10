"""Lesson 05: your own Hugging Face model, from a local directory.

    python examples/05_your_own_model.py         # ~15 CPU-seconds; --quick: seconds

The policy π_θ of TextGen-v0 can be any ``transformers`` causal LM (GPT-2, Llama, Qwen, Mistral, Gemma, Phi, ...):
``gym.make("TextGen-v0", model=DIR)`` loads ``DIR`` with ``AutoModelForCausalLM.from_pretrained`` and its
tokenizer with ``AutoTokenizer``; the reference π_ref of the KL term is a frozen copy of the same weights. A
directory is what ``save_pretrained`` writes (``config.json``, ``model.safetensors``, the tokenizer files),
e.g. a model you fine-tuned, or one downloaded once with ``huggingface-cli download Qwen/Qwen2.5-0.5B --local-dir
DIR``. (A hub name such as ``model="gpt2"`` works the same way when a hub is reachable.)

**Safetensors only.** textenv loads weights from ``*.safetensors`` files and never from pickle files
(``pytorch_model.bin``, ``.pt``, ``.pkl``): unpickling runs whatever code the file holds. A directory with only
a ``.bin`` is refused with the way to convert it once, in a Python you trust:
``AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR)`` writes ``model.safetensors``. textenv's
own checkpoints hold no pickle either (``policy/`` + ``*.safetensors`` + JSON, with a manifest of hashes).

This lesson writes, under ``--output``: ``my-model/`` (a GPT-2 you "made": here the embedded one, saved with
``save_pretrained``), ``my-llama/`` (a randomly initialised 2-layer Llama with the same tokenizer: another
architecture, same env), ``checkpoint/`` (a short REINFORCE run on ``my-model``) and ``bin-only/`` (the refused case).
"""

import argparse
import shutil
from pathlib import Path

import gymnasium as gym
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as transformers_logging

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.agents import make_agent
from textenv.models.loading import default_model_path
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv


def save_my_models(output: Path) -> tuple[Path, Path]:
    """Write two save_pretrained directories: a pretrained GPT-2 and a random tiny Llama sharing its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    gpt2 = AutoModelForCausalLM.from_pretrained(default_model_path())  # stands for "the model you trained"
    gpt2.save_pretrained(output / "my-model")  # config.json + model.safetensors (the default format)
    tokenizer.save_pretrained(output / "my-model")
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    llama.save_pretrained(output / "my-llama")
    tokenizer.save_pretrained(output / "my-llama")
    return output / "my-model", output / "my-llama"


def one_episode(directory: Path) -> None:
    """gym.make on a local directory, then one episode sampled from the model."""
    env = gym.make("TextGen-v0", model=str(directory), max_new_tokens=12)
    env.reset(seed=0)
    generator, done = torch.Generator().manual_seed(0), False
    while not done:
        probs = torch.softmax(env.unwrapped.next_token_logits(), dim=-1)
        _, reward, terminated, truncated, info = env.step(int(torch.multinomial(probs, 1, generator=generator)))
        done = terminated or truncated
    policy = env.unwrapped.policy
    parameters = sum(p.numel() for p in policy.parameters())
    print(f"{directory.parent.name}/{directory.name}: {type(policy).__name__}, {parameters:,} parameters, "
          f"{policy.config.num_hidden_layers} layers")
    print(f"    {info['prompt']} |{info['text']}   (r_φ {info['rm_score']:+.2f}, R {reward:+.2f})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Lesson 05: your own Hugging Face model from a local directory.")
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny budget (what the tests run)")
    parser.add_argument("--output", type=Path, default=Path("runs/lessons/05_your_own_model"))
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    transformers_logging.disable_progress_bar()

    print("== 1. save_pretrained: two model directories")
    my_model, my_llama = save_my_models(args.output)
    for directory in (my_model, my_llama):
        print(f"{directory}: {sorted(p.name for p in directory.iterdir())}")

    print("\n== 2. gym.make(\"TextGen-v0\", model=DIR): any causal LM architecture")
    one_episode(my_model)
    one_episode(my_llama)  # random weights: gibberish until trained, but the env and the agents work the same

    print("\n== 3. train it and save a checkpoint (safetensors + JSON, no pickle)")
    env = TextGenVectorEnv(num_envs=16, model=str(my_model), max_new_tokens=16, autoreset_mode="disabled")
    agent = make_agent("reinforce", env, learning_rate=3e-4, seed=0)
    agent.learn(total_timesteps=256 if args.quick else 8_192, progress_bar=False)
    agent.save(args.output / "checkpoint")
    checkpoint = args.output / "checkpoint"
    print(f"checkpoint: {sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob('*') if p.is_file())}")
    print(f"rollout sentiment of the last iteration: {agent.last_metrics['rollout/rm_score']:+.3f}")
    # checkpoint/policy is itself a save_pretrained directory: it is "your own model" for the next env (whose π_ref
    # is then this trained model, so the KL starts from 0 again: R = r_φ on the first episode).
    one_episode(checkpoint / "policy")

    print("\n== 4. a pickle-only directory is refused, with the way to convert it")
    bin_only = args.output / "bin-only"
    bin_only.mkdir(exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):  # everything but the weights
        shutil.copy(my_model / name, bin_only / name)
    (bin_only / "pytorch_model.bin").write_bytes(b"stands for a pickle file: textenv never opens it")
    try:
        gym.make("TextGen-v0", model=str(bin_only))
    except InputError as err:
        print(f"InputError: {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
