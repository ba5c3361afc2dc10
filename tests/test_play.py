"""`textenv play`: the game core (PlaySession) on the tiny model, and the terminal front end driven by piped commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.apps.play import PlaySession
from textenv.preferences import PreferencePair, parse_preference
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["the film was", "the book"]


def letter_count(prompts: list[str], completions: list[str]) -> list[float]:
    """A cheap reward: the completion's length in characters / 10."""
    return [len(text) / 10 for text in completions]


def play_env(model_dir: Path, **kwargs) -> TextGenVectorEnv:
    options = dict(num_envs=1, model=str(model_dir), prompts=PROMPTS, max_new_tokens=5, kl_coef=0.1,
                   reward_model=letter_count, autoreset_mode="disabled", device="cpu")
    return TextGenVectorEnv(**{**options, **kwargs})


def assert_same_state(state, expected, where: str = "state") -> None:
    """The same state: equal ids, texts and flags, numbers within float32 rounding (a replay feeds the lazy
    reference several tokens in one forward where play fed it one at a time)."""
    if isinstance(expected, float):
        assert math.isclose(state, expected, rel_tol=1e-5, abs_tol=1e-6), (where, state, expected)
    elif isinstance(expected, dict):
        assert isinstance(state, dict) and state.keys() == expected.keys(), where
        for key in expected:
            assert_same_state(state[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert isinstance(state, list) and len(state) == len(expected), where
        for index, (got, want) in enumerate(zip(state, expected)):
            assert_same_state(got, want, f"{where}[{index}]")
    else:
        assert state == expected, (where, state, expected)


@pytest.fixture(scope="module")
def env(tiny_model_dir: Path) -> TextGenVectorEnv:
    return play_env(tiny_model_dir)


def test_state_shows_the_policy_top_k_with_both_probabilities(env) -> None:
    session = PlaySession(env, prompt="the film was", top_k=4)
    state = session.state()
    assert json.loads(json.dumps(state)) == state  # JSON-serialisable as it is
    assert (state["prompt"], state["tokens"], state["step"], state["done"], state["kl"]) == ("the film was", [], 0,
                                                                                             False, 0.0)
    probs = torch.softmax(env.next_token_logits()[0], dim=-1)
    ref_probs = torch.softmax(env.reference_next_token_logits()[0], dim=-1)
    expected = torch.topk(probs, 4).indices.tolist()
    assert [c["id"] for c in state["candidates"]] == expected
    assert [c["rank"] for c in state["candidates"]] == [1, 2, 3, 4]
    for candidate in state["candidates"]:
        assert candidate["prob"] == pytest.approx(float(probs[candidate["id"]]), rel=1e-5)
        assert candidate["ref_prob"] == pytest.approx(float(ref_probs[candidate["id"]]), rel=1e-5)
        assert candidate["text"] == env.tokenizer.decode([candidate["id"]])
    assert state["kl_coef"] == pytest.approx(0.1) and state["has_reference"] and state["max_new_tokens"] == 5


def test_each_move_is_one_env_step_and_the_kl_is_the_players(env) -> None:
    session = PlaySession(env, prompt="the book", top_k=3)
    second = session.state()["candidates"][1]
    state = session.choose_rank(2)
    token = state["tokens"][0]
    assert (token["id"], token["source"], state["step"]) == (second["id"], "chosen", 1)
    # chosen with probability 1 by the player: KL_t = −log π_ref(a_t|s_t)
    assert token["kl"] == pytest.approx(-math.log(second["ref_prob"]), rel=1e-5)
    assert token["logprob"] == pytest.approx(math.log(second["prob"]), rel=1e-5)

    state = session.sample()
    sampled = state["tokens"][1]
    assert sampled["source"] == "sampled" and state["step"] == 2
    assert sampled["kl"] == pytest.approx(sampled["logprob"] - sampled["ref_logprob"], abs=1e-5)  # drawn from π_θ

    ids = session.encode(" good")
    state = session.type_text(" good")
    assert [t["id"] for t in state["tokens"][2:]] == ids and {t["source"] for t in state["tokens"][2:]} == {"typed"}
    assert state["kl"] == pytest.approx(sum(t["kl"] for t in state["tokens"]))
    assert state["completion"] == env.tokenizer.decode([t["id"] for t in state["tokens"]])
    # the env holds exactly these tokens
    input_ids, mask = env.episode_tokens()
    assert input_ids[0, -len(state["tokens"]):].tolist() == [t["id"] for t in state["tokens"]]


def test_undo_replays_the_episode_without_the_last_token(env) -> None:
    session = PlaySession(env, prompt="the film was", top_k=5)
    session.choose_rank(1)
    before = session.state()
    session.choose_rank(3)
    after_undo = session.undo()
    assert_same_state(after_undo, before)  # same tokens, same candidates and probabilities, same running KL
    session.undo()
    with pytest.raises(InputError, match="nothing to undo"):
        session.undo()


def test_the_end_reports_reward_kl_return_and_the_policys_own_sample(env) -> None:
    session = PlaySession(env, prompt="the film was", seed=3)
    session.type_text(" good good good good good good")  # more tokens than max_new_tokens=5: the rest is dropped
    assert session.done and session.state()["candidates"] == []
    result = session.result()
    assert json.loads(json.dumps(result)) == result
    assert result["num_tokens"] == 5 and not result["terminated"]
    assert result["rm_score"] == pytest.approx(len(result["completion"]) / 10)
    assert result["return"] == pytest.approx(result["rm_score"] - 0.1 * result["kl"])
    assert result["kl"] == pytest.approx(-sum(t["ref_logprob"] for t in result["tokens"]))  # all typed
    # the env's own figures: π_θ = π_ref here (no training), so its KL is 0 and it paid the RM score
    assert result["env_kl"] == pytest.approx(0.0, abs=1e-5)
    assert result["env_return"] == pytest.approx(result["rm_score"] - 0.1 * result["env_kl"], abs=1e-6)
    policy = result["policy"]
    assert policy["completion"] == env.tokenizer.decode([t["id"] for t in policy["tokens"]], skip_special_tokens=True)
    assert policy["rm_score"] == pytest.approx(len(policy["completion"]) / 10)
    assert session.result()["policy"] == policy  # sampled once per episode
    for move in (session.sample, session.end, lambda: session.choose_rank(1), lambda: session.type_text("x")):
        with pytest.raises(InputError, match="episode is over"):
            move()
    # undo after the end goes back into the episode, even though the env now holds the policy's sample
    state = session.undo()
    assert not state["done"] and state["step"] == 4 and len(state["candidates"]) == 10
    assert [t["id"] for t in state["tokens"]] == [t["id"] for t in result["tokens"][:4]]
    record = session.end() and session.record()
    assert record["terminated"] and record["tokens"][-1]["id"] == env.eos_token_id
    assert set(record) >= {"prompt", "completion", "tokens", "rm_score", "kl", "return", "policy_completion",
                           "policy_rm_score"}


def test_same_seed_and_moves_give_the_same_numbers_and_sessions_can_share_an_env(tiny_model_dir, env) -> None:
    def play(session: PlaySession) -> dict:
        session.sample()
        session.choose_rank(2)
        session.sample()
        return session

    other_env = play_env(tiny_model_dir)
    alone = play(PlaySession(other_env, prompt="the book", seed=7))
    alone.end()
    # two sessions interleaved on one env: each replays its own episode when the other moved the env
    first, second = PlaySession(env, prompt="the book", seed=7), PlaySession(env, prompt="the film was", seed=1)
    first.sample()
    second.sample()
    first.choose_rank(2)
    second.type_text(" bad")
    first.sample()
    first.end()
    assert first.result() == alone.result()
    assert second.state()["tokens"][0]["source"] == "sampled" and second.state()["step"] == 1 + len(
        second.encode(" bad"))


def test_gym_make_env_and_no_reference(tiny_model_dir) -> None:
    single = gym.make("TextGen-v0", model=str(tiny_model_dir), prompts=PROMPTS, max_new_tokens=3, kl_coef=0.0,
                      reward_model=letter_count, device="cpu")
    session = PlaySession(single, top_k=2, seed=0)
    assert session.prompt in PROMPTS
    state = session.choose_rank(1)
    assert not state["has_reference"] and state["candidates"][0]["ref_prob"] is None
    # without π_ref, π_θ measures the surprise of a chosen token
    assert state["tokens"][0]["kl"] == pytest.approx(-state["tokens"][0]["logprob"])
    assert session.sample()["tokens"][1]["kl"] == 0.0


def test_the_adaptive_beta_does_not_move_while_playing(tiny_model_dir) -> None:
    adaptive = play_env(tiny_model_dir, kl_coef=0.2, target_kl=1.0, kl_horizon=10)
    before = adaptive.kl_controller_state()
    session = PlaySession(adaptive, prompt="the book")
    for _ in range(2):
        session.type_text(" the the the the the")
        session.result()
        session.restart()
    assert adaptive.kl_controller_state() == before


def test_the_preference_row_is_what_train_rm_reads(env) -> None:
    session = PlaySession(env, prompt="the film was", seed=0)
    session.type_text(" good")
    session.end()
    row = session.preference("policy")
    assert isinstance(row, PreferencePair)
    assert (row.chosen, row.rejected) == (session.result()["policy"]["completion"], session.result()["completion"])
    assert parse_preference(row.to_json()) == row
    assert row.meta["source"] == "textenv play" and row.meta["chosen_by"] == "policy"
    with pytest.raises(InputError, match="'player' or 'policy'"):
        session.preference("mine")


@pytest.mark.bad_input
@pytest.mark.parametrize("call, message", [
    (lambda env: PlaySession(env, top_k=0), "top_k"),
    (lambda env: PlaySession(env, top_k=51), "top_k=51"),
    (lambda env: PlaySession(env, seed=-1), "seed"),
    (lambda env: PlaySession(env, prompt=3), "prompt must be a string"),
    (lambda env: PlaySession(env, prompt=""), "prompt"),
    (lambda env: PlaySession(object()), "TextGen env"),
    (lambda env: PlaySession(env).choose_rank(11), "no candidate 11: choose 1 to 10"),
    (lambda env: PlaySession(env).choose(10**9), "token_id"),
    (lambda env: PlaySession(env).choose(1.5), "token_id"),
    (lambda env: PlaySession(env).type_text(""), "empty"),
    (lambda env: PlaySession(env).result(), "not over"),
], ids=["top-k-0", "top-k-51", "seed-negative", "prompt-int", "prompt-empty", "not-an-env", "rank-out-of-range",
        "token-id-too-large", "token-id-float", "type-empty", "result-too-early"])
def test_bad_session_arguments_are_input_errors(env, call, message) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        call(env)


def test_a_batched_env_is_refused(tiny_model_dir) -> None:
    with pytest.raises(InputError, match="num_envs=1"):
        PlaySession(play_env(tiny_model_dir, num_envs=2))


def test_a_session_whose_env_another_session_moved_sees_its_own_state_again(env) -> None:
    """The replay restores the env exactly: the same candidates and probabilities as before the other moves."""
    session = PlaySession(env, prompt="the book", seed=5)
    for _ in range(3):
        session.sample()
    before = session.state()
    other = PlaySession(env, prompt="the film was")  # another session moves the env
    other.type_text(" bad")
    assert_same_state(session.state(), before)
    session.sample()
    assert other.state()["tokens"][-1]["source"] == "typed"
