"""What the benchmarks that run TRL share: the VADER reward as a TRL reward function, the TRL trainer on the
embedded model, and fresh-process isolation of a measurement.

``benchmarks/train.py`` times ``trl.RLOOTrainer`` steps against our iterations (tokens/s);
``benchmarks/learning.py --vs-trl`` trains ``trl.RLOOTrainer`` and ``trl.GRPOTrainer`` for a CPU-time budget
against our agents (held-out gold gain). Both build TRL's side with :func:`make_trl_trainer`, so the settings
that make the two sides comparable are written once:

* the same model directory (TRL loads it with ``AutoModelForCausalLM``; no hub access), the same tokenizer
  and the same training prompts (the built-in ones, or a task's: a ``datasets.Dataset`` built in memory);
* the same reward: :class:`CountingReward`, a textenv scorer (VADER, or a task's gold scorer) behind TRL's
  ``reward_funcs`` interface, which also counts the tokens TRL generated;
* B completions per optimizer step (``per_device_train_batch_size``), K per prompt (``num_generations``),
  at most T new tokens, one generation batch per step and one update per batch (on-policy, as ours);
* plain sampling from π_θ (temperature 1, no top-k/top-p), fp32 on the CPU, no dropout, no gradient
  checkpointing, no logging, saving or progress bars.

TRL is the optional ``bench`` extra: :func:`import_trl` says how to install it when it is missing.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from textenv.models.loading import load_tokenizer, resolve_model_path
from textenv.prompts import load_prompts
from textenv.reward_models import RewardModel, VaderSentimentReward, checked_scores

#: TRL trainers the benchmarks know: name -> (config class, trainer class) names in ``trl``.
TRL_TRAINERS = {"rloo": ("RLOOConfig", "RLOOTrainer"), "grpo": ("GRPOConfig", "GRPOTrainer")}


def isolated(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a fresh (spawned) Python process: every measurement starts from the same state
    (no inherited heap, thread pool or caches)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


class CountingReward:
    """A textenv reward model (default: VADER) as a TRL reward function (``reward_funcs`` callable interface) that
    also counts the tokens TRL generated: ``completion_ids`` are the completions as trained on (cut after the
    first EOS, EOS included). The scores are the scorer's own, checked finite and one per completion."""

    __name__ = "gold"  # TRL names its reward metrics after the callable

    def __init__(self, scorer: RewardModel | None = None) -> None:
        self.scorer = VaderSentimentReward() if scorer is None else scorer
        self.tokens = 0
        self.completions = 0

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                 **_: Any) -> list[float]:
        self.tokens += sum(len(ids) for ids in completion_ids)
        self.completions += len(completion_ids)
        return checked_scores(self.scorer, prompts, completions).tolist()


def import_trl() -> Any | None:
    """The ``trl`` module, or ``None`` after printing how to install it (the ``bench`` extra)."""
    try:
        import trl
    except ImportError as err:
        print(f"trl: skipped ({err}); install the benchmark extra: pip install -e '.[bench]'")
        return None
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return trl


@dataclass(frozen=True)
class TRLSettings:
    """The settings both sides share: model, B completions per step, K per prompt, at most T new tokens, β,
    Adam step size α, the seed and the training prompts (``None``: the built-in training split)."""

    model: str
    batch: int
    group_size: int
    new_tokens: int
    beta: float
    learning_rate: float = 1e-4
    seed: int = 0
    prompts: tuple[str, ...] | None = None


@contextmanager
def make_trl_trainer(trl: Any, kind: str, settings: TRLSettings, reward: CountingReward, max_steps: int,
                     callbacks: list[Any], **config_overrides: Any) -> Iterator[Any]:
    """A ``trl.RLOOTrainer`` / ``trl.GRPOTrainer`` (``kind`` in :data:`TRL_TRAINERS`) on ``settings``, inside a
    temporary output directory that is removed on exit (TRL requires one; nothing is written to it).

    ``config_overrides`` are further ``RLOOConfig`` / ``GRPOConfig`` fields (e.g. ``lr_scheduler_type``).
    """
    from datasets import Dataset
    from transformers import PrinterCallback

    config_name, trainer_name = TRL_TRAINERS[kind]
    # TRL still passes transformers' deprecated ``gradient_checkpointing`` names around: silence those warnings.
    with tempfile.TemporaryDirectory() as output_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        config = getattr(trl, config_name)(
            output_dir=output_dir,
            per_device_train_batch_size=settings.batch,  # completions per optimizer step (= our B)
            num_generations=settings.group_size,  # K completions per prompt
            max_completion_length=settings.new_tokens,
            steps_per_generation=1, num_iterations=1,  # one generation batch per step, one update per batch
            max_steps=max_steps,
            learning_rate=settings.learning_rate, beta=settings.beta, max_grad_norm=1.0, seed=settings.seed,
            temperature=1.0, top_k=0, top_p=1.0,  # plain sampling from π_θ, as the env
            use_cpu=True, bf16=False, gradient_checkpointing=False, disable_dropout=True,  # fp32, as ours
            report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0,
            **config_overrides,
        )
        trainer = getattr(trl, trainer_name)(
            model=str(resolve_model_path(settings.model)),  # a local directory: no hub access
            reward_funcs=reward,
            args=config,
            train_dataset=Dataset.from_dict(
                {"prompt": list(settings.prompts or load_prompts("builtin", "train"))}),
            processing_class=load_tokenizer(settings.model),
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # no end-of-training metrics dump
        yield trainer
