"""The switch of ``textenv.fast``: ``fast=False`` / ``TEXTENV_FAST=0`` give the plain transformers path everywhere, and
both positions give the same numbers on three architectures (GPT-2, Llama with grouped-query attention, and Mistral
with a sliding window of 4 tokens on episodes longer than it): per-step log-probs, the KL paid (terminal and dense),
the update forward's log-probs, entropies and hidden states, and the parameter gradients through them.

Tolerance (float32): :data:`ATOL` = 1e-5 absolute on log-probs, KL, entropies and hidden states; gradients within
:data:`GRAD_RTOL` = 1e-5 of the largest gradient entry of their tensor. The models are tiny and random (built
here, no downloads); the policy is perturbed away from the reference so that the KL is not zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

import textenv.engine.prefill
import textenv.engine.scoring
import textenv.fast.logprobs
import textenv.fast.packing
import textenv.fast.prefill
from textenv.agents import make_agent
from textenv.fast import FAST_VARIABLE, model_fast
from textenv.fast.activations import SigmoidTanhGELU
from textenv.models.loading import frozen_copy, load_causal_lm
from textenv.models.lora import AdapterDisabledReference
from textenv.models.setup import load_models
from textenv.rollout import sample_actions
from textenv.scoring import score_actions
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

ATOL = 1e-5
GRAD_RTOL = 1e-5
PROMPTS = ["the film was", "i liked the pasta at the restaurant", "the book", "a",
           "this blender is loud but it", "the hotel room was clean and"]
ARCHITECTURES = ["gpt2", "llama", "mistral-sliding-window"]


@pytest.fixture(scope="session")
def model_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``save_pretrained`` directories of the three architectures, sharing the tiny GPT-2's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.eos_token_id)
    dirs = {"gpt2": tiny_model_dir}
    for name, model_class, config in (
        ("llama", LlamaForCausalLM, LlamaConfig(**common)),
        ("mistral-sliding-window", MistralForCausalLM, MistralConfig(sliding_window=4, **common)),
    ):
        torch.manual_seed(0)
        directory = tmp_path_factory.mktemp(name)
        model_class(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        dirs[name] = directory
    return dirs


def make_env(model_dir: Path, fast: bool | None, kl_penalty: str = "terminal", **kwargs) -> TextGenVectorEnv:
    """An env on ``model_dir`` whose policy is moved away from its reference (same noise for every env)."""
    options = dict(num_envs=len(PROMPTS), model=str(model_dir), reward_model=lambda p, c: [0.0] * len(c),
                   prompts=PROMPTS, max_new_tokens=10, kl_coef=0.1, kl_penalty=kl_penalty, autoreset_mode="disabled",
                   device="cpu", fast=fast)
    env = TextGenVectorEnv(**{**options, **kwargs})
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in env.policy.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=noise))
    return env


def play_in_lockstep(envs: list[TextGenVectorEnv]) -> tuple[list[list[dict]], torch.Tensor, int]:
    """Play the same actions in every env (sampled from the first; row r ends with EOS at step r + 2, so episodes
    end at different steps). Returns each env's per-step ``(info, rewards)``, the action mask ``(B, T)`` and the
    prompt width P."""
    for env in envs:
        env.reset(options={"prompts": PROMPTS})
    prompt_width = envs[0].episode_tokens()[0].shape[1]
    generator, steps, active = torch.Generator().manual_seed(1), [[] for _ in envs], []
    while not envs[0].finished.all():
        active.append(torch.from_numpy(~envs[0].finished))
        actions = sample_actions(envs[0].next_token_logits(), generator)
        ending = torch.arange(len(PROMPTS)) + 2 == len(active) - 1
        actions[ending] = envs[0].eos_token_id
        for record, env in zip(steps, envs):
            _, reward, _, _, info = env.step(actions)
            record.append({**info, "reward": reward})
    return steps, torch.stack(active, dim=1).float(), prompt_width


def assert_close(a, b, what: str, atol: float = ATOL) -> None:
    a, b = torch.as_tensor(np.asarray(a, dtype=np.float64)), torch.as_tensor(np.asarray(b, dtype=np.float64))
    difference = float((a - b).abs().max()) if a.numel() else 0.0
    assert difference <= atol, f"{what}: the two switch positions differ by {difference:.3g} > {atol}"


def plain_full_forward_logprobs(model, input_ids, attention_mask, prompt_width: int) -> torch.Tensor:
    """log π of every column's token after the prompt, ``(B, T)``, from ONE plain forward written out here."""
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    logp = logits[:, prompt_width - 1 : -1].float().log_softmax(dim=-1)
    return logp.gather(2, input_ids[:, prompt_width:, None]).squeeze(-1)


