"""Bad inputs at the checkpoint boundary: what ``Agent.load`` / ``load_state`` / ``save`` are given.

Each case starts from a copy of a good checkpoint (or a save target), spoils one thing and asserts an
:class:`InputError` whose message names the file, directory or setting. Save cases also assert that every
file already there is unchanged byte for byte; pickle cases that the payload never ran.
"""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import RunsWhenUnpickled
from conftest import small_env as make_env
from safetensors.torch import save_file

from textenv.agents import PPO, Agent, Reinforce
from textenv.checkpoint import MANIFEST_NAME, atomic_directory
from textenv.validation import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MARKER = "payload-ran"





@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """One good checkpoint per agent class: ``{"reinforce": DIR, "ppo": DIR}``."""
    root = tmp_path_factory.mktemp("good")
    paths = {}
    for cls in (Reinforce, PPO):
        agent = cls(make_env(tiny_model_dir), learning_rate=1e-3, seed=0)
        agent.learn(32, progress_bar=False)
        agent.save(root / cls.name)
        paths[cls.name] = root / cls.name
    return paths



def pickled(ckpt: Path) -> bytes:
    return pickle.dumps(RunsWhenUnpickled(ckpt.parent / MARKER), protocol=4)


def truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def edit_json(file: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))


def old_format(ckpt: Path) -> None:
    for name in ("trainer_state.json", "trainer_state.safetensors", MANIFEST_NAME):
        (ckpt / name).unlink()
    torch.save({"payload": RunsWhenUnpickled(ckpt.parent / MARKER)}, ckpt / "trainer_state.pt")


def rewrite_modules(ckpt: Path) -> None:
    """modules.safetensors with another module's keys (and a manifest that agrees, so only the keys differ)."""
    save_file({"critic.weight": torch.zeros(1, 32)}, str(ckpt / "modules.safetensors"))
    edit_json(ckpt / MANIFEST_NAME, lambda m: m["files"].pop("modules.safetensors"))


