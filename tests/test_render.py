"""The render shows the MDP: the formatting of one row from plain values, and what the env's render reads.

The numbers on screen are checked against independent computations: π_θ's and π_ref's probabilities from the
env's logits, log π_θ of the last action from ``info["logprob"]``, log π_ref from a plain forward of the reference,
Σ KL from ``token_kl()``, and the return from the last step's ``info``.
"""

from __future__ import annotations

import io
import re

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
import textenv.vector_env as vector_env_module
from textenv.render import Candidate, Outcome, RowState, format_row, format_rows, print_rows, visible
from textenv.vector_env import RenderModeError, TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def length_reward(prompts, completions):
    return [len(c) / 10.0 for c in completions]


def make_env(tiny_model_dir, tiny_prompts, **kwargs) -> TextGenVectorEnv:
    settings = {"num_envs": 2, "model": str(tiny_model_dir), "prompts": tiny_prompts, "reward_model": length_reward,
                "max_new_tokens": 4, "autoreset_mode": "disabled", "kl_coef": 0.1, "device": "cpu",
                "render_mode": "ansi", "render_top_k": 3}
    return TextGenVectorEnv(**{**settings, **kwargs})


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Move the policy away from the reference, so that π_θ ≠ π_ref and the KL is not 0."""
    generator = torch.Generator().manual_seed(0)
    for parameter in model.parameters():
        parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def blocks(screen: str) -> list[str]:
    """The screen split into one block of lines per row (each block starts with ``[row]``)."""
    return re.split(r"\n(?=\[\d+\] )", screen.rstrip("\n"))


def number(block: str, label: str) -> float:
    return float(re.search(re.escape(label) + r" = (-?[0-9.]+)", block).group(1))


# ---------------------------------------------------------------------------------------------- pure formatting
STATE = RowState(
    row=1, prompt="the film was", tokens=[" really", " good", "\n", "ly"], max_new_tokens=8,
    last_logprob=-1.25, last_ref_logprob=-1.5, sum_kl=0.375,
    candidates=[Candidate(" The", 0.5, 0.25), Candidate("\t!", 0.125, 0.0625)],
)


def test_format_row_shows_tokens_action_kl_and_candidates():
    text = format_row(STATE)
    lines = text.splitlines()
    assert lines[0] == '[1] t=4/8  prompt: "the film was"'
    assert lines[1] == "    tokens: ␣really·␣good·↵·ly"  # boundaries and whitespace visible
    assert lines[2] == '    a_t = "ly"  log π_θ = -1.250  log π_ref = -1.500  Σ KL = 0.3750 nats'
    assert re.fullmatch(r" +next \(top-2\) +π_θ +π_ref", lines[3])
    assert re.fullmatch(r" +1 ␣The +0\.5000 +0\.2500", lines[4])
    assert re.fullmatch(r" +2 ⇥! +0\.1250 +0\.0625", lines[5])
    assert len(lines) == 6


def test_format_row_without_reference_and_before_any_token():
    state = RowState(row=0, prompt="x", candidates=[Candidate("a", 1.0)])
    text = format_row(state)
    assert "tokens: (none yet)" in text and "a_t" not in text and "π_ref" not in text and "KL" not in text


def test_last_step_shows_the_return():
    outcome = Outcome(text=" really good", rm_score=1.0, episode_kl=2.0, kl_coef=0.1, terminated=False)
    state = RowState(row=0, prompt="p", tokens=[" really", " good"], max_new_tokens=2, last_logprob=-1.0,
                     sum_kl=2.0, finished=True, outcome=outcome, candidates=STATE.candidates)
    text = format_row(state)
    assert "[done] length limit" in text and 'text: " really good"' in text
    assert "r_φ = 1.0000  Σ KL = 2.0000 nats  β = 0.1  R = r − β·KL = 0.8000" in text
    assert "next (top" not in text  # a finished row has no next token
    assert outcome.episode_return == pytest.approx(0.8)


def test_long_rows_are_shortened_keeping_the_ends():
    state = RowState(row=0, prompt="a very long prompt " * 20 + "THE END", tokens=[f" t{i}" for i in range(100)],
                     candidates=[Candidate("x" * 200, 0.5)])
    lines = format_row(state, width=60).splitlines()
    assert all(len(line) <= 60 for line in lines), [len(line) for line in lines]
    assert lines[0].endswith('THE END"') and '"…' in lines[0]
    assert lines[1].startswith("    tokens: …·") and lines[1].endswith("·␣t98·␣t99")
    assert "…" in lines[-1]  # the 200-character candidate is cut in the middle
    assert visible("x" * 200, 10) == "xxxx…xxxxx"
    assert visible("\x00") == "\\x00" and visible("") == "∅"


def test_print_rows_colours_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, pipe = Terminal(), io.StringIO()
    print_rows([STATE], file=terminal)
    print_rows([STATE], file=pipe)
    assert "\x1b[" in terminal.getvalue() and "␣really" in terminal.getvalue()
    assert pipe.getvalue() == format_rows([STATE]) + "\n"


# ---------------------------------------------------------------------------------------------- from the env
def test_mid_episode_render_reads_the_env(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts)
    perturb(env.policy)
    env.reset(seed=0, options={"prompts": ["the film was", "i liked the pasta at the"]})
    assert "tokens: (none yet)" in env.render()
    for action in (5, 17):
        _, _, _, _, info = env.step(np.array([action, action]))
    screen = env.render()
    probs = env.next_token_logits().softmax(-1)
    ref_probs = env.reference_next_token_logits().softmax(-1)
    ids, mask = env.episode_tokens()
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():  # log π_ref of the last action from a plain forward of the reference
        ref_last = env.reference(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                                 position_ids=positions[:, :-1]).logits[:, -1].log_softmax(-1)[:, 17]
    for row, block in enumerate(blocks(screen)):
        top = probs[row].topk(3)
        token = env.tokenizer.decode([17])
        assert f"tokens: {visible(env.tokenizer.decode([5]))}·{visible(token)}" in block
        assert number(block, "log π_θ") == pytest.approx(info["logprob"][row], abs=1e-3)
        assert number(block, "log π_ref") == pytest.approx(float(ref_last[row]), abs=1e-3)
        assert number(block, "Σ KL") == pytest.approx(float(env.token_kl()[row].sum()), abs=1e-4)
        table = re.findall(r"^ +\d+ (.+?) +([0-9.]+) +([0-9.]+)$", block, flags=re.MULTILINE)
        assert [float(p) for _, p, _ in table] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert [float(q) for _, _, q in table] == pytest.approx(ref_probs[row, top.indices].tolist(), abs=1e-4)
        assert [t.strip() for t, _, _ in table] == [visible(env.tokenizer.decode([i])) for i in top.indices]


def test_final_step_render_shows_reward_kl_beta_and_return(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts, autoreset_mode="next_step")
    perturb(env.policy)
    env.reset(seed=1)
    for _ in range(4):
        _, rewards, _, truncated, info = env.step(np.array([7, 7]))
    assert truncated.all()
    for row, block in enumerate(blocks(env.render())):
        assert "[done] length limit" in block and f'text: "{info["text"][row]}"' in block
        assert number(block, "r_φ") == pytest.approx(info["rm_score"][row], abs=1e-4)
        assert number(block, "β") == pytest.approx(info["kl_coef"][row])
        assert number(block, "R = r − β·KL") == pytest.approx(rewards[row], abs=1e-4)
        assert re.search(r"Σ KL = (-?[0-9.]+) nats  β", block).group(1) == f"{info['episode_kl'][row]:.4f}"
    env.step(np.array([7, 7]))  # next-step autoreset: both rows restart and forget the old episode's end
    assert "[done]" not in env.render() and "r_φ" not in env.render()


def test_no_reference_no_ref_column(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts, kl_coef=0.0)
    env.reset(seed=0)
    env.step(np.array([3, 3]))
    screen = env.render()
    assert "log π_θ" in screen and "π_ref" not in screen and "Σ KL" not in screen


def test_render_mode_none_computes_nothing(tiny_model_dir, tiny_prompts, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the render ran")

    monkeypatch.setattr(vector_env_module, "row_states", refuse)
    monkeypatch.setattr(TextGenVectorEnv, "reference_next_token_logits", refuse)
    env = make_env(tiny_model_dir, tiny_prompts, render_mode=None, autoreset_mode="next_step")
    env.reset(seed=0)
    for _ in range(6):
        env.step(np.array([3, 3]))
    assert env.render() is None
    assert env._render_outcomes == [None, None]  # no bookkeeping either


def test_human_mode_prints_at_reset_and_step(tiny_model_dir, tiny_prompts, capsys):
    env = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=["the film was"], reward_model=length_reward,
                   max_new_tokens=2, render_mode="human", render_top_k=2)
    assert env.metadata["render_modes"] == ["ansi", "human"]
    env.reset(seed=0)
    assert '[0] t=0/2  prompt: "the film was"' in capsys.readouterr().out
    env.step(3)
    assert "[0] t=1/2" in capsys.readouterr().out
    env.step(3)
    printed = capsys.readouterr().out
    assert "[done] length limit" in printed and "R = r − β·KL" in printed
    assert env.render() is None  # Gymnasium convention: "human" returns None
    assert "[done]" in capsys.readouterr().out


def test_render_mode_errors_stay_type_errors(tiny_model_dir, tiny_prompts):
    with pytest.raises(RenderModeError, match="'ansi'.*'human'") as error:
        make_env(tiny_model_dir, tiny_prompts, render_mode="rgb_array")
    assert isinstance(error.value, TypeError)  # SB3's make_vec_env retries without render_mode on a TypeError


@pytest.mark.parametrize(("kl_penalty", "autoreset_mode"),
                         [("terminal", "disabled"), ("dense", "disabled"), ("terminal", "next_step")])
def test_rendering_every_step_changes_no_number(tiny_model_dir, tiny_prompts, kl_penalty, autoreset_mode):
    """The render asks the lazy reference for its logits each step; rewards, KL and log-probs stay the same (also
    across the in-place restarts of next-step autoreset)."""
    results = []
    for render_mode in (None, "ansi"):
        env = make_env(tiny_model_dir, tiny_prompts, render_mode=render_mode, kl_penalty=kl_penalty, num_envs=3,
                       max_new_tokens=5, autoreset_mode=autoreset_mode)
        perturb(env.policy)
        env.reset(seed=3)
        generator = torch.Generator().manual_seed(0)
        steps = []
        for _ in range(5 if autoreset_mode == "disabled" else 14):
            env.render()
            actions = torch.multinomial(env.next_token_logits().softmax(-1), 1, generator=generator).squeeze(1)
            _, rewards, _, _, info = env.step(actions.numpy())
            steps.append((rewards, info["logprob"], info.get("episode_kl")))
        results.append(steps)
    for (rewards, logprob, kl), (rewards_r, logprob_r, kl_r) in zip(*results, strict=True):
        np.testing.assert_allclose(rewards_r, rewards, atol=1e-5)
        np.testing.assert_allclose(logprob_r, logprob, atol=1e-6)
        if kl is not None:
            np.testing.assert_allclose(kl_r, kl, atol=1e-5)
