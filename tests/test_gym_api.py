"""Every Gymnasium (and stable-baselines3) way to use TextGen-v0 runs, or refuses at once with a clear error.

One table: each row is a way to build or drive the env and what it must do (run, or raise a given type whose
message says what to use instead). Each row runs under a hard time bound, so a hang fails the test instead of
blocking CI: :func:`time_limit` (``signal.alarm``) for ways that run in this process, a subprocess timeout for
the ways that start processes (``vectorization_mode="async"``, SB3's ``SubprocVecEnv``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.validation import InputError
from textenv.vector_env import RenderModeError, TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread", "sb3_log_dir")

#: Seconds a way that runs in this process may take before it counts as a hang.
IN_PROCESS_LIMIT = 120
#: Seconds a way that starts worker processes may take (each worker loads the tiny model).
SUBPROCESS_LIMIT = 240


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise ``TimeoutError`` in this thread if the block runs longer than ``seconds`` (a hang fails the test)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"hung: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)



def letters(prompts: list[str], completions: list[str]) -> list[float]:
    """A cheap reward: ASCII letters in the completion."""
    return [float(sum(ch.isascii() and ch.isalpha() for ch in text)) for text in completions]


@pytest.fixture
def kwargs(tiny_model_dir: Path, tiny_prompts: list[str]) -> dict[str, Any]:
    return dict(model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=letters, max_new_tokens=3,
                kl_coef=0.05, device="cpu")


def play_single(env: gym.Env, token: int = 5, seed: int = 0) -> tuple[int, float, dict[str, Any]]:
    """Reset, then step ``token`` until the episode ends; returns (steps, last reward, last info)."""
    env.reset(seed=seed)
    steps, done = 0, False
    while not done:
        _, reward, terminated, truncated, info = env.step(token)
        steps, done = steps + 1, terminated or truncated
        assert steps <= 100, "the episode never ended"
    return steps, float(reward), info


def play_vector(envs: gym.vector.VectorEnv, steps: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Reset, then step token 5 in every row ``steps`` times; returns every step's info."""
    envs.reset(seed=seed)
    infos = []
    for _ in range(steps):
        *_, info = envs.step(np.full(envs.num_envs, 5))
        infos.append(info)
    return infos


# ---------------------------------------------------------------------------------------------- the ways
def make_single(kw: dict[str, Any]) -> None:
    steps, reward, info = play_single(gym.make("TextGen-v0", **kw))
    assert steps == 3 and info["text"] is not None and np.isfinite(reward)


def make_module_prefixed(kw: dict[str, Any]) -> None:
    play_single(gym.make("textenv:TextGen-v0", **kw))


def gymnasium_checker(kw: dict[str, Any]) -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(gym.make("TextGen-v0", **kw).unwrapped, skip_render_check=True)


def sb3_checker(kw: dict[str, Any]) -> None:
    from stable_baselines3.common.env_checker import check_env

    check_env(gym.make("TextGen-v0", **kw).unwrapped, warn=True)


def make_vec_native(kw: dict[str, Any]) -> None:
    for mode in (None, "vector_entry_point"):
        envs = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode=mode, **kw)
        assert isinstance(envs, TextGenVectorEnv)
        infos = play_vector(envs)
        assert infos[2]["_text"].all()  # both rows end at max_new_tokens=3


def make_vec_native_enum_autoreset(kw: dict[str, Any]) -> None:
    from gymnasium.vector import AutoresetMode

    envs = gym.make_vec("TextGen-v0", num_envs=2, autoreset_mode=AutoresetMode.DISABLED, **kw)
    assert envs.autoreset_mode == "disabled"


def make_vec_native_same_step(kw: dict[str, Any]) -> None:
    from gymnasium.vector import AutoresetMode

    gym.make_vec("TextGen-v0", num_envs=2, autoreset_mode=AutoresetMode.SAME_STEP, **kw)


