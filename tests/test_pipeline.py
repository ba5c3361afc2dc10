"""`textenv pipeline`: every stage's output on disk, the eval.json summary, reuse/resume of stage outputs, and
clear errors — on the tiny random GPT-2 with a tiny budget.

The tiny model's 4-token completions are all neutral to VADER (every ranking would be a tie and be dropped), so
the gold labeller here is a registered reward model that prefers longer completions (in characters).
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import LENGTH_REWARD

from textenv.apps.cli import main
from textenv.apps.pipeline import checkpoint_targets, parse_betas, run_pipeline
from textenv.preferences import PreferenceRanking, load_preferences
from textenv.reward_models.preference import PreferenceRewardModel

GOLD = LENGTH_REWARD  # registered by the length_reward fixture (conftest.py)


def tiny_args(model_dir, out, *extra):
    return ["pipeline", "--output", str(out), "--model", str(model_dir), "--gold", GOLD, "--num-prompts", "12",
            "--k", "3", "--max-new-tokens", "4", "--sft", "--sft-epochs", "1", "--rm-epochs", "1", "--beta", "0.1",
            "--betas", "0,0.1,0.5", "--ppo-timesteps", "32", "--sweep-timesteps", "16", "--eval-every", "16",
            "--overoptimisation-timesteps", "32",
            "--num-envs", "4", "--eval-prompts", "4", "--device", "cpu", *extra]


def test_pipeline_writes_every_stage_and_reuses_them(tiny_model_dir, tmp_path, length_reward, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(tiny_model_dir, out)) == 0
    headline = json.loads(capsys.readouterr().out)
    assert {"rm_pair_accuracy", "gold_before", "gold_after", "proxy_after", "kl", "best"} <= set(headline)
    assert set(headline["overoptimisation"]) == {"gold_falls_while_proxy_rises", "gold_drop", "peak"}

    # Stage outputs are real, loadable artefacts.
    rows = load_preferences(out / "preferences.jsonl")
    assert len(rows) >= 2 and all(isinstance(r, PreferenceRanking) and r.meta["gold"] == GOLD for r in rows)
    for row in rows:  # ranked best first by the gold labeller
        assert row.meta["scores"] == sorted(row.meta["scores"], reverse=True)
    eval_prompts = {r.prompt for r in load_preferences(out / "eval_preferences.jsonl")}
    assert eval_prompts and not eval_prompts & {r.prompt for r in rows}  # held-out prompts only
    assert (out / "sft" / "policy" / "model.safetensors").is_file()
    rm = PreferenceRewardModel.load(out / "reward_model", device="cpu")
    assert rm.score(["the film"], [" was good"]).shape == (1,)
    assert rm.metadata["training"]["backbone"].endswith("sft/policy")  # InstructGPT: RM initialised from SFT
    # Normalised on the reference completions of the training prompts (what it was trained on): mean 0, std 1.
    texts = [(r.prompt, c) for r in rows for c in dict.fromkeys(r.ranked)]
    scores = rm.score([p for p, _ in texts], [c for _, c in texts])
    assert abs(scores.mean()) < 1e-4 and scores.std() == pytest.approx(1.0, abs=1e-4)
    assert rm.normalization["num_texts"] == len(texts)
    main_meta = json.loads((out / "ppo" / "step-00000032" / "agent.json").read_text())
    assert main_meta["agent"] == "ppo" and main_meta["num_timesteps"] >= 32
    assert main_meta["env"]["kl_coef"] == 0.1 and main_meta["env"]["reward_model"].startswith("preference:")
    assert main_meta["env"]["model"].endswith("sft/policy")  # PPO starts from (and is anchored to) the SFT model
    assert (out / "ppo" / "step-00000016" / "policy" / "model.safetensors").is_file()
    # Only the newest checkpoint keeps the optimizer state needed to resume.
    assert not (out / "ppo" / "step-00000016" / "trainer_state.json").exists()
    assert (out / "ppo" / "step-00000032" / "trainer_state.json").is_file()
    sweep_meta = json.loads((out / "sweep" / "beta-0.5" / "step-00000016" / "agent.json").read_text())
    assert sweep_meta["env"]["kl_coef"] == 0.5 and 16 <= sweep_meta["num_timesteps"] < 32
    for png in ("reward_kl_frontier.png", "proxy_vs_gold.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads((out / "eval.json").read_text())
    assert summary["command"] == "textenv pipeline"  # `textenv eval` never replaces it without --overwrite
    for key in ("rm_pair_accuracy", "gold_before", "gold_after", "proxy_after", "kl", "gold_after_best",
                "gold_sft", "cpu_minutes"):
        assert isinstance(summary[key], float) and math.isfinite(summary[key]), key
    assert 0.0 <= summary["rm_pair_accuracy"] <= 1.0
    assert [c["checkpoint"] for c in summary["checkpoints"]] == ["ppo/step-00000016", "ppo/step-00000032"]
    assert summary["gold_after"] == summary["checkpoints"][-1]["gold_reward"]
    assert summary["gold_after_best"] == max(c["gold_reward"] for c in summary["checkpoints"])
    assert summary["gold_gain_best"] == pytest.approx(summary["gold_after_best"] - summary["gold_before"])
    # One frontier point per β at the sweep budget; the main β's point is the main run's checkpoint there.
    # β = 0's is the β = 0 run's checkpoint there (no separate sweep run).
    frontier = {p["beta"]: p["checkpoint"] for p in summary["frontier"]}
    assert frontier == {0.0: "overoptimisation/step-00000016", 0.1: "ppo/step-00000016",
                        0.5: "sweep/beta-0.5/step-00000016"}
    assert not (out / "sweep" / "beta-0").exists()
    # The β = 0 run: checkpoints every eval_every tokens, evaluated.
    free_meta = json.loads((out / "overoptimisation" / "step-00000032" / "agent.json").read_text())
    assert free_meta["env"]["kl_coef"] == 0.0 and free_meta["num_timesteps"] >= 32
    assert [p["checkpoint"] for p in summary["unpenalised"]] == ["overoptimisation/step-00000016",
                                                                  "overoptimisation/step-00000032"]
    assert {s["status"] for s in summary["stages"].values()} == {"ran"}
    verdict = summary["overoptimisation"]
    assert set(verdict) == {"peak", "beyond_peak", "gold_falls_while_proxy_rises", "gold_drop", "runs"}
    assert set(verdict["runs"]) == {"β = 0.1", "β = 0"}
    assert verdict["peak"]["gold_reward"] == max([summary["gold_before"], *(c["gold_reward"] for c in
                                                  summary["checkpoints"] + summary["frontier"] + summary["unpenalised"])])

    # Run again: every stage is reused (nothing retrained or re-evaluated), same numbers.
    weights = out / "ppo" / "step-00000032" / "policy" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert main(tiny_args(tiny_model_dir, out)) == 0
    again = json.loads((out / "eval.json").read_text())
    assert {s["status"] for s in again["stages"].values()} == {"skipped"}
    assert weights.stat().st_mtime_ns == mtime
    for key in ("rm_pair_accuracy", "gold_before", "gold_after", "proxy_after", "kl", "frontier", "checkpoints"):
        assert again[key] == summary[key]

    # A larger budget resumes the main run from its last checkpoint; the rest is reused.
    capsys.readouterr()
    assert main(tiny_args(tiny_model_dir, out, "--ppo-timesteps", "48")) == 0
    longer = json.loads((out / "eval.json").read_text())
    assert longer["stages"]["ppo"]["status"] == "resumed"
    assert longer["stages"]["collect"]["status"] == longer["stages"]["rm"]["status"] == "skipped"
    assert longer["stages"]["evaluate"]["detail"]["evaluated"] == ["ppo/step-00000048"]
    assert json.loads((out / "ppo" / "step-00000048" / "agent.json").read_text())["num_timesteps"] >= 48
    assert longer["checkpoints"][:2] == summary["checkpoints"]

    # Reusing comparisons ranked by another gold labeller is refused (a DIR of the days when VADER was the default).
    assert main(tiny_args(tiny_model_dir, out, "--gold", "vader")) == 2
    assert f"ranked by gold {GOLD!r} but this run's --gold is 'vader'" in capsys.readouterr().err

    # Reusing DIR with a different β is refused rather than silently mixing runs.
    assert main(tiny_args(tiny_model_dir, out, "--beta", "0.2", "--ppo-timesteps", "48")) == 2
    assert "beta=0.1" in capsys.readouterr().err


def test_library_call_without_sft_or_sweep(tiny_model_dir, tmp_path, length_reward):
    summary = run_pipeline(
        tmp_path / "run", model=str(tiny_model_dir), gold=GOLD, num_prompts=8, k=2, max_new_tokens=4, rm_epochs=1,
        beta=0.1, betas="none", ppo_timesteps=16, sweep_timesteps=16, eval_every=16, num_envs=4, eval_prompts=4,
        overoptimisation_timesteps=0, device="cpu", log=lambda line: None,
    )
    assert summary["stages"]["overoptimise"]["status"] == "off" and summary["unpenalised"] == []
    assert not (tmp_path / "run" / "overoptimisation").exists()
    assert list(summary["overoptimisation"]["runs"]) == ["β = 0.1"]
    assert summary["gold_sft"] is None and summary["stages"]["sft"]["status"] == "off"
    assert summary["stages"]["sweep"]["status"] == "off" and not (tmp_path / "run" / "sweep").exists()
    assert [p["beta"] for p in summary["frontier"]] == [0.1]
    assert summary["settings"]["betas"] == [0.1]


def test_overoptimisation_finds_the_gold_peak_and_what_lies_beyond():
    """Gao et al. 2022's shape: gold rises then falls with KL while the proxy keeps rising."""
    from textenv.apps.pipeline import PipelineConfig, overoptimisation

    def point(kl, gold, proxy, tokens=0, std=None, n=None):
        return {"kl": kl, "gold_reward": gold, "proxy_reward": proxy, "num_timesteps": tokens, "checkpoint": str(kl),
                "gold_reward_std": std, "num_samples": n}

    start = point(0.0, 0.0, 0.0)
    penalised = [start, point(2.0, 0.4, 1.0, 100), point(5.0, 0.6, 2.0, 200)]
    free = [start, point(3.0, 0.5, 1.5, 100), point(20.0, 0.1, 4.0, 200), point(40.0, -0.5, 4.5, 300)]
    verdict = overoptimisation({"β = 0.1": penalised, "β = 0": free}, [point(1.0, 0.2, 0.5), free[2]])
    assert verdict["peak"]["kl"] == 5.0 and [p["kl"] for p in verdict["beyond_peak"]] == [20.0, 40.0]
    assert verdict["gold_falls_while_proxy_rises"] and verdict["gold_drop"] == pytest.approx(1.1)
    assert not verdict["runs"]["β = 0.1"]["gold_falls_while_proxy_rises"]
    assert verdict["runs"]["β = 0"]["gold_falls_while_proxy_rises"]
    assert verdict["runs"]["β = 0"]["peak"]["kl"] == 3.0 and verdict["runs"]["β = 0"]["gold_drop"] == pytest.approx(1.0)
    assert not overoptimisation({"run": penalised})["gold_falls_while_proxy_rises"]
    # Gold falling with the proxy falling too is not over-optimisation of the proxy.
    assert not overoptimisation({"run": penalised}, [point(20.0, 0.1, 1.5)])["gold_falls_while_proxy_rises"]
    # A drop within sampling noise is not either: 0.6 → 0.55 with std 0.7 over 150 samples (2 SE ≈ 0.16).
    noisy = [start, point(5.0, 0.6, 2.0, std=0.7, n=150), point(6.0, 0.55, 2.1, std=0.7, n=150)]
    assert not overoptimisation({"run": noisy})["gold_falls_while_proxy_rises"]
    noisy[2]["gold_reward"] = 0.3
    assert overoptimisation({"run": noisy})["gold_falls_while_proxy_rises"]
    # The default gold labeller values fluency and variety as well as sentiment.
    assert PipelineConfig().gold == "fluent-sentiment"


