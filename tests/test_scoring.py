"""Packed forwards: the update's scoring (``textenv.scoring.score_actions``: packed episodes, LM head on taken
actions only) and the engine's packed prompt prefill.

Both must give exactly what the plain left-padded forward gives (log-probs, entropy, hidden states and the
gradients of all three; next-token logits and the KV cache decoding goes on from), and fall back to that forward
for a model that ignores packed episodes. The loader's fused GELU must compute the model as configured.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from textenv.engine.generation import GenerationEngine
from textenv.fast import attention, packing
from textenv.fast import prefill as fast_prefill
from textenv.models.loading import load_causal_lm, load_tokenizer
from textenv.rollout import collect_rollout
from textenv.scoring import score_rollout
from textenv.vector_env import TextGenVectorEnv

PROMPTS = ["the film was", "i liked the pasta at the restaurant", "the book", "a",
           "this blender is loud but it", "the hotel room was clean and"]


def rollout_with_ragged_episodes(tiny_model_dir, num_envs: int = 6):
    """A rollout whose prompts differ in length and whose completions end at different steps."""
    prompts = PROMPTS[:num_envs]
    env = TextGenVectorEnv(num_envs=num_envs, model=str(tiny_model_dir), reward_model=lambda p, c: [0.0] * len(c),
                           prompts=prompts, max_new_tokens=10, autoreset_mode="disabled", kl_coef=0.0)
    with torch.no_grad():  # make EOS likely (logit ≈ 4 at a typical state), so that some episodes stop early
        ids = torch.tensor([env.tokenizer("the film was good and the acting")["input_ids"]])
        mean_state = env.policy(ids, output_hidden_states=True).hidden_states[-1][0].mean(dim=0)
        env.policy.get_output_embeddings().weight[env.tokenizer.eos_token_id] = 4 * mean_state / mean_state.square().sum()
    rollout = collect_rollout(env, torch.Generator().manual_seed(1), prompts=prompts)
    lengths = rollout.action_mask.sum(dim=1)
    assert lengths.min() < lengths.max(), "the test needs episodes of different lengths"
    assert rollout.attention_mask[:, : rollout.prompt_width].sum(dim=1).unique().numel() > 1
    return env, rollout


def padded_reference(model, rollout):
    """The plain forward: log-probs, entropy and hidden states at every state, ``(B, T, ·)``."""
    positions = (rollout.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=positions,
                output_hidden_states=True)
    P = rollout.prompt_width
    logp = out.logits[:, P - 1 : -1].log_softmax(dim=-1)  # the plain way, independent of textenv.logprobs
    token_logp = logp.gather(2, rollout.actions[..., None]).squeeze(-1)
    return token_logp, -(logp.exp() * logp).sum(dim=-1), out.hidden_states[-1][:, P - 1 : -1]


def test_packed_scores_and_gradients_equal_the_padded_forward(tiny_model_dir):
    env, rollout = rollout_with_ragged_episodes(tiny_model_dir)
    model, taken = env.policy, rollout.action_mask.bool()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the packed forward is accepted for this model (no fallback warning)
        scores = score_rollout(model, rollout, entropy_grad=True)
    logprobs, ent, hidden = padded_reference(model, rollout)
    assert torch.allclose(scores.logprobs[taken], logprobs[taken], atol=1e-5)
    assert torch.allclose(scores.logprobs[taken], rollout.logprobs[taken], atol=1e-4)  # the sampling log-probs
    assert torch.allclose(scores.entropy[taken], ent[taken], atol=1e-5)
    assert torch.allclose(scores.hidden[taken], hidden[taken], atol=1e-5)
    assert torch.allclose(scores.hidden[taken], rollout.hidden_states[taken], atol=1e-4)
    assert (scores.logprobs[~taken] == 0).all() and (scores.entropy[~taken] == 0).all()
    assert (scores.hidden[~taken] == 0).all()

    def gradients(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    weight = torch.randn(scores.logprobs.shape, generator=torch.Generator().manual_seed(0))
    projection = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(1))

    def objective(lp, en, h):
        return ((lp * weight + en + h @ projection) * taken).sum()

    packed = gradients(objective(scores.logprobs, scores.entropy, scores.hidden))
    padded = gradients(objective(*padded_reference(model, rollout)))
    for a, b in zip(packed, padded):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert max(float(g.abs().max()) for g in packed) > 1e-3  # the comparison is not vacuous


def test_entropy_is_detached_unless_asked_for(tiny_model_dir):
    env, rollout = rollout_with_ragged_episodes(tiny_model_dir)
    assert not score_rollout(env.policy, rollout).entropy.requires_grad
    assert score_rollout(env.policy, rollout, entropy_grad=True).entropy.requires_grad
    rows = torch.tensor([4, 1])  # a minibatch of episodes, in any order
    minibatch = score_rollout(env.policy, rollout, rows)
    full = score_rollout(env.policy, rollout)
    assert torch.allclose(minibatch.logprobs, full.logprobs[rows], atol=1e-5)


class WrappedLM(torch.nn.Module):
    """A causal LM behind a wrapper whose ``forward`` a subclass changes (embeddings and config pass through)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()


class FixedSignature(WrappedLM):
    """A causal LM whose ``forward`` takes a fixed set of arguments, as older models do: no other keyword argument
    (such as the episode layout the packed attention reads) reaches its attention."""

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, use_cache=None,
                output_hidden_states=None, logits_to_keep=0):
        return self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=use_cache, output_hidden_states=output_hidden_states,
                          logits_to_keep=logits_to_keep)