def make_vec_sync(kw: dict[str, Any]) -> None:
    envs = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="sync", **kw)
    assert isinstance(envs, gym.vector.SyncVectorEnv)
    infos = play_vector(envs, steps=5)  # past the end: next-step autoreset
    assert infos[2]["_text"].all()


def make_vec_sync_same_step(kw: dict[str, Any]) -> None:
    from gymnasium.vector import AutoresetMode

    envs = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **kw)
    infos = play_vector(envs, steps=5)
    assert infos[2]["final_info"]["_text"].all()  # the ended episode; the rows restarted in the same step


def make_vec_sync_with_wrappers(kw: dict[str, Any]) -> None:
    from gymnasium.wrappers import RecordEpisodeStatistics

    envs = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="sync", wrappers=[RecordEpisodeStatistics],
                        **kw)
    infos = play_vector(envs)
    assert infos[2]["_episode"].all() and (infos[2]["episode"]["l"] == 3).all()


def make_vec_native_with_wrappers(kw: dict[str, Any]) -> None:
    from gymnasium.wrappers import RecordEpisodeStatistics

    gym.make_vec("TextGen-v0", num_envs=2, wrappers=[RecordEpisodeStatistics], **kw)


def wrapper(name: str, **options: Any) -> Callable[[dict[str, Any]], None]:
    def run(kw: dict[str, Any]) -> None:
        env = getattr(gym.wrappers, name)(gym.make("TextGen-v0", **kw), **options)
        steps, reward, info = play_single(env)
        assert np.isfinite(reward)
        if name == "RecordEpisodeStatistics":
            assert info["episode"]["l"] == steps == 3
        if name == "TimeLimit":
            assert steps == options["max_episode_steps"]
        if name == "FlattenObservation":
            obs, _ = env.reset(seed=0)
            assert obs.ndim == 1 and obs in env.observation_space

    run.__name__ = f"wrapper_{name}"
    return run


def transform_reward(kw: dict[str, Any]) -> None:
    plain = play_single(gym.make("TextGen-v0", **kw))[1]
    doubled = play_single(gym.wrappers.TransformReward(gym.make("TextGen-v0", **kw), lambda r: 2 * r))[1]
    assert doubled == pytest.approx(2 * plain)


def max_episode_steps(kw: dict[str, Any]) -> None:
    assert play_single(gym.make("TextGen-v0", max_episode_steps=2, **kw))[0] == 2


def vector_wrapper(name: str, **options: Any) -> Callable[[dict[str, Any]], None]:
    def run(kw: dict[str, Any]) -> None:
        from gymnasium.wrappers import vector

        envs = getattr(vector, name)(gym.make_vec("TextGen-v0", num_envs=2, **kw), **options)
        infos = play_vector(envs)
        if name == "RecordEpisodeStatistics":
            assert infos[2]["_episode"].all() and (infos[2]["episode"]["l"] == 3).all()

    run.__name__ = f"vector_wrapper_{name}"
    return run


def seeding_is_reproducible(kw: dict[str, Any]) -> None:
    def prompts(env: gym.Env, seed: int) -> list[str]:
        first = [env.reset(seed=seed)[1]["prompt"]]
        return first + [env.reset()[1]["prompt"] for _ in range(5)]  # unseeded resets continue the seeded RNG

    a, b = gym.make("TextGen-v0", **kw), gym.make("TextGen-v0", **kw)
    assert prompts(a, 7) == prompts(b, 7) == prompts(a, 7)
    assert len(set(prompts(a, 7) + prompts(a, 8))) > 1  # the seed matters
    va, vb = (gym.make_vec("TextGen-v0", num_envs=3, **kw) for _ in range(2))
    oa, _ = va.reset(seed=3)
    ob, _ = vb.reset(seed=3)
    np.testing.assert_array_equal(oa["input_ids"], ob["input_ids"])


