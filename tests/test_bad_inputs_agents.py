"""Bad-input table, agents: every constructor argument of every agent is checked at construction, and a bad
value raises :class:`InputError` naming the argument, before any work (the env is not even reset).
"""

from __future__ import annotations

import math

import pytest

from textenv.agents import make_agent
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

NAN, INF = math.nan, math.inf
PREFERENCES = [{"prompt": "the film was", "chosen": " good", "rejected": " bad"}]


class EnvTouched(Exception):
    """Raised by the env below as soon as an agent starts using it."""


@pytest.fixture(scope="module")
def untouchable_env(tiny_model_dir):
    """A tiny env whose ``reset`` raises :class:`EnvTouched`: an agent that reaches it has already accepted its
    arguments, so each bad value below must be refused earlier (and costs no env work)."""
    env = TextGenVectorEnv(num_envs=8, model=str(tiny_model_dir), prompts=["the film was", "the book"],
                           reward_model=lambda prompts, completions: [0.0] * len(completions), max_new_tokens=4,
                           group_size=4, autoreset_mode="disabled", device="cpu")

    def reset(*args, **kwargs):
        raise EnvTouched

    env.reset = reset
    return env


#: (agent, {argument: bad value}); the error must name the argument.
CASES = [
    ("reinforce", {"learning_rate": NAN}),
    ("remax", {"normalize_advantages": "yes"}),
    ("remax", {"max_grad_norm": -1.0}),
    ("reinforce", {"learning_rate": -1e-3}),
    ("reinforce", {"learning_rate": "1e-3"}),
    ("reinforce", {"learning_rate": 1e35}),  # past ~3e37 Adam's float32 step overflows inside torch
    ("reinforce", {"seed": -1}),
    ("reinforce", {"seed": 2**32}),
    ("rloo", {"verbose": 5}),
    ("reinforce", {"baseline": "median"}),
    ("reinforce", {"baseline_decay": 1.0}),
    ("reinforce", {"baseline_decay": NAN}),
    ("reinforce", {"normalize_advantages": "yes"}),
    ("reinforce", {"max_grad_norm": 0.0}),
    ("reinforce", {"max_grad_norm": INF}),
    ("ppo", {"vf_learning_rate": 0.0}),
    ("ppo", {"n_epochs": 0}),
    ("ppo", {"n_epochs": 1.5}),
    ("ppo", {"num_minibatches": -1}),
    ("ppo", {"clip_range": NAN}),
    ("ppo", {"clip_range_vf": -0.1}),
    ("ppo", {"gamma": 1.5}),
    ("ppo", {"gae_lambda": NAN}),
    ("ppo", {"vf_coef": -1.0}),
    ("ppo", {"ent_coef": INF}),
    ("ppo", {"target_kl": 0.0}),
    ("ppo", {"target_kl": NAN}),
    ("ppo", {"whiten_advantages": "no"}),
    ("ppo", {"reward_shaping": "dense"}),
    ("ppo", {"ptx_coef": -0.1}),
    ("ppo", {"ptx_texts": 3}),
    ("ppo", {"ptx_batch_size": 0}),
    ("rloo", {"n_epochs": 0}),
    ("rloo", {"clip_range": 0.0}),
    ("rloo", {"normalize_advantages": None}),
    ("rloo", {"max_grad_norm": -1.0}),
    ("grpo", {"beta": NAN}),
    ("grpo", {"beta": -0.1}),
    ("grpo", {"eps": 0.0}),
    ("grpo", {"eps": INF}),
    ("grpo", {"clip_range": INF}),
    ("grpo", {"num_minibatches": True}),
    ("sft", {"learning_rate": 0.0}),
    ("sft", {"batch_size": 0}),
    ("sft", {"num_demonstrations": 0}),
    ("sft", {"max_grad_norm": NAN}),
    ("sft", {"append_eos": "true"}),
    ("sft", {"max_length": 1}),
    ("dpo", {"beta": 0.0}),
    ("dpo", {"beta": NAN}),
    ("dpo", {"tau": 0.0}),
    ("dpo", {"tau": INF}),
    ("dpo", {"loss": "hinge"}),
    ("dpo", {"reference": "policy"}),
    ("dpo", {"batch_size": 1.5}),
    ("dpo", {"max_length": 0}),
    ("lrml", {"beta": -1.0}),
    ("lrml", {"tau": NAN}),
    ("sb3-ppo", {"learning_rate": INF}),
    ("sb3-ppo", {"n_steps": 0}),
    ("sb3-ppo", {"batch_size": 0}),
    ("sb3-ppo", {"n_epochs": 0}),
    ("sb3-ppo", {"gamma": -0.1}),
    ("sb3-ppo", {"gae_lambda": 2.0}),
    ("sb3-ppo", {"clip_range": 0.0}),
    ("sb3-ppo", {"ent_coef": NAN}),
    ("sb3-ppo", {"vf_coef": -1.0}),
    ("sb3-ppo", {"max_grad_norm": None}),
    ("sb3-ppo", {"target_kl": -1.0}),
    ("sb3-ppo", {"normalize_advantage": "yes"}),
    ("sb3-a2c", {"n_steps": 2.5}),
    ("sb3-a2c", {"gamma": NAN}),
    ("sb3-a2c", {"max_grad_norm": 0.0}),
    ("sb3-a2c", {"use_rms_prop": "adam"}),
    ("maskable-ppo", {"mask_top_p": 0.0}),
    ("maskable-ppo", {"mask_top_p": 1.5}),
    ("maskable-ppo", {"mask_top_p": NAN}),
    ("maskable-ppo", {"mask_top_k": 0}),
    ("maskable-ppo", {"clip_range": -1.0}),
]


