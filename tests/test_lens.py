"""The per-token lens (agents/lens.py): the TensorBoard tags the native agents write every ``lens_every``
iterations, what the tables hold (log π − log π_ref = KL_t under k1), that the lens changes no training result,
the Markdown / HTML escaping of model text, and the checks of ``lens_every``."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from textenv.agents import make_agent
from textenv.agents.lens import (
    EpisodeLens,
    colour_scale,
    html_page,
    kl_colour,
    markdown_episode,
    markdown_text,
    shown_rows,
)
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["the film was", "the book", "i liked the pasta at the", "this blender"]
HISTOGRAMS = {"lens/returns", "lens/rm_scores", "lens/lengths", "lens/token_kl", "lens/advantage"}
#: agent -> (group size, its lens extras beyond ``advantage``)
AGENTS = {"reinforce": (1, set()), "remax": (1, {"lens/greedy_return"}), "ppo": (1, {"lens/value"}),
          "rloo": (4, set()), "grpo": (4, set())}


def letter_e(prompts, completions):
    return [c.count("e") / 4 for c in completions]


def make_env(model_dir, group_size: int = 1, **kwargs) -> TextGenVectorEnv:
    options = {"num_envs": 8, "model": str(model_dir), "prompts": PROMPTS, "max_new_tokens": 5, "kl_coef": 0.1,
               "reward_model": letter_e, "group_size": group_size, "autoreset_mode": "disabled", "device": "cpu"}
    return TextGenVectorEnv(**{**options, **kwargs})


def read_events(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"tensors": 0, "histograms": 0})
    events.Reload()
    return events


def run_iterations(agent, n: int) -> None:
    """``n`` iterations through ``learn`` (its logging path), whatever each costs in tokens."""
    for _ in range(n):
        agent.learn(total_timesteps=agent.num_timesteps + 1, progress_bar=False)
    assert agent.iterations == n


def lens_text(events, index: int = 0) -> str:
    return events.Tensors("lens/episodes/text_summary")[index].tensor_proto.string_val[0].decode("utf-8")


def table_rows(markdown: str) -> list[list[str]]:
    """The data rows of the first Markdown table in ``markdown`` (cells split on unescaped |)."""
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| t ")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in rows]


# ---------------------------------------------------------------------- the tags, per agent
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_native_agents_write_the_lens_tags(tiny_model_dir, tmp_path, name):
    group_size, extras = AGENTS[name]
    agent = make_agent(name, make_env(tiny_model_dir, group_size), tensorboard_log=str(tmp_path), lens_every=2)
    run_iterations(agent, 3)  # the lens at iterations 0 and 2
    events = read_events(tmp_path)
    assert HISTOGRAMS | extras <= set(events.Tags()["histograms"])
    assert "lens/episodes/text_summary" in events.Tags()["tensors"]
    steps = [event.step for event in events.Tensors("lens/episodes/text_summary")]
    scalar_steps = [event.step for event in events.Scalars("rollout/reward")]
    assert len(steps) == 2 and steps == [scalar_steps[0], scalar_steps[2]]  # with that iteration's scalars
    returns = events.Histograms("lens/returns")[0].histogram_value
    assert returns.num == 8  # every episode of the batch
    text = lens_text(events)
    assert text.count("**episode ") == 3  # EPISODES_SHOWN
    assert "| t | token | log π | log π\\_ref | KL\\_t |" in text
    assert "advantage" in text


def test_ppo_tables_show_per_token_advantages_values_and_consistent_logprobs(tiny_model_dir, tmp_path):
    env = make_env(tiny_model_dir, kl_estimator="k1")
    agent = make_agent("ppo", env, tensorboard_log=str(tmp_path), lens_every=2, learning_rate=3e-2)
    run_iterations(agent, 3)
    text = lens_text(read_events(tmp_path), 1)  # iteration 2: the policy has moved away from the reference
    assert "| t | token | log π | log π\\_ref | KL\\_t | advantage | value |" in text
    rows = table_rows(text)
    assert len(rows) >= 3 and all(len(row) == 7 for row in rows)
    logprob, ref_logprob, kl = (np.array([float(row[i]) for row in rows]) for i in (2, 3, 4))
    assert np.abs(kl).max() > 0.01
    # the reference's forward over the shown episodes reproduces what the env charged: KL_t = log π − log π_ref
    np.testing.assert_allclose(logprob - ref_logprob, kl, atol=2e-3)
    assert (logprob <= 0).all() and (ref_logprob <= 0).all()
    assert len({row[6] for row in rows}) > 1  # V(s_t) per token


def test_lens_is_off_with_zero_and_without_tensorboard(tiny_model_dir, tmp_path, monkeypatch):
    from textenv.agents import lens

    def fail(*args, **kwargs):
        raise AssertionError("the lens ran while off")

    monkeypatch.setattr(lens, "write_lens", fail)
    monkeypatch.setattr(lens, "reference_logprobs", fail)
    agent = make_agent("ppo", make_env(tiny_model_dir), tensorboard_log=str(tmp_path), lens_every=0)
    agent.learn(total_timesteps=2 * 8 * 5, progress_bar=False)
    assert not any(tag.startswith("lens/") for kind in read_events(tmp_path).Tags().values()
                   if isinstance(kind, list) for tag in kind)
    agent = make_agent("ppo", make_env(tiny_model_dir), lens_every=1)  # no tensorboard_log: nothing kept
    agent.learn(total_timesteps=8 * 5, progress_bar=False)
    assert "_lens_pending" not in agent.__dict__


# ---------------------------------------------------------------------- no effect on training
def train_state(model_dir, tmp_path, name: str, lens_every: int, **env_kwargs) -> tuple[dict, dict]:
    group_size = AGENTS[name][0]
    agent = make_agent(name, make_env(model_dir, group_size, **env_kwargs), learning_rate=1e-2,
                       tensorboard_log=str(tmp_path / f"{name}-{lens_every}"), lens_every=lens_every)
    run_iterations(agent, 3)
    weights = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    weights.update({f"module.{n}.{k}": v.clone() for n, m in agent.trainable_modules().items()
                    for k, v in m.state_dict().items()})
    metrics = {k: v for k, v in agent.last_metrics.items() if not k.startswith("time/")}
    return weights, {**metrics, "generator": agent.generator.get_state(), "torch": torch.get_rng_state()}


@pytest.mark.parametrize(("name", "env_kwargs"), [("ppo", {"kl_estimator": "k3"}), ("remax", {}), ("grpo", {})])
def test_seeded_runs_are_bit_identical_with_the_lens_on_or_off(tiny_model_dir, tmp_path, name, env_kwargs):
    on_weights, on_state = train_state(tiny_model_dir, tmp_path, name, 1, **env_kwargs)
    off_weights, off_state = train_state(tiny_model_dir, tmp_path, name, 0, **env_kwargs)
    assert on_weights.keys() == off_weights.keys()
    for key in on_weights:
        assert torch.equal(on_weights[key], off_weights[key]), key
    for key in on_state:
        if isinstance(on_state[key], torch.Tensor):
            assert torch.equal(on_state[key], off_state[key]), key
        else:
            assert on_state[key] == off_state[key] or (math.isnan(on_state[key]) and math.isnan(off_state[key])), key


# ---------------------------------------------------------------------- the pure parts
def test_shown_rows_are_spread_over_the_batch_without_randomness():
    assert shown_rows(16) == [0, 7, 15]
    assert shown_rows(8, 3) == [0, 3, 7]
    assert shown_rows(2) == [0, 1] and shown_rows(1) == [0] and shown_rows(0) == []


def hostile_episode() -> EpisodeLens:
    return EpisodeLens(index=2, prompt="say <b>|hi|</b>", completion=" <script>alert(1)</script>\n*x*",
                       tokens=[" <script>", "alert(1)", "</script>", "\n", "*x*|"],
                       logprobs=[-1.0, -2.0, -0.5, -0.1, -3.0], kl=[0.5, -0.25, 0.0, 2.0, 0.1],
                       ref_logprobs=[-1.5, -1.75, -0.5, -2.1, -3.1], columns={"value": [0.1, 0.2, 0.3, 0.4, 0.5]},
                       summary={"score": 0.5, "kl": 2.35, "advantage": -1.0})


def test_markdown_escapes_html_and_table_syntax_and_shows_token_boundaries():
    text = markdown_episode(hostile_episode())
    assert "<script>" not in text and "<b>" not in text
    assert "&lt;script&gt;" in text
    rows = table_rows(text)
    assert [row[1] for row in rows] == ["␣&lt;script&gt;", "alert\\(1\\)", "&lt;/script&gt;", "↵", "\\*x\\*\\|"]
    assert [len(row) for row in rows] == [6] * 5  # t, token, log π, log π_ref, KL_t, value: the | stayed in its cell
    assert rows[0][2:] == ["-1.000", "-1.500", "0.500", "0.100"]
    assert "advantage \\-1" in text
    assert markdown_text("a_b") == "a\\_b"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TensorBoard's vendored bleach
def test_tensorboard_renders_the_table_as_a_table_with_the_model_text_inert():
    from tensorboard.plugin_util import markdown_to_safe_html

    rendered = markdown_to_safe_html(markdown_episode(hostile_episode()))
    assert rendered.count("<tr>") == 6 and rendered.count("<td>") == 5 * 6  # header + 5 tokens, 6 columns
    assert "<td>␣&lt;script&gt;</td>" in rendered and "<td>*x*|</td>" in rendered
    assert "<script" not in rendered and "<b>" not in rendered


def test_episode_without_reference_shows_a_dash_and_survives_json():
    episode = EpisodeLens(**{**hostile_episode().to_dict(), "ref_logprobs": None})
    assert table_rows(markdown_episode(episode))[0][3] == "–"
    assert EpisodeLens(**episode.to_dict()) == episode


def test_html_page_escapes_model_text_and_colours_by_kl():
    page = html_page([hostile_episode()], {"mean gold reward": 0.5, "policy": "<run>"}, "eval <x>")
    assert "<script>" not in page and "</script>" not in page and "<run>" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "&lt;run&gt;" in page
    assert page.count('class="tok"') == 5
    assert 'content="textenv lens"' in page
    assert re.search(r'title="[^"]*KL_t = 2\.000', page)  # hover gives the numbers
    assert "rgba(220,40,40,0.750)" in page  # the largest KL_t gets the full red
    assert "rgba(40,90,220," in page  # a negative k1 KL_t is blue


def test_colour_scale_and_colours():
    assert colour_scale([hostile_episode()]) == pytest.approx(np.percentile([0.5, 0.25, 0.0, 2.0, 0.1], 98))
    assert kl_colour(0.0, 1.0).endswith("0.000)")
    assert kl_colour(5.0, 1.0) == "rgba(220,40,40,0.750)"
    assert kl_colour(float("nan"), 1.0).endswith("0.000)")


# ---------------------------------------------------------------------- bad input
@pytest.mark.bad_input
@pytest.mark.parametrize("value", [-1, 1.5, "10", True, None])
def test_bad_lens_every_is_refused_naming_it(tiny_model_dir, value):
    with pytest.raises(InputError, match=r"\blens_every\b"):
        make_agent("reinforce", make_env(tiny_model_dir), lens_every=value)
