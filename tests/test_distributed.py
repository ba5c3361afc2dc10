"""Data-parallel training under torchrun (:mod:`textenv.distributed`): 2 processes with gloo on this CPU.

The slow tests launch ``torchrun --standalone --nproc-per-node 2`` on this file's worker (``python
tests/test_distributed.py worker ...``, at the bottom) with the tiny model. Every rank records a hash of its weights
after every optimizer step, its own token counts and what it wrote; the tests compare the ranks: bit-identical
weights after every update, a global token count that is the sum of the ranks', β and the metrics the same on every
rank, different rollouts on each rank (its own seed), files written by rank 0 only, and a resume under 2 processes
that ends exactly where the uninterrupted run did. A checkpoint of 2 processes is refused in 1 (and the reverse).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The agents the 2-process run trains (one launch), with their hyper-parameters and env group size.
AGENTS: dict[str, tuple[dict[str, Any], int]] = {
    "ppo": ({"target_kl": 0.05, "num_minibatches": 2, "autocast_dtype": "float16"}, 1),  # target_kl: early stopping
    # must agree over ranks; float16: the loss-scaled update (GradScaler) keeps the ranks identical too
    "rloo": ({}, 2),  # groups of K = 2 inside each rank
    "reinforce": ({"baseline": "running"}, 1),
    "grpo": ({}, 2),
    "sft": ({"demonstrations": ["the film was good", "the book was a delight", "this blender is loud",
                                "i liked the pasta at the cafe", "the film was long"], "batch_size": 2}, 1),
}
#: The agents whose rollouts move the adaptive β (SFT runs none).
ROLLOUT_AGENTS = ("ppo", "rloo", "reinforce", "grpo")
ITERATIONS = 3  # per agent in the uninterrupted run
RESUME_AT = 1  # the checkpoint the resumed run starts from
PROMPTS = ["the film was", "i liked the pasta at the", "the book", "this blender"]


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` (a free port is picked by the standalone rendezvous)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def read_ranks(directory: Path) -> list[dict[str, Any]]:
    return [json.loads((directory / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """The uninterrupted 2-process run (saving a checkpoint at iteration RESUME_AT) and the run resumed from it."""
    out = tmp_path_factory.mktemp("ddp")
    torchrun(__file__, "worker", str(tiny_model_dir), str(out / "straight"))
    torchrun(__file__, "worker", str(tiny_model_dir), str(out / "resumed"), "--resume", str(out / "straight"))
    return {"straight": out / "straight", "resumed": out / "resumed"}


@pytest.mark.slow
def test_two_ranks_keep_bit_identical_weights_after_every_update(two_process_runs):
    ranks = read_ranks(two_process_runs["straight"] / "results")
    for name in AGENTS:
        first, second = (r[name] for r in ranks)
        assert len(first["step_hashes"]) >= ITERATIONS  # at least one optimizer step per iteration
        assert first["step_hashes"] == second["step_hashes"]
        assert first["local_data"] != second["local_data"]  # each rank sampled its own episodes/batches (seed + rank)


@pytest.mark.slow
def test_token_count_is_global_and_ranks_agree_on_metrics_and_beta(two_process_runs):
    ranks = read_ranks(two_process_runs["straight"] / "results")
    for name in AGENTS:
        first, second = (r[name] for r in ranks)
        global_tokens = sum(first["local_tokens"]) + sum(second["local_tokens"])
        assert first["num_timesteps"] == second["num_timesteps"] == global_tokens
        assert first["iterations"] == second["iterations"] == ITERATIONS
        assert first["kl_coef"] == second["kl_coef"]
        assert (first["kl_coef"] != 0.05) == (name in ROLLOUT_AGENTS)  # the adaptive β moved, the same on both ranks
        assert first["last_metrics"] == second["last_metrics"]


@pytest.mark.slow
def test_only_rank_zero_writes_files(two_process_runs):
    ranks = read_ranks(two_process_runs["straight"] / "results")
    for name in AGENTS:
        run = two_process_runs["straight"] / name
        events = sorted(p.name for p in (run / "tensorboard").iterdir())
        assert len(events) == 1 and events[0].split(".")[-2] == str(ranks[0]["pid"])  # rank 0's process wrote it
        meta = json.loads((run / "checkpoint" / "agent.json").read_text())
        assert meta["world_size"] == 2 and meta["iterations"] == ITERATIONS
        state = json.loads((run / "checkpoint" / "trainer_state.json").read_text())["state"]
        assert state["world_size"] == 2 and len(state["ranks"]) == 2


@pytest.mark.slow
def test_resume_under_two_processes_is_exact(two_process_runs):
    straight = read_ranks(two_process_runs["straight"] / "results")
    resumed = read_ranks(two_process_runs["resumed"] / "results")
    for name in AGENTS:
        for rank in range(2):
            a, b = straight[rank][name], resumed[rank][name]
            steps_before = a["steps_at_resume"]
            assert b["step_hashes"] == a["step_hashes"][steps_before:]  # every later update, bit for bit
            assert (b["num_timesteps"], b["iterations"], b["kl_coef"]) == (a["num_timesteps"], a["iterations"],
                                                                            a["kl_coef"])
            assert b["last_metrics"] == a["last_metrics"]


@pytest.mark.slow
def test_the_ensemble_reward_normaliser_agrees_on_both_ranks(two_process_runs):
    """A normalising ensemble's running statistics (count, mean, M2 per member) are identical on both ranks after
    training and cover both ranks' episodes (each rank alone scored half of them)."""
    first, second = (r["ensemble"] for r in read_ranks(two_process_runs["straight"] / "results"))
    assert first["statistics"] == second["statistics"]
    count = first["statistics"][0]
    assert count == [float(first["episodes"] + second["episodes"])] * 2
    assert first["local_rewards"] != second["local_rewards"]  # different batches, normalised alike


