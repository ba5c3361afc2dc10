"""Evaluation: metrics on a tiny model (KL = 0 against itself, > 0 after a perturbation), distinct-n, files, plots."""

from __future__ import annotations

import errno
import json
import math
import os
import re

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


# ---------------------------------------------------------------------------------------------- the lens page
HOSTILE_PROMPT = "the <script>alert(1)</script> film & \"it\" was"


def test_evaluation_keeps_the_first_episodes_token_by_token(tiny_model_dir, tiny_prompts):
    policy = load_causal_lm(str(tiny_model_dir), "cpu")
    perturb(policy)
    kwargs = {"prompts": tiny_prompts, "reference": str(tiny_model_dir), "num_samples": 2, "max_new_tokens": 5,
              "batch_size": 3, "device": "cpu", "seed": 2}
    result = evaluate_policy(policy, lens_episodes=4, **kwargs)
    lens = result["lens"]
    assert [e["index"] for e in lens] == [0, 1, 2, 3]  # across the batches of 3
    for episode, sample in zip(lens, result["samples"]):
        assert episode["prompt"] == sample["prompt"] and episode["completion"] == sample["completion"]
        assert episode["summary"]["gold"] == sample["gold"] and episode["summary"]["KL"] == pytest.approx(sample["kl"])
        kl, logprobs, ref = (np.array(episode[k]) for k in ("kl", "logprobs", "ref_logprobs"))
        assert len(episode["tokens"]) == len(kl) == episode["summary"]["length"] > 0
        np.testing.assert_allclose(logprobs - ref, kl, atol=1e-5)  # k1
        assert sum(kl) == pytest.approx(sample["kl"], abs=1e-4)
    json.dumps(result)  # still JSON-serialisable
    assert "lens" not in evaluate_policy(policy, **kwargs)


@pytest.fixture
def checkpoint(tmp_path, tiny_model_dir, length_reward):
    """A saved (untrained) reinforce checkpoint on the tiny model whose gold reward model is registered by name."""
    from textenv.agents import make_agent
    from textenv.vector_env import TextGenVectorEnv

    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=["the film was"], max_new_tokens=5,
                           reward_model=length_reward, kl_coef=0.1, autoreset_mode="disabled", device="cpu")
    make_agent("reinforce", env).save(tmp_path / "ckpt")
    (tmp_path / "prompts.txt").write_text(f"{HOSTILE_PROMPT}\nthe book\nthis blender\n")
    return tmp_path / "ckpt"


def eval_html(checkpoint, *extra: str) -> int:
    from textenv.apps.cli import main

    where = checkpoint.parent
    return main(["eval", str(checkpoint), "--prompts", str(where / "prompts.txt"), "--num-prompts", "3",
                 "--num-samples", "2", "--output", str(where / "e.json"), *extra])


def test_eval_html_page_shows_escaped_tokens_coloured_by_kl(checkpoint, capsys):
    page = checkpoint.parent / "page.html"
    assert eval_html(checkpoint, "--html", str(page), "--html-episodes", "5") == 0
    result = json.loads((checkpoint.parent / "e.json").read_text())
    assert "lens" not in result  # the per-token numbers go to the page, not the results file
    text = page.read_text(encoding="utf-8")
    assert "<script>" not in text and "</script>" not in text  # the prompt's markup is shown, not run
    assert "&lt;script&gt;alert(1)&lt;/script&gt; film &amp; &quot;it&quot; was" in text
    sections = text.split("<section>")[1:]
    assert len(sections) == 5
    for section in sections:  # one coloured span per completion token
        assert section.count('class="tok"') == int(re.search(r"length (\d+)", section).group(1)) > 0
    assert f"{result['gold_reward']:.4g} ±" in text and f"{result['kl']:.4g} ±" in text  # the summary on top
    titles = re.findall(r'title="[^"]*?: log π = (-?[\d.]+), log π_ref = (-?[\d.]+), KL_t = (-?[\d.]+)"', text)
    assert len(titles) == text.count('class="tok"')
    for logprob, ref_logprob, kl in (map(float, t) for t in titles):
        assert logprob - ref_logprob == pytest.approx(kl, abs=2.5e-3)
    assert "legend-bar" in text and "background:rgba(" in text
    assert [p.name for p in page.parent.iterdir() if p.name.startswith(".page")] == []  # no temporary file left

    capsys.readouterr()
    before = page.read_bytes()
    assert eval_html(checkpoint, "--html", str(page), "--output", str(page.parent / "f.json")) == 2
    assert "--overwrite" in capsys.readouterr().err and page.read_bytes() == before
    assert eval_html(checkpoint, "--html", str(page), "--overwrite", "--seed", "1") == 0  # ours: replaced
    assert page.read_bytes() != before


