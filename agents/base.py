"""The ``Agent`` interface (stable-baselines3-like) shared by every algorithm.

An agent is built on a :class:`~textenv.vector_env.TextGenVectorEnv` and trains the env's policy model
in place. Subclasses implement :meth:`Agent.train_iteration` (collect experience + update, return
metrics); the base class owns the loop: progress bar, TensorBoard scalars (same names for every agent, so
curves overlay), periodic atomic checkpoints, Ctrl-C handling, ``save`` / ``load`` / exact resume, and
``predict``.

Checkpoint layout (:meth:`Agent.save`; nothing in it is pickled, and loading never unpickles)::

    DIR/
      textenv.json                manifest: kind "agent_checkpoint", every file's size and SHA-256
      agent.json                  agent name, hyper-parameters, counters, env settings (TextGenVectorEnv.spec_kwargs),
                                  names of the trainable modules
      policy/                     save_pretrained of the policy (model.safetensors, config.json) + its tokenizer;
                                  with LoRA the adapters merged in (``from_pretrained``-ready)
      adapter/                    LoRA only: the adapters (adapter_model.safetensors, adapter_config.json)
      modules.safetensors         the other trainable modules (e.g. PPO's value head), keys "NAME.PARAM"
      trainer_state.json          everything else an exact resume needs, as JSON: optimizer hyper-parameters and
                                  step counts, torch / NumPy / Python / env RNG states, the agent's generator,
                                  β and its window, counters, the algorithm's state (running baselines,
                                  samplers, SB3 episodes in progress); each tensor or array in it is a reference
                                  into trainer_state.safetensors (:func:`textenv.checkpoint.write_state`)
      trainer_state.safetensors   those tensors and arrays (Adam moments, RNG states, engine rows, ...)

The directory is written by :func:`textenv.checkpoint.atomic_directory` (a killed save leaves the previous
checkpoint loadable; a directory holding files textenv did not write is never replaced). Checkpoints of
textenv versions that wrote ``trainer_state.pt`` (a pickle) are refused with a hint to restart from their
weights.

Ctrl-C during :meth:`Agent.learn` (main thread): the first lets the iteration in progress finish, saves a
checkpoint to ``checkpoint_dir`` (when given) and raises :class:`TrainingInterrupted` (a
``KeyboardInterrupt``); a second one raises ``KeyboardInterrupt`` at once, without saving (the previous
checkpoint stays intact). Resuming from the checkpoint saved at the interrupt is bit-identical to a run that
was never interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import random
import signal
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from textenv import distributed
from textenv.agents.config import AgentConfig
from textenv.checkpoint import (
    atomic_directory,
    check_safetensors,
    pickle_files,
    read_json,
    read_state,
    read_tensors,
    recover_directory,
    verify_directory,
    write_state,
)
from textenv.logprobs import position_ids
from textenv.models.loading import resolve_model_path
from textenv.models.lora import is_peft_model
from textenv.rollout import sample_actions
from textenv.scoring import enable_gradient_checkpointing
from textenv.validation import InputError, check_choice, check_int
from textenv.vector_env import TextGenVectorEnv, unwrap_vector_env

#: ``kind`` of agent checkpoints in their ``textenv.json`` manifest.
CHECKPOINT_KIND = "agent_checkpoint"
#: Checkpoint file names (see the module docstring).
AGENT_FILE = "agent.json"
MODULES_FILE = "modules.safetensors"
TRAINER_STATE = "trainer_state"
#: The resume-only files (optimizer state, RNGs...): a checkpoint without them still holds usable weights.
TRAINER_STATE_FILES = (f"{TRAINER_STATE}.json", f"{TRAINER_STATE}.safetensors")
#: ``agent.json``'s ``"format"`` and ``"version"`` (version 2: trainer state as JSON + safetensors).
AGENT_FORMAT = "textenv-agent-checkpoint"
AGENT_FORMAT_VERSION = 2

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
        env: the batched env whose ``policy`` is trained (``autoreset_mode="disabled"`` for native agents), or a
            Gymnasium wrapper around it: the agent drives ``env.unwrapped`` through its public methods (a
            wrapper's own ``step``/``reset`` logic does not run); anything else is an :class:`InputError`.
        config: the hyper-parameters, an instance of the agent's :attr:`config_class` (default: its defaults).
        tensorboard_log: directory for TensorBoard events (``None``: no logging).
        verbose: 0 silent, 1 prints a line per iteration when there is no progress bar.
        **hyperparameters: fields of :attr:`config_class` replacing those of ``config`` (``PPO(env,
            clip_range=0.1)``); every value is checked before the env is touched.
    """

    name: ClassVar[str] = ""
    #: The dataclass of this agent's hyper-parameters (:mod:`textenv.agents.config`); :attr:`config` is one.
    config_class: ClassVar[type[AgentConfig]] = AgentConfig
    #: K completions per prompt that ``textenv train`` asks of the env unless the config sets ``group_size``.
    default_group_size: ClassVar[int] = 1
    #: Whether the agent trains data-parallel under torchrun (every native agent; SB3's train in one process).
    data_parallel: ClassVar[bool] = True

    def __init__(self, env: TextGenVectorEnv, config: AgentConfig | None = None, *, tensorboard_log: str | None = None,
                 verbose: int = 0, **hyperparameters: Any) -> None:
        env = unwrap_vector_env(env)
        self.config = self.config_class.build(config, hyperparameters, f"agent {self.name!r}")
        check_choice("verbose", verbose, (0, 1, 2))
        self.config.check_env(env)
        self.env = env
        self.policy = env.policy
        if getattr(self.config, "gradient_checkpointing", False):  # a memory option of the native agents' update
            enable_gradient_checkpointing(self.policy)
        self.verbose = verbose
        self.tensorboard_log = tensorboard_log
        self.num_timesteps = 0
        self.iterations = 0
        self.generator = torch.Generator(device=env.device)
        if self.seed is not None:  # under torchrun each rank runs its own streams: seed + rank
            seed = distributed.rank_seed(self.seed)
            set_global_seeds(seed)
            self.generator.manual_seed(seed)
            env.reset(seed=seed)
        if self.sharded:  # after the env's forwards above: the subclass builds its optimizer on the shards
            _check_fsdp(env, self.config)
            distributed.fully_shard_model(self.policy)
        #: float16 autocast's loss scaler (used by the guarded step, saved with the checkpoint); else None
        self.grad_scaler = _loss_scaler(env, self.config)
        self._writer = None
        self.last_metrics: dict[str, float] = {}

    @property
    def sharded(self) -> bool:
        """Whether the policy is sharded over torchrun's ranks with FSDP2 (``config.sharding == "fsdp"``): its
        checkpoints, weight loading and held-out evaluation are then collectives every rank takes part in."""
        return getattr(self.config, "sharding", "ddp") == "fsdp"

    def update_precision(self) -> contextlib.AbstractContextManager:
        """The context of the update's forward (:func:`~textenv.agents.gradient_step.accumulate_gradients`):
        ``torch.autocast`` on the env's device in ``config.autocast_dtype`` when set (native agents), else none."""
        name = getattr(self.config, "autocast_dtype", None)
        if name is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.env.device).type, dtype=getattr(torch, name))

    def __getattr__(self, name: str) -> Any:
        """Hyper-parameters read as attributes: ``agent.clip_range`` is ``agent.config.clip_range`` (read-only; the
        config is frozen: build the agent with another value, or ``Agent.load(..., clip_range=...)``)."""
        config = self.__dict__.get("config")
        if config is not None and name in config.names():
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def learning_rate(self) -> float:
        """Adam step size α (``config.learning_rate``)."""
        return self.config.learning_rate

    @property
    def seed(self) -> int | None:
        """The seed of the run (``config.seed``; a resumed run keeps its checkpoint's)."""
        return self.config.seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        self.config = dataclasses.replace(self.config, seed=value)

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def train_iteration(self) -> dict[str, float]:
        """Collect experience and update once. Returns metrics; ``"num_tokens"`` (env steps) is required."""

    def hyperparameters(self) -> dict[str, Any]:
        """The config as JSON-able values: the keyword arguments that rebuild this agent (saved in ``agent.json``)."""
        return self.config.to_dict()

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
        many iterations (and always at the end when ``checkpoint_dir`` is given). An exception inside an
        iteration propagates without saving: the last checkpoint stays as it was.

        Ctrl-C (SIGINT, when called from the main thread): the first lets the iteration in progress finish,
        then saves to ``checkpoint_dir`` (if given) and raises :class:`TrainingInterrupted`; a second one
        raises ``KeyboardInterrupt`` at once without saving. The previous SIGINT handler is restored when
        ``learn`` returns or raises.
        """
        check_int("total_timesteps", total_timesteps, 1)
        check_int("checkpoint_every", checkpoint_every, 0)
        distributed.broadcast_modules(self._trained_modules().values())  # torchrun: every rank starts from rank 0's
        progress_bar = progress_bar and distributed.is_main_process()
        bar = tqdm(total=total_timesteps, initial=min(self.num_timesteps, total_timesteps), disable=not progress_bar,
                   unit="tok", desc=self.name)
        try:
            with _GracefulInterrupt() as interrupt:
                while self.num_timesteps < total_timesteps:
                    self._learn_iteration(bar, total_timesteps, progress_bar)
                    interrupt.requested = distributed.any_rank(interrupt.requested)  # all ranks stop together
                    due = bool(checkpoint_every) and self.iterations % checkpoint_every == 0
                    if checkpoint_dir and (due or interrupt.requested):
                        self.save(checkpoint_dir)
                    if interrupt.requested:
                        raise self._interrupted(checkpoint_dir)
                if checkpoint_dir:
                    self.save(checkpoint_dir)
                if interrupt.requested:
                    raise self._interrupted(checkpoint_dir)
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        return self

    def _trained_modules(self) -> dict[str, torch.nn.Module]:
        """The policy and the other trainable modules: what data-parallel ranks keep identical."""
        return {"policy": self.policy, **self.trainable_modules()}

    def _learn_iteration(self, bar: tqdm, total_timesteps: int, progress_bar: bool) -> None:
        """One :meth:`train_iteration` with its bookkeeping: counters, metrics, TensorBoard, progress bar.

        Under torchrun the token count is summed over ranks (``num_timesteps`` is global), the metrics and β are
        averaged over ranks, a reward model's running statistics merged (all ranks agree), and tokens/s is the
        global count over the slowest rank's time."""
        start = time.perf_counter()
        metrics = self.train_iteration()
        seconds = time.perf_counter() - start
        tokens = int(metrics.pop("num_tokens"))
        if distributed.world_size() > 1:
            tokens = distributed.sum_int(tokens)
            seconds = distributed.max_float(seconds)
            metrics = distributed.mean_metrics(metrics)
            distributed.synchronise_kl_controller(self.env)
            synchronise = getattr(self.env.reward_model, "synchronise_statistics", None)
            if synchronise is not None:  # a running reward normaliser (ensemble): the same statistics on all ranks
                synchronise()
        self.num_timesteps += tokens
        self.iterations += 1
        metrics["time/tokens_per_s"] = tokens / max(seconds, 1e-9)
        self.last_metrics = metrics
        self._log(metrics)
        bar.update(min(tokens, total_timesteps - bar.n))
        bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in metrics.items() if k in SCALARS[:4]})
        if self.verbose and not progress_bar and distributed.is_main_process():
            print(f"[{self.name}] it={self.iterations} steps={self.num_timesteps} "
                  + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def _interrupted(self, checkpoint_dir: str | Path | None) -> TrainingInterrupted:
        where = f"checkpoint saved to {checkpoint_dir}" if checkpoint_dir else "no checkpoint_dir, nothing saved"
        return TrainingInterrupted(
            f"training interrupted after iteration {self.iterations} ({self.num_timesteps} tokens); {where}",
            checkpoint=Path(checkpoint_dir) if checkpoint_dir else None,
            iterations=self.iterations, num_timesteps=self.num_timesteps,
        )

    def log_samples(self, prompts: list[str], texts: list[str], n: int = 4) -> None:
        """Write a markdown table of sample completions to TensorBoard (tag ``samples``)."""
        writer = self._get_writer()
        if writer is None:
            return
        rows = "\n".join(f"| {p} | {t.replace('|', '/')} |" for p, t in list(zip(prompts, texts))[:n])
        writer.add_text("samples", "| prompt | completion |\n|---|---|\n" + rows, self.num_timesteps)

    def log_lens(self, rollout: Any, **extras: Any) -> None:
        """Hand this iteration's rollout to the per-token lens (:mod:`textenv.agents.lens`), with the agent's own
        numbers by name: per token ``(B, T)`` or per episode ``(B,)`` (e.g. ``advantage=``, ``value=``). Kept every
        ``config.lens_every`` iterations on the process that writes TensorBoard, and written with this iteration's
        scalars (``lens/*`` tags); otherwise nothing is kept or computed."""
        every = getattr(self.config, "lens_every", 0)  # a native agent's option (NativeConfig)
        if every and self.iterations % every == 0 and self._get_writer() is not None:
            self._lens_pending = (rollout, extras)

    def _get_writer(self):
        if self.tensorboard_log is None or not distributed.is_main_process():  # torchrun: rank 0 writes
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
        lens = self.__dict__.pop("_lens_pending", None)  # log_lens() kept this iteration's rollout
        if lens is not None:
            from textenv.agents.lens import write_lens

            write_lens(writer, lens[0], self.env.tokenizer, self.env.reference, lens[1], self.num_timesteps)

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
        logits = self.acting_model()(input_ids=ids, attention_mask=mask,
                                     position_ids=position_ids(mask)).logits[:, -1].float()
        actions = sample_actions(logits, self.generator, temperature=0.0 if deterministic else 1.0).cpu().numpy()
        return (actions[0] if single else actions), None

    def acting_model(self) -> torch.nn.Module:
        """The model :meth:`predict` samples from: the policy (an agent that decodes with more than its LM, such as
        ILQL's Q-weighted policy, returns that)."""
        return self.policy

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the checkpoint directory ``path`` atomically (layout in the module docstring; nothing pickled).

        A crash mid-save leaves the previous checkpoint at ``path`` intact. ``path`` must be new, empty or a
        checkpoint written by :meth:`save`; a directory holding anything else (TensorBoard events, a user's
        files) or a file is refused with :class:`InputError` and left as it was.

        Under torchrun every rank calls it (:meth:`learn` does): each rank's random streams and algorithm state
        are gathered to rank 0, which alone writes the directory (recording ``world_size``); the other ranks
        wait until it is complete, and raise ``RuntimeError`` if rank 0 could not write it. With FSDP2
        (``sharding="fsdp"``) every rank first takes part in gathering the whole policy and optimizer state, which
        rank 0 writes in the same layout as an unsharded run's (optimizer state keyed by parameter name).
        """
        state = self._trainer_state()
        policy_state = distributed.full_model_state(self.policy) if self.sharded else None
        if distributed.world_size() > 1:
            state["world_size"] = distributed.world_size()
            state["ranks"] = distributed.gather_state({key: state[key] for key in RANK_STATE})
            if not distributed.is_main_process():
                if distributed.any_rank(False):  # waits for rank 0's write (a collective is a barrier)
                    raise RuntimeError(f"rank 0 could not save the checkpoint {path}; its error says why")
                return
            try:
                self._write_checkpoint(path, state, policy_state)
            except BaseException:
                distributed.any_rank(True)
                raise
            distributed.any_rank(False)
            return
        self._write_checkpoint(path, state)

    def _write_checkpoint(self, path: str | Path, state: dict[str, Any],
                          policy_state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the checkpoint directory ``path`` with the trainer ``state`` (:meth:`save`); ``policy_state``:
        the policy's whole state dict when its parameters are FSDP2 shards (``None``: read from the policy)."""
        with atomic_directory(path, kind=CHECKPOINT_KIND) as tmp:
            write_state(tmp, TRAINER_STATE, state)  # first: a state it cannot store fails fast
            if is_peft_model(self.policy):  # adapters for resume, merged weights for from_pretrained users
                self.policy.save_pretrained(tmp / "adapter", safe_serialization=True)
                merged = copy.deepcopy(self.policy).merge_and_unload()
                merged.save_pretrained(tmp / "policy", safe_serialization=True)
            else:
                self.policy.save_pretrained(tmp / "policy", state_dict=policy_state, safe_serialization=True)
            self.env.tokenizer.save_pretrained(tmp / "policy")
            modules = {f"{name}.{k}": v.detach().cpu().contiguous()
                       for name, module in self.trainable_modules().items() for k, v in module.state_dict().items()}
            if modules:
                save_file(modules, str(tmp / MODULES_FILE))
            meta = {
                "format": AGENT_FORMAT,
                "version": AGENT_FORMAT_VERSION,
                "agent": self.name,
                "hyperparameters": self.hyperparameters(),
                "num_timesteps": self.num_timesteps,
                "iterations": self.iterations,
                "modules": sorted(self.trainable_modules()),
                "env": getattr(self.env, "spec_kwargs", {}),
                "world_size": distributed.world_size(),
            }
            (tmp / AGENT_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")

    def load_state(self, path: str | Path) -> None:
        """Restore weights, trainable modules, optimizers, RNG streams, β and counters from :meth:`save`'s
        directory, for an exact resume.

        Everything is checked before anything changes (:class:`InputError` naming the file or setting): the
        directory (recovered first if a save was killed between its renames), the agent type, the env settings
        the run depends on, every file (nothing pickled, safetensors complete and matching ``textenv.json``'s
        checksums) and every trainable module (present, same keys and shapes). Hyper-parameters that differ from
        the saved ones stay as this agent was built (they apply from now on and are recorded by the next save),
        with a warning listing them; the seed is the checkpoint's (its random streams continue).
        """
        path = Path(path)
        meta = read_checkpoint_meta(path)
        self._check_agent_type(meta, path)
        check_env_settings(meta, self.env, path)
        self._check_sharding(meta, path)
        if not (path / f"{TRAINER_STATE}.json").is_file():
            raise InputError(
                f"{path} holds no {TRAINER_STATE}.json: it keeps the weights only (not the optimizer state and "
                f"random streams a resume needs). Resume from a complete checkpoint, or start a new run from its "
                f"weights with the env setting `model: {path / 'policy'}`"
            )
        verify_directory(path, CHECKPOINT_KIND)
        state = read_state(path, TRAINER_STATE)
        _check_trainer_state(state, path / f"{TRAINER_STATE}.json", sorted(self.optimizers()))
        state = _this_rank_state(state, path)
        self._check_extra_state(state.get("extra", {}))
        modules = self._read_modules(path)
        load_policy = self._read_policy_weights(path)
        self._note_changed_hyperparameters(meta, path)

        load_policy()
        for name, module in self.trainable_modules().items():
            module.load_state_dict(modules[name])
        for name, optimizer in self.optimizers().items():
            if self.sharded:
                _load_optimizer_state(optimizer, state["optimizers"][name], self._trained_modules())
            else:
                _load_optimizer_state(optimizer, state["optimizers"][name])
        self.num_timesteps = state["num_timesteps"]
        self.iterations = state["iterations"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        self.env.np_random.bit_generator.state = state["env_rng"]
        window, window_steps = state["kl_window"]
        self.env.load_kl_controller_state({"kl_coef": state["kl_coef"], "window": window, "window_steps": window_steps})
        self._load_extra_state(state.get("extra", {}))
        if self.grad_scaler is not None and isinstance(state.get("grad_scaler"), dict):
            self.grad_scaler.load_state_dict(state["grad_scaler"])  # the loss scale goes on where it was
        load_running_state = getattr(self.env.reward_model, "load_running_state", None)
        if load_running_state is not None and isinstance(state.get("reward_model"), dict):
            load_running_state(state["reward_model"])

    def _check_sharding(self, meta: dict[str, Any], path: Path) -> None:
        """Refuse to resume an FSDP2 checkpoint unsharded or the reverse: the optimizer state is keyed by
        parameter name in one and by position in the other."""
        saved = meta["hyperparameters"].get("sharding", "ddp")
        current = getattr(self.config, "sharding", "ddp")
        if saved != current:
            raise InputError(f"checkpoint {path} was trained with sharding={saved!r}, and this run asks for "
                             f"sharding={current!r}; the optimizer state is stored differently. Resume with "
                             f"sharding={saved!r} (drop the override), or start a new run from its weights with "
                             f"`model: {path / 'policy'}`")

    def _check_agent_type(self, meta: dict[str, Any], path: Path) -> None:
        if self.name and meta["agent"] != self.name:
            raise InputError(f"checkpoint {path} holds a {meta['agent']!r} agent, not {self.name!r}: "
                             f"--agent {meta['agent']} to resume it")

    def _read_modules(self, path: Path) -> dict[str, dict[str, torch.Tensor]]:
        """Each trainable module's state dict from ``modules.safetensors``, checked strictly against the module
        (a missing file, module, key or a wrong shape is an :class:`InputError`, never a fresh module)."""
        expected = self.trainable_modules()
        if not expected:
            return {}
        file = path / MODULES_FILE
        if not file.is_file():
            raise InputError(f"damaged checkpoint: {file} is missing, so the checkpoint lacks the "
                             f"{', '.join(sorted(expected))} a {self.name!r} agent trains; textenv does not resume "
                             "with a fresh one. Use a complete checkpoint")
        tensors = read_tensors(file)
        found: dict[str, dict[str, torch.Tensor]] = {}
        for name, module in expected.items():
            prefix = f"{name}."
            saved = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            wanted = module.state_dict()
            missing = sorted(set(wanted) - set(saved))
            unexpected = sorted(set(saved) - set(wanted))
            wrong = sorted(k for k in set(wanted) & set(saved) if saved[k].shape != wanted[k].shape)
            if missing or unexpected or wrong:
                detail = "; ".join(f"{what} {keys}" for what, keys in (
                    ("missing", missing), ("unexpected", unexpected), ("with another shape", wrong)) if keys)
                raise InputError(f"damaged checkpoint: {file}: the {name!r} module does not match this "
                                 f"{self.name!r} agent's ({detail}). Use a complete checkpoint of the same agent")
            found[name] = saved
        return found

    def _read_policy_weights(self, path: Path) -> Callable[[], None]:
        """Check the saved policy weights (safetensors only, never a ``.bin``) and return the function that
        loads them into :attr:`policy`."""
        if is_peft_model(self.policy):
            tensors = read_tensors(path / "adapter" / "adapter_model.safetensors")

            def load_adapters() -> None:
                from peft import set_peft_model_state_dict

                set_peft_model_state_dict(self.policy, tensors)

            return load_adapters
        policy_dir = path / "policy"
        read_json(policy_dir / "config.json")
        shards = sorted(policy_dir.glob("*.safetensors"))
        if not shards:
            raise InputError(f"damaged checkpoint: {policy_dir} holds no model.safetensors (textenv loads policy "
                             "weights from safetensors only). Use a complete checkpoint")
        for shard in shards:
            check_safetensors(shard)

        def load_policy() -> None:
            from transformers import AutoModelForCausalLM

            saved = AutoModelForCausalLM.from_pretrained(policy_dir, use_safetensors=True)
            if self.sharded:  # every rank read the whole state; each keeps its shard
                distributed.load_full_model_state(self.policy, saved.state_dict())
            else:
                self.policy.load_state_dict(saved.state_dict())

        return load_policy

    def _note_changed_hyperparameters(self, meta: dict[str, Any], path: Path) -> None:
        """Warn about hyper-parameters that differ from the checkpoint's (they apply: the agent was built with
        them); keep the checkpoint's seed (its random streams continue)."""
        # an option newer than the checkpoint (absent from its agent.json) counts as saved at its default
        saved = {**_as_json(self.config_class().to_dict()), **meta["hyperparameters"]}
        current = _as_json(self.hyperparameters())
        notes = [f"{key}: saved {saved.get(key, '<unset>')!r}, now {current.get(key, '<unset>')!r}"
                 for key in sorted(set(saved) | set(current))
                 if key != "seed" and saved.get(key, _UNSET) != current.get(key, _UNSET)]
        if notes:
            warnings.warn(f"resuming {path} with other hyper-parameters; they apply from now on and the next "
                          f"checkpoint records them: {'; '.join(notes)}", UserWarning, stacklevel=3)
        if "seed" in saved and saved["seed"] != self.seed:
            warnings.warn(f"resuming {path}: seed={self.seed!r} is not used, the checkpoint's random streams "
                          f"(seed {saved['seed']!r}) continue", UserWarning, stacklevel=3)
            self.seed = saved["seed"]

    def _trainer_state(self) -> dict[str, Any]:
        """Everything besides weights that an exact resume needs (written by :func:`write_state`, no pickle)."""
        kl_controller = self.env.kl_controller_state()
        return {
            "optimizers": self._optimizer_states(),
            "num_timesteps": self.num_timesteps,
            "iterations": self.iterations,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "env_rng": self.env.np_random.bit_generator.state,
            "kl_coef": kl_controller["kl_coef"],
            "kl_window": (kl_controller["window"], kl_controller["window_steps"]),
            "extra": self._extra_state(),
            **({} if self.grad_scaler is None else {"grad_scaler": self.grad_scaler.state_dict()}),
            **self._reward_model_state(),
        }

    def _reward_model_state(self) -> dict[str, Any]:
        """``{"reward_model": ...}``: the running state of a reward model that keeps one (an ensemble's normaliser:
        ``running_state()``; the same on every rank after each iteration), else ``{}``."""
        running_state = getattr(self.env.reward_model, "running_state", None)
        return {} if running_state is None else {"reward_model": running_state()}

    def _optimizer_states(self) -> dict[str, Any]:
        """Each optimizer's ``state_dict()``; with FSDP2 the whole state gathered to rank 0, keyed by parameter
        name (a collective: every rank calls it; the other ranks get ``{}``)."""
        if not self.sharded:
            return {name: opt.state_dict() for name, opt in self.optimizers().items()}
        modules = self._trained_modules()
        return {name: distributed.full_optimizer_state(modules, opt) for name, opt in self.optimizers().items()}

    def _extra_state(self) -> dict[str, Any]:
        """Algorithm state beyond optimizers (e.g. a running baseline), saved in ``trainer_state.json`` /
        ``.safetensors``: only what :func:`~textenv.checkpoint.encode_state` stores (dicts, lists, tuples,
        numbers, str, None, tensors, NumPy arrays), never arbitrary objects."""
        return {}

    def _check_extra_state(self, state: dict[str, Any]) -> None:
        """Raise :class:`InputError` when the saved :meth:`_extra_state` cannot be applied to this agent (e.g.
        other data); called before :meth:`load_state` changes anything, so a refused resume leaves the agent as
        it was."""

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`_extra_state` (after :meth:`_check_extra_state` passed)."""

    @classmethod
    def load(cls, path: str | Path, env: TextGenVectorEnv, **overrides: Any) -> Agent:
        """Rebuild the agent saved at ``path`` on ``env`` and restore its full training state.

        ``Agent.load`` rebuilds whichever registered agent the checkpoint holds; ``PPO.load`` requires a PPO
        checkpoint. ``overrides`` replace saved hyper-parameters (with a warning, see :meth:`load_state`)."""
        path = Path(path)
        meta = read_checkpoint_meta(path)
        target = cls
        if not cls.name:
            from textenv.agents import agent_class

            target = agent_class(meta["agent"])
        elif meta["agent"] != cls.name:
            raise InputError(f"checkpoint {path} holds a {meta['agent']!r} agent, not {cls.name!r}: "
                             f"--agent {meta['agent']} to resume it")
        env = unwrap_vector_env(env)
        check_env_settings(meta, env, path)
        agent = target(env, **{**meta["hyperparameters"], **overrides})
        agent.load_state(path)
        return agent


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :meth:`Agent.learn` after a first Ctrl-C: the iteration in progress finished and, when
    ``checkpoint_dir`` was given, a checkpoint was saved there (``checkpoint``; ``None`` without one)."""

    def __init__(self, message: str, checkpoint: Path | None, iterations: int, num_timesteps: int) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.iterations = iterations
        self.num_timesteps = num_timesteps


class _GracefulInterrupt:
    """SIGINT handler for :meth:`Agent.learn` (main thread only): the first Ctrl-C sets :attr:`requested`, the
    second raises ``KeyboardInterrupt`` at once. The previous handler is restored on exit."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:  # a run started with SIGINT ignored (nohup) stays so
                self._previous = signal.SIG_DFL if previous is None else previous
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt("second Ctrl-C: stopped at once, without saving")
        self.requested = True
        sys.stderr.write("\nCtrl-C: finishing this iteration, then saving a checkpoint "
                         "(press Ctrl-C again to stop at once without saving)\n")


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """``agent.json`` of the checkpoint directory ``path``, after checking the directory (recovering a swap a
    crash interrupted) and refusing pickles and checkpoints of older textenv versions (:class:`InputError`)."""
    path = Path(path)
    recover_directory(path)
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist; pass the directory Agent.save() or `textenv train` "
                         "wrote (e.g. runs/NAME/checkpoint)")
    if not path.is_dir():
        raise InputError(f"checkpoint {path} is a file, not a checkpoint directory; pass the directory "
                         "Agent.save() wrote (holding agent.json)")
    old_state = path / "trainer_state.pt"
    if old_state.exists() and not (path / f"{TRAINER_STATE}.json").exists():
        raise InputError(
            f"{path} is a checkpoint of an older textenv: its trainer_state.pt is a pickle, and textenv no longer "
            "unpickles checkpoints (unpickling a file can run arbitrary code). Its weights are safe to reuse: "
            f"start a new run from them with the env setting `model: {path / 'policy'}` (the optimizer state, "
            "random streams and counters cannot be carried over)"
        )
    if not (path / AGENT_FILE).is_file():
        raise InputError(f"{path} is not a textenv checkpoint (no {AGENT_FILE}); pass the directory Agent.save() "
                         "or `textenv train` wrote (e.g. runs/NAME/checkpoint)")
    pickles = pickle_files(path)
    if pickles:
        names = ", ".join(str(p.relative_to(path)) for p in pickles)
        raise InputError(f"checkpoint {path} holds pickle files ({names}); textenv never loads pickles, because "
                         "unpickling can run arbitrary code, and writes none. Remove them (and check where they "
                         "came from) or use a checkpoint written by textenv")
    meta = read_json(path / AGENT_FILE)
    if not (isinstance(meta, dict) and isinstance(meta.get("agent"), str)
            and isinstance(meta.get("hyperparameters"), dict) and isinstance(meta.get("env"), dict)):
        raise InputError(f"damaged checkpoint: {path / AGENT_FILE} lacks the 'agent', 'hyperparameters' or 'env' "
                         "entries Agent.save() writes. Use a complete checkpoint")
    return meta


def check_env_settings(meta: dict[str, Any], env: TextGenVectorEnv, path: Path) -> None:
    """Refuse (:class:`InputError`) to resume on an env whose settings differ from the checkpoint's
    (``agent.json`` ``"env"``): model, num_envs, group_size, max_new_tokens, the KL settings, lora, prompts..."""
    saved = meta["env"]
    current = _as_json(getattr(env, "spec_kwargs", {}))
    changes = [(key, saved.get(key, _UNSET), current.get(key, _UNSET)) for key in sorted(set(saved) | set(current))]
    changes = [(key, old, new) for key, old, new in changes if not _same_setting(old, new)]
    if changes:
        listed = "; ".join(f"{key}: saved {_show(old)}, now {_show(new)}" for key, old, new in changes)
        raise InputError(f"cannot resume {path} with other env settings ({listed}): the checkpoint's state depends "
                         "on them. Resume with the saved settings, or start a new run from its weights with "
                         f"`model: {path / 'policy'}`")


_UNSET = object()

#: Trainer-state entries that differ between data-parallel ranks (saved per rank under ``"ranks"``).
RANK_STATE = ("generator", "torch_rng", "numpy_rng", "python_rng", "env_rng", "kl_window", "extra")


def check_world_size(saved: Any, path: str | Path) -> None:
    """Refuse (:class:`InputError`) to resume a checkpoint written by another number of processes (``saved``:
    its recorded ``world_size``; checkpoints that record none come from one process)."""
    saved = 1 if saved is None else saved
    current = distributed.world_size()
    if saved == current:
        return
    if not isinstance(saved, int) or isinstance(saved, bool) or saved < 1:
        raise InputError(f"damaged checkpoint: {path} records world_size={saved!r}, not a number of processes. "
                         "Use a complete checkpoint")
    how = ("without torchrun" if saved == 1
           else f"under `torchrun --nproc-per-node {saved}` (or nodes × processes = {saved})")
    raise InputError(f"checkpoint {path} was written by a run of {saved} process{'es' if saved > 1 else ''}, and "
                     f"this run has {current}: each process's random streams are saved separately and cannot be "
                     f"split or merged. Resume it {how}, or start a new run from its weights with "
                     f"`model: {Path(path) / 'policy'}`")


def _this_rank_state(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """The trainer state as this process resumes it: the same world size as the run that saved it (else an
    :class:`InputError`), and under torchrun this rank's own streams and algorithm state."""
    check_world_size(state.get("world_size"), path)
    if distributed.world_size() == 1:
        return state
    ranks = state.get("ranks")
    if not (isinstance(ranks, list) and len(ranks) == distributed.world_size()
            and all(isinstance(r, dict) and set(RANK_STATE) <= set(r) for r in ranks)):
        raise InputError(f"damaged checkpoint: {path / (TRAINER_STATE + '.json')}: 'ranks' does not hold the "
                         f"{distributed.world_size()} per-process states. Use a complete checkpoint")
    mine = {**state, **ranks[distributed.rank()]}
    _check_trainer_state(mine, path / f"{TRAINER_STATE}.json", list(state["optimizers"]))
    return mine


def _show(value: Any) -> str:
    return "<not recorded>" if value is _UNSET else repr(value)


def _same_setting(saved: Any, current: Any) -> bool:
    if saved == current:
        return True
    if isinstance(saved, str) and isinstance(current, str):  # one model directory spelled two ways
        a, b = Path(resolve_model_path(saved)), Path(resolve_model_path(current))
        return a.exists() and b.exists() and a.resolve() == b.resolve()
    return False


def _as_json(value: Any) -> Any:
    """``value`` as ``agent.json`` records it (tuples become lists, other objects their ``str``)."""
    return json.loads(json.dumps(value, default=str))


def _check_trainer_state(state: Any, file: Path, optimizers: list[str]) -> None:
    """The decoded trainer state has every entry :meth:`Agent.load_state` restores, with the right types."""
    expected = {"optimizers": dict, "num_timesteps": int, "iterations": int, "generator": torch.Tensor,
                "torch_rng": torch.Tensor, "numpy_rng": tuple, "python_rng": tuple, "env_rng": dict,
                "kl_coef": (int, float), "kl_window": tuple, "extra": dict}
    problems = [] if isinstance(state, dict) else ["it is not a mapping"]
    if not problems:
        problems = [f"{key!r} is missing or not a {kind.__name__ if isinstance(kind, type) else 'number'}"
                    for key, kind in expected.items() if not isinstance(state.get(key), kind)]
    if not problems:
        problems = [f"no state for the {name!r} optimizer" for name in optimizers if name not in state["optimizers"]]
    if not problems and len(state["kl_window"]) != 2:
        problems = ["'kl_window' is not (window, steps)"]
    if problems:
        raise InputError(f"damaged checkpoint: {file}: {'; '.join(problems)}. Use a complete checkpoint")


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any],
                          sharded_modules: dict[str, torch.nn.Module] | None = None) -> None:
    """Load the moments and step counts of ``state`` but keep this optimizer's hyper-parameters (lr, betas, ...):
    the agent was built with them, so a changed learning rate applies instead of being silently reverted.
    ``sharded_modules``: the modules an FSDP2 optimizer steps (``state`` is then the whole state keyed by
    parameter name, :func:`textenv.distributed.full_optimizer_state`; each rank keeps its shard)."""
    hyperparameters = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    if sharded_modules is not None:
        distributed.load_full_optimizer_state(sharded_modules, optimizer, state)
    else:
        optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, hyperparameters):
        group.update(kept)