class IgnoresPackedPositions(FixedSignature):
    """...that also attends across packed episodes (as a model without packed-sequence support would)."""

    def forward(self, attention_mask=None, **kwargs):
        if attention_mask is None:  # a packed call: a plain causal mask over the whole row
            shape = (kwargs["inputs_embeds"] if "inputs_embeds" in kwargs else kwargs["input_ids"]).shape[:2]
            attention_mask = torch.ones(shape, dtype=torch.long)
        return super().forward(attention_mask=attention_mask, **kwargs)


def test_the_update_forward_packs_one_row_of_episodes(tiny_model_dir):
    env, rollout = rollout_with_ragged_episodes(tiny_model_dir)
    score_rollout(env.policy, rollout)
    assert packing._FORWARD[env.policy] is packing._by_episode
    layout = packing.pack_episodes(rollout.input_ids, rollout.attention_mask)
    assert layout.input_ids.shape == (1, int(rollout.attention_mask.sum()))  # every live token once, no padding


def test_episode_attention_refuses_what_it_does_not_implement():
    """Sliding windows, logit soft-capping and attention sinks are left to transformers (the rows layout)."""
    layout = packing.pack_episodes(torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]]))
    states = torch.randn(1, 2, 5, 4)
    out, _ = attention.episode_attention(None, states, states, states, None, textenv_layout=layout)
    first = torch.nn.functional.scaled_dot_product_attention(*(states[:, :, :2],) * 3, is_causal=True)
    assert torch.allclose(out[0, :2], first[0].transpose(0, 1), atol=1e-6)  # episode 1 sees only itself
    for name in ("sliding_window", "softcap", "s_aux"):
        with pytest.raises(ValueError, match=name):
            attention.episode_attention(None, states, states, states, None, textenv_layout=layout, **{name: 4})


def test_a_model_without_episode_attention_packs_rows_of_episodes(tiny_model_dir):
    env, rollout = rollout_with_ragged_episodes(tiny_model_dir)
    model, taken = FixedSignature(env.policy), rollout.action_mask.bool()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only slower: no warning
        scores = score_rollout(model, rollout)
    assert packing._FORWARD[model] is packing._by_rows
    with torch.no_grad():
        expected = padded_reference(env.policy, rollout)[0]
    assert torch.allclose(scores.logprobs[taken], expected[taken], atol=1e-5)


def test_a_model_that_ignores_packing_falls_back_to_the_padded_forward(tiny_model_dir):
    env, rollout = rollout_with_ragged_episodes(tiny_model_dir)
    model, taken = IgnoresPackedPositions(env.policy), rollout.action_mask.bool()
    with pytest.warns(UserWarning, match="padded forward"):
        scores = score_rollout(model, rollout)
    assert packing._FORWARD[model] is packing._padded
    with torch.no_grad():
        expected = padded_reference(env.policy, rollout)[0]
    assert torch.allclose(scores.logprobs[taken], expected[taken], atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once per model: no second check, no second warning
        again = score_rollout(model, rollout)
    assert torch.allclose(again.logprobs, scores.logprobs)


def test_gelu_new_models_load_with_the_fused_kernel_and_the_same_outputs(tiny_model_dir):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert plain.config.activation_function == "gelu_new"
    fused = load_causal_lm(tiny_model_dir, device="cpu").eval()
    assert fused.config.activation_function == "gelu_pytorch_tanh"
    ids = torch.randint(1, plain.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = plain(ids).logits.log_softmax(-1), fused(ids).logits.log_softmax(-1)
    assert torch.allclose(a, b, atol=1e-5)


def test_the_engine_passes_the_cache_without_deprecation_warnings(tiny_model_dir):
    env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), reward_model=lambda p, c: [0.0] * len(c),
                           max_new_tokens=4, autoreset_mode="disabled", kl_coef=0.1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=FutureWarning)
        collect_rollout(env, torch.Generator().manual_seed(0))


def test_the_packed_prefill_continues_exactly_like_the_padded_one(tiny_model_dir):
    env, _ = rollout_with_ragged_episodes(tiny_model_dir)  # this model's first prefill: both ran and agreed
    assert fast_prefill._PACKED_PREFILL_AGREES.get(env.policy) is True
    prompts = PROMPTS[::-1]  # a different layout, prefilled packed only
    rollout = collect_rollout(env, torch.Generator().manual_seed(2), prompts=prompts)
    assert rollout.attention_mask[:, : rollout.prompt_width].sum(dim=1).unique().numel() > 1  # left padding
    with torch.no_grad():
        logprobs, _, hidden = padded_reference(env.policy, rollout)
    taken = rollout.action_mask.bool()
    # Step 0 reads the prefill's logits and hidden state; every later step, the KV entries it wrote.
    assert torch.allclose(rollout.logprobs[taken], logprobs[taken], atol=1e-4)
    assert torch.allclose(rollout.hidden_states[taken], hidden[taken], atol=1e-4)


class IgnoresBlockMasks(WrappedLM):
    """A causal LM that drops a 4-D attention mask (as a model that only takes 2-D padding masks might)."""

    def forward(self, attention_mask=None, cache=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None  # the packed prefill's block-causal mask: attends across episodes instead
        return self.model(attention_mask=attention_mask, cache=cache, **kwargs)


def test_a_model_that_breaks_the_packed_prefill_is_prefilled_padded(tiny_model_dir):
    model = IgnoresBlockMasks(load_causal_lm(tiny_model_dir, device="cpu").eval())
    tokenizer = load_tokenizer(tiny_model_dir)
    gen = GenerationEngine(model, None, tokenizer, max_new_tokens=3)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    with pytest.warns(UserWarning, match="padded prefill"):
        gen.start(prompts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once per model: no second check, no second warning
        gen.start(prompts[::-1])
    positions = (gen.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model.model(input_ids=gen.input_ids, attention_mask=gen.attention_mask, position_ids=positions)
    assert torch.allclose(gen.policy_logits, out.logits[:, -1], atol=1e-4)