def case_id(case: tuple[str, dict]) -> str:
    name, kwargs = case
    return f"{name}-" + "-".join(f"{k}={v!r}" for k, v in kwargs.items())


@pytest.mark.bad_input
@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[case_id(c) for c in CASES])
def test_bad_hyperparameter_is_refused_before_the_env_is_touched(untouchable_env, name, kwargs):
    extra = {"preferences": PREFERENCES} if name in ("dpo", "lrml") else {}
    (argument,) = kwargs
    with pytest.raises(InputError, match=rf"\b{argument}\b"):
        make_agent(name, untouchable_env, **extra, **kwargs)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("reinforse", {}, r"agent 'reinforse' is not registered; .* \(did you mean 'reinforce'\?\)"),
        ("ppo", {"learning_rat": 1e-3},
         r"unknown hyper-parameter\(s\) \['learning_rat'\] .*did you mean 'learning_rate'"),
    ],
)
def test_unknown_agent_or_hyperparameter_suggests_the_right_name(untouchable_env, name, kwargs, match):
    with pytest.raises(InputError, match=match):
        make_agent(name, untouchable_env, **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("reinforce", {}), ("remax", {}), ("ppo", {}), ("rloo", {}), ("grpo", {}), ("sft", {"num_demonstrations": 4}),
     ("dpo", {"preferences": PREFERENCES}), ("lrml", {"preferences": PREFERENCES}), ("sb3-ppo", {}),
     ("sb3-a2c", {}), ("maskable-ppo", {})],
)
def test_valid_arguments_reach_the_env(untouchable_env, name, kwargs):
    """The control for the table: with good arguments every agent gets as far as resetting the env."""
    with pytest.raises(EnvTouched):
        make_agent(name, untouchable_env, **kwargs)


# ---------------------------------------------------------------------- data files named with their line
@pytest.fixture
def env(tiny_model_dir):
    return TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=["the film was"], max_new_tokens=4,
                            reward_model=lambda prompts, completions: [0.0] * len(completions),
                            autoreset_mode="disabled", device="cpu")


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("name", "argument", "content", "match"),
    [
        ("sft", "demonstrations", b"a fine line\n\xff\xfe broken\n", r"demonstrations: .*demos\.txt:2: not UTF-8"),
        ("ppo", "ptx_texts", b"one\ntwo\n\xc3\x28\n", r"ptx_texts: .*demos\.txt:3: not UTF-8"),
        ("sft", "demonstrations", b'{"prompt": "a", "completion": " b"}\n{"prompt": \n',
         r"demos\.jsonl:2: not valid JSON"),
    ],
)
def test_non_utf8_or_broken_text_files_name_the_file_and_line(env, tmp_path, name, argument, content, match):
    path = tmp_path / ("demos.jsonl" if content.startswith(b"{") else "demos.txt")
    path.write_bytes(content)
    extra = {"ptx_coef": 0.5} if name == "ppo" else {}
    with pytest.raises(InputError, match=match):
        make_agent(name, env, **{argument: str(path)}, **extra)
    assert path.read_bytes() == content  # read, never rewritten
