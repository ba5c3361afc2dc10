"""The numbered lessons of examples/ run in their --quick mode and show what each one teaches; the tutorial
notebook executes top to bottom in a fresh kernel (the venv's Python, whatever kernels the user has installed)."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import math
import re
import tokenize
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LESSONS = sorted(path.stem for path in EXAMPLES.glob("0*.py"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_lesson(name: str):
    """Import ``examples/<name>.py`` (lesson files start with a digit, so not with ``import``)."""
    spec = importlib.util.spec_from_file_location(f"lesson_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quick(name: str, output: Path, capsys) -> str:
    """``main(["--quick", "--output", output])`` of a lesson; asserts exit code 0, returns what it printed."""
    assert load_lesson(name).main(["--quick", "--output", str(output)]) == 0
    return capsys.readouterr().out


def code_lines(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    source = path.read_text()
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            docstrings.update(range(first.lineno, first.end_lineno + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
            tokenize.ENDMARKER}
    lines = set()
    for token in tokenize.tokenize(io.BytesIO(source.encode()).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


def test_the_course_is_numbered_01_to_07_and_every_lesson_takes_quick_and_output():
    assert [name[:2] for name in LESSONS] == ["01", "02", "03", "04", "05", "06", "07"]
    for name in LESSONS:
        source = (EXAMPLES / f"{name}.py").read_text()
        assert "--quick" in source and "--output" in source and "def main(argv" in source, name
        assert ast.get_docstring(ast.parse(source)), f"{name} starts with a docstring for the learner"
    readme = (EXAMPLES / "README.md").read_text()
    assert all(f"{name}.py" in readme for name in LESSONS) and "tutorial.ipynb" in readme


def test_code_line_counter_counts_code_only(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Doc\nstring."""\n\n# comment\nx = 1  # trailing\n\n\ndef f():\n    """Doc."""\n'
                      '    return (x,\n            2)\n')
    assert code_lines(sample) == 4  # x = 1, def f, and the two lines of the return


# ---------------------------------------------------------------------------------------------- 01
def test_01_walks_one_episode_and_compares_random_with_model_sampling(tmp_path, capsys):
    out = run_quick("01_mdp_by_hand", tmp_path, capsys)
    assert "left-padded" in out and "Discrete(" in out and "t= 0 top-3" in out
    match = re.search(r"R = ([-+.\d]+) − ([.\d]+)·([.\d]+) = ([-+.\d]+)", out)  # the reward, taken apart
    assert match and math.isclose(float(match[1]) - float(match[2]) * float(match[3]), float(match[4]), abs_tol=2e-3)
    episodes = json.loads((tmp_path / "episodes.json").read_text())
    assert set(episodes) == {"random", "model"} and all(len(runs) == 4 for runs in episodes.values())
    for records in episodes.values():
        for r in records:  # the last step pays R = r_φ − β·KL with β = 0.05
            assert math.isclose(r["return"], r["rm_score"] - 0.05 * r["kl"], abs_tol=1e-6)
            assert abs(r["kl"]) < 1e-3  # nothing trained: π_θ is still π_ref, whichever actor chose the tokens
    # uniformly random tokens are far less likely under the model than its own samples
    mean = {name: sum(r["logprob"] for r in records) / len(records) for name, records in episodes.items()}
    assert mean["random"] < mean["model"] - 50


# ---------------------------------------------------------------------------------------------- 02
def test_02_is_at_most_60_lines_of_code_and_uses_no_textenv_agent():
    path = EXAMPLES / "02_reinforce_from_scratch.py"
    assert code_lines(path) <= 60
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert not any(name.startswith(("textenv.agents", "textenv.rollout", "textenv.scoring")) for name in imported)
    assert "gym.make(" in path.read_text() and "next_token_logits()" in path.read_text()


def test_02_scores_the_sampled_completion_exactly_as_the_env_does(tiny_model_dir):
    """The hand-written Σ_t log π_θ(a_t|s_t) (positions of the left-padded observation from textenv.logprobs) equals
    the env's per-step log-probs; the same forward without those positions does not."""
    import gymnasium as gym

    lesson = load_lesson("02_reinforce_from_scratch")
    env = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=["the film was", "the book"], max_new_tokens=6,
                   max_prompt_tokens=12)
    generator = torch.Generator().manual_seed(0)
    for prompt in ("the film was", "the book"):
        obs, _ = env.reset(options={"prompt": prompt})
        done, env_logprob = False, 0.0
        while not done:
            probs = torch.softmax(env.unwrapped.next_token_logits(), -1)
            action = int(torch.multinomial(probs, 1, generator=generator))
            obs, _, terminated, truncated, info = env.step(action)
            env_logprob += float(info["logprob"])
            done = terminated or truncated
        policy, n = env.unwrapped.policy, int(info["num_tokens"])
        with torch.no_grad():
            assert lesson.completion_logprob(policy, obs, n).item() == pytest.approx(env_logprob, abs=1e-3)
            ids, mask = torch.as_tensor(obs["input_ids"])[None], torch.as_tensor(obs["attention_mask"])[None]
            logits = policy(input_ids=ids, attention_mask=mask).logits[0, -n - 1 : -1]  # default positions
            naive = torch.log_softmax(logits, -1).gather(1, ids[0, -n:, None]).sum().item()
        assert abs(naive - env_logprob) > 1e-2  # left padding shifts the positions: why the lesson passes them


