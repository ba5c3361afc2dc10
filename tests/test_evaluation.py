"""Evaluation: metrics on a tiny model (KL = 0 against itself, > 0 after a perturbation), distinct-n, files, plots."""

from __future__ import annotations

import errno
import json
import math
import os

import numpy as np
import pytest
import torch

from textenv.apps.evaluation import (
    METRICS,
    check_results_path,
    distinct_n,
    evaluate_policy,
    load_eval_json,
    plot_proxy_vs_gold,
    plot_reward_kl_frontier,
    results_writer,
    save_eval_json,
)
from textenv.models.loading import load_causal_lm
from textenv.validation import InputError


def length_reward(prompts, completions):
    return [len(c) / 10.0 for c in completions]


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator))


def test_distinct_n_on_a_hand_example():
    texts = ["a b a b", "c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 5)  # a, b, a, b, c: 3 unique of 5
    assert distinct_n(texts, 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b): 2 unique of 3
    assert distinct_n(["x"], 2) == 0.0 and distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="n=0"):
        distinct_n(texts, 0)


def test_evaluation_against_itself_has_zero_kl_and_all_keys(tiny_model_dir, tiny_prompts):
    kwargs = dict(prompts=tiny_prompts, reference=str(tiny_model_dir), proxy=length_reward, num_samples=3,
                  max_new_tokens=6, batch_size=5, seed=1, device="cpu")
    result = evaluate_policy(str(tiny_model_dir), **kwargs)
    assert set(METRICS) <= set(result)
    assert abs(result["kl"]) < 1e-4  # π_θ = π_ref
    assert result["perplexity"] == pytest.approx(result["policy_perplexity"], rel=1e-4)
    assert 1 < result["perplexity"] < 2 * 300  # a random model over a 300-token vocabulary
    assert result["num_samples"] == len(result["samples"]) == 3 * len(tiny_prompts)  # 12 rows in batches of 5
    assert [s["prompt"] for s in result["samples"]] == [p for p in tiny_prompts for _ in range(3)]
    completions = [s["completion"] for s in result["samples"]]
    assert result["proxy_reward"] == pytest.approx(np.mean(length_reward(None, completions)))
    assert result["distinct_1"] == distinct_n(completions, 1) and 0 <= result["distinct_2"] <= 1
    assert 0 < result["length"] <= 6
    assert {"prompt", "completion", "gold", "proxy", "kl"} == set(result["samples"][0])
    again = evaluate_policy(str(tiny_model_dir), **kwargs)
    assert [s["completion"] for s in again["samples"]] == completions  # same seed, same samples


def test_evaluation_of_a_perturbed_policy_has_positive_kl(tiny_model_dir, tiny_prompts):
    policy = load_causal_lm(str(tiny_model_dir), "cpu")
    perturb(policy)
    result = evaluate_policy(policy, prompts=tiny_prompts, reference=str(tiny_model_dir), num_samples=4,
                             max_new_tokens=6, batch_size=16, device="cpu", max_table_rows=2)
    assert result["kl"] > 0.5
    assert result["perplexity"] > result["policy_perplexity"]  # π_ref finds π_θ's samples less likely
    assert len(result["samples"]) == 2 and result["num_samples"] == 16
    assert result["proxy_reward"] is None


def test_evaluation_of_an_agent_checkpoint_uses_its_base_model_as_reference(tmp_path, tiny_model_dir, tiny_prompts):
    from textenv.agents.sft import SFT
    from textenv.vector_env import TextGenVectorEnv

    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=tiny_prompts, max_new_tokens=4,
                           autoreset_mode="disabled", kl_coef=0.0, device="cpu")
    agent = SFT(env, demonstrations=["the film was good"], batch_size=1, learning_rate=1e-2)
    agent.learn(total_timesteps=10, progress_bar=False)
    agent.save(tmp_path / "ckpt")
    result = evaluate_policy(tmp_path / "ckpt", prompts=tiny_prompts, max_new_tokens=4, device="cpu")
    assert result["settings"]["reference"] == str(tiny_model_dir)
    assert result["kl"] > 0 and math.isfinite(result["perplexity"])