def bad_seed(seed: Any) -> Callable[[dict[str, Any]], None]:
    def run(kw: dict[str, Any]) -> None:
        gym.make("TextGen-v0", **kw).reset(seed=seed)

    run.__name__ = f"bad_seed_{seed!r}"
    return run


def render_ansi(kw: dict[str, Any]) -> None:
    env = gym.make("TextGen-v0", render_mode="ansi", **kw)
    _, _, info = play_single(env)
    screen = env.render()
    assert info["prompt"] in screen and "[done]" in screen
    plain = gym.make("TextGen-v0", **kw)
    plain.reset(seed=0)
    assert plain.render() is None  # render_mode=None renders nothing


def render_mode(mode: str) -> Callable[[dict[str, Any]], None]:
    def run(kw: dict[str, Any]) -> None:
        gym.make("TextGen-v0", render_mode=mode, **kw)

    run.__name__ = f"render_mode_{mode}"
    return run


def step_before_reset_made(kw: dict[str, Any]) -> None:
    gym.make("TextGen-v0", **kw).step(5)  # Gymnasium's OrderEnforcing wrapper answers first


def step_before_reset_unwrapped(kw: dict[str, Any]) -> None:
    gym.make("TextGen-v0", **kw).unwrapped.step(5)


def step_before_reset_vector(kw: dict[str, Any]) -> None:
    gym.make_vec("TextGen-v0", num_envs=2, **kw).step(np.array([5, 5]))


def step_after_end_single(kw: dict[str, Any]) -> None:
    env = gym.make("TextGen-v0", **kw)
    play_single(env)
    env.step(5)


def step_after_end_vector_disabled(kw: dict[str, Any]) -> None:
    envs = gym.make_vec("TextGen-v0", num_envs=2, autoreset_mode="disabled", **kw)
    envs.reset(seed=0)
    for _ in range(3):
        envs.step(np.array([5, 5]))
    _, reward, terminated, truncated, info = envs.step(np.array([5, 5]))  # documented: ignored, pays 0
    assert envs.finished.all() and (reward == 0).all() and not (terminated | truncated).any() and "text" not in info


def step_after_end_vector_next_step(kw: dict[str, Any]) -> None:
    envs = gym.make_vec("TextGen-v0", num_envs=2, **kw)
    infos = play_vector(envs, steps=4)  # step 4 restarts the rows (documented next-step autoreset)
    assert infos[2]["_text"].all() and not envs.finished.any() and (envs.engine.num_generated == 0).all()


def single_action(action: Any) -> Callable[[dict[str, Any]], None]:
    def run(kw: dict[str, Any]) -> None:
        env = gym.make("TextGen-v0", **kw).unwrapped
        env.reset(seed=0)
        env.step(action)

    run.__name__ = f"single_action_{action!r}"
    return run


def vector_actions(actions: Any) -> Callable[[dict[str, Any]], None]:
    def run(kw: dict[str, Any]) -> None:
        envs = gym.make_vec("TextGen-v0", num_envs=2, **kw)
        envs.reset(seed=0)
        envs.step(actions)

    run.__name__ = "vector_actions"
    return run


def integer_action_types(kw: dict[str, Any]) -> None:
    env = gym.make("TextGen-v0", **kw)
    env.reset(seed=0)
    for action in (5, np.int64(5), np.array(5), np.array([5]), env.action_space.sample()):
        env.step(action)
        env.reset(seed=0)
    envs = gym.make_vec("TextGen-v0", num_envs=2, **kw)
    envs.reset(seed=0)
    for actions in ([5, 5], np.array([5, 5], dtype=np.int32), torch.tensor([5, 5]), envs.action_space.sample()):
        envs.step(actions)


def reset_options(options: Any, vector: bool = False) -> Callable[[dict[str, Any]], None]:
    def run(kw: dict[str, Any]) -> None:
        env = gym.make_vec("TextGen-v0", num_envs=2, **kw) if vector else gym.make("TextGen-v0", **kw)
        env.reset(seed=0, options=options)

    run.__name__ = "reset_options"
    return run