def test_02_trains_the_env_policy_in_place_and_prints_before_and_after(tmp_path, capsys):
    out = run_quick("02_reinforce_from_scratch", tmp_path, capsys)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert f"before {summary['before']:+.3f} → after {summary['after']:+.3f}" in out
    assert -1 <= summary["before"] <= 1 and -1 <= summary["after"] <= 1
    kls = [record["kl"] for record in summary["history"]]
    assert len(kls) == 3 and abs(kls[0]) < 1e-4  # first batch: π_θ = π_ref
    assert any(abs(kl) > 1e-3 for kl in kls[1:])  # after an update the env's KL sees the new weights


# ---------------------------------------------------------------------------------------------- 03
def test_03_stable_baselines3_ppo_trains_and_reports_held_out_sentiment(tmp_path, capsys):
    out = run_quick("03_stable_baselines3", tmp_path, capsys)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert f"before {summary['before']['sentiment']:+.3f} → after {summary['after']['sentiment']:+.3f}" in out
    assert summary["timesteps"] >= 64 and summary["before"]["kl"] == pytest.approx(0, abs=1e-3)
    assert summary["after"]["kl"] != pytest.approx(0, abs=1e-3)  # SB3 updated the env's own policy
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert "PPO.predict:" in out


# ---------------------------------------------------------------------------------------------- 04
def test_04_reward_function_scores_enthusiastic_words():
    lesson = load_lesson("04_reward_and_kl")
    assert lesson.enthusiasm(["p", "p", "p"], [" great great!", " it was fine", ""]) == [1.0, 0.0, 0.0]


@pytest.mark.slow
def test_04_beta_zero_drifts_further_from_the_reference_than_beta_positive(tmp_path, capsys):
    out = run_quick("04_reward_and_kl", tmp_path, capsys)
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    zero, penalised = comparison["runs"]
    assert zero["beta"] == 0 and penalised["beta"] > 0 and abs(comparison["start"]["kl"]) < 1e-3
    assert zero["kl"] > penalised["kl"]
    for run in (zero, penalised):
        assert 0 <= run["reward"] <= 1 and 0 < run["distinct_2"] <= 1 and math.isfinite(run["kl"])
    assert "β = 0" in out and "KL to π_ref" in out and "distinct-2" in out and "samples at β = 0:" in out


# ---------------------------------------------------------------------------------------------- 05
def test_05_loads_your_own_directories_and_refuses_pickle_only_weights(tmp_path, capsys):
    out = run_quick("05_your_own_model", tmp_path, capsys)
    for directory in ("my-model", "my-llama", "checkpoint/policy"):
        assert (tmp_path / directory / "model.safetensors").is_file(), directory
    assert not [p for p in (tmp_path / "checkpoint").rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]
    assert "LlamaForCausalLM" in out and "GPT2LMHeadModel" in out
    assert "InputError: model" in out and "no safetensors weights" in out


# ---------------------------------------------------------------------------------------------- 06
@pytest.mark.slow
def test_06_pipeline_writes_preferences_a_reward_model_and_gold_vs_proxy(tmp_path, capsys):
    from textenv.preferences import load_preferences
    from textenv.reward_models.preference import PreferenceRewardModel

    out = run_quick("06_instructgpt_pipeline", tmp_path, capsys)
    rows = load_preferences(tmp_path / "preferences.jsonl")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(rows) == summary["rankings"] >= 2
    reward_model = PreferenceRewardModel.load(tmp_path / "reward_model", device="cpu")
    assert len(reward_model.score(["The film"], [" was great."])) == 1
    for stage in ("before", "after"):
        assert {"gold_reward", "proxy_reward", "kl"} <= set(summary[stage])
    assert summary["ppo_tokens"] >= 512 and "gold (VADER)" in out and "proxy (r_φ)" in out


# ---------------------------------------------------------------------------------------------- 07
@pytest.mark.slow
def test_07_one_table_row_per_agent(tmp_path, capsys):
    out = run_quick("07_swap_algorithms", tmp_path, capsys)
    table = (tmp_path / "table.md").read_text()
    assert table.strip() in out.strip()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["reinforce", "ppo", "rloo", "grpo"]


def test_07_unknown_agent_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        load_lesson("07_swap_algorithms").main(["--quick", "--agents", "ppo", "nope", "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------- the notebook
def test_tutorial_is_stored_without_outputs():
    import nbformat

    notebook = nbformat.read(EXAMPLES / "tutorial.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_tutorial_notebook_executes(tmp_path, monkeypatch):
    """Run every cell in a kernel of THIS Python (a kernelspec written to a temporary JUPYTER_PATH, found before
    any kernel the user installed), in quick mode, with the plots written to a temporary directory."""
    import nbformat
    from ipykernel.kernelspec import install
    from nbclient import NotebookClient

    install(kernel_name="textenv-tutorial-test", prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    monkeypatch.setenv("TEXTENV_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("TEXTENV_TUTORIAL_OUTPUT", str(tmp_path / "out"))
    notebook = nbformat.read(EXAMPLES / "tutorial.ipynb", as_version=4)
    client = NotebookClient(notebook, kernel_name="textenv-tutorial-test", timeout=300,
                            resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    assert "held-out sentiment" in printed  # the REINFORCE section reported its numbers
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["kl_penalty.png", "reinforce_curves.png"]