def test_save_lens_page_escapes_completions(tmp_path):
    from textenv.agents.lens import EpisodeLens
    from textenv.apps.evaluation import lens_page_writer, save_lens_page

    episode = EpisodeLens(index=0, prompt="p", completion=" <script>x</script>", tokens=[" <script>", "x", "</script>"],
                          logprobs=[-1.0, -1.0, -1.0], kl=[0.1, 0.2, 0.3], ref_logprobs=[-1.1, -1.2, -1.3],
                          summary={"gold": 1.0})
    result = {"gold_reward": 1.0, "gold_reward_std": 0.0, "kl": 0.6, "kl_std": 0.0, "perplexity": 3.0,
              "distinct_1": 1.0, "distinct_2": 1.0, "length": 3.0, "num_samples": 1, "settings": {},
              "lens": [episode.to_dict()]}
    page = save_lens_page(tmp_path / "p.html", result)
    text = page.read_text(encoding="utf-8")
    assert "<script>" not in text and "</script>" not in text and "&lt;/script&gt;" in text
    assert lens_page_writer(page) == "textenv eval" and lens_page_writer(tmp_path / "missing.html") is None
    (tmp_path / "mine.html").write_text("<html>my page</html>")
    assert lens_page_writer(tmp_path / "mine.html") is None


@pytest.mark.bad_input
@pytest.mark.parametrize(("argv", "files", "message"), [
    (["--html", "{tmp}/mine.html", "--overwrite"], {"mine.html": "<html>mine</html>"},
     r"--html .*mine\.html exists and was not written by textenv"),
    (["--html", "{tmp}/ours.html"], {"ours.html": '<meta name="generator" content="textenv lens">'},
     r"--html .*ours\.html holds results of `textenv eval`; pass --overwrite"),
    (["--html", "{tmp}/pages"], {"pages/a.html": "x"}, r"--html .*pages is a directory; .*eval\.html"),
    (["--html", "{tmp}/e.json"], {}, r"--html .*e\.json is also the results file"),
    (["--html-episodes", "3"], {}, r"--html-episodes .*add --html FILE"),
])
def test_bad_html_arguments_are_refused_before_evaluating(checkpoint, capsys, monkeypatch, argv, files, message):
    import textenv.apps.evaluation

    monkeypatch.setattr(textenv.apps.evaluation, "evaluate_policy", lambda *a, **k: pytest.fail("evaluated"))
    tmp = checkpoint.parent
    for name, content in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(content)
    capsys.readouterr()
    assert eval_html(checkpoint, *(a.replace("{tmp}", str(tmp)) for a in argv)) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    for name, content in files.items():
        assert (tmp / name).read_text() == content  # untouched


@pytest.mark.bad_input
@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_html_episodes_must_be_a_positive_count(checkpoint, capsys, value):
    assert eval_html(checkpoint, "--html", str(checkpoint.parent / "p.html"), "--html-episodes", value) == 2
    assert "--html-episodes" in capsys.readouterr().err and not (checkpoint.parent / "p.html").exists()


@pytest.mark.bad_input
def test_lens_episodes_must_be_a_count(tiny_model_dir, tiny_prompts):
    with pytest.raises(InputError, match="lens_episodes"):
        evaluate_policy(str(tiny_model_dir), prompts=tiny_prompts, lens_episodes=-1)
