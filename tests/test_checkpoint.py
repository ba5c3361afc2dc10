"""Checkpoints: the pickle-free state codec, atomic directories that never delete what textenv did not write,
crash-window recovery and litter cleanup, checked resume, and Ctrl-C during ``learn``."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RunsWhenUnpickled
from conftest import small_env as make_env

import textenv.checkpoint as checkpoint
from textenv.agents import PPO, Agent, Reinforce
from textenv.agents.base import TRAINER_STATE_FILES, TrainingInterrupted
from textenv.checkpoint import (
    MANIFEST_NAME,
    atomic_directory,
    decode_state,
    discard_files,
    encode_state,
    read_manifest,
    read_state,
    write_state,
)
from textenv.validation import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")






def params(agent: Agent) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in agent.policy.parameters()])


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path → bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def same(a, b) -> bool:
    """Exact equality, types included, through nested containers, tensors and arrays."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and np.isnan(a):
        return np.isnan(b)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return a == b and (not isinstance(a, float) or np.copysign(1, a) == np.copysign(1, b))


# ================================================================================== the codec
def everything() -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(3)
    big_endian = np.arange(4, dtype=">i4")
    return {
        "none": None, "true": True, "false": False, "int": -7, "big_int": 2**200 + 1, "neg_big": -(2**64),
        "float": 0.1, "neg_zero": -0.0, "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"),
        "str": "é ☃ \"quoted\"", "list": [1, [2, (3, 4)], {"a": None}], "tuple": (1, "two", (3.0,)),
        "empty": ((), [], {}),
        "int_keys": {0: "a", 7: {"b": 1}}, "mixed_keys": {0: 1, "0": 2, (1, 2): 3, None: 4, 2.5: 5, True: 6},
        "tag_key": {"__textenv__": "tuple", "items": []},
        "tensors": [torch.arange(5, dtype=torch.float32), torch.tensor(2.5, dtype=torch.float64),
                    torch.zeros(0, 3), torch.tensor([True, False]), torch.ones(2, 2, dtype=torch.bfloat16),
                    torch.arange(6, dtype=torch.int64).reshape(2, 3).t(), torch.tensor([1, 2], dtype=torch.uint8),
                    torch.randn(3, requires_grad=True)],
        "arrays": [np.arange(5, dtype=np.uint32) * 1_000_000_000, np.array([2**64 - 1], dtype=np.uint64),
                   np.array([65535], dtype=np.uint16), np.array([True, False]), np.float64(np.pi) * np.ones((2, 2)),
                   np.arange(10, dtype=np.int8)[::3], np.array(3.5), big_endian, np.zeros((0,), np.float32)],
        "scalars": [np.float64(1 / 3), np.float32(0.1), np.int64(-5), np.bool_(True), np.uint32(4_000_000_000),
                    np.uint64(2**64 - 1), np.float64("nan"), np.float16(0.5)],
        "numpy_rng": np.random.RandomState(5).get_state(),
        "pcg64": np.random.default_rng(9).bit_generator.state,
        "python_rng": random.Random(4).getstate(),
        "torch_rng": torch.get_rng_state(), "generator": generator.get_state(),
        "optimizer": optimizer.state_dict(),
    }


def expected_after_round_trip(value):
    """What decoding gives back: tensors detached on the CPU, arrays in native byte order; the rest as is."""
    if isinstance(value, torch.Tensor):
        return value.detach().contiguous()
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("="))
    if isinstance(value, list):
        return [expected_after_round_trip(v) for v in value]
    if type(value) is tuple:
        return tuple(expected_after_round_trip(v) for v in value)
    if isinstance(value, dict):
        return {k: expected_after_round_trip(v) for k, v in value.items()}
    return value