def test_betas_and_budgets_are_checked(tmp_path, capsys):
    assert parse_betas("0.02, 0.1,0.5") == [0.02, 0.1, 0.5]
    assert parse_betas("none") == parse_betas("") == []
    for bad, message in (("0.1;0.2", "not a number"), ("0.1,-1", ">= 0"), ("0.1,0.1", "twice"), ("nan", ">= 0")):
        with pytest.raises(ValueError, match=message):
            parse_betas(bad)
    assert checkpoint_targets(10, 4, extra=[6, 12]) == [4, 6, 8, 10]
    with pytest.raises(ValueError, match="sweep_timesteps=64 exceeds ppo_timesteps=32"):
        run_pipeline(tmp_path / "x", ppo_timesteps=32, sweep_timesteps=64)
    with pytest.raises(ValueError, match="eval_prompts=500"):
        run_pipeline(tmp_path / "x", eval_prompts=500)
    with pytest.raises(ValueError, match="num_prompts=1"):
        run_pipeline(tmp_path / "x", num_prompts=1)
    assert main(["pipeline", "--output", str(tmp_path / "x"), "--betas", "0.1,abc"]) == 2
    assert "betas='0.1,abc'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # arguments are checked before anything is written


@pytest.mark.bad_input
@pytest.mark.parametrize(("argv", "message"), [
    (["--overoptimisation-timesteps", "-1"], "--overoptimisation-timesteps"),
    (["--overoptimisation-timesteps", "many"], "--overoptimisation-timesteps"),
    (["--gold", "fluent-sentiments"], "fluent-sentiments"),
])
def test_bad_overoptimisation_and_gold_arguments_are_refused_before_anything_is_written(tmp_path, capsys, argv,
                                                                                         message):
    out = tmp_path / "run"
    assert main(["pipeline", "--output", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "preferences.jsonl").exists()