def forced_prompt(kw: dict[str, Any]) -> None:
    env = gym.make("TextGen-v0", **kw)
    assert env.reset(options={"prompt": "the hotel"})[1]["prompt"] == "the hotel"
    envs = gym.make_vec("TextGen-v0", num_envs=2, **kw)
    assert list(envs.reset(options={"prompts": ["a b", "the c"]})[1]["prompt"]) == ["a b", "the c"]


def sb3_policy(policy: str, flatten: bool = False) -> Callable[[dict[str, Any]], None]:
    def run(kw: dict[str, Any]) -> None:
        from stable_baselines3 import PPO

        env = gym.make("TextGen-v0", **kw)
        if flatten:
            env = gym.wrappers.FlattenObservation(env)
        PPO(policy, env, n_steps=8, batch_size=8, n_epochs=1).learn(8)

    run.__name__ = f"sb3_{policy}"
    return run


def sb3_make_vec_env(kw: dict[str, Any]) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env("TextGen-v0", n_envs=2, env_kwargs=kw)  # asks for render_mode="rgb_array" first
    PPO("MultiInputPolicy", venv, n_steps=4, batch_size=8, n_epochs=1).learn(8)


def sb3_adapter_generic_policy(kw: dict[str, Any]) -> None:
    from stable_baselines3 import PPO

    from textenv.agents.sb3 import TextGenSB3VecEnv

    venv = TextGenSB3VecEnv(num_envs=2, **kw)
    with pytest.warns(UserWarning, match="TextGenActorCriticPolicy"):
        PPO("MultiInputPolicy", venv, n_steps=4, batch_size=8, n_epochs=1).learn(8)


def sb3_adapter_textgen_policy(kw: dict[str, Any]) -> None:
    from stable_baselines3 import PPO

    from textenv.agents.sb3 import TextGenActorCriticPolicy, TextGenSB3VecEnv

    venv = TextGenSB3VecEnv(num_envs=2, **kw)
    PPO(TextGenActorCriticPolicy, venv, policy_kwargs=venv.policy_kwargs(), n_steps=4, batch_size=8,
        n_epochs=1).learn(8)


def sb3_adapter_over_next_step_env(kw: dict[str, Any]) -> None:
    from textenv.agents.sb3 import TextGenSB3VecEnv

    TextGenSB3VecEnv(gym.make_vec("TextGen-v0", num_envs=2, **kw))


