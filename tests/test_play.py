"""`textenv play`: the game core (PlaySession) on the tiny model, and the terminal front end driven by piped
commands."""

from __future__ import annotations

import json
import math
import os
import re
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
    options = {"num_envs": 1, "model": str(model_dir), "prompts": PROMPTS, "max_new_tokens": 5, "kl_coef": 0.1,
               "reward_model": letter_count, "autoreset_mode": "disabled", "device": "cpu"}
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
    input_ids, _ = env.episode_tokens()
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


# ---------------------------------------------------------------------------------------------- the terminal game
def play_args(model_dir: Path, tmp_path: Path, *extra: str):
    from textenv.apps.cli import build_parser

    return build_parser().parse_args(["play", "--model", str(model_dir), "--prompt", "the film was",
                                      "--max-new-tokens", "4", "--top-k", "3", "--device", "cpu",
                                      "--reward-model", LENGTH, *extra])


LENGTH = "test-play-length"


@pytest.fixture(autouse=True)
def length_reward_model(monkeypatch):
    """The reward model ``test-play-length`` by name (what the CLI takes): the completion's length / 10."""
    from textenv.reward_models import REWARD_MODELS, CallableReward

    monkeypatch.setitem(REWARD_MODELS, LENGTH, lambda: CallableReward(
        lambda p, c: np.array([len(t) / 10 for t in c], dtype=float)))


def play_cli(model_dir: Path, tmp_path: Path, commands: str, *extra: str) -> tuple[int, str]:
    import io

    from textenv.apps.play import run

    screen = io.StringIO()
    code = run(play_args(model_dir, tmp_path, *extra), stdin=io.StringIO(commands), stdout=screen)
    return code, screen.getvalue()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_scripted_commands_play_episodes_and_append_them(tiny_model_dir, tmp_path) -> None:
    out, prefs = tmp_path / "episodes.jsonl", tmp_path / "prefs.jsonl"
    out.write_text('{"mine": "an earlier line"}\n', encoding="utf-8")
    # episode 1: candidate 2, the policy samples, type " good" (2 tokens: the length limit ends it), prefer mine;
    # episode 2: a bad rank, help, #id, undo, end (EOS), then Enter (no preference); then input ends
    commands = '2\n\n good\n1\n9\n?\n#5\nu\ne\n\n'
    code, screen = play_cli(tiny_model_dir, tmp_path, commands, "--episodes", "3", "--output", str(out),
                            "--preferences", str(prefs), "--seed", "4")
    assert code == 0
    rows = read_jsonl(out)
    assert rows[0] == {"mine": "an earlier line"} and len(rows) == 3  # appended after the user's line, untouched
    first, second = rows[1], rows[2]
    assert [t["source"] for t in first["tokens"]] == ["chosen", "sampled", "typed", "typed"][: len(first["tokens"])]
    assert second["num_tokens"] == 1 and second["terminated"] and second["completion"] == ""
    for row in (first, second):
        assert row["prompt"] == "the film was"
        assert row["return"] == pytest.approx(row["rm_score"] - row["kl_coef"] * row["kl"])
        assert row["policy_rm_score"] == pytest.approx(len(row["policy_completion"]) / 10)
    assert "no candidate 9: choose 1 to 3" in screen and "commands (one per line" in screen
    assert "move> #5" in screen and "══ episode over" in screen and "2 episode(s) finished" in screen
    assert "\x1b[" not in screen  # no colour codes when stdout is not a terminal
    [preference] = read_jsonl(prefs)
    assert preference == {"prompt": "the film was", "chosen": first["completion"],
                          "rejected": first["policy_completion"], "meta": preference["meta"]}
    assert preference["meta"]["chosen_by"] == "player"


