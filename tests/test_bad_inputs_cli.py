"""The table of bad inputs to the ``textenv`` command line: flags, config files, paths, results files and
malformed input files, for every subcommand (train, eval, collect, label, train-rm, pipeline).

Every case runs ``textenv.apps.cli.main`` and asserts: exit code 2, exactly one line on stderr of the form
``textenv <command>: error: ...`` naming the flag or file, no traceback, and (data-safety cases) that the
user's files are still there byte for byte. Cases run with every model loader patched to fail, so they also
prove the mistake is caught before any model loads (and each takes well under a second).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import transformers

import textenv.apps.evaluation
import textenv.preferences
from textenv.apps.cli import main
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.bad_input

#: A checkpoint directory as ``Agent.save`` writes it, minus the weights (enough for the CLI's own checks).
AGENT_JSON = {"agent": "reinforce", "hyperparameters": {"learning_rate": 1e-4, "seed": 0}, "num_timesteps": 64,
              "iterations": 2, "env": {"model": "textenv/default", "reward_model": "vader", "max_new_tokens": 8,
                                       "kl_coef": 0.05, "num_envs": 4}}
MY_NOTES = b"my own notes\n\x00\xff not textenv's\n"
PREFERENCES = b'{"prompt": "the film", "chosen": " was great", "rejected": " was bad"}\n'
COMPLETION_SETS = b'{"prompt": "the film", "completions": [" was great", " was bad"]}\n'


def checkpoint_files(root: str, **env_changes) -> dict[str, bytes]:
    env = {k: v for k, v in {**AGENT_JSON["env"], **env_changes}.items() if v is not None}
    meta = {**AGENT_JSON, "env": env}
    return {f"{root}/agent.json": json.dumps(meta).encode(), f"{root}/policy/config.json": b"{}"}


@dataclass
class Case:
    """One bad input: ``argv`` ("{tmp}" is the test's temporary directory), the texts the one error line must
    contain, and ``files`` (relative path → bytes) created first and required unchanged afterwards."""

    argv: list[str]
    message: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    setup: Callable[[Path, pytest.MonkeyPatch], None] | None = None


def _yaml(text: str) -> dict[str, bytes]:
    return {"c.yaml": text.encode()}


TRAIN = ["train", "--output", "{tmp}/run"]
CONFIG = ["train", "--config", "{tmp}/c.yaml", "--output", "{tmp}/run"]

CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ flags (argparse types, before anything)
    "train/total-timesteps-0": Case([*TRAIN, "--total-timesteps", "0"], ["--total-timesteps", "'0'", ">= 1"]),
    "train/total-timesteps-text": Case([*TRAIN, "--total-timesteps", "abc"], ["--total-timesteps", "'abc'"]),
    "train/seed-negative": Case([*TRAIN, "--seed", "-1"], ["--seed", "'-1'"]),
    "train/seed-float": Case([*TRAIN, "--seed", "1.5"], ["--seed", "'1.5'"]),
    "train/seed-too-large": Case([*TRAIN, "--seed", str(2**32)], ["--seed", "4294967295"]),
    "train/checkpoint-every-negative": Case([*TRAIN, "--checkpoint-every", "-1"], ["--checkpoint-every"]),
    "train/eval-prompts-0": Case([*TRAIN, "--eval-prompts", "0"], ["--eval-prompts"]),
    "train/eval-prompts-too-many": Case([*TRAIN, "--eval-prompts", "500"], ["eval_prompts=500", "150"]),
    "train/agent-typo": Case([*TRAIN, "--agent", "ppo2"], ["agent 'ppo2'", "did you mean 'ppo'"]),
    "train/dtype-unknown": Case([*TRAIN, "--dtype", "fp8"], ["--dtype", "'fp8'", "bfloat16"]),
    "train/sharding-unknown": Case([*TRAIN, "--sharding", "zero3"], ["--sharding", "'zero3'", "fsdp"]),
    "train/micro-batch-size-0": Case([*TRAIN, "--micro-batch-size", "0"], ["--micro-batch-size", "'0'", ">= 1"]),
    "train/autocast-dtype-unknown": Case([*TRAIN, "--autocast-dtype", "fp8"], ["--autocast-dtype", "'fp8'"]),
    "train/memory-flag-on-sb3": Case([*TRAIN, "--agent", "sb3-ppo", "--micro-batch-size", "2"],
                                     ["--micro-batch-size", "'sb3-ppo' does not take it"]),
    "train/fsdp-without-torchrun": Case([*TRAIN, "--sharding", "fsdp"], ["sharding='fsdp'", "torchrun"]),
    "eval/num-prompts-0": Case(["eval", "{tmp}/ckpt", "--num-prompts", "0"], ["--num-prompts"]),
    "eval/temperature-0": Case(["eval", "{tmp}/ckpt", "--temperature", "0"], ["--temperature", "> 0"]),
    "eval/temperature-nan": Case(["eval", "{tmp}/ckpt", "--temperature", "nan"], ["--temperature", "'nan'"]),
    "eval/max-new-tokens-negative": Case(["eval", "{tmp}/ckpt", "--max-new-tokens", "-3"], ["--max-new-tokens"]),
    "collect/k-1": Case(["collect", "--output", "{tmp}/p.jsonl", "--k", "1"], ["--k", ">= 2"]),
    "collect/noise-above-1": Case(["collect", "--output", "{tmp}/p.jsonl", "--noise", "1.5"], ["--noise", "<= 1"]),
    "collect/min-gap-negative": Case(["collect", "--output", "{tmp}/p.jsonl", "--min-gap", "-0.1"], ["--min-gap"]),
    "collect/temperature-inf": Case(["collect", "--output", "{tmp}/p.jsonl", "--temperature", "inf"],
                                    ["--temperature", "'inf'"]),
    "collect/batch-prompts-0": Case(["collect", "--output", "{tmp}/p.jsonl", "--batch-prompts", "0"],
                                    ["--batch-prompts"]),
    "collect/num-prompts-text": Case(["collect", "--output", "{tmp}/p.jsonl", "--num-prompts", "ten"],
                                     ["--num-prompts", "'ten'"]),
    "train-rm/lr-0": Case(["train-rm", "--data", "{tmp}/p.jsonl", "--output", "{tmp}/rm", "--lr", "0"], ["--lr"]),
    "train-rm/lr-inf": Case(["train-rm", "--data", "{tmp}/p.jsonl", "--output", "{tmp}/rm", "--lr", "inf"],
                            ["--lr", "finite"]),
    "train-rm/eval-fraction-1": Case(["train-rm", "--data", "x", "--output", "y", "--eval-fraction", "1"],
                                     ["--eval-fraction", "< 1"]),
    "train-rm/weight-decay-negative": Case(["train-rm", "--data", "x", "--output", "y", "--weight-decay", "-1"],
                                           ["--weight-decay"]),
    "train-rm/epochs-0": Case(["train-rm", "--data", "x", "--output", "y", "--epochs", "0"], ["--epochs"]),
    "train-rm/max-grad-norm-nan": Case(["train-rm", "--data", "x", "--output", "y", "--max-grad-norm", "nan"],
                                       ["--max-grad-norm"]),
    "pipeline/k-1": Case(["pipeline", "--output", "{tmp}/p", "--k", "1"], ["--k"]),
    "pipeline/beta-negative": Case(["pipeline", "--output", "{tmp}/p", "--beta", "-0.1"], ["--beta"]),
    "pipeline/betas-text": Case(["pipeline", "--output", "{tmp}/p", "--betas", "0.1,abc"], ["betas='0.1,abc'"]),
    "pipeline/sweep-over-budget": Case(["pipeline", "--output", "{tmp}/p", "--ppo-timesteps", "32",
                                        "--sweep-timesteps", "64"], ["sweep_timesteps=64", "ppo_timesteps=32"]),
    "pipeline/eval-prompts-too-many": Case(["pipeline", "--output", "{tmp}/p", "--eval-prompts", "500"],
                                           ["eval_prompts=500"]),
    "pipeline/rm-lr-0": Case(["pipeline", "--output", "{tmp}/p", "--rm-lr", "0"], ["--rm-lr"]),
    "label/seed-text": Case(["label", "{tmp}/s.jsonl", "--output", "{tmp}/o.jsonl", "--seed", "x"], ["--seed"]),
    # ------------------------------------------------------------------ config files
    "config/yaml-syntax": Case(CONFIG, ["c.yaml, line 4", "invalid YAML", "started at line 3"],
                               _yaml("agent: ppo\nenv:\n  num_envs: [4\n")),
    "config/yaml-indentation": Case(CONFIG, ["c.yaml, line 2, column 8", "invalid YAML"],
                                    _yaml("seed: 1\n  agent: ppo\n")),
    "config/unknown-top-key": Case(CONFIG, ["c.yaml", "'agnet'", "did you mean 'agent'", "valid keys"],
                                   _yaml("agnet: ppo\n")),
    "config/unknown-env-key": Case(CONFIG, ["env:", "'num_env'", "did you mean 'num_envs'"],
                                   _yaml("env:\n  num_env: 4\n")),
    "config/unknown-agent-kwarg": Case(CONFIG, ["agent_kwargs:", "'clip_rang'", "did you mean 'clip_range'"],
                                       _yaml("agent: ppo\nagent_kwargs:\n  clip_rang: 0.2\n")),
    "config/kwarg-of-another-agent": Case(CONFIG, ["agent_kwargs:", "'clip_range'", "valid keys"],
                                          _yaml("agent: reinforce\nagent_kwargs:\n  clip_range: 0.2\n")),
    "config/total-timesteps-string": Case(CONFIG, ["c.yaml", "total_timesteps='abc'"],
                                          _yaml('total_timesteps: "abc"\n')),
    "config/env-is-a-list": Case(CONFIG, ["c.yaml", "env=[1, 2]", "mapping"], _yaml("env: [1, 2]\n")),
    "config/seed-float": Case(CONFIG, ["c.yaml", "seed=1.5"], _yaml("seed: 1.5\n")),
    "config/kl-coef-negative": Case(CONFIG, ["c.yaml", "env.kl_coef=-1"], _yaml("env:\n  kl_coef: -1\n")),
    "config/kl-coef-nan": Case(CONFIG, ["c.yaml", "env.kl_coef=nan"], _yaml("env:\n  kl_coef: .nan\n")),
    "config/learning-rate-string": Case(CONFIG, ["agent_kwargs.learning_rate='fast'", "a number"],
                                        _yaml("agent_kwargs:\n  learning_rate: fast\n")),
    "config/learning-rate-negative": Case(CONFIG, ["agent_kwargs.learning_rate=-0.0001"],
                                          _yaml("agent_kwargs:\n  learning_rate: -1e-4\n")),
    "config/duplicate-key": Case(CONFIG, ["c.yaml, line 2", "'seed' appears twice"], _yaml("seed: 1\nseed: 2\n")),
    "config/not-utf8": Case(CONFIG, ["c.yaml:2: not UTF-8"], {"c.yaml": b"seed: 1\n# caf\xe9\n"}),
    "config/missing": Case(CONFIG, ["--config", "c.yaml: no such file"]),
    "config/a-list": Case(CONFIG, ["c.yaml", "mapping"], _yaml("- seed\n- 1\n")),
    "config/reference-object": Case(CONFIG, ["env.reference='gpt2'", "Python only"], _yaml("env:\n  reference: gpt2\n")),
    "config/seed-in-agent-kwargs": Case(CONFIG, ["agent_kwargs.seed", "top level"], _yaml("agent_kwargs:\n  seed: 3\n")),
    # ------------------------------------------------------------------ train run directories
    "train/output-is-a-file": Case([*TRAIN, "--total-timesteps", "8"], ["--output", "run is a file"],
                                   {"run": MY_NOTES}),
    "train/output-holds-user-files": Case(TRAIN, ["--output", "notes.txt", "did not write"],
                                          {"run/notes.txt": MY_NOTES}),
    "train/output-holds-user-files-overwrite": Case([*TRAIN, "--overwrite"], ["--output", "data/", "did not write"],
                                                    {"run/data/x.csv": MY_NOTES}),
    "train/output-tensorboard-user-file": Case([*TRAIN, "--overwrite"], ["tensorboard/plot.png", "did not write"],
                                               {"run/tensorboard/plot.png": MY_NOTES, "run/summary.json": b"{}"}),
    "train/output-user-eval-json": Case([*TRAIN, "--overwrite"], ["eval.json", "did not write"],
                                        {"run/summary.json": b"{}", "run/eval.json": b'{"my": "results"}'}),
    "train/output-holds-a-run": Case(TRAIN, ["--resume {tmp}/run/checkpoint", "--overwrite"],
                                     {"run/summary.json": b"{}", **checkpoint_files("run/checkpoint")}),
    "train/overwrite-old-checkpoint-with-user-file": Case(
        [*TRAIN, "--overwrite"], ["checkpoint", "my.txt", "did not write"],
        {"run/summary.json": b"{}", **checkpoint_files("run/checkpoint"), "run/checkpoint/my.txt": MY_NOTES}),
    "train/resume-missing": Case([*TRAIN, "--resume", "{tmp}/nope"], ["--resume", "nope: no such directory"]),
    "train/resume-not-a-checkpoint": Case([*TRAIN, "--resume", "{tmp}/d"], ["--resume", "no agent.json"],
                                          {"d/x.txt": MY_NOTES}),
    "train/resume-pickle-checkpoint": Case(
        [*TRAIN, "--resume", "{tmp}/old"], ["old", "pickle"],
        {**checkpoint_files("old"), "old/trainer_state.pt": b"\x80\x04\x95 not unpickled"}),
    "train/resume-other-agent": Case([*TRAIN, "--agent", "ppo", "--resume", "{tmp}/ckpt"],
                                     ["'reinforce' agent", "'ppo'"], checkpoint_files("ckpt")),
    # ------------------------------------------------------------------ eval
    "eval/checkpoint-missing": Case(["eval", "{tmp}/nope"], ["CHECKPOINT", "no such directory"]),
    "eval/output-is-a-directory": Case(["eval", "{tmp}/ckpt", "--output", "{tmp}/outdir"],
                                       ["--output", "outdir is a directory"], {**checkpoint_files("ckpt"),
                                                                                 "outdir/keep": MY_NOTES}),
    "eval/output-under-a-file": Case(["eval", "{tmp}/ckpt", "--output", "{tmp}/notes/e.json"],
                                     ["--output", "notes is a file"], {**checkpoint_files("ckpt"), "notes": MY_NOTES}),
    "eval/output-is-a-user-file": Case(["eval", "{tmp}/ckpt", "--output", "{tmp}/mine.json", "--overwrite"],
                                       ["mine.json", "not written by textenv"],
                                       {**checkpoint_files("ckpt"), "mine.json": b'{"gold_reward": 1}'}),
    "eval/output-is-pipeline-results": Case(["eval", "{tmp}/ckpt"], ["eval.json", "textenv pipeline", "--overwrite"],
                                            {**checkpoint_files("ckpt"),
                                             "eval.json": b'{"command": "textenv pipeline", "kl": 1}'}),
    "eval/damaged-agent-json": Case(["eval", "{tmp}/ckpt"], ["agent.json", "not valid JSON"],
                                    {"ckpt/agent.json": b'{"agent": "reinforce", ', "ckpt/policy/config.json": b"{}"}),
    "eval/python-reward-model": Case(["eval", "{tmp}/ckpt"], ["reward model", "--reward-model"],
                                     checkpoint_files("ckpt", reward_model=None)),
    "eval/python-base-model": Case(["eval", "{tmp}/ckpt"], ["--reference"], checkpoint_files("ckpt", model=None)),
    "eval/unknown-reward-model": Case(["eval", "{tmp}/ckpt", "--reward-model", "vadr"], ["'vadr'"],
                                      checkpoint_files("ckpt")),
    "eval/prompts-missing": Case(["eval", "{tmp}/ckpt", "--prompts", "{tmp}/nope.txt"], ["nope.txt"],
                                 checkpoint_files("ckpt")),
    # ------------------------------------------------------------------ train-rm paths
    "train-rm/data-missing": Case(["train-rm", "--data", "{tmp}/nope.jsonl", "--output", "{tmp}/rm"],
                                  ["--data", "nope.jsonl: no such file"]),
    "train-rm/data-is-a-directory": Case(["train-rm", "--data", "{tmp}/d", "--output", "{tmp}/rm"],
                                         ["--data", "is a directory"], {"d/x": MY_NOTES}),
    "train-rm/output-is-a-file": Case(["train-rm", "--data", "{tmp}/p.jsonl", "--output", "{tmp}/rm"],
                                      ["rm is a file"], {"p.jsonl": PREFERENCES, "rm": MY_NOTES}),
    "train-rm/output-holds-user-files": Case(["train-rm", "--data", "{tmp}/p.jsonl", "--output", "{tmp}/rm",
                                              "--overwrite"], ["--output", "notes.txt", "did not write"],
                                             {"p.jsonl": PREFERENCES, "rm/notes.txt": MY_NOTES}),
    # ------------------------------------------------------------------ pipeline paths
    "pipeline/output-is-a-file": Case(["pipeline", "--output", "{tmp}/p"], ["--output", "p is a file"],
                                      {"p": MY_NOTES}),
    "pipeline/output-holds-user-files": Case(["pipeline", "--output", "{tmp}/p"], ["--output", "thesis.tex"],
                                             {"p/thesis.tex": MY_NOTES, "p/preferences.jsonl": PREFERENCES}),
    # ------------------------------------------------------------------ collect / label paths
    "collect/output-is-a-directory": Case(["collect", "--output", "{tmp}/d"], ["--output", "is a directory"],
                                          {"d/x": MY_NOTES}),
    "collect/output-exists": Case(["collect", "--output", "{tmp}/p.jsonl"], ["p.jsonl already exists", "--append"],
                                  {"p.jsonl": PREFERENCES}),
    "collect/append-to-a-user-file": Case(["collect", "--output", "{tmp}/notes.txt", "--append"],
                                          ["--append", "notes.txt", "not a preference"], {"notes.txt": MY_NOTES}),
    "collect/prompts-missing": Case(["collect", "--output", "{tmp}/p.jsonl", "--prompts", "{tmp}/nope.txt"],
                                    ["--prompts", "nope.txt: no such file"]),
    "label/input-missing": Case(["label", "{tmp}/nope.jsonl", "--output", "{tmp}/o.jsonl"],
                                ["nope.jsonl: no such file"]),
    "label/input-is-a-directory": Case(["label", "{tmp}/d", "--output", "{tmp}/o.jsonl"], ["is a directory"],
                                       {"d/x": MY_NOTES}),
    "label/output-is-a-directory": Case(["label", "{tmp}/s.jsonl", "--output", "{tmp}/d"], ["--output", "directory"],
                                        {"s.jsonl": COMPLETION_SETS, "d/x": MY_NOTES}),
    "label/two-inputs": Case(["label", "{tmp}/s.jsonl", "--input", "{tmp}/t.jsonl", "--output", "{tmp}/o.jsonl"],
                             ["give one"], {"s.jsonl": COMPLETION_SETS}),
    # ------------------------------------------------------------------ malformed input files (parsed by
    # textenv.prompts / textenv.preferences; the CLI's one line must name the file)
    "collect/prompts-not-utf8": Case(["collect", "--output", "{tmp}/p.jsonl", "--prompts", "{tmp}/prompts.txt"],
                                     ["prompts.txt"], {"prompts.txt": b"the film\nthe caf\xe9\n"}),
    "collect/prompts-bad-jsonl": Case(["collect", "--output", "{tmp}/p.jsonl", "--prompts", "{tmp}/prompts.jsonl"],
                                      ["prompts.jsonl:2"], {"prompts.jsonl": b'{"prompt": "a"}\n{"prompt": \n'}),
    "label/input-not-utf8": Case(["label", "{tmp}/s.jsonl", "--output", "{tmp}/o.jsonl"], ["s.jsonl"],
                                 {"s.jsonl": COMPLETION_SETS + b'{"prompt": "caf\xe9", "completions": ["a", "b"]}\n'}),
    "label/input-bad-json": Case(["label", "{tmp}/s.jsonl", "--output", "{tmp}/o.jsonl"], ["s.jsonl:2"],
                                 {"s.jsonl": COMPLETION_SETS + b'{"prompt": "x", "completions": \n'}),
    "label/output-not-preferences": Case(["label", "{tmp}/s.jsonl", "--output", "{tmp}/notes.txt"], ["notes.txt"],
                                         {"s.jsonl": COMPLETION_SETS, "notes.txt": MY_NOTES}),
    "train-rm/data-not-utf8": Case(["train-rm", "--data", "{tmp}/p.jsonl", "--output", "{tmp}/rm"], ["p.jsonl"],
                                   {"p.jsonl": PREFERENCES + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'}),
    "train-rm/data-bad-row": Case(["train-rm", "--data", "{tmp}/p.jsonl", "--output", "{tmp}/rm"],
                                  ["p.jsonl:2", "choosen"],
                                  {"p.jsonl": PREFERENCES + b'{"prompt": "x", "choosen": "a", "rejected": "b"}\n'}),
    "train-rm/data-empty": Case(["train-rm", "--data", "{tmp}/p.jsonl", "--output", "{tmp}/rm"], ["p.jsonl", "empty"],
                                {"p.jsonl": b"\n"}),
}


def _deny_appending(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate EACCES on the label output (tests run as root, where chmod does not block writes)."""
    real_open = open

    def guarded_open(file, mode="r", *args, **kwargs):
        if "a" in mode and Path(file).name == "o.jsonl":
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(textenv.preferences, "open", guarded_open, raising=False)


def _disk_full(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate ENOSPC when `textenv eval` writes its results (the evaluation itself is stubbed)."""
    monkeypatch.setattr(textenv.apps.evaluation, "evaluate_policy",
                        lambda *a, **k: {"gold_reward": 0.5, "kl": 1.0, "settings": {}, "samples": []})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)


CASES["label/output-permission-denied"] = Case(
    ["label", "{tmp}/s.jsonl", "--output", "{tmp}/o.jsonl"], ["o.jsonl: Permission denied"],
    {"s.jsonl": COMPLETION_SETS}, setup=_deny_appending)
CASES["eval/disk-full"] = Case(
    ["eval", "{tmp}/ckpt", "--output", "{tmp}/e.json", "--overwrite"],
    ["e.json: No space left on device", "free some space"],
    {**checkpoint_files("ckpt"), "e.json": b'{"command": "textenv eval", "kl": 2}'}, setup=_disk_full)


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a model or env gets built fails the test: bad input must be caught before any of them."""

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModel, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", loaded)
    # functools.wraps keeps the signature and annotations the CLI checks `env:` keys against
    monkeypatch.setattr(TextGenVectorEnv, "__init__", functools.wraps(TextGenVectorEnv.__init__)(loaded))


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp))


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_clear_line_before_any_model_loads(case: Case, tmp_path: Path, monkeypatch, capsys,
                                                            no_model_loads) -> None:
    monkeypatch.chdir(tmp_path)
    for name, data in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    if case.setup is not None:
        case.setup(tmp_path, monkeypatch)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    start = time.perf_counter()
    code = main([_fill(arg, tmp_path) for arg in case.argv])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"textenv {case.argv[0]}: error: "), err
    for text in case.message:
        assert _fill(text, tmp_path) in lines[0], lines[0]
    assert "Traceback" not in err
    assert seconds < 1.0, f"took {seconds:.2f} s: the mistake must be caught before anything heavy runs"
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before  # nothing written, removed or changed (user files byte for byte)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores directory permissions; EACCES is simulated in label/output-permission-denied")
def test_read_only_output_directory(tmp_path: Path, capsys, no_model_loads) -> None:
    (tmp_path / "s.jsonl").write_bytes(COMPLETION_SETS)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["label", str(tmp_path / "s.jsonl"), "--output", str(locked / "o.jsonl")]) == 2
    finally:
        locked.chmod(0o755)
    assert "Permission denied" in capsys.readouterr().err


