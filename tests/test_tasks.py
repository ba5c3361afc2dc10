"""The task suite (textenv.tasks, reward_models/tasks.py): every task is a registered Gymnasium id that makes a
working env (on the tiny model here), its gold scorer ranks hand-written texts the way the task says, and a wrong
task name is refused with the closest one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import textenv
from textenv import TASKS, Task, get_task
from textenv.apps.cli import build_env
from textenv.reward_models import (
    AvoidWordReward,
    KeywordReward,
    TargetLengthReward,
    make_reward_model,
)
from textenv.reward_models.tasks import SOUND_KEYWORDS, words_of
from textenv.validation import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]

TASK_NAMES = list(TASKS)


@pytest.fixture
def tiny(tiny_model_dir: Path) -> dict[str, Any]:
    """What a test adds to a task's env: the tiny model, short episodes, the CPU."""
    return {"model": str(tiny_model_dir), "max_new_tokens": 3, "device": "cpu"}


def gold(task_name: str, *completions: str) -> list[float]:
    """The gold scores of ``completions`` under task ``task_name`` (prompts are not scored)."""
    return list(TASKS[task_name].make_gold()([""] * len(completions), list(completions)))


# ---------------------------------------------------------------------------------------------- the list
def test_tasks_lists_the_suite_with_textgen_v0_first() -> None:
    assert textenv.TASKS is TASKS and len(TASKS) >= 5
    first = next(iter(TASKS.values()))
    assert (first.name, first.env_id, first.gold) == ("positive", "TextGen-v0", "vader")
    assert {"positive", "negative", "length", "topic", "avoid"} <= set(TASKS)
    assert len({task.env_id for task in TASKS.values()}) == len(TASKS)
    for name, task in TASKS.items():
        assert isinstance(task, Task) and task.name == name and task.description
        assert task.env_id in gym.registry
        assert 1 <= task.max_new_tokens <= 64


def test_textgen_v0_is_unchanged() -> None:
    """TextGen-v0 keeps its registration without kwargs: the env's defaults are the positive task."""
    assert gym.spec("TextGen-v0").kwargs == {}
    assert TASKS["positive"].env_kwargs() == {"reward_model": "vader", "prompts": "builtin", "prompt_split": "train",
                                             "max_new_tokens": 32}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_env_kwargs_are_json_and_the_registered_kwargs(name: str) -> None:
    task = TASKS[name]
    kwargs = task.env_kwargs()
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs["reward_model"] == task.gold and kwargs["max_new_tokens"] == task.max_new_tokens
    if task.env_id != "TextGen-v0":
        assert gym.spec(task.env_id).kwargs == kwargs


@pytest.mark.parametrize("name", TASK_NAMES)
def test_held_out_prompts_are_not_trained_on(name: str) -> None:
    task = TASKS[name]
    train, held_out = task.train_prompts(), task.held_out_prompts()
    assert train and held_out and not set(train) & set(held_out)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_gold_is_a_reward_model_spec(name: str) -> None:
    scores = TASKS[name].make_gold()(["p", "q"], ["a fine sentence.", ""])
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and np.all(np.abs(scores) <= 1.0)
    assert type(make_reward_model(TASKS[name].gold)) is type(TASKS[name].make_gold())


# ---------------------------------------------------------------------------------------------- the envs
@pytest.mark.parametrize("name", TASK_NAMES)
def test_gym_make_builds_the_task_env_and_check_env_passes(name: str, tiny: dict[str, Any]) -> None:
    task = TASKS[name]
    env = gym.make(task.env_id, **tiny)
    inner = env.unwrapped.vector_env
    assert type(inner.reward_model) is type(task.make_gold())
    check_env(env.unwrapped, skip_render_check=True)
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(5)
        done = terminated or truncated
    assert info["rm_score"] == pytest.approx(gold(name, info["text"])[0])
    assert reward == pytest.approx(info["rm_score"] - info["kl_coef"] * info["episode_kl"])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_gym_make_vec_builds_the_task_env(name: str, tiny: dict[str, Any]) -> None:
    task = TASKS[name]
    envs = gym.make_vec(task.env_id, num_envs=2, autoreset_mode="disabled", **tiny)
    assert type(envs.reward_model) is type(task.make_gold())
    assert envs.spec_kwargs["reward_model"] == task.gold  # checkpoints rebuild the task's env
    envs.reset(seed=0)
    for _ in range(3):
        _, rewards, *_ , info = envs.step(np.full(2, 5))
    assert np.all(np.isfinite(rewards)) and info["_rm_score"].all()
    assert list(info["rm_score"]) == pytest.approx(gold(name, *info["text"]))


def test_build_env_takes_env_kwargs(tiny: dict[str, Any]) -> None:
    task = TASKS["length"]
    env = build_env({**task.env_kwargs(), **tiny, "num_envs": 4}, group_size=2)
    assert isinstance(env.reward_model, TargetLengthReward) and env.reward_model.target_words == 10
    assert env.max_new_tokens == 3 and env.group_size == 2


# ---------------------------------------------------------------------------------------------- the gold scorers
def test_negative_prefers_negative_text() -> None:
    awful, fine, superb = gold("negative", "It was awful and I hated it.", "It was a film.", "Superb, I loved it.")
    assert awful > fine > superb
    assert gold("positive", "Superb, I loved it.")[0] == pytest.approx(-superb)


