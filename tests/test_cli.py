"""`textenv train` / `textenv eval`: config file + flags, outputs, resume, clear errors."""

from __future__ import annotations

import json

import pytest
import yaml

from textenv.cli import main


@pytest.fixture
def config_file(tiny_model_dir, tmp_path):
    config = {
        "agent": "reinforce",
        "total_timesteps": 10_000,  # overridden by the flag below
        "eval_prompts": 8,
        "checkpoint_every": 1,
        "env": {"num_envs": 4, "model": str(tiny_model_dir), "max_new_tokens": 4},
        "agent_kwargs": {"learning_rate": 1e-3},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_writes_tensorboard_checkpoint_and_summary(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--config", str(config_file), "--total-timesteps", "32", "--output", str(out),
                 "--seed", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out before" in printed and "held-out after" in printed and "KL" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_timesteps"] >= 32 and summary["options"]["seed"] == 3
    assert summary["options"]["total_timesteps"] == 32  # the flag beat the file
    assert (out / "checkpoint" / "policy" / "model.safetensors").is_file()
    assert any((out / "tensorboard").iterdir())

    code = main(["train", "--config", str(config_file), "--total-timesteps", "64", "--output", str(tmp_path / "more"),
                 "--resume", str(out / "checkpoint"), "--no-progress"])
    assert code == 0
    assert "resumed from" in capsys.readouterr().out
    resumed = json.loads((tmp_path / "more" / "summary.json").read_text())
    assert resumed["num_timesteps"] >= 64

    assert main(["eval", str(out / "checkpoint"), "--num-prompts", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"gold_reward", "kl", "perplexity", "distinct_2", "samples"} <= set(result)


def test_unknown_config_key_and_agent_are_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("agnet: reinforce\n")
    with pytest.raises(SystemExit, match=r"unknown key\(s\) \['agnet'\]"):
        main(["train", "--config", str(bad)])
    assert main(["train", "--agent", "nope", "--output", str(tmp_path / "x")]) == 2
    assert "agent 'nope' is not registered" in capsys.readouterr().err