def _loss_scaler(env: TextGenVectorEnv, config: AgentConfig) -> torch.amp.GradScaler | None:
    """A ``torch.amp.GradScaler`` on the env's device for ``autocast_dtype="float16"`` (float32 weights only:
    the scaler divides float32 gradients); ``None`` otherwise."""
    if getattr(config, "autocast_dtype", None) != "float16":
        return None
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in env.policy.parameters() if p.requires_grad})
    if dtypes != ["float32"]:
        raise InputError(f"autocast_dtype='float16' trains float32 master weights, but the policy's weights are "
                         f"{', '.join(dtypes)}: build the env with dtype='float32' (the default), or train in the "
                         "weights' dtype without autocast_dtype")
    return torch.amp.GradScaler(torch.device(env.device).type)


def _check_fsdp(env: TextGenVectorEnv, config: AgentConfig) -> None:
    """``sharding="fsdp"`` needs torchrun's processes, a fully trained policy (not LoRA adapters) and no float16
    loss scaler."""
    if distributed.world_size() == 1:
        raise InputError("sharding='fsdp' shards the model over torchrun's processes: launch with torchrun "
                         "--nproc-per-node N (N >= 2), or use sharding='ddp'")
    if is_peft_model(env.policy):
        raise InputError("sharding='fsdp' with LoRA (env lora=...) is not supported: a LoRA checkpoint merges the "
                         "adapters into a copy of the whole model, which textenv does not build from FSDP2's "
                         "shards. Use sharding='ddp' with LoRA (only the adapters are trained and the reference "
                         "is the same model with its adapters off, so it costs no second copy)")
    if getattr(config, "autocast_dtype", None) == "float16":
        raise InputError("sharding='fsdp' with autocast_dtype='float16' is not supported: its loss scaler would have "
                         "to find overflows across every rank's gradient shards; use autocast_dtype='bfloat16' (no "
                         "loss scaler needed) or sharding='ddp'")


def set_global_seeds(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