def test_train_rm_divergence_stops_and_keeps_the_previous_reward_model(tiny_model_dir: Path, tmp_path: Path,
                                                                       capsys) -> None:
    """train-rm with an absurd learning rate: one line naming the epoch and step and the likely cause; the
    reward model already at --output (and a user's file beside it) stay byte for byte."""
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"the film {i}", "ranked": [" was great", " was ok", " was bad"]})
                            + "\n" for i in range(6)))
    argv = ["train-rm", "--data", str(data), "--backbone", str(tiny_model_dir), "--device", "cpu",
            "--batch-prompts", "2", "--output", str(tmp_path / "rm")]
    assert main([*argv, "--epochs", "1"]) == 0
    saved = {p: p.read_bytes() for p in (tmp_path / "rm").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--lr", "1e30"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("textenv train-rm: error: reward-model training diverged at epoch 1")
    assert "step" in lines[0] and "lr=1e+30" in lines[0] and "Traceback" not in lines[0]
    assert {p: p.read_bytes() for p in (tmp_path / "rm").rglob("*") if p.is_file()} == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs.jsonl", "rm"]  # no temporary directory left


# ---------------------------------------------------------------------------------------------- library calls
def _library_cases() -> dict[str, tuple[Callable[[Path], object], str]]:
    from textenv.apps.collect import collect_preferences, rank_completions
    from textenv.apps.pipeline import run_pipeline
    from textenv.reward_models.preference import train_preference_model

    rows = [{"prompt": "the film", "chosen": " was great", "rejected": " was bad"}] * 2

    def rm(**kwargs):
        return lambda tmp: train_preference_model(rows, **kwargs)

    return {
        "train_preference_model/lr-nan": (rm(lr=float("nan")), "lr=nan"),
        "train_preference_model/lr-negative": (rm(lr=-1e-4), "lr=-0.0001"),
        "train_preference_model/weight-decay-inf": (rm(weight_decay=float("inf")), "weight_decay=inf"),
        "train_preference_model/eval-fraction-1": (rm(eval_fraction=1.0), "eval_fraction=1.0"),
        "train_preference_model/center-coef-nan": (rm(center_coef=float("nan")), "center_coef=nan"),
        "train_preference_model/max-grad-norm-negative": (rm(max_grad_norm=-1.0), "max_grad_norm=-1.0"),
        "train_preference_model/epochs-float": (rm(epochs=1.5), "epochs=1.5"),
        "train_preference_model/pooling": (rm(pooling="max"), "pooling='max'"),
        "collect_preferences/temperature-0": (lambda tmp: collect_preferences(temperature=0.0), "temperature=0.0"),
        "collect_preferences/noise-nan": (lambda tmp: collect_preferences(noise=float("nan")), "noise=nan"),
        "collect_preferences/k-1": (lambda tmp: collect_preferences(k=1), "k=1"),
        "rank_completions/min-gap-inf": (lambda tmp: rank_completions(["a"], [1.0], min_gap=float("inf")), "min_gap=inf"),
        "run_pipeline/ppo-lr-inf": (lambda tmp: run_pipeline(tmp / "p", ppo_lr=float("inf")), "ppo_lr=inf"),
        "run_pipeline/noise-2": (lambda tmp: run_pipeline(tmp / "p", noise=2.0), "noise=2.0"),
    }


LIBRARY_CASES = _library_cases()


@pytest.mark.parametrize("name", list(LIBRARY_CASES))
def test_library_calls_refuse_bad_numbers_before_loading(name: str, tmp_path: Path, no_model_loads) -> None:
    call, message = LIBRARY_CASES[name]
    from textenv.validation import InputError

    with pytest.raises(InputError, match=re.escape(message)):
        call(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written
