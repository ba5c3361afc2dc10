"""`textenv train` / `textenv eval`: config file + flags, run directories, resume, Ctrl-C, results files, and
how `textenv` reports errors (one line for user mistakes, tracebacks for bugs)."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import LENGTH_REWARD

from textenv.agents.base import Agent
from textenv.apps.cli import main
from textenv.apps.train import resume_command
from textenv.validation import InputError

GOLD = LENGTH_REWARD  # registered by the length_reward fixture (conftest.py)


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


def train(config_file: Path, out: Path, *extra: str) -> int:
    return main(["train", "--config", str(config_file), "--total-timesteps", "16", "--output", str(out),
                 "--no-progress", *extra])


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
    assert summary["interrupted"] is False
    assert (out / "checkpoint" / "policy" / "model.safetensors").is_file()
    assert any((out / "tensorboard").iterdir())

    # --resume takes the run directory too, and the checkpoint's seed when none is given.
    code = main(["train", "--config", str(config_file), "--total-timesteps", "64", "--output", str(tmp_path / "more"),
                 "--resume", str(out), "--no-progress"])
    assert code == 0
    assert "resumed from" in capsys.readouterr().out
    resumed = json.loads((tmp_path / "more" / "summary.json").read_text())
    assert resumed["num_timesteps"] >= 64 and resumed["options"]["seed"] == 3

    assert main(["eval", str(out / "checkpoint"), "--num-prompts", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"gold_reward", "kl", "perplexity", "distinct_2", "samples"} <= set(result)
    assert json.loads((out / "eval.json").read_text())["command"] == "textenv eval"  # default: beside the checkpoint
    # The run directory with its eval.json still counts as a run of ours: it resumes, and --overwrite clears it.
    assert main(["train", "--resume", str(out), "--total-timesteps", "48", "--eval-prompts", "4",
                 "--no-progress"]) == 0
    assert main(["train", "--config", str(config_file), "--total-timesteps", "16", "--output", str(out),
                 "--overwrite", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "summary.json", "tensorboard"]


def test_an_existing_run_needs_resume_or_overwrite(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(config_file, out) == 0
    capsys.readouterr()
    assert train(config_file, out) == 2
    err = capsys.readouterr().err
    assert f"--resume {out / 'checkpoint'}" in err and "--overwrite" in err and len(err.splitlines()) == 1

    # The same run continues with --resume (of the run directory or its checkpoint).
    assert main(["train", "--config", str(config_file), "--total-timesteps", "48", "--output", str(out),
                 "--resume", str(out / "checkpoint"), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["num_timesteps"] >= 48
    # --overwrite together with --resume of the same run would delete what it resumes from.
    assert train(config_file, out, "--resume", str(out), "--overwrite") == 2
    assert "--overwrite would delete" in capsys.readouterr().err

    # --overwrite starts again: old events and checkpoint replaced, nothing else touched.
    old_events = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert train(config_file, out, "--overwrite") == 0
    assert json.loads((out / "summary.json").read_text())["num_timesteps"] < 48
    new_events = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert len(new_events) == 1 and not set(new_events) & set(old_events)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "summary.json", "tensorboard"]


@pytest.mark.parametrize("where", ["top", "tensorboard"])
def test_overwrite_never_touches_files_textenv_did_not_write(config_file, tmp_path, capsys, where):
    out = tmp_path / "run"
    assert train(config_file, out) == 0
    mine = out / "notes.txt" if where == "top" else out / "tensorboard" / "my-plot.png"
    mine.write_bytes(b"my own notes \x00\xff")
    for flags in ([], ["--overwrite"], ["--resume", str(out)]):
        capsys.readouterr()
        assert train(config_file, out, *flags) == 2
        assert "did not write" in capsys.readouterr().err
    assert mine.read_bytes() == b"my own notes \x00\xff"
    assert (out / "summary.json").is_file() and (out / "checkpoint" / "agent.json").is_file()


def test_ctrl_c_saves_summary_and_says_how_to_resume(config_file, tmp_path, capsys, monkeypatch):
    original_learn = Agent.learn

    def interrupted_learn(self, total_timesteps, progress_bar=True, checkpoint_dir=None, checkpoint_every=0):
        """What Agent.learn does on a first Ctrl-C: finish the iteration, save the checkpoint, re-raise."""
        original_learn(self, 8, progress_bar=False)
        self.save(checkpoint_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(Agent, "learn", interrupted_learn)
    out = tmp_path / "run"
    assert train(config_file, out) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted at" in err
    assert f"--resume {out / 'checkpoint'}" in err and "--total-timesteps 16" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["num_timesteps"] >= 8
    assert summary["checkpoint_num_timesteps"] == summary["num_timesteps"]

    monkeypatch.setattr(Agent, "learn", original_learn)
    assert train(config_file, out, "--resume", str(out / "checkpoint")) == 0  # the printed command works
    assert json.loads((out / "summary.json").read_text())["interrupted"] is False
    # Without the config: the checkpoint's agent, env settings, hyper-parameters and run directory are the defaults.
    assert main(["train", "--resume", str(out), "--total-timesteps", "40", "--eval-prompts", "4", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_timesteps"] >= 40 and summary["options"]["env"]["num_envs"] == 4
    assert summary["options"]["agent_kwargs"]["learning_rate"] == 1e-3


def test_resume_command_replaces_resume_and_overwrite():
    argv = ["train", "--config", "c.yaml", "--resume=old", "--overwrite", "--seed", "1"]
    assert resume_command(argv, Path("runs/x/checkpoint")) == \
        "textenv train --config c.yaml --seed 1 --resume runs/x/checkpoint"


def test_eval_uses_the_training_settings_and_flags_override(tiny_model_dir, tmp_path, capsys, length_reward):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "eval_prompts": 4, "env": {"num_envs": 4, "model": str(tiny_model_dir), "max_new_tokens": 3,
                                   "reward_model": GOLD, "kl_coef": 0.2},
    }))
    out = tmp_path / "run"
    assert train(config, out) == 0
    assert main(["eval", str(out), "--num-prompts", "4", "--output", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["settings"]["gold"] == GOLD and result["settings"]["max_new_tokens"] == 3
    assert result["settings"]["kl_coef"] == 0.2
    assert result["objective"] == pytest.approx(result["gold_reward"] - 0.2 * result["kl"])
    assert result["settings"]["reference"] == str(tiny_model_dir)
    assert result["length"] <= 3

    capsys.readouterr()
    assert main(["eval", str(out), "--num-prompts", "4", "--output", str(tmp_path / "e.json"),
                 "--max-new-tokens", "2", "--reward-model", "vader"]) == 2  # exists: --overwrite needed
    assert "--overwrite" in capsys.readouterr().err
    assert main(["eval", str(out), "--num-prompts", "4", "--output", str(tmp_path / "e.json"),
                 "--max-new-tokens", "2", "--reward-model", "vader", "--overwrite"]) == 0
    again = json.loads((tmp_path / "e.json").read_text())
    assert again["settings"]["gold"] == "vader" and again["settings"]["max_new_tokens"] == 2

    # A reward model given as a Python object is not in agent.json: eval asks for --reward-model.
    meta_file = out / "checkpoint" / "agent.json"
    meta = json.loads(meta_file.read_text())
    del meta["env"]["reward_model"]
    meta_file.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["eval", str(out), "--output", str(tmp_path / "f.json")]) == 2
    assert "--reward-model" in capsys.readouterr().err and not (tmp_path / "f.json").exists()


def test_eval_never_replaces_another_commands_results_or_a_user_file(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(config_file, out) == 0
    pipeline_results = out / "eval.json"
    pipeline_results.write_text(json.dumps({"command": "textenv pipeline", "gold_before": 0.1}))
    before = pipeline_results.read_bytes()
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoint"), "--num-prompts", "4"]) == 2
    assert "textenv pipeline" in capsys.readouterr().err and pipeline_results.read_bytes() == before

    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "data"}')
    assert main(["eval", str(out), "--num-prompts", "4", "--output", str(mine), "--overwrite"]) == 2
    assert "not written by textenv" in capsys.readouterr().err and mine.read_text() == '{"my": "data"}'


# ---------------------------------------------------------------------------------------------- error reporting
def fake_command(monkeypatch, error: BaseException) -> None:
    """Make `textenv label` raise ``error`` (after argument parsing)."""
    import textenv.apps.label

    def command(args):
        raise error

    monkeypatch.setattr(textenv.apps.label, "run", command)


@pytest.mark.parametrize("error, expected", [
    (InputError("--k=1 must be an integer >= 2"), "textenv label: error: --k=1 must be an integer >= 2"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out.jsonl"),
     "textenv label: error: /data/out.jsonl: Permission denied"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out.jsonl"),
     "textenv label: error: /data/out.jsonl: No space left on device (free some space and run again)"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), "textenv label: error: /mnt/ro/x: Read-only file system"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "runs"), "textenv label: error: runs: Is a directory"),
])
def test_user_errors_are_one_line_exit_2(monkeypatch, capsys, error, expected):
    fake_command(monkeypatch, error)
    assert main(["label", "in.jsonl", "--output", "out.jsonl"]) == 2
    assert capsys.readouterr().err == expected + "\n"


def test_user_facing_exception_classes_are_one_line(monkeypatch, capsys):
    class Diverged(RuntimeError):
        user_facing = True

    fake_command(monkeypatch, Diverged("training diverged at iteration 3"))
    assert main(["label", "in.jsonl", "--output", "o"]) == 2
    assert capsys.readouterr().err == "textenv label: error: training diverged at iteration 3\n"


@pytest.mark.parametrize("error", [ValueError("Expected input batch_size (3) to match"), RuntimeError("bug"),
                                   OSError("no file name: a bug, not a user path")])
def test_bugs_keep_their_traceback(monkeypatch, error):
    fake_command(monkeypatch, error)
    with pytest.raises(type(error)):
        main(["label", "in.jsonl", "--output", "o"])


def test_ctrl_c_exits_130_quietly(monkeypatch, capsys):
    fake_command(monkeypatch, KeyboardInterrupt())
    assert main(["label", "in.jsonl", "--output", "o"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted" in err


def test_python_dash_m_textenv_is_the_cli(tmp_path):
    done = subprocess.run([sys.executable, "-m", "textenv", "train", "--total-timesteps", "0"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "textenv train: error: argument --total-timesteps: '0' is not an integer >= 1 "
        "(`textenv train --help` lists the options)"
    ]
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_real_ctrl_c_of_textenv_train(config_file, tmp_path):
    """SIGINT to a running `python -m textenv train`: the iteration finishes, the checkpoint and summary.json are
    written, the resume command is printed, exit code 130, no traceback."""
    import os
    import signal
    import time

    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "textenv", "train", "--config", str(config_file), "--total-timesteps", "10000000",
         "--output", str(out), "--no-progress", "--checkpoint-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint" / "agent.json").is_file():  # the first iteration's checkpoint: training runs
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        output, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, output + err
    assert "Traceback" not in err and f"--resume {out / 'checkpoint'}" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["checkpoint_num_timesteps"] == summary["num_timesteps"] > 0
    assert json.loads((out / "checkpoint" / "agent.json").read_text())["num_timesteps"] == summary["num_timesteps"]


def test_task_flag_trains_on_the_tasks_reward_and_scores_its_held_out_prompts(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(config_file, out, "--task", "length") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["task"] == "length"
    env = summary["options"]["env"]
    assert env["reward_model"] == "target-length:10" and env["prompt_split"] == "train"
    assert env["max_new_tokens"] == 4  # the config file's env: key beats the task's 32
    # the evaluation scores with the task's gold on the task's held-out prompts
    assert summary["before"]["settings"]["gold"] == "TargetLengthReward"
    assert summary["before"]["settings"]["prompt_split"] == "eval" and summary["before"]["gold_reward"] > 0
    # resuming it as another task is refused: the checkpoint's reward differs
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--task", "negative", "--total-timesteps", "32",
                 "--no-progress"]) == 2
    assert "reward_model" in capsys.readouterr().err


@pytest.mark.bad_input
def test_an_unknown_task_is_refused_before_any_model_loads(config_file, tmp_path, capsys):
    assert train(config_file, tmp_path / "run", "--task", "lenght") == 2
    err = capsys.readouterr().err
    assert "task 'lenght'" in err and "length" in err
    assert not (tmp_path / "run").exists()
