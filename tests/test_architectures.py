"""Real architectures, tiny and random (no downloads): GPT-2, Llama, Qwen2, Qwen3, Mistral with a sliding window, Gemma2
(soft-capping + sliding window), GPT-NeoX, Phi-3, OPT and Falcon, each a ``save_pretrained`` directory with the tiny
BPE tokenizer of ``tests/conftest.py``.

For each: the env's per-step log-probs equal a plain full forward's (:data:`ATOL`) in both positions of the ``fast``
switch, Gymnasium's ``check_env`` passes on ``gym.make("TextGen-v0", model=DIR)``, and one update of reinforce, ppo
and rloo gives a finite loss (and PPO's update forward reproduces the rollout's log-probs: no dropout left on).
LoRA runs on two of them (reference = adapters off). Two builds mirror released checkpoints: Qwen2 and Phi-3 have
an embedding padded past the tokenizer (Qwen2 to a multiple of 64 rows, as released Qwen checkpoints are).

``pytest -s tests/test_architectures.py -k table`` prints the architecture table: max |Δ log-prob| with ``fast`` on
and off, and which update forward the fast path chose (episode layout, rows layout or the padded fallback).
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
import transformers
from transformers import AutoTokenizer

from textenv.agents import make_agent
from textenv.fast import packing
from textenv.rollout import sample_actions
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-4
PROMPTS = ["the film was", "i liked the pasta at the restaurant", "a", "this blender is loud but it"]
MAX_NEW_TOKENS = 6

#: name -> (config class, model class, config keyword arguments besides the vocabulary and special ids).
_ATTENTION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "max_position_embeddings": 96}
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _ATTENTION),
    "qwen2-padded-vocab": ("Qwen2Config", "Qwen2ForCausalLM", {**_ATTENTION, "pad_vocab_to": 64}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**_ATTENTION, "head_dim": 8}),
    "mistral-sliding-window": ("MistralConfig", "MistralForCausalLM", {**_ATTENTION, "sliding_window": 4}),
    "gemma2-softcap-sliding": ("Gemma2Config", "Gemma2ForCausalLM", {
        **_ATTENTION, "head_dim": 8, "sliding_window": 4, "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0}),
    "gpt-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": 96}),
    "phi3-padded-vocab": ("Phi3Config", "Phi3ForCausalLM", {**_ATTENTION, "pad_vocab_to": 32}),
    "opt": ("OPTConfig", "OPTForCausalLM", {
        "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": 96, "word_embed_proj_dim": 32}),
    "falcon": ("FalconConfig", "FalconForCausalLM", {"hidden_size": 32, "num_hidden_layers": 2,
                                                     "num_attention_heads": 4}),
}
NAMES = ["gpt2", *ARCHITECTURES]
LAYOUTS = {"_by_episode": "episode layout", "_by_rows": "rows layout", "_padded": "padded fallback"}


def available(name: str) -> bool:
    """Whether this transformers has the architecture ``name``."""
    if name == "gpt2":
        return True
    config_class, model_class, _ = ARCHITECTURES[name]
    return hasattr(transformers, config_class) and hasattr(transformers, model_class)


def build_architecture(name: str, directory: Path, tokenizer_dir: Path) -> Path:
    """Save a random tiny ``name`` model with the tiny BPE tokenizer of ``tokenizer_dir`` into ``directory``."""
    config_class, model_class, options = ARCHITECTURES[name]
    options = dict(options)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    multiple = options.pop("pad_vocab_to", 1)
    vocab = math.ceil(len(tokenizer) / multiple) * multiple
    special = tokenizer.eos_token_id
    config = getattr(transformers, config_class)(vocab_size=vocab, eos_token_id=special, bos_token_id=special,
                                                 pad_token_id=special, **options)
    torch.manual_seed(0)
    getattr(transformers, model_class)(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def architecture_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``save_pretrained`` directories of every available architecture (the tiny GPT-2 is ``tiny_model_dir``)."""
    dirs = {"gpt2": tiny_model_dir}
    for name in ARCHITECTURES:
        if available(name):
            dirs[name] = build_architecture(name, tmp_path_factory.mktemp(name), tiny_model_dir)
    return dirs


def make_env(directory: Path, **kwargs: Any) -> TextGenVectorEnv:
    options = {"num_envs": len(PROMPTS), "model": str(directory), "prompts": PROMPTS, "max_new_tokens": MAX_NEW_TOKENS,
                   "reward_model": lambda prompts, completions: [t.count("e") / 8 for t in completions],
                   "autoreset_mode": "disabled", "device": "cpu", "kl_coef": 0.05}
    return TextGenVectorEnv(**{**options, **kwargs})


def play(env: TextGenVectorEnv, seed: int = 0) -> list[torch.Tensor]:
    """One episode per row with actions sampled from the env's logits; the per-step ``info["logprob"]`` (B,)."""
    env.reset(seed=seed, options={"prompts": PROMPTS})
    generator = torch.Generator().manual_seed(seed)
    logprobs = []
    while not env.finished.all():
        actions = sample_actions(env.next_token_logits(), generator)
        logprobs.append(torch.as_tensor(env.step(actions)[4]["logprob"]))
    return logprobs


