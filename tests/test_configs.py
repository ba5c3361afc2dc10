"""Hyper-parameters written once: every agent, the reward-model trainer, the pipeline and ``textenv train`` take
their settings from one dataclass (:mod:`textenv.config`), and the constructor keywords, YAML ``agent_kwargs``,
``agent.json``, ``hyperparameters()``, the command-line flags and ``--help`` all derive from it."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import pytest
import transformers

from textenv.agents import AGENTS, PPO, LRMLConfig, PPOConfig, agent_class, make_agent
from textenv.agents.config import AgentConfig
from textenv.apps.cli import build_parser, main
from textenv.apps.pipeline import PipelineConfig
from textenv.config import Choice, Config, Flag, Integer, Number, Seed, option
from textenv.reward_models.preference import PreferenceTrainingConfig
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

PREFERENCES = [{"prompt": "the film was", "chosen": " good", "rejected": " bad"}]
#: Constructor arguments an agent needs besides its defaults (its data).
NEEDS = {"dpo": {"preferences": PREFERENCES}, "lrml": {"preferences": PREFERENCES}, "sft": {"num_demonstrations": 4},
         "ilql": {"data": [{"prompt": "the film was", "completion": " good", "reward": 1.0}]}}


def tiny_env(model_dir: Path, group_size: int = 1) -> TextGenVectorEnv:
    return TextGenVectorEnv(num_envs=4, model=str(model_dir), prompts=["the film was", "the book"],
                            reward_model=lambda prompts, completions: [0.0] * len(completions), max_new_tokens=4,
                            group_size=group_size, autoreset_mode="disabled", device="cpu")


@pytest.fixture(scope="module")
def env(tiny_model_dir):
    return tiny_env(tiny_model_dir)


@pytest.fixture(scope="module")
def grouped_env(tiny_model_dir):
    """K = 2 completions per prompt, for RLOO and GRPO."""
    return tiny_env(tiny_model_dir, group_size=2)


# ---------------------------------------------------------------------------------------------- the machinery
@dataclasses.dataclass(frozen=True)
class ExampleConfig(Config):
    steps: int = option(3, "steps per call", Integer(1))
    rate: float = option(0.5, "a rate in (0, 1]", Number(low=0, low_open=True, high=1))
    mode: str = option("a", "'a' or 'b'", Choice(("a", "b")))
    on: bool = option(True, "a switch", Flag())
    seed: int | None = option(None, "a seed", Seed(none_ok=True))
    names: list = option(["x"], "a list default (copied per instance)")


def test_a_config_checks_every_field_and_normalises_numbers():
    config = ExampleConfig(rate=1, steps=2)
    assert config.rate == 1.0 and isinstance(config.rate, float) and config.steps == 2
    for bad, name in (({"steps": 0}, "steps"), ({"rate": math.nan}, "rate"), ({"mode": "c"}, "mode"),
                      ({"on": "yes"}, "on"), ({"seed": -1}, "seed"), ({"rate": 1.5}, "rate")):
        with pytest.raises(InputError, match=rf"^{name}="):
            ExampleConfig(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rate = 0.1  # type: ignore[misc]
    assert ExampleConfig().names is not ExampleConfig().names


def test_build_merges_overrides_and_suggests_the_right_name():
    base = ExampleConfig(steps=5)
    assert ExampleConfig.build(base, {"rate": 0.25}) == ExampleConfig(steps=5, rate=0.25)
    assert ExampleConfig.build(None, {}) == ExampleConfig()
    with pytest.raises(InputError, match=r"unknown hyper-parameter\(s\) \['stpes'\] for demo; .*did you mean 'steps'"):
        ExampleConfig.build(None, {"stpes": 4}, "demo")
    with pytest.raises(InputError, match="config must be a ExampleConfig"):
        ExampleConfig.build(PPOConfig(), {})


def test_options_describe_defaults_help_and_accepted_values():
    rows = {row.name: row for row in ExampleConfig.options()}
    assert rows["steps"].default == 3 and rows["steps"].help == "steps per call"
    assert rows["steps"].accepts == "an integer >= 1"
    assert rows["rate"].accepts == "a finite number > 0 and <= 1"
    assert rows["seed"].accepts == "an integer in [0, 4294967295] or None"
    assert rows["mode"].accepts == "one of 'a', 'b'" and rows["on"].accepts == "true or false"
    assert ExampleConfig().to_dict() == {"steps": 3, "rate": 0.5, "mode": "a", "on": True, "seed": None, "names": ["x"]}


# ---------------------------------------------------------------------------------------------- every agent
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_every_agent_declares_each_hyperparameter_once_with_help(name):
    config_class = agent_class(name).config_class
    assert issubclass(config_class, AgentConfig) and config_class is not AgentConfig
    for row in config_class.options():
        assert row.help and not row.help.endswith("."), f"{name}.{row.name}: one help line, no final period"
    config_class()  # the defaults pass their own checks


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_hyperparameters_are_the_config_and_rebuild_the_agent(env, grouped_env, name):
    env = grouped_env if agent_class(name).default_group_size > 1 else env
    agent = make_agent(name, env, **NEEDS.get(name, {}))
    saved = agent.hyperparameters()
    assert set(saved) == set(agent.config_class.names())
    json.dumps(saved)  # agent.json holds it as it is
    rebuilt = make_agent(name, env, **saved)
    assert rebuilt.hyperparameters() == saved
    assert make_agent(name, env, config=agent.config).config == agent.config


def test_keywords_and_a_config_object_build_the_same_agent(env):
    by_keywords = PPO(env, clip_range=0.1, n_epochs=1)
    by_config = PPO(env, PPOConfig(clip_range=0.1, n_epochs=1))
    mixed = PPO(env, PPOConfig(clip_range=0.3), clip_range=0.1, n_epochs=1)  # keywords win over the config
    assert by_keywords.config == by_config.config == mixed.config
    assert by_keywords.clip_range == 0.1 and by_keywords.learning_rate == 1e-4  # read-only attributes
    with pytest.raises(InputError, match="config must be a PPOConfig"):
        PPO(env, LRMLConfig())
    with pytest.raises(AttributeError):
        _ = by_keywords.not_a_hyperparameter


def test_an_env_that_cannot_run_the_config_is_refused(env):
    with pytest.raises(InputError, match=r"num_minibatches=8 must be <= env.num_envs=4"):
        PPO(env, num_minibatches=8)
    with pytest.raises(InputError, match="RLOO needs K >= 2"):
        make_agent("rloo", env)
    with pytest.raises(InputError, match="baseline='loo'"):
        make_agent("reinforce", env, baseline="loo")


# ---------------------------------------------------------------------------------------------- command line
def help_text(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_train_help_lists_the_agents_hyperparameters(capsys):
    text = help_text(capsys, "train", "--agent", "ppo", "--help")
    for row in PPOConfig.options():
        assert f"  {row.name} = {row.default!r}" in text
    assert "ε of the clipped surrogate" in text and "(a finite number > 0)" in text and "agent_kwargs:" in text
    assert "baseline" not in text  # REINFORCE's, not PPO's
    assert "  mask_top_p = 0.9" in help_text(capsys, "train", "--agent=maskable-ppo", "-h")
    plain = help_text(capsys, "train", "--help")
    assert "`textenv train --agent NAME --help`" in plain and "reinforce" in plain and "clip_range" not in plain
    assert "did you mean 'ppo'" in help_text(capsys, "train", "--agent", "ppo2", "--help")


@pytest.mark.parametrize(("command", "config_class"), [("train-rm", PreferenceTrainingConfig),
                                                        ("pipeline", PipelineConfig)])
def test_flags_are_generated_from_the_config(command, config_class):
    """Every field is a flag whose default is the field's (a β list as the text --betas takes)."""
    required = {"train-rm": ["--data", "d.jsonl", "--output", "rm"], "pipeline": ["--output", "run"]}[command]
    args = build_parser().parse_args([command, *required])
    for row in config_class.options():
        expected = ",".join(f"{b:g}" for b in row.default) if isinstance(row.default, tuple) else row.default
        assert getattr(args, row.name) == expected, row.name
    assert config_class(**{name: getattr(args, name) for name in config_class.names()}) == config_class()


