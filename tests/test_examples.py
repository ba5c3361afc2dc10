"""examples/swap_algorithms.py runs end to end on a tiny budget and reports every agent it trained."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_swap_algorithms_writes_one_table_and_one_plot_with_every_agent(tiny_model_dir, tmp_path, capsys):
    example = load_example("swap_algorithms")
    agents = example.DEFAULT_AGENTS
    out = tmp_path / "swap"
    code = example.main(["--model", str(tiny_model_dir), "--total-timesteps", "64", "--num-envs", "8",
                         "--max-new-tokens", "4", "--eval-prompts", "8", "--output", str(out), "--no-progress"])
    assert code == 0

    table = (out / "comparison.md").read_text()
    body = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert [line.split("|")[1].strip() for line in body] == agents
    assert table in capsys.readouterr().out  # the printed table is the saved one

    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["agent"] for r in rows] == agents
    for r in rows:
        assert r["tokens"] >= 64 and r["tokens_per_s"] > 0 and r["wall_s"] > 0
        assert -1.0 <= r["vader_before"] <= 1.0 and -1.0 <= r["vader_after"] <= 1.0

    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    for name in agents:  # each agent's curves come from its own TensorBoard run, with both plotted tags
        curves = example.read_curves(out / name / "tensorboard")
        assert set(curves) == set(example.CURVES), name
        tokens, _ = curves["rollout/kl"]
        assert tokens == sorted(tokens) and tokens[-1] >= 64


def test_unknown_agent_fails_before_any_training(tmp_path):
    example = load_example("swap_algorithms")
    with pytest.raises(ValueError, match="agent 'nope' is not registered"):
        example.main(["--agents", "ppo", "nope", "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