# (id, agent of the checkpoint, how to spoil it, env kwargs of the loading env, agent class loading it, match)
LOAD_CASES = [
    ("missing-dir", "reinforce", lambda c: shutil.rmtree(c), {}, Reinforce, "ckpt does not exist"),
    ("path-is-a-file", "reinforce", lambda c: (shutil.rmtree(c), c.write_text("x")), {}, Reinforce,
     "ckpt is a file, not a checkpoint directory"),
    ("no-agent-json", "reinforce", lambda c: (c / "agent.json").unlink(), {}, Reinforce,
     r"ckpt is not a textenv checkpoint \(no agent.json\)"),
    ("old-trainer-state-pt", "reinforce", old_format, {}, Reinforce,
     "trainer_state.pt is a pickle.*no longer unpickles.*model: .*ckpt/policy"),
    ("pickle-as-trainer-state-json", "reinforce",
     lambda c: (c / "trainer_state.json").write_bytes(pickled(c)), {}, Reinforce,
     "trainer_state.json holds a pickle.*never unpickles"),
    ("pickle-as-trainer-state-safetensors", "reinforce",
     lambda c: (c / "trainer_state.safetensors").write_bytes(pickled(c)), {}, Reinforce,
     "trainer_state.safetensors holds a pickle"),
    ("pickle-as-agent-json", "reinforce", lambda c: (c / "agent.json").write_bytes(pickled(c)), {}, Reinforce,
     "agent.json holds a pickle"),
    ("pytorch-model-bin-dropped-in", "reinforce",
     lambda c: (c / "policy" / "pytorch_model.bin").write_bytes(pickled(c)), {}, Reinforce,
     r"holds pickle files \(policy/pytorch_model.bin\)"),
    ("truncated-trainer-state-safetensors", "reinforce", lambda c: truncate(c / "trainer_state.safetensors"),
     {}, Reinforce, r"damaged checkpoint: .*trainer_state.safetensors: it is \d+ bytes, .* recorded \d+"),
    ("truncated-policy-weights", "reinforce", lambda c: truncate(c / "policy" / "model.safetensors"), {},
     Reinforce, "damaged checkpoint: .*policy/model.safetensors"),
    ("truncated-weights-no-manifest", "reinforce",
     lambda c: ((c / MANIFEST_NAME).unlink(), truncate(c / "policy" / "model.safetensors")), {}, Reinforce,
     "damaged checkpoint: .*policy/model.safetensors: not a complete safetensors file"),
    ("no-policy-weights", "reinforce", lambda c: (c / "policy" / "model.safetensors").unlink(), {}, Reinforce,
     "policy holds no model.safetensors"),
    ("truncated-trainer-state-json", "reinforce", lambda c: truncate(c / "trainer_state.json"), {}, Reinforce,
     "damaged checkpoint: .*trainer_state.json"),
    ("unknown-entry-in-trainer-state", "reinforce",
     lambda c: edit_json(c / "trainer_state.json", lambda d: d["state"].update(
         extra={"__textenv__": "object", "class": "os.system"})), {}, Reinforce,
     "damaged checkpoint: .*trainer_state.json: unknown entry"),
    ("trainer-state-lacks-rng", "reinforce",
     lambda c: edit_json(c / "trainer_state.json", lambda d: d["state"].pop("torch_rng")), {}, Reinforce,
     "damaged checkpoint: .*trainer_state.json: 'torch_rng' is missing"),
    ("agent-json-not-json", "reinforce", lambda c: (c / "agent.json").write_text("{agent: ppo"), {}, Reinforce,
     "damaged checkpoint: .*agent.json"),
    ("agent-json-lacks-env", "reinforce", lambda c: edit_json(c / "agent.json", lambda d: d.pop("env")), {},
     Reinforce, "damaged checkpoint: .*agent.json lacks"),
    ("weights-only-checkpoint", "reinforce", lambda c: (c / "trainer_state.json").unlink(), {}, Reinforce,
     "ckpt holds no trainer_state.json"),
    ("wrong-agent-type", "reinforce", lambda c: None, {}, PPO,
     "holds a 'reinforce' agent, not 'ppo': --agent reinforce"),
    ("missing-value-head-file", "ppo", lambda c: (c / "modules.safetensors").unlink(), {}, PPO,
     "modules.safetensors is missing.*value_head"),
    ("value-head-keys-missing", "ppo", rewrite_modules, {}, PPO,
     r"modules.safetensors: the 'value_head' module does not match.*missing \['bias', 'weight'\]"),
    ("corrupted-value-head", "ppo",
     lambda c: (c / "modules.safetensors").write_bytes((c / "modules.safetensors").read_bytes()[:-4] + b"\xff" * 4),
     {}, PPO, "damaged checkpoint: .*modules.safetensors: its SHA-256 differs"),
    ("changed-max-new-tokens", "reinforce", lambda c: None, {"max_new_tokens": 8}, Reinforce,
     "max_new_tokens: saved 4, now 8"),
    ("changed-num-envs", "reinforce", lambda c: None, {"num_envs": 2}, Reinforce, "num_envs: saved 4, now 2"),
    ("changed-kl-coef", "ppo", lambda c: None, {"kl_coef": 0.2}, PPO, "kl_coef: saved 0.05, now 0.2"),
    ("changed-kl-estimator", "ppo", lambda c: None, {"kl_estimator": "k3"}, PPO,
     "kl_estimator: saved 'k1', now 'k3'"),
    ("now-adaptive-kl", "reinforce", lambda c: None, {"target_kl": 1.0}, Reinforce, "target_kl: saved None, now 1.0"),
    ("changed-prompts", "reinforce", lambda c: None, {"prompts": "builtin"}, Reinforce,
     r"prompts: saved <not recorded>, now 'builtin'"),
    ("manifest-of-another-kind", "reinforce",
     lambda c: edit_json(c / MANIFEST_NAME, lambda m: m.update(kind="reward_model")), {}, Reinforce,
     "ckpt holds a textenv directory of kind 'reward_model', not 'agent_checkpoint'"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize(("source", "spoil", "env_kwargs", "cls", "match"),
                         [case[1:] for case in LOAD_CASES], ids=[case[0] for case in LOAD_CASES])
def test_bad_checkpoint_is_refused_naming_it(saved, tiny_model_dir, tmp_path, source, spoil, env_kwargs, cls, match):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved[source], ckpt)
    spoil(ckpt)
    agent = cls(make_env(tiny_model_dir, **env_kwargs), learning_rate=1e-3)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    with pytest.raises(InputError, match=match):
        agent.load_state(ckpt)
    with pytest.raises(InputError, match=match):
        cls.load(ckpt, make_env(tiny_model_dir, **env_kwargs))
    assert not (tmp_path / MARKER).exists()  # no pickle payload ran
    assert all(torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))  # nothing half-loaded


def foreign_dir(target: Path) -> None:
    target.mkdir()
    (target / "data.csv").write_text("a,b\n1,2\n")
    (target / "notes").mkdir()
    (target / "notes" / "todo.md").write_text("mine")