def test_length_peaks_at_the_target() -> None:
    ten = "one two three four five six seven eight nine ten"
    scores = gold("length", ten, ten + " eleven", ten.rsplit(" ", 1)[0], "one two three", ten + " " + ten, "")
    assert scores[0] == 1.0
    assert scores[1] == scores[2] == pytest.approx(0.9)
    assert scores[2] > scores[3] > scores[4] == scores[5] == 0.0
    assert TargetLengthReward(3)([""], ["I'm 20, ok?"])[0] == 1.0  # words: letters, digits, apostrophes


def test_topic_counts_distinct_topic_words() -> None:
    two, one, none, repeated = gold("topic", "The soundtrack was fun and the vocals soared.", "Great music.",
                                    "The plot was fun.", "music music music music")
    assert two == 1.0 and one == repeated == 0.5 and none == 0.0
    assert gold("topic", "The SOUNDTRACK and the Vocals.")[0] == 1.0
    assert {"soundtrack", "vocals", "speakers", "music"} <= set(SOUND_KEYWORDS)


def test_avoid_word_penalises_the_word() -> None:
    without, once, twice = gold("avoid", "We loved this little hotel near a quiet beach in Porto last spring.",
                                "We loved this little hotel near the quiet beach in Porto last spring.",
                                "We loved the little hotel near the quiet beach in Porto last spring.")
    assert without == 1.0 and without > once > twice
    assert gold("avoid", "The room was clean.")[0] < gold("avoid", "A room was clean.")[0]  # any case
    assert gold("avoid", "They theorised there.")[0] == pytest.approx(0.3)  # whole words only: 3 words / 10


def test_avoid_word_penalises_degenerate_text() -> None:
    varied = "We loved this little hotel near a quiet beach in Porto last spring."
    empty, repeated, short = gold("avoid", "", "good " * 12, "Lovely.")
    assert gold("avoid", varied)[0] > max(empty, repeated, short)
    assert empty == 0.0 and repeated < 0.1 and short == pytest.approx(0.1)


def test_words_of() -> None:
    assert words_of("The film's end, 2 stars!") == ["the", "film's", "end", "2", "stars"]


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.bad_input
@pytest.mark.parametrize("name, suggestion", [("lenght", "length"), ("TextGen-V0", "TextGen-v0"),
                                              ("negatve", "negative")])
def test_a_wrong_task_name_says_the_closest(name: str, suggestion: str) -> None:
    with pytest.raises(InputError, match=f"task {name!r} is not one of .*did you mean {suggestion!r}"):
        get_task(name)


def test_get_task_takes_a_name_or_an_id() -> None:
    assert get_task("length") is get_task("TextGenLength-v0") is TASKS["length"]


@pytest.mark.bad_input
@pytest.mark.parametrize("spec, match", [
    ("target-length:0", "target length '0' must be a whole number of words >= 1"),
    ("target-length:ten", "target length 'ten' must be a whole number"),
    ("target-length:", "missing its argument"),
    ("mentions:,", "keywords is empty"),
    ("mentions:sound quality", "not single words"),
    ("avoid-word:the end", "must be one word"),
])
def test_bad_task_reward_specs_say_how_to_fix_them(spec: str, match: str) -> None:
    with pytest.raises(InputError, match=match) as err:
        make_reward_model(spec)
    assert spec in str(err.value)


@pytest.mark.bad_input
@pytest.mark.parametrize("make, match", [
    (lambda: TargetLengthReward(0), "target_words=0 must be an integer >= 1"),
    (lambda: KeywordReward([]), "keywords is empty"),
    (lambda: KeywordReward(["sound"], saturation=0), "saturation=0"),
    (lambda: AvoidWordReward("the", penalty=float("nan")), "penalty=nan must be a finite number > 0"),
    (lambda: AvoidWordReward("the", min_words=0), "min_words=0"),
    (lambda: AvoidWordReward(3), "word=3 must be one word"),
])
def test_bad_task_reward_arguments_name_the_argument(make: Any, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make()


# ---------------------------------------------------------------------------------------------- the benchmark
def run_benchmark(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / "tasks.py"), *arguments]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_the_benchmark_trains_and_writes_every_task_row(tiny_model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "tasks.json"
    done = run_benchmark("--model", str(tiny_model_dir), "--tasks", "length", "TextGenAvoid-v0", "--cpu-minutes",
                         "0.002", "--num-envs", "4", "--eval-prompts", "2", "--eval-samples", "1", "--output",
                         str(output))
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    assert result["benchmark"] == "benchmarks/tasks.py"
    assert [row["task"] for row in result["rows"]] == ["length", "avoid"]
    for row in result["rows"]:
        assert row["iterations"] >= 1 and np.isfinite([row["untrained"], row["trained"], row["kl"]]).all()
        assert row["change"] == pytest.approx(row["trained"] - row["untrained"])
    assert "untrained → trained" in done.stdout and "length" in done.stdout
    again = run_benchmark("--output", str(output))  # never replaced without --overwrite
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.bad_input
def test_the_benchmark_refuses_an_unknown_task(tmp_path: Path) -> None:
    done = run_benchmark("--tasks", "lenght", "--output", str(tmp_path / "t.json"))
    assert done.returncode == 2 and "did you mean 'length'" in done.stderr
    assert not (tmp_path / "t.json").exists()
