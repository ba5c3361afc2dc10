"""Conventions of released checkpoints, each built locally (tiny, random): a padded vocabulary, dropout applied as a
function (OPT), weights saved in bfloat16 and the ``dtype`` argument, several EOS ids in the generation config, and
the tokenizer's pad / EOS / BOS tokens. Each either works or raises an :class:`InputError` that says how to fix it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from textenv.agents import make_agent
from textenv.models.setup import disable_dropout
from textenv.rollout import sample_actions
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["the film was", "i liked the pasta at the", "a", "this blender is"]


def make_env(model, **kwargs) -> TextGenVectorEnv:
    options = {"num_envs": 4, "model": model if isinstance(model, torch.nn.Module) else str(model), "prompts": PROMPTS,
                   "max_new_tokens": 5, "reward_model": lambda prompts, completions: [t.count("e") / 8 for t in completions],
                   "autoreset_mode": "disabled", "device": "cpu", "kl_coef": 0.05}
    return TextGenVectorEnv(**{**options, **kwargs})


def llama(tokenizer_dir: Path, directory: Path, vocab: int | None = None, dtype: torch.dtype = torch.float32,
          **config) -> Path:
    """A tiny random Llama saved in ``directory`` with the tokenizer of ``tokenizer_dir``."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab or len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, eos_token_id=eos, bos_token_id=eos,
        pad_token_id=eos, **config))
    model.to(dtype).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def play(env: TextGenVectorEnv, seed: int = 0) -> torch.Tensor:
    """One episode per row sampled from the env's logits; the per-step log-probs ``(B, T)``."""
    env.reset(seed=seed, options={"prompts": PROMPTS})
    generator = torch.Generator().manual_seed(seed)
    steps = []
    while not env.finished.all():
        steps.append(torch.as_tensor(env.step(sample_actions(env.next_token_logits(), generator))[4]["logprob"]))
    return torch.stack(steps, dim=1)


def full_forward(env: TextGenVectorEnv, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The generated tokens' log-probs from one plain forward ``(B, T)`` and their mask."""
    ids, mask = env.episode_tokens()
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = env.policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    logprobs = logits[:, :-1].log_softmax(dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    return logprobs[:, -steps:], mask[:, -steps:].bool()


# ---------------------------------------------------------------------- padded vocabulary
def test_padded_vocabulary_never_samples_outside_the_action_space(tiny_model_dir, tmp_path):
    directory = llama(tiny_model_dir, tmp_path / "padded", vocab=320)  # the tokenizer has 300 ids
    env = make_env(directory, max_new_tokens=20)
    vocab = env.single_action_space.n
    assert vocab == len(env.tokenizer) == 300
    assert env.policy.get_input_embeddings().num_embeddings == vocab
    env.reset(seed=0)
    assert env.next_token_logits().shape == (4, vocab)
    for seed in range(3):  # with an unrestricted head, ids >= 300 hold 20/320 of the mass: sampled within a step
        steps = play(env, seed)
        full, generated = full_forward(env, steps.shape[1])
        assert float(((steps - full) * generated).abs().max()) <= 1e-4
    assert math.isfinite(make_agent("reinforce", env, seed=0).train_iteration()["train/loss"])


@pytest.mark.bad_input
def test_a_tokenizer_with_more_ids_than_the_model_is_explained(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})  # 301 ids, the model has 300 rows
    with pytest.raises(InputError, match=r"tokenizer.*301.*300.*resize_token_embeddings"):
        make_env(tiny_model_dir, tokenizer=tokenizer)


def test_an_added_pad_token_with_a_resized_model_works(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tokenizer))
    env = make_env(model, tokenizer=tokenizer)
    assert env.tokenizer.pad_token_id == 300 and env.single_action_space.n == 301
    steps = play(env)
    full, generated = full_forward(env, steps.shape[1])
    assert float(((steps - full) * generated).abs().max()) <= 1e-4