def test_evaluation_rejects_bad_arguments(tiny_model_dir, tiny_prompts):
    with pytest.raises(InputError, match="num_samples"):
        evaluate_policy(str(tiny_model_dir), prompts=tiny_prompts, num_samples=0)
    for name, value in (("temperature", 0.0), ("temperature", float("nan")), ("max_new_tokens", 0), ("seed", -1),
                        ("batch_size", True)):
        with pytest.raises(InputError, match=name):
            evaluate_policy(str(tiny_model_dir), prompts=tiny_prompts, **{name: value})
    with pytest.raises(TypeError, match="policy must be"):
        evaluate_policy(3, prompts=tiny_prompts)


def test_a_checkpoint_that_names_no_base_model_needs_a_reference(tmp_path, tiny_prompts):
    """A policy trained from a model object: agent.json cannot say what π_ref was, so KL needs reference=."""
    checkpoint = tmp_path / "ckpt"
    (checkpoint / "policy").mkdir(parents=True)
    (checkpoint / "agent.json").write_text(json.dumps({"agent": "reinforce", "env": {"kl_coef": 0.05}}))
    with pytest.raises(InputError, match="reference="):
        evaluate_policy(checkpoint, prompts=tiny_prompts)


def test_results_files_name_the_command_that_wrote_them(tmp_path):
    eval_file, pipeline_file, mine = tmp_path / "eval.json", tmp_path / "pipeline.json", tmp_path / "mine.json"
    save_eval_json(eval_file, {"command": "textenv eval", "kl": 1.0})
    save_eval_json(pipeline_file, {"rm_pair_accuracy": 0.9, "stages": {}, "settings": {}})  # before "command"
    mine.write_text('{"gold_reward": 1}')
    assert results_writer(eval_file) == "textenv eval" and results_writer(pipeline_file) == "textenv pipeline"
    assert results_writer(mine) is None and results_writer(tmp_path / "missing.json") is None
    check_results_path(tmp_path / "new.json")
    check_results_path(eval_file, overwrite=True)
    for path, overwrite, message in ((eval_file, False, "--overwrite"), (mine, True, "not written by textenv"),
                                     (tmp_path, True, "is a directory"), (mine / "x.json", False, "is a file")):
        with pytest.raises(InputError, match=message):
            check_results_path(path, overwrite=overwrite)


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "eval.json"
    save_eval_json(path, {"kl": 0.5})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left") as caught:
        save_eval_json(path, {"kl": 0.25})
    assert caught.value.filename == str(path) and caught.value.errno == errno.ENOSPC
    assert load_eval_json(path) == {"kl": 0.5} and [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_save_eval_json_is_atomic_and_converts_numpy(tmp_path):
    path = tmp_path / "out" / "eval.json"
    save_eval_json(path, {"kl": np.float32(0.5), "scores": np.arange(3), "samples": [{"gold": np.float64(1.0)}]})
    save_eval_json(path, {"kl": np.float64(0.25), "samples": []})  # replaces the old file
    assert load_eval_json(path) == {"kl": 0.25, "samples": []}
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temporary file left behind
    with pytest.raises(TypeError, match="object"):
        save_eval_json(path, {"bad": object()})
    assert load_eval_json(path) == {"kl": 0.25, "samples": []}  # a failed write keeps the old file


def test_plots_write_png_files(tmp_path):
    def result(kl, gold, proxy=None, steps=None):
        return {"kl": kl, "gold_reward": gold, "proxy_reward": proxy, "num_timesteps": steps}

    frontier = plot_reward_kl_frontier(
        {0.1: [result(0.5, 0.1), result(2.0, 0.4)], 0.5: result(0.3, 0.05), "dpo": [result(1.0, 0.2)]},
        tmp_path / "frontier.png",
    )
    history = [result(0.0, 0.0, 0.0, 0), result(1.0, 0.3, 1.0, 100), result(4.0, 0.1, 3.0, 200)]
    proxy_gold = plot_proxy_vs_gold(history, tmp_path / "proxy_gold.png")
    for path in (frontier, proxy_gold):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="proxy_reward"):
        plot_proxy_vs_gold([result(0.0, 0.0)], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="empty"):
        plot_reward_kl_frontier({}, tmp_path / "bad.png")