def test_codec_round_trips_every_type_exactly(tmp_path):
    state = everything()
    write_state(tmp_path, "state", state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    loaded = read_state(tmp_path, "state")
    expected = expected_after_round_trip(state)
    for key in expected:
        assert same(loaded[key], expected[key]), key
    assert loaded["arrays"][0].dtype == np.uint32 and loaded["arrays"][7].dtype == np.dtype("int32")
    json.loads((tmp_path / "state.json").read_text())  # plain JSON: no NaN literals, big ints as strings
    assert "NaN" not in (tmp_path / "state.json").read_text()


def test_decoded_rng_states_continue_the_same_streams(tmp_path):
    rs, rng, py, gen = np.random.RandomState(1), np.random.default_rng(2), random.Random(3), torch.Generator()
    rs.random(7), rng.random(7), py.random(), torch.rand(3, generator=gen)  # move every stream along
    write_state(tmp_path, "rng", {"rs": rs.get_state(), "pcg": rng.bit_generator.state, "py": py.getstate(),
                                  "gen": gen.get_state()})
    expected = (rs.random(5).tolist(), rng.random(5).tolist(), py.random(), torch.rand(3, generator=gen))
    state = read_state(tmp_path, "rng")
    rs.set_state(state["rs"])
    rng.bit_generator.state = state["pcg"]
    py.setstate(state["py"])
    gen.set_state(state["gen"])
    got = (rs.random(5).tolist(), rng.random(5).tolist(), py.random(), torch.rand(3, generator=gen))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


@pytest.mark.parametrize("name", ["ppo", "sb3-ppo", "reinforce"])
def test_every_agents_trainer_state_round_trips_exactly(tiny_model_dir, tmp_path, name):
    """The whole ``_trainer_state()``: optimizer state (int keys), every RNG state, β and its window, and the
    algorithm state (running baseline; SB3's episodes in progress: engine tensors, last obs, reset infos)."""
    from textenv.agents import make_agent

    kwargs = {"n_steps": 3, "batch_size": 6} if name == "sb3-ppo" else {}
    agent = make_agent(name, make_env(tiny_model_dir, max_new_tokens=5), learning_rate=1e-3, **kwargs)
    agent.learn(24, progress_bar=False)  # SB3: 2 rollouts of 3 steps, so episodes are in progress
    state = agent._trainer_state()
    write_state(tmp_path, "trainer_state", state)
    loaded = read_state(tmp_path, "trainer_state")
    expected = expected_after_round_trip(state)
    assert same(loaded, expected)
    if name == "sb3-ppo":
        assert loaded["extra"]["episodes"]["env"]["started"] and isinstance(loaded["numpy_rng"], tuple)


Point = namedtuple("Point", "x y")


@pytest.mark.parametrize(("value", "where"), [
    ({"a": {"b": object()}}, "/a/b"),
    ({"s": {1, 2}}, "/s"),
    ({"raw": b"bytes"}, "/raw"),
    ({"p": Point(1, 2)}, "/p"),
    ({"arr": np.array(["text"])}, "/arr"),
    ({"arr": np.array([1 + 2j])}, "/arr"),
    ({"t": torch.zeros(2, dtype=torch.complex64)}, "/t"),
    ({"f": lambda: 0}, "/f"),
])
def test_codec_refuses_what_it_cannot_store_exactly(value, where):
    with pytest.raises(TypeError, match=where):
        encode_state(value)


def test_decode_refuses_structures_the_encoder_never_writes():
    for bad in ({"__textenv__": "object", "class": "os.system"}, {"__textenv__": "tensor", "key": "missing"},
                {"__textenv__": "int", "value": "1e9"}, {"__textenv__": "ndarray", "key": "t", "dtype": "object"}):
        with pytest.raises(InputError, match="damaged checkpoint: state.json"):
            decode_state({"x": bad}, {"t": torch.zeros(1)}, "state.json")


# ================================================================================== pickles

def saved_agent(tiny_model_dir, path: Path, cls=Reinforce, **env_kwargs) -> Agent:
    agent = cls(make_env(tiny_model_dir, **env_kwargs), learning_rate=1e-3, seed=0)
    agent.learn(32, progress_bar=False)
    agent.save(path)
    return agent


def test_crafted_pickles_are_refused_and_never_run(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    saved_agent(tiny_model_dir, ckpt)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(RunsWhenUnpickled(marker), protocol=4)
    fresh = Reinforce(make_env(tiny_model_dir), learning_rate=1e-3)
    for name in ("trainer_state.json", "trainer_state.safetensors", "agent.json"):
        original = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(payload)
        with pytest.raises(InputError, match=f"{name}.*pickle.*never unpickles"):
            fresh.load_state(ckpt)
        (ckpt / name).write_bytes(original)
    (ckpt / "policy" / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(InputError, match=r"pickle files \(policy/pytorch_model.bin\)"):
        fresh.load_state(ckpt)
    torch.save({"payload": RunsWhenUnpickled(marker)}, ckpt / "trainer_state.pt")  # a torch.save zip of pickles
    with pytest.raises(InputError, match="pickle"):
        Reinforce.load(ckpt, make_env(tiny_model_dir))
    assert not marker.exists()


def test_old_checkpoint_with_trainer_state_pt_is_refused_with_the_way_forward(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "old"
    saved_agent(tiny_model_dir, ckpt)
    for name in TRAINER_STATE_FILES + (MANIFEST_NAME,):
        (ckpt / name).unlink()
    marker = tmp_path / "pwned"
    torch.save({"optimizers": {}, "payload": RunsWhenUnpickled(marker)}, ckpt / "trainer_state.pt")
    with pytest.raises(InputError, match="older textenv.*no longer unpickles.*can run arbitrary code") as err:
        Reinforce(make_env(tiny_model_dir)).load_state(ckpt)
    assert f"model: {ckpt / 'policy'}" in str(err.value)
    assert not marker.exists()
    # the suggested way forward works: a new run from the checkpoint's safetensors weights
    env = make_env(tiny_model_dir, model=str(ckpt / "policy"))
    Reinforce(env).learn(8, progress_bar=False)


# ================================================================================== never delete what is not ours
def test_agent_save_refuses_a_directory_with_tensorboard_events(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    agent = Reinforce(make_env(tiny_model_dir), tensorboard_log=str(run))
    agent.learn(8, progress_bar=False)  # writes events into run/
    before = snapshot(run)
    assert any("tfevents" in name for name in before)
    with pytest.raises(InputError, match=r"run holds files textenv did not write \(no textenv.json\): events"):
        agent.save(run)
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary directory either


def test_atomic_directory_replaces_only_its_own_kind_and_files(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target, kind="thing") as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"\0" * 10)
    manifest = read_manifest(target)
    assert manifest["kind"] == "thing" and set(manifest["files"]) == {"a.txt", "sub/b.bin"}
    assert manifest["files"]["sub/b.bin"]["size"] == 10
    with atomic_directory(target, kind="thing") as tmp:  # ours: replaced
        (tmp / "c.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt", MANIFEST_NAME]
    with pytest.raises(InputError, match="holds a textenv 'thing' directory"), atomic_directory(target, "other"):
        pass
    (target / "notes.md").write_text("mine")
    before = snapshot(target)
    with pytest.raises(InputError, match=r"holds files textenv did not write: notes.md"):
        with atomic_directory(target, kind="thing") as tmp:
            (tmp / "d.txt").write_text("3")
    assert snapshot(target) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty, kind="thing") as tmp:  # an empty directory may be written
        (tmp / "e.txt").write_text("4")
    assert (empty / "e.txt").read_text() == "4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]


def test_a_file_appearing_in_the_target_during_the_save_is_kept(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(InputError, match="late.txt"):
        with atomic_directory(target) as tmp:
            (tmp / "a").write_text("new")
            (target / "late.txt").write_text("user")
    assert (target / "late.txt").read_text() == "user" and (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_discard_files_updates_the_manifest_so_the_directory_stays_replaceable(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "step-1"
    agent = saved_agent(tiny_model_dir, ckpt)
    discard_files(ckpt, TRAINER_STATE_FILES)
    assert not any((ckpt / name).exists() for name in TRAINER_STATE_FILES)
    assert not set(TRAINER_STATE_FILES) & set(read_manifest(ckpt)["files"])
    with pytest.raises(InputError, match="holds no trainer_state.json.*weights only"):
        Reinforce(make_env(tiny_model_dir)).load_state(ckpt)
    agent.save(ckpt)  # still ours
    assert (ckpt / "trainer_state.json").is_file()


# ================================================================================== crash window and litter
def interrupted_swap(tmp_path: Path, monkeypatch, agent: Agent, ckpt: Path) -> None:
    """Save over ``ckpt`` and die right after the first rename (old → .ckpt.old), like a SIGKILL there."""
    real_replace = os.replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if Path(dst).name == f".{ckpt.name}.old":
            raise KeyboardInterrupt("killed between the renames")

    monkeypatch.setattr(checkpoint.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        agent.save(ckpt)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert not ckpt.exists() and (tmp_path / f".{ckpt.name}.old").is_dir()


def test_crash_between_renames_is_recovered_by_the_next_load(tiny_model_dir, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    agent = saved_agent(tiny_model_dir, ckpt)
    saved_params = params(agent)
    agent.learn(64, progress_bar=False)
    interrupted_swap(tmp_path, monkeypatch, agent, ckpt)
    resumed = Reinforce(make_env(tiny_model_dir), learning_rate=1e-3)
    resumed.load_state(ckpt)  # recovers .ckpt.old → ckpt, then loads the previous checkpoint
    assert torch.equal(params(resumed), saved_params)
    resumed.save(ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # the new save's temporary copy was litter


def test_crash_between_renames_is_recovered_by_the_next_save(tiny_model_dir, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    agent = saved_agent(tiny_model_dir, ckpt)
    agent.learn(64, progress_bar=False)
    interrupted_swap(tmp_path, monkeypatch, agent, ckpt)
    agent.save(ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert json.loads((ckpt / "agent.json").read_text())["num_timesteps"] == agent.num_timesteps


def test_next_save_removes_litter_of_killed_saves_and_nothing_else(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    agent = saved_agent(tiny_model_dir, ckpt)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def litter(name: str, marker: dict | None) -> Path:
            directory = tmp_path / name
            (directory / "policy").mkdir(parents=True)
            (directory / "policy" / "model.safetensors").write_bytes(b"partial")
            if marker is not None:
                marker = {"format": "textenv-directory", "version": 1, "kind": "agent_checkpoint", **marker}
                (directory / MANIFEST_NAME).write_text(json.dumps(marker))
            return directory

        def writing(pid: int) -> dict:
            return {"complete": False, "pid": pid, "host": socket.gethostname()}

        litter(".ckpt.tmp-killed", writing(dead_pid))
        litter(".ckpt.tmp-finished", {"files": {}})  # killed after writing, before its rename
        (tmp_path / ".ckpt.tmp-unmarked").mkdir()  # killed before its marker was written: empty
        in_use = litter(".ckpt.tmp-inuse", writing(alive.pid))  # another live process is writing it
        foreign = litter(".ckpt.tmp-user", None)  # no marker: not provably ours
        (tmp_path / ".ckpt.old").mkdir()  # a stale, emptied backup
        agent.save(ckpt)
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.tmp-inuse", ".ckpt.tmp-user", "ckpt"]
    assert (in_use / MANIFEST_NAME).is_file() and (foreign / "policy" / "model.safetensors").read_bytes() == b"partial"


# ================================================================================== checked resume
def test_resume_refuses_another_agent_type_and_changed_env_settings(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    saved_agent(tiny_model_dir, ckpt)
    with pytest.raises(InputError, match="holds a 'reinforce' agent, not 'ppo': --agent reinforce to resume it"):
        PPO(make_env(tiny_model_dir)).load_state(ckpt)
    with pytest.raises(InputError, match="holds a 'reinforce' agent"):
        PPO.load(ckpt, make_env(tiny_model_dir))
    with pytest.raises(InputError, match="max_new_tokens: saved 4, now 6"):
        Reinforce(make_env(tiny_model_dir, max_new_tokens=6)).load_state(ckpt)
    with pytest.raises(InputError, match=r"kl_coef: saved 0.05, now 0.1; num_envs: saved 4, now 8"):
        Reinforce.load(ckpt, make_env(tiny_model_dir, num_envs=8, kl_coef=0.1))
    loaded = Agent.load(ckpt, make_env(tiny_model_dir))  # the base class rebuilds the registered agent
    assert isinstance(loaded, Reinforce) and loaded.iterations > 0


def test_resume_refuses_a_missing_value_head(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    agent = saved_agent(tiny_model_dir, ckpt, cls=PPO)
    assert json.loads((ckpt / "agent.json").read_text())["modules"] == ["value_head"]
    (ckpt / "modules.safetensors").unlink()
    fresh = PPO(make_env(tiny_model_dir), learning_rate=1e-3)
    head = fresh.value_head.weight.detach().clone()
    with pytest.raises(InputError, match="modules.safetensors is missing.*value_head"):
        fresh.load_state(ckpt)
    assert torch.equal(fresh.value_head.weight, head) and fresh.iterations == 0  # nothing was half-loaded
    assert agent.iterations > 0


def test_an_option_newer_than_the_checkpoint_counts_as_its_default(tiny_model_dir, tmp_path):
    """agent.json of an earlier version lacks an option added since (lens_every): resuming with its default is no
    change, resuming with another value is."""
    ckpt = tmp_path / "ckpt"
    saved_agent(tiny_model_dir, ckpt)
    meta = json.loads((ckpt / "agent.json").read_text())
    del meta["hyperparameters"]["lens_every"]
    (ckpt / "agent.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Reinforce.load(ckpt, make_env(tiny_model_dir), learning_rate=1e-3)
    with pytest.warns(UserWarning, match=r"lens_every: saved 10, now 3"):
        Reinforce.load(ckpt, make_env(tiny_model_dir), learning_rate=1e-3, lens_every=3)


def test_changed_hyperparameters_apply_with_a_warning_and_are_recorded(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    saved_agent(tiny_model_dir, ckpt)
    with pytest.warns(UserWarning, match=r"learning_rate: saved 0.001, now 0.002"):
        resumed = Reinforce.load(ckpt, make_env(tiny_model_dir), learning_rate=2e-3)
    assert [group["lr"] for group in resumed.optimizer.param_groups] == [2e-3]  # not reverted by the optimizer state
    resumed.save(ckpt)
    assert json.loads((ckpt / "agent.json").read_text())["hyperparameters"]["learning_rate"] == 2e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Reinforce.load(ckpt, make_env(tiny_model_dir))  # same settings: no warning


def test_damaged_files_are_named(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    saved_agent(tiny_model_dir, ckpt, cls=PPO)
    modules = ckpt / "modules.safetensors"
    data = bytearray(modules.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the tensor data: the header still parses
    modules.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged checkpoint: .*modules.safetensors: its SHA-256 differs"):
        PPO(make_env(tiny_model_dir)).load_state(ckpt)


# ================================================================================== Ctrl-C
def interrupt_after(agent: Agent, iterations: int, times: int = 1) -> None:
    """Send SIGINT ``times`` from inside ``train_iteration`` number ``iterations`` (as a user's Ctrl-C)."""
    original = agent.train_iteration

    def train_iteration():
        metrics = original()
        if agent.iterations + 1 == iterations:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return metrics

    agent.train_iteration = train_iteration


def test_ctrl_c_saves_and_resuming_is_bit_identical(tiny_model_dir, tmp_path):
    def build(seed=0):
        return Reinforce(make_env(tiny_model_dir, target_kl=0.5, kl_horizon=100), learning_rate=3e-3, seed=seed)

    total = 6 * 16  # 6 iterations of 4 rows x 4 tokens
    uninterrupted = build()
    uninterrupted.learn(total, progress_bar=False)

    handler = signal.getsignal(signal.SIGINT)
    interrupted = build()
    interrupt_after(interrupted, 2)
    with pytest.raises(TrainingInterrupted) as err:
        interrupted.learn(total, progress_bar=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=5)
    assert isinstance(err.value, KeyboardInterrupt) and err.value.checkpoint == tmp_path / "ckpt"
    assert interrupted.iterations == 2 and signal.getsignal(signal.SIGINT) is handler
    assert json.loads((tmp_path / "ckpt" / "agent.json").read_text())["iterations"] == 2

    resumed = build(seed=99)
    with pytest.warns(UserWarning, match="seed"):
        resumed.load_state(tmp_path / "ckpt")
    resumed.learn(total, progress_bar=False)
    assert resumed.iterations == uninterrupted.iterations > 2
    assert torch.equal(params(resumed), params(uninterrupted))
    assert resumed.env.kl_coef == uninterrupted.env.kl_coef


def test_second_ctrl_c_stops_at_once_without_saving(tiny_model_dir, tmp_path):
    agent = Reinforce(make_env(tiny_model_dir), learning_rate=1e-3)
    agent.learn(16, progress_bar=False, checkpoint_dir=tmp_path / "ckpt")
    before = snapshot(tmp_path / "ckpt")
    handler = signal.getsignal(signal.SIGINT)
    interrupt_after(agent, 2, times=2)  # both during the first iteration of this learn()
    with pytest.raises(KeyboardInterrupt) as err:
        agent.learn(10_000, progress_bar=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1)
    assert not isinstance(err.value, TrainingInterrupted) and "second Ctrl-C" in str(err.value)
    assert signal.getsignal(signal.SIGINT) is handler
    assert snapshot(tmp_path / "ckpt") == before  # nothing saved: the previous checkpoint is intact
    assert json.loads((tmp_path / "ckpt" / "agent.json").read_text())["iterations"] == 1


def test_ctrl_c_without_checkpoint_dir_stops_after_the_iteration(tiny_model_dir):
    agent = Reinforce(make_env(tiny_model_dir), learning_rate=1e-3)
    interrupt_after(agent, 2)
    with pytest.raises(TrainingInterrupted, match="nothing saved"):
        agent.learn(10_000, progress_bar=False)
    assert agent.iterations == 2


def test_an_exception_in_an_iteration_does_not_save(tiny_model_dir, tmp_path):
    agent = Reinforce(make_env(tiny_model_dir), learning_rate=1e-3)
    agent.learn(16, progress_bar=False, checkpoint_dir=tmp_path / "ckpt")
    before = snapshot(tmp_path / "ckpt")
    handler = signal.getsignal(signal.SIGINT)

    def broken():
        raise RuntimeError("bug")

    agent.train_iteration = broken
    with pytest.raises(RuntimeError, match="bug"):
        agent.learn(10_000, progress_bar=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1)
    assert snapshot(tmp_path / "ckpt") == before and signal.getsignal(signal.SIGINT) is handler


def test_a_single_file_is_replaced_whole_keeping_its_permissions(tmp_path, monkeypatch):
    report = tmp_path / "reports" / "eval.json"  # the parent directory is created
    assert checkpoint.write_file_atomically(report, b"first") == report
    assert report.read_bytes() == b"first" and report.stat().st_mode & 0o777 == 0o644
    report.chmod(0o640)
    checkpoint.write_file_atomically(report, b"second")
    assert report.read_bytes() == b"second" and report.stat().st_mode & 0o777 == 0o640

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left") as caught:
        checkpoint.write_file_atomically(report, b"third")
    assert caught.value.filename == str(report), "the error names the file"
    assert report.read_bytes() == b"second" and sorted(p.name for p in report.parent.iterdir()) == ["eval.json"]