def full_forward_logprobs(env: TextGenVectorEnv) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(token) of every generated token from ONE plain forward of the whole episodes (left-padded, positions
    counting the unmasked tokens), ``(B, T)``, and the generated-token mask ``(B, T)``, T = steps played."""
    ids, mask = env.episode_tokens()
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = env.policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    logits = logits[..., : env.single_action_space.n]  # the action space: the tokenizer's ids
    logprobs = logits[:, :-1].log_softmax(dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    steps = ids.shape[1] - env.max_prompt_tokens
    return logprobs[:, -steps:], mask[:, -steps:].bool()


@functools.cache
def _measure(directory: Path, fast: bool) -> tuple[float, float, str]:
    """(max |Δ log-prob| of the env's steps vs the full forward, max |KL| of a policy against its own copy, the
    update forward the fast path chose for the reference)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = make_env(directory, fast=fast)
        steps = torch.stack(play(env), dim=1)
        kl = float(env.token_kl().abs().max())
        full, generated = full_forward_logprobs(env)
    chosen = packing._FORWARD.get(env.reference)
    layout = LAYOUTS.get(getattr(chosen, "__name__", ""), "plain forward") if fast else "plain forward"
    return float(((steps - full) * generated).abs().max()), kl, layout


# ---------------------------------------------------------------------- log-probs
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("name", NAMES)
def test_env_logprobs_equal_a_full_forward(architecture_dirs, name, fast):
    if name not in architecture_dirs:
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    diff, kl, _ = _measure(architecture_dirs[name], fast)
    assert diff <= ATOL, f"{name} fast={fast}: max |Δ log-prob| {diff:.2e}"
    assert kl <= ATOL, f"{name} fast={fast}: the KL of a policy against its own copy is {kl:.2e}"


def test_architecture_table(architecture_dirs, capsys):
    """The table for the closing note (printed with ``pytest -s``)."""
    lines = ["| architecture | available | max abs dlogprob fast | max abs dlogprob plain | fast update forward |",
             "|---|---|---|---|---|"]
    for name in NAMES:
        if name not in architecture_dirs:
            lines.append(f"| {name} | no (transformers {transformers.__version__}) | - | - | - |")
            continue
        fast_diff, _, layout = _measure(architecture_dirs[name], True)
        plain_diff, _, _ = _measure(architecture_dirs[name], False)
        lines.append(f"| {name} | yes | {fast_diff:.1e} | {plain_diff:.1e} | {layout} |")
        assert max(fast_diff, plain_diff) <= ATOL
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# ---------------------------------------------------------------------- Gymnasium and the agents
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_check_env(architecture_dirs, name):
    from gymnasium.utils.env_checker import check_env

    if name not in architecture_dirs:
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    env = gym.make("TextGen-v0", model=str(architecture_dirs[name]), prompts=PROMPTS, max_new_tokens=3,
                   reward_model=lambda prompts, completions: [0.0] * len(completions), device="cpu")
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_one_update_of_each_agent_is_finite(architecture_dirs, name):
    if name not in architecture_dirs:
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    for agent_name, group_size in (("reinforce", 1), ("ppo", 1), ("rloo", 2)):
        env = make_env(architecture_dirs[name], group_size=group_size, max_new_tokens=4)
        agent = make_agent(agent_name, env, seed=0)
        metrics = agent.train_iteration()
        assert math.isfinite(metrics["train/loss"]), f"{name} {agent_name}: loss {metrics['train/loss']}"
        if agent_name == "ppo":  # the update forward reproduces the rollout: no dropout, same numbers
            assert metrics["train/logprob_mismatch"] <= ATOL, f"{name}: {metrics['train/logprob_mismatch']:.2e}"
        assert all(torch.isfinite(p).all() for p in env.policy.parameters()), f"{name} {agent_name}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "opt"])
def test_lora(architecture_dirs, name):
    """LoRA adapters on two architectures: the reference is the policy with adapters off, the env's log-probs equal
    a full forward, and a PPO update moves only the adapters and keeps the reference where it was."""
    env = make_env(architecture_dirs[name], lora=True)
    steps = torch.stack(play(env), dim=1)
    full, generated = full_forward_logprobs(env)
    assert float(((steps - full) * generated).abs().max()) <= ATOL
    assert float(env.token_kl().abs().max()) <= ATOL  # fresh adapters are zero: π_θ = π_ref
    agent = make_agent("ppo", env, seed=0, learning_rate=1e-2)
    frozen = {key: value.clone() for key, value in env.policy.named_parameters() if not value.requires_grad}
    metrics = agent.train_iteration()
    assert math.isfinite(metrics["train/loss"])
    assert metrics["train/logprob_mismatch"] <= ATOL
    assert all(torch.equal(value, frozen[key]) for key, value in env.policy.named_parameters() if key in frozen)