def test_quit_mid_episode_saves_nothing_and_undo_at_the_end_goes_back(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "episodes.jsonl"
    code, screen = play_cli(tiny_model_dir, tmp_path, "e\nu\n1\nq\n", "--output", str(out))
    assert code == 0 and not out.exists()  # ended, undone at the end screen, one more token, quit: nothing saved
    assert "unfinished episode is not saved" in screen and screen.count("══ episode over") == 1
    # the end of the input on the end screen saves the finished episode
    code, screen = play_cli(tiny_model_dir, tmp_path, "e\n", "--output", str(out))
    assert code == 0 and len(read_jsonl(out)) == 1


def test_parse_move() -> None:
    from textenv.apps.play import parse_move

    assert parse_move("") == ("sample", None)
    assert parse_move("3") == ("rank", 3) and parse_move(" 12 ") == ("rank", 12)
    assert parse_move("#42") == ("id", 42)
    assert parse_move('"2 stars"') == ("type", "2 stars") and parse_move('" u') == ("type", " u")
    assert parse_move("t 42") == ("type", "42") and parse_move("t  42") == ("type", " 42")
    assert parse_move(" fun") == ("type", " fun")
    assert [parse_move(c)[0] for c in ("u", "e", "q", "?")] == ["undo", "end", "quit", "help"]


def test_model_text_cannot_send_terminal_escapes() -> None:
    from textenv.apps.play import visible

    assert visible("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\nc" and visible(" ok é") == " ok é"


def test_appends_never_leave_half_a_line(tmp_path, monkeypatch) -> None:
    from textenv.apps import play

    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n{"torn": ')  # another tool's torn last line stays; the new row starts cleanly
    play.append_jsonl(path, {"b": 2})
    assert path.read_bytes() == b'{"a": 1}\n{"torn": \n{"b": 2}\n'
    before = path.read_bytes()
    real_write = os.write

    def half_then_disk_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(play.os, "write", half_then_disk_full)
    with pytest.raises(OSError, match="No space"):
        play.append_jsonl(path, {"c": "a long row " * 20})
    assert path.read_bytes() == before  # cut back: no half line


@pytest.mark.slow
def test_the_real_command_with_piped_stdin_writes_jsonl_train_rm_reads(tiny_model_dir, tmp_path) -> None:
    """``textenv play`` in a subprocess, its commands piped in: the episodes file and a preference file that the
    reward-model trainer's loader accepts."""
    import subprocess
    import sys

    from textenv.preferences import as_preference_rows, expand_pairs

    out, prefs = tmp_path / "episodes.jsonl", tmp_path / "prefs.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "textenv", "play", "--model", str(tiny_model_dir), "--prompt", "the film was",
         "--max-new-tokens", "3", "--top-k", "3", "--episodes", "2", "--device", "cpu", "--output", str(out),
         "--preferences", str(prefs), "--reward-model", "vader"],
        check=False, input="1\n good\n2\ne\n1\n", capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(out)
    assert len(rows) == 2 and all(row["prompt"] == "the film was" for row in rows)
    assert [t["source"] for t in rows[0]["tokens"]] == ["chosen", "typed", "typed"]  # 3 tokens: the limit
    assert rows[1]["terminated"] and rows[1]["num_tokens"] == 1 and rows[1]["completion"] == ""  # e: EOS at once
    assert "move> 1" in done.stdout and "══ episode over" in done.stdout
    pairs = [pair for group in expand_pairs(as_preference_rows(prefs)) for pair in group.as_pairs()]
    # episode 1: 2 = the policy's completion preferred; episode 2: 1 = the player's (empty) completion
    assert [(p.chosen, p.rejected) for p in pairs] == [(rows[0]["policy_completion"], rows[0]["completion"]),
                                                       ("", rows[1]["policy_completion"])]


# ---------------------------------------------------------------------------------------------- bad flags
MY_NOTES = b"my own notes, not JSON\n"
PREFERENCES = b'{"prompt": "the film", "chosen": " was great", "rejected": " was bad"}\n'

BAD_FLAGS = {
    "top-k-0": (["--top-k", "0"], ["--top-k", "'0'", "1 to 50"], {}),
    "top-k-51": (["--top-k", "51"], ["--top-k", "'51'"], {}),
    "top-k-text": (["--top-k", "many"], ["--top-k", "'many'"], {}),
    "episodes-0": (["--episodes", "0"], ["--episodes", "'0'"], {}),
    "max-new-tokens-0": (["--max-new-tokens", "0"], ["--max-new-tokens", "'0'"], {}),
    "kl-coef-negative": (["--kl-coef", "-0.1"], ["--kl-coef", "'-0.1'"], {}),
    "kl-coef-nan": (["--kl-coef", "nan"], ["--kl-coef", "'nan'"], {}),
    "seed-negative": (["--seed", "-1"], ["--seed", "'-1'"], {}),
    "model-and-checkpoint": (["--model", "gpt2", "--checkpoint", "{tmp}/ckpt"], ["--model", "--checkpoint",
                                                                                "not both"], {}),
    "reference-without-checkpoint": (["--reference", "gpt2"], ["--reference applies to --checkpoint"], {}),
    "prompt-empty": (["--prompt", "  "], ["--prompt is empty"], {}),
    "output-directory": (["--output", "{tmp}"], ["--output", "is a directory"], {}),
    "output-not-jsonl": (["--output", "{tmp}/notes.txt"], ["--output", "notes.txt:1", "choose a new file"],
                         {"notes.txt": MY_NOTES}),
    "preferences-not-preferences": (["--preferences", "{tmp}/notes.jsonl"], ["--preferences", "notes.jsonl:1"],
                                    {"notes.jsonl": b'{"prompt": "x", "choosen": "a", "rejected": "b"}\n'}),
    "output-is-preferences": (["--output", "{tmp}/p.jsonl", "--preferences", "{tmp}/p.jsonl"],
                              ["--output and --preferences are the same file"], {"p.jsonl": PREFERENCES}),
    "checkpoint-missing": (["--checkpoint", "{tmp}/nothing"], ["--checkpoint", "nothing", "no such directory"], {}),
    "checkpoint-not-a-checkpoint": (["--checkpoint", "{tmp}"], ["--checkpoint", "not a textenv checkpoint"], {}),
}


@pytest.fixture
def no_model_loads(monkeypatch):
    """Building any model or env fails the test: bad flags must be reported before."""
    import transformers

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", loaded)
    monkeypatch.setattr(TextGenVectorEnv, "__init__", loaded)


@pytest.mark.bad_input
@pytest.mark.parametrize("name", list(BAD_FLAGS))
def test_bad_flags_are_one_line_before_any_model_loads(name, tmp_path, capsys, no_model_loads) -> None:
    from textenv.apps.cli import main

    argv, expected, files = BAD_FLAGS[name]
    for file, data in files.items():
        (tmp_path / file).write_bytes(data)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    code = main(["play", *(arg.replace("{tmp}", str(tmp_path)) for arg in argv)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("textenv play: error: "), err
    for text in expected:
        assert text in err, err
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_play_against_a_trained_checkpoint_with_its_base_model_as_reference(tiny_model_dir, tmp_path) -> None:
    import io

    from textenv.agents.sft import SFT
    from textenv.apps.cli import build_parser
    from textenv.apps.play import run

    train_env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=PROMPTS, max_new_tokens=3,
                                 autoreset_mode="disabled", kl_coef=0.0, reward_model=LENGTH, device="cpu")
    agent = SFT(train_env, demonstrations=["the film was good"], batch_size=1, learning_rate=1e-2)
    agent.learn(total_timesteps=10, progress_bar=False)
    agent.save(tmp_path / "ckpt")
    out = tmp_path / "episodes.jsonl"
    args = build_parser().parse_args(["play", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "the film was",
                                      "--kl-coef", "0.1", "--device", "cpu", "--output", str(out)])
    screen = io.StringIO()
    assert run(args, stdin=io.StringIO("\n\n\n\n"), stdout=screen) == 0  # the policy samples every token
    [row] = read_jsonl(out)
    assert row["num_tokens"] <= 3 and row["kl_coef"] == 0.1  # the checkpoint's max_new_tokens, β from the flag
    assert row["rm_score"] == pytest.approx(len(row["completion"]) / 10)  # the checkpoint's reward model
    # π_θ (trained) differs from π_ref (the base model): the env measured a KL, and so did the player (who let
    # the policy sample every token: the same per-token log-ratios)
    assert abs(row["env_kl"]) > 1e-3 and row["kl"] == pytest.approx(row["env_kl"], abs=1e-4)
    assert "π_ref" in screen.getvalue()


def test_play_against_an_ilql_checkpoint_plays_its_q_weighted_policy(tiny_model_dir, tmp_path) -> None:
    """--checkpoint loads like textenv eval: an ILQL checkpoint's policy is its Q-weighted decoding around policy/
    (ILQL.sampling_policy), not the LM alone, so the candidates and the policy's samples are the trained policy's."""
    from textenv.agents.ilql import ILQL
    from textenv.apps.cli import build_parser
    from textenv.apps.play import build_play_env

    data = tmp_path / "scored.jsonl"
    data.write_text('{"prompt": "the film was", "completion": " good", "reward": 1.0}\n'
                    '{"prompt": "the book", "completion": " bad", "reward": -1.0}\n')
    train_env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=PROMPTS, max_new_tokens=3,
                                 autoreset_mode="disabled", kl_coef=0.0, reward_model=LENGTH, device="cpu")
    agent = ILQL(train_env, data=str(data), batch_size=2, beta=10.0)
    agent.learn(total_timesteps=4, progress_bar=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a Q-weighting far from zero, so the two policies differ clearly
        for head in agent.heads.target_q_heads:
            head[2].weight.copy_(torch.randn(head[2].weight.shape, generator=generator))
    agent.save(tmp_path / "ckpt")

    args = build_parser().parse_args(["play", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "the film was",
                                      "--device", "cpu"])
    env = build_play_env(args)
    obs, _ = env.reset()
    ids, mask = torch.as_tensor(obs["input_ids"]), torch.as_tensor(obs["attention_mask"])
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        q_weighted = agent.sampling_module(input_ids=ids, attention_mask=mask, position_ids=positions).logits[0, -1]
        lm_only = agent.policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits[0, -1]
    assert not torch.allclose(q_weighted, lm_only, atol=1e-2)
    assert torch.allclose(env.next_token_logits()[0], q_weighted.float(), atol=1e-4)


def test_a_player_is_not_warned_that_their_actions_are_off_policy(tiny_model_dir) -> None:
    """The player is another actor than π_θ on purpose (PlaySession measures their KL itself): the env's
    OffPolicyActionsWarning, which tells a programmer to call set_policy, must not interrupt the game."""
    import warnings

    from textenv.logprobs import OffPolicyActionsWarning

    def sensitive_env() -> TextGenVectorEnv:
        env = play_env(tiny_model_dir)
        env._off_policy_monitor.log_threshold, env._off_policy_monitor.block = 0.0, 4  # every action counts
        return env

    direct = sensitive_env()  # the monitor does fire on these actions when a program steps the env itself
    direct.reset(options={"prompts": ["the film was"]})
    for _ in range(3):
        direct.step(np.array([5]))
    with pytest.warns(OffPolicyActionsWarning):
        direct.step(np.array([5]))  # the 4th action completes the block

    session = PlaySession(sensitive_env(), prompt="the film was")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            session.choose(5)
        session.undo()  # replays the tokens: the env steps again
        session.type_text(" the film")
        session.result()
    assert not [w for w in caught if issubclass(w.category, OffPolicyActionsWarning)]


def test_colour_only_on_a_terminal() -> None:
    import io

    from textenv.apps.play import Screen, sequence_text

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tokens = [{"text": " fun", "source": "typed"}]
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        Screen(stream).show([sequence_text("the film was", tokens)])
    assert pipe.getvalue() == "the film was | fun|\n"
    assert re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue()) == pipe.getvalue()
    assert "\x1b[2mthe film was" in terminal.getvalue() and "\x1b[1;33m fun" in terminal.getvalue()  # dim, yellow


def test_a_token_the_reference_rules_out_is_refused_not_an_infinite_kl(env, monkeypatch) -> None:
    session = PlaySession(env, prompt="the book")
    real = env.reference_next_token_logits

    def without_token_7():
        logits = real().clone()
        logits[:, 7] = -math.inf
        return logits

    monkeypatch.setattr(env, "reference_next_token_logits", without_token_7)
    with pytest.raises(InputError, match="token 7 .* probability 0 .* choose another token"):
        session.choose(7)
    assert session.state()["step"] == 0  # nothing was played
    assert session.choose(8)["step"] == 1
