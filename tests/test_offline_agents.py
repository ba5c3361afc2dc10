"""Offline agents: SFT (behaviour cloning), DPO and DiscoPOP/LRML — losses by hand, learning, data, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from textenv.agents.dpo import DPO, LRML, dpo_loss, load_pairs, lrml_loss
from textenv.agents.sft import SFT, collate, encode_pairs, load_demonstrations
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

PREFERENCES = [
    {"prompt": "the film was", "chosen": " good and the acting was great", "rejected": " bad and boring"},
    {"prompt": "the book", "ranked": [" was great", " was good", " was bad and boring"]},
    {"prompt": "this blender", "chosen": " works", "rejected": " is loud"},
]  # 1 + C(3, 2) + 1 = 5 pairs


def make_env(model_dir, prompts, kl_coef: float = 0.1) -> TextGenVectorEnv:
    return TextGenVectorEnv(
        num_envs=2, model=str(model_dir), prompts=prompts, reward_model="vader", max_new_tokens=6,
        autoreset_mode="disabled", kl_coef=kl_coef, device="cpu",
    )


@pytest.fixture
def preference_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in PREFERENCES) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- losses
def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("beta_rho", [0.0, 1.0, -2.0])
def test_dpo_loss_matches_hand_computation(beta_rho):
    beta = 0.5
    rho = torch.tensor([beta_rho / beta], dtype=torch.float64)
    expected = -math.log(sigmoid(beta_rho))  # −log σ(βρ): log 2, 0.3133, 2.1269
    assert dpo_loss(rho, beta).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("beta_rho", [0.0, 1.0, -2.0])
def test_lrml_loss_matches_hand_computation(beta_rho):
    beta, tau = 0.5, 0.05
    rho = torch.tensor([beta_rho / beta], dtype=torch.float64)
    weight = sigmoid(beta_rho / tau)
    expected = (1 - weight) * math.log(1 + math.exp(-beta_rho)) + weight * math.exp(-beta_rho)
    assert lrml_loss(rho, beta, tau).item() == pytest.approx(expected, rel=1e-9)
    if beta_rho == 0.0:
        assert expected == pytest.approx(0.5 * math.log(2) + 0.5)


def test_lrml_blends_logistic_and_exponential_losses_and_is_stable():
    x = torch.tensor([-8.0, 8.0], dtype=torch.float64)  # |x/τ| = 160: the blend weight is 0 or 1
    assert lrml_loss(x, 1.0)[0].item() == pytest.approx(math.log1p(math.exp(8.0)), rel=1e-9)  # logistic (DPO)
    assert lrml_loss(x, 1.0)[1].item() == pytest.approx(math.exp(-8.0), rel=1e-9)  # exponential
    extreme = torch.tensor([-1e4, 1e4], requires_grad=True)  # naive exp(−βρ) would overflow float32
    loss = lrml_loss(extreme, 1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(extreme.grad).all()


def test_lrml_slope_at_zero_and_non_convexity():
    beta, tau = 0.1, 0.05
    rho = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(lrml_loss(rho, beta, tau).sum(), rho)
    # d/dρ f(βρ) at 0 = β·[σ'(0)/τ·(e⁰ − log 2) + (1 − σ(0))·(−σ(0)) + σ(0)·(−e⁰)]
    #                 = β·[(1 − log 2)/(4τ) − 3/4]
    expected = beta * ((1 - math.log(2)) / (4 * tau) - 0.75)
    assert slope.item() == pytest.approx(expected, rel=1e-9)
    assert slope.item() > 0  # so the update −f' at ρ = 0 is negative: it lowers ρ (DPO's raises it)
    (dpo_slope,) = torch.autograd.grad(dpo_loss(rho, beta).sum(), rho)
    assert dpo_slope.item() == pytest.approx(-beta / 2)  # DPO instead pushes ρ up at 0
    f = lambda x: lrml_loss(torch.tensor([x], dtype=torch.float64), 1.0, tau).item()  # noqa: E731
    assert f(-0.12) < f(0.0) < f(0.07) and f(-0.12) < f(-0.3)  # local minimum below 0, a bump above it
    assert f(1.0) < f(0.07)


# ---------------------------------------------------------------------------------------------- SFT
def test_encode_pairs_targets_only_completion_tokens(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts)
    tok = env.tokenizer
    pairs = encode_pairs(tok, ["the film was", ""], [" good", "the book was bad"])
    assert pairs[0].prompt == tok("the film was")["input_ids"]
    assert pairs[0].completion == tok(" good", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert pairs[1].prompt == [tok.eos_token_id]  # an empty prompt is BOS (= EOS for GPT-2)
    batch = collate(pairs, tok.pad_token_id)
    assert batch.target_mask.sum(dim=1).tolist() == [len(p.completion) for p in pairs]
    last = batch.input_ids.shape[1] - 1
    assert batch.input_ids[0, last].item() == tok.eos_token_id and batch.target_mask[0, last - 1].item() == 1
    with pytest.raises(ValueError, match="max_length"):
        encode_pairs(tok, ["the film was"], [" good"], max_length=2)


def test_sft_lowers_the_loss_on_its_demonstrations(tiny_model_dir, tiny_prompts):
    env = make_env(tiny_model_dir, tiny_prompts)
    demos = [("the film was", " good and the acting was great"), "the book was bad and boring",
             {"prompt": "this blender", "completion": " is loud but it works"}]
    agent = SFT(env, demonstrations=demos, batch_size=2, learning_rate=1e-2)
    before = agent.demonstration_loss()
    metrics = [agent.train_iteration() for _ in range(8)]
    assert agent.demonstration_loss() < before - 1.0
    assert {"num_tokens", "train/loss", "train/entropy"} <= set(metrics[0])
    assert all(m["num_tokens"] > 0 for m in metrics)
    assert metrics[-1]["train/epoch"] >= 4  # 3 demonstrations, batches of 2: an epoch every 2 steps


def test_sft_data_sources(tmp_path, preference_file):
    jsonl = tmp_path / "demos.jsonl"
    jsonl.write_text('{"prompt": "a", "completion": " b"}\n\n{"text": "c d"}\n')
    assert load_demonstrations(jsonl) == [("a", " b"), ("", "c d")]
    txt = tmp_path / "texts.txt"
    txt.write_text("one text\n\nanother\n")
    assert load_demonstrations(txt) == [("", "one text"), ("", "another")]
    chosen = load_demonstrations(preference_file)  # the preferred completion (best of a ranking) of each row
    assert chosen == [("the film was", " good and the acting was great"), ("the book", " was great"),
                      ("this blender", " works")]
    reviews = load_demonstrations(None, num_default=5, seed=1)
    assert len(reviews) == 5 and all(p == "" and len(c.split()) >= 10 for p, c in reviews)
    with pytest.raises(ValueError, match="empty"):
        load_demonstrations([("p", "  ")])
    with pytest.raises(ValueError, match="not an existing"):
        load_demonstrations(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="demonstrations must be"):
        load_demonstrations(3)


# ---------------------------------------------------------------------------------------------- DPO / LRML
def test_load_pairs_expands_rankings(preference_file):
    pairs = load_pairs(preference_file)
    assert len(pairs) == 5
    assert [(p.chosen, p.rejected) for p in pairs if p.prompt == "the book"] == [
        (" was great", " was good"), (" was great", " was bad and boring"), (" was good", " was bad and boring")]
    with pytest.raises(ValueError, match="preferences=None"):
        load_pairs(None)


def test_dpo_raises_the_chosen_vs_rejected_margin(tiny_model_dir, tiny_prompts, preference_file):
    env = make_env(tiny_model_dir, tiny_prompts)
    agent = DPO(env, preferences=preference_file, learning_rate=1e-3, batch_size=5)
    before = agent.evaluate_preferences()
    assert before["reward_margin"] == 0.0 and before["pref_accuracy"] == 0.0  # π_θ = π_ref: ρ is exactly 0
    assert before["loss"] == pytest.approx(math.log(2))
    metrics = [agent.train_iteration() for _ in range(6)]
    after = agent.evaluate_preferences()
    assert after["reward_margin"] > 0.1 and after["pref_accuracy"] == 1.0
    assert after["loss"] < before["loss"]
    assert metrics[-1]["train/pref_accuracy"] > metrics[0]["train/pref_accuracy"]
    expected_keys = {"num_tokens", "train/loss", "train/reward_margin", "train/pref_accuracy", "train/entropy"}
    assert expected_keys <= set(metrics[0])


def test_lrml_descends_into_its_local_minimum_from_zero_then_climbs_from_a_warm_start(
    tiny_model_dir, tiny_prompts, preference_file
):
    env = make_env(tiny_model_dir, tiny_prompts)
    # From ρ = 0 the LRML slope is positive: the margin goes *down*, towards the minimum at βρ ≈ −0.12.
    cold = LRML(env, preferences=preference_file, learning_rate=1e-3, batch_size=5)
    for _ in range(2):
        cold.train_iteration()
    assert cold.evaluate_preferences()["reward_margin"] < 0
    # Past the bump (βρ > 0.07 for every pair, after DPO steps) the exponential part pushes the margin up.
    warmup = DPO(env, preferences=preference_file, learning_rate=3e-3, batch_size=5)  # same π_ref: env.reference
    for _ in range(8):
        warmup.train_iteration()
    agent = LRML(env, preferences=preference_file, learning_rate=1e-3, batch_size=5)
    start = agent.evaluate_preferences()
    assert start["pref_accuracy"] == 1.0 and start["reward_margin"] > 0.3
    for _ in range(3):
        agent.train_iteration()
    end = agent.evaluate_preferences()
    assert end["reward_margin"] > start["reward_margin"] and end["loss"] < start["loss"]


def test_dpo_without_env_reference_uses_a_frozen_copy_and_rejects_bad_arguments(
    tiny_model_dir, tiny_prompts, preference_file
):
    env = make_env(tiny_model_dir, tiny_prompts, kl_coef=0.0)
    assert env.reference is None
    agent = DPO(env, preferences=preference_file, learning_rate=1e-3, batch_size=5)
    assert agent.reference is not agent.policy and not any(p.requires_grad for p in agent.reference.parameters())
    agent.train_iteration()
    assert agent.evaluate_preferences()["reward_margin"] > 0
    with pytest.raises(ValueError, match="preferences=None"):
        DPO(env)
    with pytest.raises(ValueError, match="loss='hinge'"):
        DPO(env, preferences=preference_file, loss="hinge")
    with pytest.raises(ValueError, match="beta"):
        DPO(env, preferences=preference_file, beta=0)


def test_dpo_checkpoint_resumes_exactly(tmp_path, tiny_model_dir, tiny_prompts, preference_file):
    agent = LRML(make_env(tiny_model_dir, tiny_prompts), preferences=str(preference_file), batch_size=2,
                 learning_rate=1e-3)
    assert "loss" not in agent.hyperparameters()
    agent.learn(total_timesteps=40, progress_bar=False)  # a few steps; batches of 2 out of 5 pairs
    agent.save(tmp_path / "ckpt")
    expected = agent.train_iteration()
    resumed = LRML.load(tmp_path / "ckpt", make_env(tiny_model_dir, tiny_prompts))
    assert isinstance(resumed, LRML) and resumed.iterations == agent.iterations >= 2
    got = resumed.train_iteration()
    assert got["train/loss"] == pytest.approx(expected["train/loss"], rel=1e-5)
    assert got["num_tokens"] == expected["num_tokens"]