def tensorboard_dir(target: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(target))
    writer.add_scalar("x", 1.0, 0)
    writer.close()


def ours_plus_foreign(target: Path) -> None:
    with atomic_directory(target, kind="agent_checkpoint") as tmp:
        (tmp / "agent.json").write_text("{}")
    (target / "events.out.tfevents.1").write_bytes(b"user")


def another_kind(target: Path) -> None:
    with atomic_directory(target, kind="reward_model") as tmp:
        (tmp / "head.safetensors").write_bytes(b"x")


def foreign_backup(target: Path) -> None:
    (target.parent / f".{target.name}.old").mkdir()
    (target.parent / f".{target.name}.old" / "keep.txt").write_text("user")


def symlink_to_dir(target: Path) -> None:
    (target.parent / "real").mkdir()
    (target.parent / "real" / "x.txt").write_text("user")
    target.symlink_to(target.parent / "real")


def parent_is_file(target: Path) -> None:
    target.parent.write_text("user")  # target is root/blocker/out


SAVE_CASES = [
    ("target-is-a-file", lambda t: t.write_text("results"), "out", "out is a file, not a directory"),
    ("foreign-directory", foreign_dir, "out", r"out holds files textenv did not write \(no textenv.json\): "
                                               "data.csv, notes/todo.md"),
    ("tensorboard-directory", tensorboard_dir, "out", "out holds files textenv did not write.*events.out.tfevents"),
    ("our-checkpoint-plus-foreign-file", ours_plus_foreign, "out",
     "out holds files textenv did not write: events.out.tfevents.1"),
    ("textenv-dir-of-another-kind", another_kind, "out", "out holds a textenv 'reward_model' directory"),
    ("foreign-backup-in-the-way", foreign_backup, "out", r"\.out\.old is in the way"),
    ("target-is-a-symlink", symlink_to_dir, "out", "out is a symbolic link"),
    ("parent-is-a-file", parent_is_file, "blocker/out", "blocker/out: a parent of this path is a file"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize(("prepare", "name", "match"), [case[1:] for case in SAVE_CASES],
                         ids=[case[0] for case in SAVE_CASES])
def test_save_refuses_targets_it_would_have_to_replace(tiny_model_dir, tmp_path, prepare, name, match):
    root = tmp_path / "root"
    root.mkdir()
    target = root / name
    prepare(target)
    before = {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
              for p in root.rglob("*")}
    agent = Reinforce(make_env(tiny_model_dir), learning_rate=1e-3)
    with pytest.raises(InputError, match=match):
        agent.save(target)
    after = {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
             for p in root.rglob("*")}
    assert after == before  # every file there is unchanged byte for byte, and nothing was added


@pytest.mark.bad_input
def test_disk_full_during_save_names_the_target_and_keeps_the_old_checkpoint(saved, tiny_model_dir, tmp_path,
                                                                             monkeypatch):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved["reinforce"], ckpt)
    before = {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}
    agent = Reinforce(make_env(tiny_model_dir), learning_rate=1e-3)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(agent.env.tokenizer), "save_pretrained", disk_full)
    with pytest.raises(InputError, match="cannot write .*ckpt: No space left on device"):
        agent.save(ckpt)
    assert {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.bad_input
def test_agent_load_with_an_unregistered_type_names_it(saved, tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved["reinforce"], ckpt)
    edit_json(ckpt / "agent.json", lambda d: d.update(agent="nonexistent"))
    with pytest.raises(ValueError, match="agent 'nonexistent' is not registered"):
        Agent.load(ckpt, make_env(tiny_model_dir))


@pytest.mark.bad_input
def test_sft_resumed_with_other_demonstrations_names_them(tiny_model_dir, tmp_path):
    from textenv.agents.sft import SFT

    def sft(demonstrations: list[str]) -> SFT:
        env = make_env(tiny_model_dir, kl_coef=0.0)
        return SFT(env, demonstrations=demonstrations, batch_size=1, learning_rate=1e-3)

    agent = sft(["the film was good", "the book was bad"])
    agent.learn(8, progress_bar=False)
    agent.save(tmp_path / "ckpt")
    other = sft(["the film was good", "the book was bad", "i liked it"])
    before = {name: value.clone() for name, value in other.policy.state_dict().items()}
    with pytest.raises(InputError, match="covers 2 demonstrations, this agent has 3: resume with the same demonstrations"):
        other.load_state(tmp_path / "ckpt")
    # refused before anything was applied: the agent is as it was built
    assert all(torch.equal(value, before[name]) for name, value in other.policy.state_dict().items())
