"""The boundary between the env and the agents (issue 12).

Agents, the SB3 adapter and policy, the applications, the single env and ``collect_rollout`` use the vector env
only through its documented public API: a static check refuses ``x.engine`` (the generation engine is private to
the env) and ``x._name`` on anything but ``self``/``cls``/``super()``/a module. Behaviour: a rollout used for
evaluation or as a baseline (``update_kl_controller=False``) leaves the adaptive β and its window alone; β's state
round-trips through ``kl_controller_state``; agents accept a Gymnasium wrapper around the env.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from textenv.agents import make_agent
from textenv.rollout import collect_rollout
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

ROOT = Path(__file__).resolve().parent.parent
#: The code that must stay on the public side of the boundary.
CHECKED = [*sorted((ROOT / "agents").rglob("*.py")), *sorted((ROOT / "textenv" / "apps").rglob("*.py")),
           ROOT / "textenv" / "env.py", ROOT / "textenv" / "rollout.py"]
#: Private attributes of third-party objects that have no public API, by file. stable-baselines3 keeps an
#: algorithm's rollout state (last observation, episode starts, update count) in these; the SB3 agents save and
#: restore them for an exact resume, and ``attach`` clears ``_last_obs`` so SB3 resets the env.
THIRD_PARTY_PRIVATE = {
    "agents/sb3/agents.py": {"_last_obs", "_last_episode_starts", "_n_updates"},
    "agents/sb3/vec_env.py": {"_last_obs"},
}


def boundary_violations(source: str, allowed_private: set[str] = frozenset()) -> list[str]:
    """``line: what`` for every ``.engine`` attribute read on anything but ``self``, every ``._name`` read on
    anything but ``self``, ``cls``, ``super()`` or an imported module (dunders are fine), and every
    ``from textenv... import _name``."""
    tree = ast.parse(source)
    modules = {(alias.asname or alias.name).split(".")[0]
               for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("textenv"):
            found += [f"{node.lineno}: imports {alias.name} from {node.module}"
                      for alias in node.names if alias.name.startswith("_")]
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
        module = isinstance(owner, ast.Name) and owner.id in modules
        is_super = isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super"
        dunder = node.attr.startswith("__") and node.attr.endswith("__")
        if node.attr == "engine" and not own:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif node.attr.startswith("_") and not (own or module or is_super or dunder or node.attr in allowed_private):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", CHECKED, ids=lambda path: str(path.relative_to(ROOT)))
def test_code_outside_the_env_uses_only_its_public_api(path: Path):
    relative = str(path.relative_to(ROOT))
    violations = boundary_violations(path.read_text(encoding="utf-8"), THIRD_PARTY_PRIVATE.get(relative, set()))
    assert not violations, f"{relative} reaches past the env's public API:\n" + "\n".join(violations)


def test_the_boundary_check_finds_what_the_code_did_before_issue_12():
    """The accesses that were replaced by public methods (the checker must refuse each one)."""
    before = '''
import numpy as np
from textenv.vector_env import TextGenVectorEnv, _check_reset_options

def collect(env):
    width = env.engine.input_ids.shape[1]
    hidden = env.engine.policy_hidden

class Agent:
    def save(self):
        return self.env._kl_window, self.env._kl_window_steps, self.venv._returns

class Single:
    def reset(self):
        return self.vector_env._observation(), self.vector_env._row_prompts[0]

class Adapter:
    def refresh(self):
        self.env.engine.refresh()
'''
    assert sorted(boundary_violations(before)) == sorted([
        "3: imports _check_reset_options from textenv.vector_env", "6: env.engine", "7: env.engine",
        "11: self.env._kl_window", "11: self.env._kl_window_steps", "11: self.venv._returns",
        "15: self.vector_env._observation", "15: self.vector_env._row_prompts", "19: self.env.engine",
    ])
    fine = '''
import numpy as np

class Fine(Base):
    def __init__(self):
        super()._setup()
        self._x = np._NoValue, type(self).__name__, cls_engine

    @classmethod
    def make(cls):
        return cls._registry, self.engine
'''
    assert boundary_violations(fine) == []


# ================================================================================== behaviour
PROMPTS = ["the film was", "the book"]


def letter_e(prompts: list[str], completions: list[str]) -> list[float]:
    return [text.count("e") / 8 for text in completions]


def make_env(model_dir: Path, **kwargs) -> TextGenVectorEnv:
    options = dict(num_envs=4, model=str(model_dir), prompts=PROMPTS, max_new_tokens=4, kl_coef=0.05, target_kl=0.01,
                   kl_horizon=50, reward_model=letter_e, autoreset_mode="disabled", device="cpu")
    return TextGenVectorEnv(**{**options, **kwargs})


@pytest.fixture(scope="module")
def adaptive_env(tiny_model_dir) -> TextGenVectorEnv:
    """An env whose β adapts (target_kl set) and whose policy differs from the reference (so KL > 0)."""
    env = make_env(tiny_model_dir)
    with torch.no_grad():
        for parameter in env.policy.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)))
    return env


def test_a_greedy_baseline_rollout_leaves_the_adaptive_kl_controller_alone(adaptive_env):
    env = adaptive_env
    collect_rollout(env, torch.Generator().manual_seed(0), update_kl_controller=True)
    env.load_kl_controller_state({"kl_coef": 0.05, "window": [0.25, 0.5], "window_steps": 7})
    before = env.kl_controller_state()

    baseline = collect_rollout(env, None, prompts=PROMPTS * 2, temperature=0.0, update_kl_controller=False)
    assert env.kl_controller_state() == before  # β and its window exactly as they were
    assert baseline.kl_coef == 0.05 and baseline.episode_kl.max() > 0  # it paid the current β for a real KL

    assert collect_rollout(env, None, prompts=PROMPTS * 2, temperature=0.0) is not None  # the default: no move either
    assert env.kl_controller_state() == before
    collect_rollout(env, None, prompts=PROMPTS * 2, temperature=0.0, update_kl_controller=True)  # asked: it moves
    after = env.kl_controller_state()
    assert after["window"] == [] and after["window_steps"] == 0 and after["kl_coef"] != 0.05


def test_pause_kl_controller_nests_and_restores_after_an_error(adaptive_env):
    env = adaptive_env
    env.load_kl_controller_state({"kl_coef": 0.05, "window": [], "window_steps": 0})
    with pytest.raises(RuntimeError, match="inside"):
        with env.pause_kl_controller():
            with env.pause_kl_controller():
                collect_rollout(env, torch.Generator().manual_seed(1), update_kl_controller=True)
            collect_rollout(env, torch.Generator().manual_seed(2), update_kl_controller=True)  # still paused
            assert env.kl_controller_state() == {"kl_coef": 0.05, "window": [], "window_steps": 0}
            raise RuntimeError("inside")
    collect_rollout(env, torch.Generator().manual_seed(3), update_kl_controller=True)  # not paused: β moves
    assert env.kl_coef != 0.05


def test_kl_controller_state_round_trips_exactly(tiny_model_dir, adaptive_env):
    env = adaptive_env
    for seed in range(2):
        collect_rollout(env, torch.Generator().manual_seed(seed), update_kl_controller=True)
    env.load_kl_controller_state({**env.kl_controller_state(), "window": [0.125], "window_steps": 3})
    state = env.kl_controller_state()
    other = make_env(tiny_model_dir)
    other.load_kl_controller_state(state)
    assert other.kl_controller_state() == state and other.kl_coef == env.kl_coef
    state["window"].append(1.0)  # a copy: changing it does not change the env
    assert env.kl_controller_state()["window"] == [0.125]


@pytest.mark.bad_input
@pytest.mark.parametrize(("state", "named"), [
    ({"kl_coef": 0.05, "window": []}, "window_steps"),
    ([0.05, [], 0], "kl_controller_state"),
    ({"kl_coef": float("nan"), "window": [], "window_steps": 0}, "kl_coef"),
    ({"kl_coef": -1.0, "window": [], "window_steps": 0}, "kl_coef"),
    ({"kl_coef": 0.05, "window": ["0.1"], "window_steps": 1}, "window"),
    ({"kl_coef": 0.05, "window": 0.1, "window_steps": 1}, "window"),
    ({"kl_coef": 0.05, "window": [], "window_steps": -1}, "window_steps"),
    ({"kl_coef": 0.05, "window": [], "window_steps": 1.5}, "window_steps"),
])
def test_load_kl_controller_state_refuses_a_bad_state(adaptive_env, state, named):
    before = adaptive_env.kl_controller_state()
    with pytest.raises(InputError, match=named):
        adaptive_env.load_kl_controller_state(state)
    assert adaptive_env.kl_controller_state() == before


@pytest.mark.bad_input
def test_update_kl_controller_must_be_a_bool(adaptive_env):
    with pytest.raises(InputError, match="update_kl_controller"):
        collect_rollout(adaptive_env, update_kl_controller="no")


def test_public_views_of_the_episodes(tiny_model_dir):
    env = make_env(tiny_model_dir, target_kl=None)
    obs, info = env.reset(seed=0, options={"prompts": PROMPTS * 2})
    assert env.row_prompts == PROMPTS * 2 == list(info["prompt"])
    ids, mask = env.episode_tokens()
    for _ in range(2):
        obs, *_ = env.step(np.full(4, 7))
    assert all(np.array_equal(obs[key], value) for key, value in env.observation().items())
    window_ids, window_mask = env.observation_tensors()
    assert torch.equal(window_ids.cpu(), torch.from_numpy(obs["input_ids"]))
    longer_ids, longer_mask = env.episode_tokens()
    assert longer_ids.shape[1] == ids.shape[1] + 2 and torch.equal(longer_ids[:, : ids.shape[1]], ids)
    assert (longer_ids[:, -2:] == 7).all() and longer_mask[:, -2:].all()
    hidden = env.next_token_hidden()
    assert hidden.shape == (4, env.policy.config.n_embd)
    logits = env.policy.lm_head(hidden).float()
    assert torch.allclose(logits, env.next_token_logits(), atol=1e-5)
    reference = env.reference_next_token_logits()
    assert reference.shape == env.next_token_logits().shape
    assert env.eos_token_id == env.tokenizer.eos_token_id


def test_set_policy_makes_the_env_generate_with_the_new_model(tiny_model_dir):
    env = make_env(tiny_model_dir, target_kl=None)
    env.reset(seed=0, options={"prompts": PROMPTS * 2})
    env.step(np.full(4, 7))
    before = env.next_token_logits().clone()
    other = type(env.policy).from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        other.lm_head.weight.mul_(2.0)  # tied to the embeddings: a different model
    other.train()  # set_policy disables its dropout
    env.set_policy(other)
    assert env.policy is other and all(m.p == 0 for m in other.modules() if isinstance(m, torch.nn.Dropout))
    assert torch.equal(env.next_token_logits(), before)  # the cached state is the old weights' until refreshed
    env.refresh_cache()
    ids, mask = env.observation_tensors()
    expected = other(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    assert torch.allclose(env.next_token_logits(), expected[:, -1].float(), atol=1e-4)
    assert not torch.allclose(env.next_token_logits(), before, atol=1e-3)


@pytest.mark.bad_input
def test_set_policy_refuses_a_non_model(tiny_model_dir):
    env = make_env(tiny_model_dir, target_kl=None)
    with pytest.raises(InputError, match="set_policy"):
        env.set_policy("gpt2")


# ================================================================================== wrapped envs
@pytest.mark.parametrize(("name", "group_size", "kwargs"), [
    ("reinforce", 1, {}), ("ppo", 1, {}), ("rloo", 2, {}), ("grpo", 2, {}),
    ("sb3-ppo", 1, {"n_steps": 2, "batch_size": 4}),
])
def test_agents_run_on_a_wrapped_env(tiny_model_dir, name, group_size, kwargs):
    env = make_env(tiny_model_dir, group_size=group_size)
    agent = make_agent(name, RecordEpisodeStatistics(env), learning_rate=1e-3, **kwargs)
    assert agent.env is env
    agent.learn(8, progress_bar=False)
    assert agent.num_timesteps >= 8


def test_collect_rollout_and_the_sb3_adapter_accept_a_wrapped_env(tiny_model_dir):
    from textenv.agents.sb3 import TextGenSB3VecEnv

    env = make_env(tiny_model_dir)
    assert collect_rollout(RecordEpisodeStatistics(env), torch.Generator().manual_seed(0)).input_ids.shape[0] == 4
    assert TextGenSB3VecEnv(RecordEpisodeStatistics(env)).env is env


@pytest.mark.bad_input
@pytest.mark.parametrize("make", [lambda model_dir: object(), lambda model_dir: "TextGen-v0",
                                  lambda model_dir: gym.make("TextGen-v0", model=str(model_dir), prompts=PROMPTS)],
                         ids=["object", "name", "single-env"])
def test_agents_refuse_what_is_not_a_textgen_vector_env(tiny_model_dir, make):
    from textenv.agents.sb3 import TextGenSB3VecEnv

    env = make(tiny_model_dir)
    for build in (lambda: make_agent("reinforce", env), lambda: collect_rollout(env),
                  lambda: TextGenSB3VecEnv(env)):
        with pytest.raises(InputError, match=r"^env must be a TextGenVectorEnv"):
            build()