# ---------------------------------------------------------------------- dropout
def opt_with_dropout(tiny_model_dir: Path, directory: Path) -> Path:
    """A tiny OPT whose dropout is all functional (``F.dropout(p=self.dropout)``), at 0.3, and which skips each layer
    with probability 0.5 in training (``layerdrop``)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.3, attention_dropout=0.3,
        activation_dropout=0.3, layerdrop=0.5, eos_token_id=eos, bos_token_id=eos, pad_token_id=eos,
    )).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_functional_dropout_is_off_in_training_mode(tiny_model_dir, tmp_path):
    env = make_env(opt_with_dropout(tiny_model_dir, tmp_path / "opt"))
    policy = env.policy.train()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        first, second = policy(input_ids=ids).logits, policy(input_ids=ids).logits
    assert torch.equal(first, second)
    config = policy.config
    assert config.dropout == config.attention_dropout == config.activation_dropout == config.layerdrop == 0.0
    metrics = make_agent("ppo", env, seed=0).train_iteration()  # the update forward runs in training mode
    assert metrics["train/logprob_mismatch"] <= 1e-4


def test_set_policy_disables_functional_dropout_too(tiny_model_dir, tmp_path):
    directory = opt_with_dropout(tiny_model_dir, tmp_path / "opt")
    env = make_env(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).train()
    env.set_policy(model)
    assert all(not isinstance(v, float) or v == 0.0
               for m in model.modules() for k, v in vars(m).items() if "drop" in k)
    disable_dropout(model)  # idempotent


# ---------------------------------------------------------------------- dtype
def test_a_bfloat16_checkpoint_loads_in_float32_by_default(tiny_model_dir, tmp_path):
    directory = llama(tiny_model_dir, tmp_path / "bf16", dtype=torch.bfloat16)
    env = make_env(directory)
    assert {p.dtype for p in env.policy.parameters()} == {torch.float32}
    assert {p.dtype for p in env.reference.parameters()} == {torch.float32}


def test_dtype_bfloat16_is_correct_on_cpu(tiny_model_dir, tmp_path):
    directory = llama(tiny_model_dir, tmp_path / "bf16", dtype=torch.bfloat16)
    env = make_env(directory, dtype="bfloat16")
    assert {p.dtype for p in env.policy.parameters()} == {torch.bfloat16}
    assert env.spec_kwargs["dtype"] == "bfloat16"
    steps = play(env)
    assert steps.dtype == torch.float32
    full, generated = full_forward(env, steps.shape[1])
    # bfloat16 keeps 8 bits of mantissa: the cached step and the full forward round differently (here < 0.05 nats)
    assert float(((steps - full) * generated).abs().max()) <= 0.05
    metrics = make_agent("reinforce", env, seed=0).train_iteration()
    assert math.isfinite(metrics["train/loss"])


def test_dtype_of_a_loaded_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert make_env(model, kl_coef=0).policy.dtype == torch.float32  # None keeps a loaded model's dtype
    assert make_env(model, kl_coef=0, dtype=torch.bfloat16).policy.dtype == torch.bfloat16


@pytest.mark.bad_input
@pytest.mark.parametrize("dtype", ["int8", "float64x", 3, torch.int64])
def test_a_wrong_dtype_is_refused(tiny_model_dir, dtype):
    with pytest.raises(InputError, match="dtype"):
        make_env(tiny_model_dir, dtype=dtype)


# ---------------------------------------------------------------------- EOS ids
def test_every_eos_id_of_the_generation_config_ends_an_episode(tiny_model_dir, tmp_path):
    directory = llama(tiny_model_dir, tmp_path / "eos")
    model = AutoModelForCausalLM.from_pretrained(directory)
    eos = AutoTokenizer.from_pretrained(directory).eos_token_id
    model.generation_config.eos_token_id = [eos, 42, 43]  # e.g. <|endoftext|> and two end-of-turn tokens
    model.save_pretrained(directory)
    env = make_env(directory)
    assert env.eos_token_ids == [eos, 42, 43]
    env.reset(seed=0, options={"prompts": PROMPTS})
    _, _, terminated, truncated, info = env.step([42, 43, eos, 7])
    assert terminated.tolist() == [True, True, True, False] and not truncated.any()
    assert info["_text"].tolist() == [True, True, True, False]


# ---------------------------------------------------------------------- pad / EOS / BOS
def test_a_tokenizer_without_pad_token_pads_with_eos(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    env = make_env(tiny_model_dir, tokenizer=tokenizer)
    assert env.tokenizer.pad_token_id == env.tokenizer.eos_token_id
    steps = play(env)
    full, generated = full_forward(env, steps.shape[1])
    assert float(((steps - full) * generated).abs().max()) <= 1e-4


def test_a_right_padding_tokenizer_gives_the_same_episodes(tiny_model_dir):
    left = play(make_env(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.padding_side = "right"
    env = make_env(tiny_model_dir, tokenizer=tokenizer)
    right = play(env)
    assert torch.equal(left, right)
    assert math.isfinite(make_agent("ppo", env, seed=0).train_iteration()["train/loss"])


@pytest.mark.bad_input
def test_a_tokenizer_without_eos_is_explained(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.eos_token = None
    with pytest.raises(InputError, match="EOS"):
        make_env(tiny_model_dir, tokenizer=tokenizer)


def test_a_tokenizer_that_adds_bos(tiny_model_dir, tmp_path):
    """Llama-style tokenizers put BOS before every prompt: the episodes start with it and log-probs still match."""
    from tokenizers import processors

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bos = tokenizer.eos_token
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.eos_token_id)])
    env = make_env(tiny_model_dir, tokenizer=tokenizer)
    steps = play(env)
    ids, mask = env.episode_tokens()
    first = ids[torch.arange(len(ids)), mask.argmax(dim=1)]
    assert (first == tokenizer.eos_token_id).all()
    full, generated = full_forward(env, steps.shape[1])
    assert float(((steps - full) * generated).abs().max()) <= 1e-4


# ---------------------------------------------------------------------- chat prompts
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def chat_tokenizer(tiny_model_dir: Path):
    """The tiny tokenizer with a chat template that starts with BOS, and a post-processor that also adds BOS to plain
    text (as Llama tokenizers do): a rendered chat prompt must not get a second one."""
    from tokenizers import processors

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bos = tokenizer.eos_token
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.eos_token_id)])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def test_chat_prompts_are_rendered_with_the_chat_template(tiny_model_dir):
    tokenizer = chat_tokenizer(tiny_model_dir)
    chat = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "the film was"}]
    prompts = [chat, "the book"]
    env = make_env(tiny_model_dir, tokenizer=tokenizer, prompts=prompts, num_envs=2)
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert env.prompts == [rendered, "the book"]
    _, info = env.reset(seed=0, options={"prompts": prompts})
    assert list(info["prompt"]) == [rendered, "the book"]
    ids, mask = env.episode_tokens()
    chat_ids = ids[0][mask[0].bool()].tolist()
    assert chat_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert chat_ids[0] == tokenizer.eos_token_id and chat_ids[1] != tokenizer.eos_token_id  # one BOS, not two
    assert ids[1][mask[1].bool()].tolist() == tokenizer("the book")["input_ids"]
    # The rendered text given back (as ReMax's greedy baseline does) tokenizes the same way.
    env.reset(seed=0, options={"prompts": [rendered, "the book"]})
    assert env.episode_tokens()[0][0][mask[0].bool()].tolist() == chat_ids


def test_chat_prompts_from_a_jsonl_file(tiny_model_dir, tmp_path):
    import json

    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "the film was"}]}) + "\n"
                    + json.dumps({"prompt": "the book"}) + "\n")
    env = make_env(tiny_model_dir, tokenizer=chat_tokenizer(tiny_model_dir), prompts=str(path), num_envs=2)
    assert env.prompts[0].endswith("user: the film was\nassistant:") and env.prompts[1] == "the book"


@pytest.mark.bad_input
def test_chat_prompts_without_a_chat_template_are_explained(tiny_model_dir):
    with pytest.raises(InputError, match="chat template"):
        make_env(tiny_model_dir, prompts=[[{"role": "user", "content": "hi"}]], num_envs=1)


@pytest.mark.bad_input
def test_a_malformed_chat_prompt_is_refused(tiny_model_dir):
    with pytest.raises(InputError, match=r"prompts\[0\].*chat messages"):
        make_env(tiny_model_dir, prompts=[[{"role": "user"}]], num_envs=1)