@pytest.mark.parametrize("kl_penalty", ["terminal", "dense"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_both_positions_give_the_same_episodes(model_dirs, architecture, kl_penalty):
    fast, plain = (make_env(model_dirs[architecture], position, kl_penalty) for position in (True, False))
    (fast_steps, plain_steps), action_mask, prompt_width = play_in_lockstep([fast, plain])
    taken = action_mask.bool()
    assert taken.sum(dim=1).unique().numel() > 1  # episodes of different lengths
    assert prompt_width + int(taken.sum(dim=1).max()) > 4  # longer than the sliding window
    for step, (a, b) in enumerate(zip(fast_steps, plain_steps)):
        assert_close(a["logprob"], b["logprob"], f"log π at step {step}")
        assert_close(a["reward"], b["reward"], f"reward at step {step}")
        if kl_penalty == "dense":
            assert_close(a["kl"], b["kl"], f"dense KL at step {step}")
        if "episode_kl" in a:
            assert_close(a["episode_kl"], b["episode_kl"], f"episode KL at step {step}")
    episode_kl = sum(np.where(s.get("_episode_kl", False), s.get("episode_kl", 0.0), 0.0) for s in fast_steps)
    assert np.abs(episode_kl).max() > 1e-3  # the KL compared is not zero
    ids, mask = plain.episode_tokens()
    for env, steps in ((fast, fast_steps), (plain, plain_steps)):
        logprobs = torch.from_numpy(np.stack([s["logprob"] for s in steps], axis=1)).float()
        expected = plain_full_forward_logprobs(plain.policy, ids, mask, prompt_width)
        assert_close(logprobs[taken], expected[taken], f"{env.fast=}: env log π against a plain full forward")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_both_positions_give_the_same_update_forward_and_gradients(model_dirs, architecture):
    fast, plain = (make_env(model_dirs[architecture], position) for position in (True, False))
    _, action_mask, prompt_width = play_in_lockstep([fast, plain])
    ids, mask = plain.episode_tokens()
    weight = torch.randn(action_mask.shape, generator=torch.Generator().manual_seed(2))
    results = []
    for env in (fast, plain):  # score_actions follows the env's setting, recorded for its policy
        env.policy.zero_grad(set_to_none=True)
        scores = score_actions(env.policy, ids, mask, prompt_width, action_mask, entropy_grad=True)
        projection = torch.linspace(-1, 1, scores.hidden.shape[-1])
        ((scores.logprobs * weight + scores.entropy + scores.hidden @ projection) * action_mask).sum().backward()
        results.append((scores, dict(env.policy.named_parameters())))
    (a, fast_parameters), (b, plain_parameters) = results
    taken = action_mask.bool()
    assert_close(a.logprobs[taken].detach(), b.logprobs[taken].detach(), "update log π")
    assert_close(a.entropy[taken].detach(), b.entropy[taken].detach(), "update entropy")
    assert_close(a.hidden[taken].detach(), b.hidden[taken].detach(), "update hidden states")
    largest = 0.0
    for name, parameter in fast_parameters.items():
        grad, other = parameter.grad, plain_parameters[name].grad
        scale = float(other.abs().max())
        assert_close(grad, other, f"gradient of {name}", atol=GRAD_RTOL * max(scale, 1e-6))
        largest = max(largest, scale)
    assert largest > 1e-3  # the gradients compared are not zero


# ---------------------------------------------------------------------------------------- which path runs
FAST_FUNCTIONS = [
    (textenv.fast.prefill, "prefill_packed"),
    (textenv.fast.packing, "packed_predicting_logits"),
    (textenv.fast.logprobs, "chunked_logprobs_and_entropy"),
    (textenv.fast.logprobs, "chunked_chosen_logprobs"),
]


@pytest.fixture
def fast_calls(monkeypatch) -> list[str]:
    """Names of the fast functions called during the test (each still does its work)."""
    calls: list[str] = []
    for module, name in FAST_FUNCTIONS:
        function = getattr(module, name)

        def spy(*args, _function=function, _name=name, **kwargs):
            calls.append(_name)
            return _function(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls


def train_one_iteration(env: TextGenVectorEnv) -> None:
    """A rollout (prefill, steps, lazy reference scoring) and one REINFORCE update on ``env``."""
    make_agent("reinforce", env, seed=0).train_iteration()


@pytest.mark.parametrize("how", ["TEXTENV_FAST=0", "fast=False"])
def test_the_switch_selects_the_plain_path_everywhere(tiny_model_dir, monkeypatch, fast_calls, how):
    if how == "TEXTENV_FAST=0":
        monkeypatch.setenv(FAST_VARIABLE, "0")
    env = make_env(tiny_model_dir, fast=None if how == "TEXTENV_FAST=0" else False, num_envs=4, max_new_tokens=4)
    assert env.fast is False and model_fast(env.policy) is False and model_fast(env.reference) is False
    assert env.policy.config.activation_function == "gelu_new"  # no config rewrite
    assert not any(isinstance(module, SigmoidTanhGELU) for module in env.policy.modules())
    monkeypatch.delenv(FAST_VARIABLE, raising=False)  # from now on the env's own setting alone decides
    train_one_iteration(env)
    assert fast_calls == []


def test_the_default_is_fast_and_uses_every_speed_up(tiny_model_dir, monkeypatch, fast_calls):
    monkeypatch.delenv(FAST_VARIABLE, raising=False)
    env = make_env(tiny_model_dir, fast=None, num_envs=4, max_new_tokens=4)
    assert env.fast is True and model_fast(env.policy) is True
    assert env.policy.config.activation_function == "gelu_pytorch_tanh"
    assert any(isinstance(module, SigmoidTanhGELU) for module in env.policy.modules())
    train_one_iteration(env)
    assert set(fast_calls) == {name for _, name in FAST_FUNCTIONS}


def test_fast_true_overrides_the_environment_variable(tiny_model_dir, monkeypatch, fast_calls):
    monkeypatch.setenv(FAST_VARIABLE, "off")
    env = make_env(tiny_model_dir, fast=True, num_envs=4, max_new_tokens=4)
    assert env.fast is True
    train_one_iteration(env)  # the update follows the env's policy, not the variable
    assert set(fast_calls) == {name for _, name in FAST_FUNCTIONS}


def test_importing_textenv_registers_nothing_with_transformers(tiny_model_dir):
    """Nothing at import; nothing on the plain path; the episode attention on the first packed forward."""
    script = f"""
import json, torch
from transformers import AttentionInterface
before = set(AttentionInterface._global_mapping)
import textenv, textenv.env, textenv.vector_env, textenv.scoring, textenv.rollout, textenv.agents
import textenv.fast.attention, textenv.fast.packing, textenv.fast.prefill, textenv.engine.generation
import textenv.models.setup
new = lambda: sorted(set(AttentionInterface._global_mapping) - before)
found = {{"import": new()}}
from textenv.agents import make_agent
for fast in (False, True):
    env = textenv.vector_env.TextGenVectorEnv(num_envs=2, model={str(tiny_model_dir)!r}, max_new_tokens=3,
        reward_model=lambda p, c: [0.0] * len(c), autoreset_mode="disabled", device="cpu", fast=fast)
    make_agent("reinforce", env, seed=0).train_iteration()
    found[f"fast={{fast}}"] = new()
print(json.dumps(found))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {"import": [], "fast=False": [], "fast=True": ["textenv_episodes"]}


# ---------------------------------------------------------------------------------------- bad switch values
@pytest.fixture
def no_model_load(monkeypatch) -> None:
    def loaded(*args, **kwargs):
        raise AssertionError("the env loaded its models before finding the mistake")

    monkeypatch.setattr("textenv.vector_env.load_models", loaded)


@pytest.mark.bad_input
@pytest.mark.parametrize("value", ["no", 0, 1.0, "False"])
def test_fast_must_be_a_bool_or_none(tiny_model_dir, no_model_load, value):
    with pytest.raises(InputError, match=r"fast=.* must be True .*False .*or None"):
        TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), fast=value, device="cpu")


@pytest.mark.bad_input
@pytest.mark.parametrize("value", ["maybe", "2", "fast"])
def test_textenv_fast_must_be_a_switch_position(tiny_model_dir, no_model_load, monkeypatch, value):
    monkeypatch.setenv(FAST_VARIABLE, value)
    with pytest.raises(InputError, match=rf"TEXTENV_FAST='{value}' is not a switch position; set it to 0"):
        TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), device="cpu")


@pytest.mark.parametrize("value", ["0", "false", "No", " off "])
def test_textenv_fast_off_spellings(tiny_model_dir, monkeypatch, value):
    monkeypatch.setenv(FAST_VARIABLE, value)
    assert model_fast(load_causal_lm(tiny_model_dir, device="cpu")) is False


# ---------------------------------------------------------------------------------------- the models layer
def test_load_models_sets_up_policy_tokenizer_and_reference_in_one_call(tiny_model_dir):
    setup = load_models(str(tiny_model_dir), kl_coef=0.1, device="cpu", fast=False)
    assert setup.tokenizer.padding_side == "left" and setup.tokenizer.pad_token_id is not None
    assert setup.reference is not setup.policy and not any(p.requires_grad for p in setup.reference.parameters())
    assert not setup.reference.training and setup.fast is False
    assert model_fast(setup.policy) is False and model_fast(setup.reference) is False
    assert all(m.p == 0.0 for m in setup.policy.modules() if isinstance(m, torch.nn.Dropout))  # dropout off
    assert load_models(str(tiny_model_dir), kl_coef=0.0, device="cpu").reference is None  # β = 0: no reference
    lora = load_models(str(tiny_model_dir), kl_coef=0.1, lora={"r": 2}, device="cpu", fast=True)
    assert isinstance(lora.reference, AdapterDisabledReference) and model_fast(lora.reference) is True
    given = load_models(setup.policy, reference=frozen_copy(setup.policy), kl_coef=0.1, device="cpu", fast=True)
    assert given.policy is setup.policy and model_fast(given.policy) is True  # the env's setting wins
    assert given.tokenizer.eos_token_id == setup.tokenizer.eos_token_id  # the loaded model's own tokenizer


def test_frozen_copy_keeps_the_switch_position(tiny_model_dir):
    plain = load_causal_lm(tiny_model_dir, device="cpu", fast=False)
    assert model_fast(plain) is False and model_fast(frozen_copy(plain)) is False


def test_a_policy_set_later_follows_the_envs_switch(tiny_model_dir) -> None:
    """``env.set_policy(model)`` (e.g. SB3's ``attach`` after a load) records the env's switch for the new model,
    so the agents' update forward on it takes the env's path."""
    from textenv.fast import model_fast
    from textenv.models.loading import load_causal_lm

    env = TextGenVectorEnv(model=str(tiny_model_dir), num_envs=2, max_new_tokens=2, kl_coef=0.0, fast=False,
                           prompts=["the film was", "the book"], autoreset_mode="disabled")
    other = load_causal_lm(str(tiny_model_dir), device="cpu", fast=True)
    assert model_fast(other) is True
    env.set_policy(other)
    assert model_fast(env.policy) is False
