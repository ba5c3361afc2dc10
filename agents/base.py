"""The ``Agent`` interface (stable-baselines3-like) shared by every algorithm.

An agent is built on a :class:`~textenv.vector_env.TextGenVectorEnv` and trains the env's policy model
in place. Subclasses implement :meth:`Agent.train_iteration` (collect experience + update, return
metrics); the base class owns the loop: progress bar, TensorBoard scalars (same names for every agent, so
curves overlay), periodic atomic checkpoints, ``save`` / ``load`` / exact resume, and ``predict``.
"""

from __future__ import annotations

import copy
import json
import random
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from textenv.checkpoint import atomic_directory
from textenv.lora import is_peft_model
from textenv.rollout import sample_actions
from textenv.validation import check_positive
from textenv.vector_env import TextGenVectorEnv

#: Scalar names every agent writes (a metric key ``"rollout/reward"`` becomes that TensorBoard tag).
SCALARS = (
    "rollout/reward",
    "rollout/rm_score",
    "rollout/kl",
    "rollout/kl_coef",
    "rollout/length",
    "train/loss",
    "train/entropy",
    "time/tokens_per_s",
)


class Agent(ABC):
    """Base class: construct with an env and hyper-parameters, then ``learn(total_timesteps)``.

    Args:
        env: the batched env whose ``policy`` is trained (``autoreset_mode="disabled"`` for native agents).
        learning_rate: Adam step size α.
        seed: seeds torch, numpy, random, the agent's sampler and the env's prompt sampler.
        tensorboard_log: directory for TensorBoard events (``None``: no logging).
        verbose: 0 silent, 1 prints a line per iteration when there is no progress bar.
    """

    name: ClassVar[str] = ""
    #: K completions per prompt that ``textenv train`` asks of the env unless the config sets ``group_size``.
    default_group_size: ClassVar[int] = 1

    def __init__(
        self,
        env: TextGenVectorEnv,
        learning_rate: float = 1e-4,
        seed: int | None = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        if not isinstance(env, TextGenVectorEnv):
            raise TypeError(
                f"env must be a TextGenVectorEnv (gym.make_vec('TextGen-v0', ...).unwrapped), got {type(env)}"
            )
        check_positive("learning_rate", learning_rate)
        self.env = env
        self.policy = env.policy
        self.learning_rate = float(learning_rate)
        self.seed = seed
        self.verbose = verbose
        self.tensorboard_log = tensorboard_log
        self.num_timesteps = 0
        self.iterations = 0
        self.generator = torch.Generator(device=env.device)
        if seed is not None:
            set_global_seeds(seed)
            self.generator.manual_seed(seed)
            env.reset(seed=seed)
        self._writer = None
        self.last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def train_iteration(self) -> dict[str, float]:
        """Collect experience and update once. Returns metrics; ``"num_tokens"`` (env steps) is required."""

    def hyperparameters(self) -> dict[str, Any]:
        """Constructor arguments to rebuild this agent (saved in ``agent.json``)."""
        return {"learning_rate": self.learning_rate, "seed": self.seed}

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """Modules besides the policy that are saved with safetensors (e.g. a value head)."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers whose state is checkpointed for exact resume: by default the agent's ``self.optimizer``
        (as ``"policy"``) when it has one; agents with more (or differently named) optimizers override this."""
        optimizer = getattr(self, "optimizer", None)
        return {} if optimizer is None else {"policy": optimizer}

    # ------------------------------------------------------------------ the loop
    def learn(
        self,
        total_timesteps: int,
        progress_bar: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 0,
    ) -> Agent:
        """Train until ``num_timesteps`` (tokens generated) reaches ``total_timesteps``.

        With ``checkpoint_dir`` and ``checkpoint_every`` > 0, an atomic checkpoint is written every that
        many iterations (and always at the end when ``checkpoint_dir`` is given).
        """
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, int) or total_timesteps < 1:
            raise ValueError(f"total_timesteps={total_timesteps!r} must be an integer >= 1")
        bar = tqdm(total=total_timesteps, initial=min(self.num_timesteps, total_timesteps), disable=not progress_bar,
                   unit="tok", desc=self.name)
        while self.num_timesteps < total_timesteps:
            start = time.perf_counter()
            metrics = self.train_iteration()
            seconds = time.perf_counter() - start
            tokens = int(metrics.pop("num_tokens"))
            self.num_timesteps += tokens
            self.iterations += 1
            metrics["time/tokens_per_s"] = tokens / max(seconds, 1e-9)
            self.last_metrics = metrics
            self._log(metrics)
            bar.update(min(tokens, total_timesteps - bar.n))
            bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in metrics.items() if k in SCALARS[:4]})
            if self.verbose and not progress_bar:
                print(f"[{self.name}] it={self.iterations} steps={self.num_timesteps} "
                      + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            if checkpoint_dir and checkpoint_every and self.iterations % checkpoint_every == 0:
                self.save(checkpoint_dir)
        bar.close()
        if checkpoint_dir:
            self.save(checkpoint_dir)
        if self._writer is not None:
            self._writer.flush()
        return self

    def log_samples(self, prompts: list[str], texts: list[str], n: int = 4) -> None:
        """Write a markdown table of sample completions to TensorBoard (tag ``samples``)."""
        writer = self._get_writer()
        if writer is None:
            return
        rows = "\n".join(f"| {p} | {t.replace('|', '/')} |" for p, t in list(zip(prompts, texts))[:n])
        writer.add_text("samples", "| prompt | completion |\n|---|---|\n" + rows, self.num_timesteps)

    def _get_writer(self):
        if self.tensorboard_log is None:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.tensorboard_log)
        return self._writer

    def _log(self, metrics: dict[str, float]) -> None:
        writer = self._get_writer()
        if writer is None:
            return
        for key, value in metrics.items():
            writer.add_scalar(key, value, self.num_timesteps)

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def predict(
        self, observation: dict[str, np.ndarray], deterministic: bool = False
    ) -> tuple[np.ndarray, None]:
        """Next token for a (batched or single) TextGen observation, SB3-style ``(actions, state)``.

        Runs the policy on the observation's tokens (a full forward: for rollouts use the env's cached
        :meth:`~TextGenVectorEnv.next_token_logits` instead).
        """
        ids = torch.as_tensor(observation["input_ids"], device=self.env.device)
        mask = torch.as_tensor(observation["attention_mask"], device=self.env.device)
        single = ids.dim() == 1
        if single:
            ids, mask = ids[None], mask[None]
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = self.policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
        actions = sample_actions(logits, self.generator, temperature=0.0 if deterministic else 1.0).cpu().numpy()
        return (actions[0] if single else actions), None

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write an atomic checkpoint directory: ``policy/`` (``save_pretrained``, safetensors),
        ``modules.safetensors``, ``trainer_state.pt`` (optimizers, RNGs, β, counters), ``agent.json``.

        A crash mid-save leaves the previous checkpoint at ``path`` intact.
        """
        with atomic_directory(path) as tmp:
            if is_peft_model(self.policy):  # adapters for resume, merged weights for from_pretrained users
                self.policy.save_pretrained(tmp / "adapter", safe_serialization=True)
                merged = copy.deepcopy(self.policy).merge_and_unload()
                merged.save_pretrained(tmp / "policy", safe_serialization=True)
            else:
                self.policy.save_pretrained(tmp / "policy", safe_serialization=True)
            self.env.tokenizer.save_pretrained(tmp / "policy")
            modules = {f"{name}.{k}": v.detach().cpu().contiguous()
                       for name, module in self.trainable_modules().items() for k, v in module.state_dict().items()}
            if modules:
                save_file(modules, str(tmp / "modules.safetensors"))
            torch.save(self._trainer_state(), tmp / "trainer_state.pt")
            meta = {
                "agent": self.name,
                "hyperparameters": self.hyperparameters(),
                "num_timesteps": self.num_timesteps,
                "iterations": self.iterations,
                "env": getattr(self.env, "spec_kwargs", {}),
            }
            (tmp / "agent.json").write_text(json.dumps(meta, indent=2, default=str))

    def load_state(self, path: str | Path) -> None:
        """Restore weights, optimizers, RNG streams, β and counters from :meth:`save`'s directory."""
        from transformers import AutoModelForCausalLM

        path = Path(path)
        if not (path / "trainer_state.pt").is_file():
            raise ValueError(f"{path} is not a textenv checkpoint (no trainer_state.pt); pass the directory save() wrote")
        if is_peft_model(self.policy):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.policy, load_file(str(path / "adapter" / "adapter_model.safetensors")))
        else:
            saved = AutoModelForCausalLM.from_pretrained(path / "policy")
            self.policy.load_state_dict(saved.state_dict())
        if (path / "modules.safetensors").is_file():
            tensors = load_file(str(path / "modules.safetensors"))
            for name, module in self.trainable_modules().items():
                prefix = f"{name}."
                module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        state = torch.load(path / "trainer_state.pt", weights_only=False)
        for name, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.num_timesteps = state["num_timesteps"]
        self.iterations = state["iterations"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        self.env.np_random.bit_generator.state = state["env_rng"]
        self.env.kl_controller.value = state["kl_coef"]
        self.env._kl_window, self.env._kl_window_steps = state["kl_window"]
        self._load_extra_state(state.get("extra", {}))

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
            "num_timesteps": self.num_timesteps,
            "iterations": self.iterations,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "env_rng": self.env.np_random.bit_generator.state,
            "kl_coef": self.env.kl_controller.value,
            "kl_window": (list(self.env._kl_window), self.env._kl_window_steps),
            "extra": self._extra_state(),
        }

    def _extra_state(self) -> dict[str, Any]:
        """Algorithm state beyond optimizers (e.g. a running baseline); saved in ``trainer_state.pt``."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`_extra_state`."""

    @classmethod
    def load(cls, path: str | Path, env: TextGenVectorEnv, **overrides: Any) -> Agent:
        """Rebuild the agent saved at ``path`` on ``env`` and restore its full training state."""
        meta = json.loads((Path(path) / "agent.json").read_text())
        if cls.name and meta["agent"] != cls.name:
            raise ValueError(f"{path} holds a {meta['agent']!r} agent, not {cls.name!r}")
        agent = cls(env, **{**meta["hyperparameters"], **overrides})
        agent.load_state(path)
        return agent


def set_global_seeds(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