RUNS = None  # expected outcome: the way runs
WAYS: list[tuple[str, Callable[[dict[str, Any]], None], Any]] = [
    ("gym.make", make_single, RUNS),
    ("gym.make('textenv:TextGen-v0')", make_module_prefixed, RUNS),
    ("gymnasium check_env", gymnasium_checker, RUNS),
    ("sb3 check_env", sb3_checker, RUNS),
    ("make_vec native (default, vector_entry_point)", make_vec_native, RUNS),
    ("make_vec native, AutoresetMode enum", make_vec_native_enum_autoreset, RUNS),
    ("make_vec native, AutoresetMode.SAME_STEP", make_vec_native_same_step, (InputError, "SAME_STEP|same_step|SameStep")),
    ("make_vec native + wrappers=", make_vec_native_with_wrappers, (gym.error.Error, "vector_entry_point")),
    ("make_vec sync", make_vec_sync, RUNS),
    ("make_vec sync, same-step autoreset", make_vec_sync_same_step, RUNS),
    ("make_vec sync + wrappers=", make_vec_sync_with_wrappers, RUNS),
    ("RecordEpisodeStatistics", wrapper("RecordEpisodeStatistics"), RUNS),
    ("TimeLimit", wrapper("TimeLimit", max_episode_steps=2), RUNS),
    ("ClipReward", wrapper("ClipReward", min_reward=-1.0, max_reward=1.0), RUNS),
    ("NormalizeReward", wrapper("NormalizeReward"), RUNS),
    ("FlattenObservation", wrapper("FlattenObservation"), RUNS),
    ("TransformReward", transform_reward, RUNS),
    ("gym.make(max_episode_steps=2)", max_episode_steps, RUNS),
    ("vector RecordEpisodeStatistics", vector_wrapper("RecordEpisodeStatistics"), RUNS),
    ("vector NormalizeReward", vector_wrapper("NormalizeReward"), RUNS),
    ("vector ClipReward", vector_wrapper("ClipReward", min_reward=-1.0, max_reward=1.0), RUNS),
    ("seeding: reset(seed=...) reproducible", seeding_is_reproducible, RUNS),
    ("reset(seed=-1)", bad_seed(-1), (gym.error.Error, "Seed must be greater or equal to zero")),
    ("reset(seed=1.5)", bad_seed(1.5), (gym.error.Error, "Seed must be a python integer")),
    ("render_mode='ansi'", render_ansi, RUNS),
    ("render_mode='human'", render_mode("human"), RUNS),
    ("render_mode='rgb_array'", render_mode("rgb_array"), (RenderModeError, "render_mode='rgb_array'.*ansi")),
    ("step before reset (gym.make)", step_before_reset_made, (gym.error.ResetNeeded, "reset")),
    ("step before reset (unwrapped)", step_before_reset_unwrapped, (InputError, "before reset")),
    ("step before reset (vector)", step_before_reset_vector, (InputError, "before reset")),
    ("step after the episode ended (single)", step_after_end_single, (InputError, "episode has ended.*reset")),
    ("step after the end, autoreset_mode='disabled'", step_after_end_vector_disabled, RUNS),
    ("step after the end, next-step autoreset", step_after_end_vector_next_step, RUNS),
    ("integer action types", integer_action_types, RUNS),
    ("action out of range", single_action(10**6), (InputError, r"action=1000000 is outside.*\[0, \d+\)")),
    ("action negative", single_action(-1), (InputError, r"action=-1 is outside")),
    ("action float", single_action(1.5), (InputError, r"action must be one int token id in \[0, \d+\)")),
    ("action string", single_action("5"), (InputError, "action must be one int")),
    ("action wrong shape", single_action(np.array([1, 2])), (InputError, "action must be one int")),
    ("actions out of range (vector)", vector_actions(np.array([0, 10**6])), (InputError, r"actions must be token ids in \[0")),
    ("actions float (vector)", vector_actions(np.array([0.0, 1.0])), (InputError, "actions must be an integer array.*float64")),
    ("actions wrong shape (vector)", vector_actions(np.array([1, 2, 3])), (InputError, r"actions.*shape \(2,\).*got shape \(3,\)")),
    ("actions ragged (vector)", vector_actions([[1], [2, 3]]), (InputError, "actions must be an integer array")),
    ("reset(options={'prompt': ...})", forced_prompt, RUNS),
    ("reset unknown option (single)", reset_options({"prompts": ["x"]}), (InputError, r"unknown key\(s\) \['prompts'\].*'prompt'")),
    ("reset unknown option (vector)", reset_options({"prompt": "x"}, vector=True), (InputError, r"unknown key\(s\) \['prompt'\]")),
    ("reset prompts as a str (vector)", reset_options({"prompts": "ab"}, vector=True), (InputError, r"options\['prompts'\] must be a list")),
    ("SB3 PPO('MultiInputPolicy', env)", sb3_policy("MultiInputPolicy"), RUNS),
    ("SB3 PPO('MlpPolicy', env)", sb3_policy("MlpPolicy"), (ValueError, "MultiInputPolicy")),
    ("SB3 PPO('MlpPolicy', FlattenObservation(env))", sb3_policy("MlpPolicy", flatten=True), RUNS),
    ("SB3 make_vec_env + PPO('MultiInputPolicy')", sb3_make_vec_env, RUNS),
    ("TextGenSB3VecEnv + PPO('MultiInputPolicy')", sb3_adapter_generic_policy, RUNS),
    ("TextGenSB3VecEnv + PPO(TextGenActorCriticPolicy)", sb3_adapter_textgen_policy, RUNS),
    ("TextGenSB3VecEnv over a next-step env", sb3_adapter_over_next_step_env, (InputError, "autoreset_mode='disabled'")),
]