@pytest.fixture
def no_model_loads(monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModel, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", loaded)
    monkeypatch.setattr(TextGenVectorEnv, "__init__", functools.wraps(TextGenVectorEnv.__init__)(loaded))


@pytest.mark.bad_input
@pytest.mark.parametrize(("yaml_text", "message"), [
    ("agent: ppo\nagent_kwargs:\n  clip_range: -0.1\n", "agent_kwargs.clip_range=-0.1 must be a finite number > 0"),
    ("agent: ppo\nagent_kwargs:\n  reward_shaping: dense\n", "agent_kwargs.reward_shaping='dense' is not one of"),
    ("agent: grpo\nagent_kwargs:\n  n_epochs: 0\n", "agent_kwargs.n_epochs=0 must be an integer >= 1"),
    ("agent: reinforce\nagent_kwargs:\n  baseline_decay: 1.0\n", "agent_kwargs.baseline_decay=1.0"),
    ("agent: sb3-ppo\nagent_kwargs:\n  max_grad_norm: null\n", "agent_kwargs.max_grad_norm=None"),
    ("agent: dpo\nagent_kwargs:\n  beta: 0\n", "agent_kwargs.beta=0"),
    ("agent: ppo\nagent_kwargs:\n  tensorboard_log: tb\n", "agent_kwargs.tensorboard_log is set by textenv train"),
])
def test_agent_kwargs_values_are_checked_before_any_model_loads(tmp_path: Path, capsys, no_model_loads, yaml_text,
                                                                message):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"textenv train: error: --config {config}: ") and message in lines[0]
    assert not (tmp_path / "run").exists()
