"""Shared fixtures: a tiny random GPT-2 + BPE tokenizer built in seconds, for fast behavioural tests.

Tests of the *shipped* default model use ``textenv.models.loading.DEFAULT_MODEL`` directly; everything else uses
``tiny_model_dir`` so the suite stays fast and independent of the embedded weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_TEXTS = [
    "the film was good and the acting was great",
    "the book was bad and boring",
    "i liked the pasta at the restaurant",
    "this blender is loud but it works",
    "the hotel room was clean and the staff were friendly",
]


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Train a ~300-token byte-level BPE on a few sentences and save a random 2-layer GPT-2 beside it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(TINY_TEXTS * 20, trainer)
    eos = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=eos, bos_token=eos, pad_token=eos, unk_token=eos, model_max_length=96
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=96, n_embd=32, n_layer=2, n_head=2,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``save_pretrained`` directory (model + tokenizer) of a tiny random GPT-2."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def tiny_prompts() -> list[str]:
    return ["the film was", "i liked the pasta at the", "the book", "this blender"]


class RunsWhenUnpickled:
    """A pickle payload: unpickling it creates the file ``marker``, the proof that a payload ran.

    Tests write ``pickle.dumps(RunsWhenUnpickled(marker))`` (or ``torch.save`` it) where textenv reads a file,
    assert the load is refused, and that ``marker`` does not exist."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one torch thread, which also keeps a module quick on a busy 2-core machine.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sb3_log_dir(tmp_path, monkeypatch):
    """Plain SB3 models create a log directory on learn(); keep it in the test's temporary directory."""
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3-logs"))


#: Two prompts for the small envs of the checkpoint tests.
PROMPTS_2 = ["the film was", "the book"]


def letter_e(prompts: list[str], completions: list[str]) -> list[float]:
    """A cheap reward: how often ``e`` occurs in each completion (divided by 8)."""
    return [text.count("e") / 8 for text in completions]


def small_env(model_dir, **kwargs):
    """A 4-row, 4-token training env on the tiny model with the ``letter_e`` reward and β = 0.05; ``kwargs``
    override any argument."""
    from textenv.vector_env import TextGenVectorEnv

    options = dict(num_envs=4, model=str(model_dir), prompts=PROMPTS_2, max_new_tokens=4, kl_coef=0.05,
                   reward_model=letter_e, autoreset_mode="disabled", device="cpu")
    return TextGenVectorEnv(**{**options, **kwargs})


#: The name under which the ``length_reward`` fixture registers its reward model.
LENGTH_REWARD = "test-length"


@pytest.fixture
def length_reward(monkeypatch) -> str:
    """A reward model registered by name (the CLI and agent.json take names): the completion's length in
    characters. Returns the name."""
    import numpy as np

    from textenv.reward_models import REWARD_MODELS, CallableReward

    monkeypatch.setitem(
        REWARD_MODELS, LENGTH_REWARD, lambda: CallableReward(lambda p, c: np.array([len(t) for t in c], dtype=float))
    )
    return LENGTH_REWARD