@pytest.mark.parametrize(("way", "expected"), [(run, expected) for _, run, expected in WAYS],
                         ids=[name for name, _, _ in WAYS])
def test_way_runs_or_refuses_clearly(way: Callable[[dict[str, Any]], None], expected: Any,
                                     kwargs: dict[str, Any]) -> None:
    with time_limit(IN_PROCESS_LIMIT):
        if expected is RUNS:
            way(kwargs)
        else:
            error_type, message = expected
            with pytest.raises(error_type, match=message):
                way(kwargs)


# ---------------------------------------------------------------------------------------------- worker processes
def run_script(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in its own process group; a hang fails after
    :data:`SUBPROCESS_LIMIT` seconds and kills the whole group (the worker processes too)."""
    with subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=SUBPROCESS_LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"hung: no answer after {SUBPROCESS_LIMIT} s")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


ASYNC_SCRIPT = """
    import sys
    import gymnasium as gym, numpy as np, torch
    import textenv

    def letters(prompts, completions):
        return [float(sum(c.isalpha() for c in text)) for text in completions]

    def main():
        torch.set_num_threads(2)  # a parent whose OpenMP pool is running: the case where forking used to hang
        kw = dict(model={model!r}, prompts=["the film was", "the book"], reward_model=letters, max_new_tokens=3,
                  device="cpu")
        x = torch.randn(256, 256)
        (x @ x).sum()
        envs = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="async",
                            vector_kwargs={vector_kwargs}, **kw)
        envs.reset(seed=0)
        for _ in range(4):
            _, reward, terminated, truncated, info = envs.step(np.array([5, 5]))
            if "_text" in info and info["_text"].all():
                print("ended", list(reward))
        envs.close()
        print("OK", type(envs).__name__)

    if __name__ == "__main__":
        main()
"""


def async_env(tiny_model_dir: Path, vector_kwargs: dict[str, Any]) -> None:
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    out = run_script(ASYNC_SCRIPT.format(model=str(tiny_model_dir), vector_kwargs=vector_kwargs), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK AsyncVectorEnv" in out.stdout and "ended" in out.stdout


def test_make_vec_async_fork_does_not_hang(tiny_model_dir: Path) -> None:
    """The default ``"fork"`` context after torch ran in the parent (AsyncVectorEnv builds one env there first):
    the workers used to hang forever in torch's OpenMP pool."""
    async_env(tiny_model_dir, {})


@pytest.mark.slow
@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_make_vec_async_spawn_and_forkserver(tiny_model_dir: Path, context: str) -> None:
    async_env(tiny_model_dir, {"context": context})


@pytest.mark.slow
def test_sb3_subproc_vec_env(tiny_model_dir: Path) -> None:
    code = f"""
        import gymnasium as gym
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import SubprocVecEnv
        import textenv

        if __name__ == "__main__":
            kw = dict(model={str(tiny_model_dir)!r}, prompts=["the film was", "the book"], reward_model="vader",
                      max_new_tokens=3, device="cpu")
            # The workers import nothing of the parent: the module-prefixed id imports textenv there.
            venv = make_vec_env("textenv:TextGen-v0", n_envs=2, env_kwargs=kw, vec_env_cls=SubprocVecEnv)
            PPO("MultiInputPolicy", venv, n_steps=4, batch_size=8, n_epochs=1).learn(8)
            venv.close()
            print("OK")
    """
    out = run_script(code)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
