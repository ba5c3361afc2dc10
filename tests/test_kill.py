"""Kill test: a training process that checkpoints every iteration, killed with SIGKILL at random moments, always
leaves a loadable checkpoint (the latest or the one before), and the next save leaves no litter beside it.

The test starts this file as a script (the *runner*). The runner imports textenv once and then, for every
round, forks a child that resumes from the checkpoint (or starts fresh when there is none yet) and trains
forever with ``checkpoint_every=1``; after a delay drawn from a seeded RNG the runner kills the child with
SIGKILL: in even rounds at any moment of training, in odd rounds within 120 ms after a save started (saves of
the tiny model take about 100 ms), so many kills land during a save. Children log what they did (one JSON line
per event, appended to a log file) and the test checks the log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROUNDS = 20
SEED = 20240611
MAX_DELAY = 0.4  # seconds after the child started training (even rounds; odd rounds aim at a save)


# ================================================================================== the runner (a script)
def log_event(log: Path, round_: int, event: str, **fields: Any) -> None:
    """Append one JSON line (a single write: lines of killed processes are never torn)."""
    line = json.dumps({"round": round_, "event": event, "pid": os.getpid(), **fields}) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def train_forever(round_: int, model_dir: str, ckpt: Path, log: Path) -> None:
    """The child: resume (or start), then train with a checkpoint after every iteration until killed."""
    from textenv.agents import Reinforce
    from textenv.validation import InputError
    from textenv.vector_env import TextGenVectorEnv

    class LoggedReinforce(Reinforce):
        def save(self, path: str | Path) -> None:
            log_event(log, round_, "save-start", iterations=self.iterations)
            super().save(path)
            litter = sorted(p.name for p in Path(path).parent.iterdir() if p.name != Path(path).name)
            log_event(log, round_, "saved", iterations=self.iterations, litter=litter)

    env = TextGenVectorEnv(num_envs=2, model=model_dir, prompts=["the film was", "the book"], max_new_tokens=4,
                           kl_coef=0.0, reward_model=lambda p, c: [text.count("e") / 8 for text in c],
                           autoreset_mode="disabled", device="cpu")
    agent = LoggedReinforce(env, learning_rate=1e-3, seed=0)
    crash_window = not ckpt.exists() and (ckpt.parent / f".{ckpt.name}.old").exists()
    try:
        agent.load_state(ckpt)
        log_event(log, round_, "loaded", iterations=agent.iterations, crash_window=crash_window)
    except InputError as err:
        log_event(log, round_, "load-failed", error=str(err))
        if "does not exist" not in str(err):
            return
    log_event(log, round_, "started")
    agent.learn(10**12, progress_bar=False, checkpoint_dir=ckpt, checkpoint_every=1)


def run_rounds(model_dir: str, ckpt: Path, log: Path) -> None:
    """The runner: fork a child per round and SIGKILL it after a seeded random delay."""
    import torch
    from transformers.utils import logging as hf_logging

    import textenv.agents  # noqa: F401  (imported once, before forking)

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    delays = random.Random(SEED)
    for round_ in range(ROUNDS):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                train_forever(round_, model_dir, ckpt, log)
            except BaseException as err:  # noqa: BLE001  (a bug: the test reports it)
                log_event(log, round_, "error", error=f"{type(err).__name__}: {err}")
            finally:
                os._exit(code)
        if round_ % 2:  # aim at a save: a random moment within the first 120 ms after the n-th save started
            status = wait_for_event(log, round_, pid, "save-start", delays.randint(1, 3))
            delay = delays.uniform(0.0, 0.12)
        else:  # any moment of training
            status = wait_for_event(log, round_, pid, "started")
            delay = delays.uniform(0.0, MAX_DELAY)
        if status is None:  # still running: kill it after the delay
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        log_event(log, round_, "killed" if killed else "exited", delay=delay, status=status)


def wait_for_event(log: Path, round_: int, pid: int, event: str, count: int = 1, timeout: float = 60.0) -> int | None:
    """Wait until the child of ``round_`` logged ``event`` ``count`` times (``None``) or exited (its wait status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and sum(e["round"] == round_ and e["event"] == event for e in read_log(log)) >= count:
            return None
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            return status
        time.sleep(0.002)
    return None


def read_log(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


# ================================================================================== the test
@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(tiny_model_dir, tmp_path):
    ckpt, log = tmp_path / "run" / "checkpoint", tmp_path / "events.jsonl"
    ckpt.parent.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, __file__, str(tiny_model_dir), str(ckpt), str(log)], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_log(log)
    errors = [e for e in events if e["event"] in ("error", "exited")]
    assert not errors, errors

    on_disk = None  # the iteration count the checkpoint on disk is known to hold (None: no checkpoint yet)
    kills = kills_in_saves = loads = recoveries = saves = 0
    for round_ in range(ROUNDS):
        mine = [e for e in events if e["round"] == round_]
        loaded = [e for e in mine if e["event"] in ("loaded", "load-failed")][0]
        if loaded["event"] == "load-failed":
            assert on_disk is None and "does not exist" in loaded["error"], loaded  # only before the first save
        else:
            # the latest save, or the one in progress at the kill when it had already been swapped in
            assert on_disk is not None and loaded["iterations"] in (on_disk, on_disk + 1), (loaded, on_disk)
            on_disk, loads, recoveries = loaded["iterations"], loads + 1, recoveries + loaded["crash_window"]
        for event in mine:
            if event["event"] == "saved":
                assert event["litter"] == [], json.dumps(event)  # nothing beside the checkpoint after a save
                on_disk, saves = event["iterations"], saves + 1
        assert mine[-1]["event"] == "killed", mine[-1]
        kills += 1
        kills_in_saves += [e["event"] for e in mine[:-1]][-1] == "save-start"

    assert kills == ROUNDS >= 10 and loads >= ROUNDS // 2 and saves >= ROUNDS // 2
    assert kills_in_saves >= ROUNDS // 4, f"only {kills_in_saves} of {kills} kills landed during a save"

    # The last kill's checkpoint loads here too, and the next save leaves nothing beside it.
    from textenv.agents import Reinforce
    from textenv.vector_env import TextGenVectorEnv

    agent = Reinforce(TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=["the film was", "the book"],
                                       max_new_tokens=4, kl_coef=0.0, reward_model=lambda p, c: [0.0] * len(c),
                                       autoreset_mode="disabled", device="cpu"), learning_rate=1e-3)
    agent.load_state(ckpt)
    assert agent.iterations in (on_disk, on_disk + 1)
    agent.save(ckpt)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["checkpoint"]
    print(f"kill test: {kills} kills, {kills_in_saves} during a save, {recoveries} crash-window recoveries, "
          f"{saves} saves, {loads} loads")


if __name__ == "__main__":
    run_rounds(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