@pytest.mark.slow
def test_a_two_process_checkpoint_is_refused_in_one_process(two_process_runs, tiny_model_dir):
    from textenv.agents.base import Agent
    from textenv.validation import InputError

    env = make_env(tiny_model_dir, 1)
    with pytest.raises(InputError, match=r"run of 2 processes, and this run has 1.*--nproc-per-node 2"):
        Agent.load(two_process_runs["straight"] / "ppo" / "checkpoint", env)


@pytest.mark.slow
def test_textenv_train_under_torchrun(tmp_path, tiny_model_dir):
    """The CLI under torchrun (`python -m textenv train`): summary.json records world_size; a 1-process run's
    checkpoint and an SB3 agent are refused under 2 processes, before any model loads."""
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"env": {"model": str(tiny_model_dir), "num_envs": 4, "max_new_tokens": 4,
                                          "prompts": PROMPTS}, "eval_prompts": 2}))
    output = tmp_path / "run"
    result = torchrun("-m", "textenv", "train", "--agent", "reinforce", "--total-timesteps", "40", "--config",
                      str(config), "--output", str(output), "--no-progress")
    assert result.stdout.count("textenv train: agent=reinforce") == 1  # rank 0 prints, once
    summary = json.loads((output / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["num_timesteps"] >= 40
    assert len(list((output / "tensorboard").iterdir())) == 1

    single = tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "textenv", "train", "--total-timesteps", "8", "--config", str(config),
                    "--output", str(single), "--no-progress"], check=True, capture_output=True, env=env, cwd=ROOT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "textenv",
               "train", "--resume", str(single / "checkpoint")]
    refused = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert refused.returncode != 0
    assert "run of 1 process, and this run has 2" in refused.stderr + refused.stdout

    sb3 = [*command[:-3], "train", "--agent", "sb3-ppo", "--config", str(config), "--output", str(tmp_path / "sb3")]
    refused = subprocess.run(sb3, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert refused.returncode != 0 and not (tmp_path / "sb3").exists()  # refused before the run directory
    assert "SB3 trains in one process only; this run has 2" in refused.stderr + refused.stdout


@pytest.mark.slow
def test_textenv_train_with_fsdp_under_torchrun(tmp_path, tiny_model_dir, capsys):
    """`textenv train --sharding fsdp --dtype float32` under torchrun finishes (held-out evaluation before and
    after on both ranks, checkpoints gathered from the shards), rank 0 writes one checkpoint and one events file,
    and --resume continues it under FSDP; resuming it with --sharding ddp is refused."""
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"env": {"model": str(tiny_model_dir), "num_envs": 4, "max_new_tokens": 4,
                                          "prompts": PROMPTS}, "eval_prompts": 2, "checkpoint_every": 1}))
    output = tmp_path / "run"
    common = ["-m", "textenv", "train", "--config", str(config), "--no-progress"]
    result = torchrun(*common, "--agent", "ppo", "--sharding", "fsdp", "--dtype", "float32", "--total-timesteps",
                      "40", "--output", str(output), timeout=120)
    assert result.stdout.count("held-out after:") == 1 and "world_size=2" in result.stdout
    summary = json.loads((output / "summary.json").read_text())
    meta = json.loads((output / "checkpoint" / "agent.json").read_text())
    assert summary["world_size"] == meta["world_size"] == 2 and meta["hyperparameters"]["sharding"] == "fsdp"
    assert meta["env"]["dtype"] == "float32" and meta["num_timesteps"] == summary["num_timesteps"] >= 40
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint", "summary.json", "tensorboard"]
    assert len(list((output / "tensorboard").iterdir())) == 1

    resumed = torchrun(*common, "--resume", str(output / "checkpoint"), "--total-timesteps", "80", timeout=120)
    assert f"resumed from {output / 'checkpoint'} at step {meta['num_timesteps']}" in resumed.stdout
    assert json.loads((output / "checkpoint" / "agent.json").read_text())["num_timesteps"] >= 80
    from textenv.apps.cli import main

    assert main(["train", "--config", str(config), "--resume", str(output / "checkpoint"), "--sharding", "ddp"]) == 2
    assert "trained with sharding='fsdp', and this run asks for sharding='ddp'" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_and_exits(tmp_path, tiny_model_dir):
    """SIGINT to torchrun's process group (Ctrl-C in its terminal) while training: torchrun passes it to the
    workers, the ranks agree to stop after the iteration in progress, rank 0 saves, and everything exits within
    seconds; the checkpoint is complete (its manifest verifies) and summary.json says how far it got."""
    import signal
    import time

    from textenv.agents.base import CHECKPOINT_KIND, read_checkpoint_meta
    from textenv.checkpoint import verify_directory

    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"env": {"model": str(tiny_model_dir), "num_envs": 4, "max_new_tokens": 4,
                                          "prompts": PROMPTS}, "eval_prompts": 2, "checkpoint_every": 1}))
    output = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "textenv", "train", "--config", str(config), "--total-timesteps", "10000000", "--output", str(output),
               "--no-progress"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (output / "checkpoint" / "agent.json").exists():
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.2)
        saved_before = read_checkpoint_meta(output / "checkpoint")["num_timesteps"]
        os.killpg(process.pid, signal.SIGINT)
        stopped = time.monotonic()
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert time.monotonic() - stopped < 60
    assert process.returncode != 0  # torchrun reports the signal
    assert "interrupted at" in stderr and "--resume" in stderr
    verify_directory(output / "checkpoint", CHECKPOINT_KIND)
    meta = read_checkpoint_meta(output / "checkpoint")
    summary = json.loads((output / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["world_size"] == meta["world_size"] == 2
    assert summary["checkpoint_num_timesteps"] == meta["num_timesteps"] >= saved_before
    assert not [p for p in output.iterdir() if p.name not in ("checkpoint", "summary.json", "tensorboard")]


def test_sb3_agents_refuse_more_than_one_process(monkeypatch):
    pytest.importorskip("stable_baselines3")
    from textenv import distributed
    from textenv.agents.sb3.agents import refuse_data_parallel
    from textenv.validation import InputError

    refuse_data_parallel("sb3-ppo")  # one process: fine
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(InputError, match="sb3-ppo.*one process only; this run has 2"):
        refuse_data_parallel("sb3-ppo")


def test_the_ensemble_normaliser_is_checkpointed_for_an_exact_resume(tiny_model_dir, tmp_path, length_reward):
    """A normalising ensemble's running statistics are saved with the checkpoint: a run resumed from it on a
    fresh env (a fresh ensemble) continues with the same statistics and the same weights as the run that went
    on."""
    import numpy as np

    from textenv.agents import make_agent
    from textenv.agents.base import Agent
    from textenv.vector_env import TextGenVectorEnv

    def env():
        return TextGenVectorEnv(num_envs=4, model=str(tiny_model_dir), kl_coef=0.05, autoreset_mode="disabled",
                                device="cpu", max_new_tokens=6, prompts=PROMPTS,
                                reward_model=f"ensemble-normalized:1*vader+1*{length_reward}")

    straight = make_agent("reinforce", env(), seed=0)
    straight.learn(1, progress_bar=False, checkpoint_dir=tmp_path / "checkpoint")
    straight.learn(straight.num_timesteps + 1, progress_bar=False)
    resumed = Agent.load(tmp_path / "checkpoint", env())
    resumed.learn(resumed.num_timesteps + 1, progress_bar=False)
    for key, value in straight.env.reward_model.running_state().items():
        assert np.array_equal(value, resumed.env.reward_model.running_state()[key]), key
    assert straight.env.reward_model.running_state()["count"].tolist() == [8.0, 8.0]
    assert weights_hash(straight) == weights_hash(resumed)


def test_one_process_helpers_are_the_identity():
    """Without torchrun nothing is initialised and every collective helper returns its input unchanged."""
    from textenv import distributed

    assert (distributed.world_size(), distributed.rank(), distributed.rank_seed(7)) == (1, 0, 7)
    assert distributed.sum_int(5) == 5 and distributed.mean_float(0.25) == 0.25
    assert distributed.mean_metrics({"a": 1.5}) == {"a": 1.5} and distributed.gather_state({"x": 1}) == [{"x": 1}]


# ---------------------------------------------------------------------------------------------- the worker
def make_env(model_dir: Path, group_size: int):
    from textenv.vector_env import TextGenVectorEnv

    return TextGenVectorEnv(num_envs=4, model=str(model_dir), kl_coef=0.05, target_kl=0.01, kl_horizon=100,
                            group_size=group_size, autoreset_mode="disabled", device="cpu", max_new_tokens=6,
                            prompts=PROMPTS, reward_model=reward)


def reward(prompts: list[str], completions: list[str]) -> list[float]:
    """Occurrences of " the" plus a little for length: rewards that differ between episodes."""
    return [float(c.count(" the")) + len(c) / 50 for c in completions]


def weights_hash(agent) -> str:
    digest = hashlib.sha256()
    for module in [agent.policy, *agent.trainable_modules().values()]:
        for key, value in module.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_one(name: str, model_dir: Path, out: Path, resume_from: Path | None) -> dict[str, Any]:
    """Train agent ``name`` for ITERATIONS iterations (one ``learn`` call each, checkpointing every time) on this
    rank, from scratch or from ``resume_from``'s checkpoint at RESUME_AT; record what the tests compare."""
    import torch

    from textenv import distributed
    from textenv.agents import agent_class, make_agent

    hyperparameters, group_size = AGENTS[name]
    env = make_env(model_dir, group_size)
    run = out / name
    if resume_from is None:
        agent = make_agent(name, env, seed=0, tensorboard_log=str(run / "tensorboard"), **hyperparameters)
    else:
        agent = agent_class(name).load(resume_from / name / f"checkpoint-{RESUME_AT}", env)
        agent.tensorboard_log = str(run / "tensorboard")
    record: dict[str, Any] = {"step_hashes": [], "local_data": [], "local_tokens": []}
    for optimizer in agent.optimizers().values():
        optimizer.register_step_post_hook(lambda *_: record["step_hashes"].append(weights_hash(agent)))
    iteration = agent.train_iteration

    def recorded_iteration() -> dict[str, float]:
        metrics = iteration()
        record["local_tokens"].append(int(metrics["num_tokens"]))
        record["local_data"].append(metrics.get("rollout/reward", metrics["train/loss"]))  # before the mean over ranks
        return metrics

    agent.train_iteration = recorded_iteration
    while agent.iterations < ITERATIONS:
        agent.learn(agent.num_timesteps + 1, progress_bar=False, checkpoint_dir=run / "checkpoint")
        if agent.iterations == RESUME_AT and resume_from is None:
            record["steps_at_resume"] = len(record["step_hashes"])
            agent.save(run / f"checkpoint-{RESUME_AT}")
    assert torch.distributed.is_initialized() and distributed.world_size() == 2
    return {**record, "num_timesteps": agent.num_timesteps, "iterations": agent.iterations,
            "kl_coef": env.kl_controller_state()["kl_coef"], "last_metrics": {
                k: v for k, v in agent.last_metrics.items() if k != "time/tokens_per_s"}}


def train_ensemble(model_dir: Path) -> dict[str, Any]:
    """REINFORCE for 2 iterations on a normalising ensemble (the test reward and the completion length); this
    rank's normaliser statistics, its number of scored episodes and its rewards."""
    from textenv.agents import make_agent
    from textenv.reward_models import EnsembleReward

    env = make_env(model_dir, 1)
    env.reward_model = EnsembleReward([reward, lambda p, c: [float(len(x)) for x in c]], normalize=True)
    agent = make_agent("reinforce", env, seed=0)
    rewards, iteration = [], agent.train_iteration

    def recorded_iteration() -> dict[str, float]:
        metrics = iteration()
        rewards.append(metrics["rollout/reward"])  # this rank's, before the mean over ranks
        return metrics

    agent.train_iteration = recorded_iteration
    while agent.iterations < 2:
        agent.learn(agent.num_timesteps + 1, progress_bar=False)
    normaliser = env.reward_model
    return {"statistics": [normaliser._count.tolist(), normaliser._mean.tolist(), normaliser._m2.tolist()],
            "episodes": 2 * env.num_envs, "local_rewards": rewards}


def worker(argv: list[str]) -> None:
    """``python tests/test_distributed.py worker MODEL_DIR OUT [--resume STRAIGHT_OUT]`` under torchrun."""
    import torch

    from textenv import distributed

    torch.set_num_threads(1)
    model_dir, out = Path(argv[0]), Path(argv[1])
    resume_from = Path(argv[3]) if len(argv) > 3 and argv[2] == "--resume" else None
    distributed.init_from_environment()
    results = {name: train_one(name, model_dir, out, resume_from) for name in AGENTS}
    if resume_from is None:
        results["ensemble"] = train_ensemble(model_dir)
    results["pid"] = os.getpid()
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / f"rank{distributed.rank()}.json").write_text(json.dumps(results))
    distributed.shutdown()
    # Everything is written and the process group is gone. On a loaded machine about one run in five of this worker
    # (many agents and a normalising ensemble in one process) then aborted in the interpreter's teardown with a C++
    # "terminate called without an active exception" (std::terminate); the cause is not found yet. Leave without
    # that teardown so the test asserts what the run computed, not how the interpreter exits.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(sys.argv[2:])
