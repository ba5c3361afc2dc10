"""ILQL: the losses by hand, Polyak targets, Q-weighted decoding in the env, learning, checkpoints, data, bad inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from textenv.agents import AGENTS, ILQL, make_agent
from textenv.agents.ilql import (
    ILQLPolicy,
    awac_loss,
    cql_loss,
    expectile_loss,
    load_scored_completions,
    normalised_rewards,
    q_loss,
)
from textenv.agents.sft import collate
from textenv.apps.cli import main
from textenv.apps.evaluation import evaluate_policy
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = [
    {"prompt": "the film was", "completion": " good and the acting was great", "reward": 0.8},
    {"prompt": "the film was", "completion": " bad and boring", "reward": -0.6},
    {"prompt": "the book", "completion": " was great", "reward": 0.6},
    {"prompt": "this blender", "completion": " is loud", "reward": 0.0},
]


def make_env(model_dir, kl_coef: float = 0.0, num_envs: int = 2) -> TextGenVectorEnv:
    return TextGenVectorEnv(num_envs=num_envs, model=str(model_dir), prompts=["the film was", "the book"],
                            reward_model="vader", max_new_tokens=4, autoreset_mode="disabled", kl_coef=kl_coef,
                            device="cpu")


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "scored.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n")
    return path


def set_heads(agent: ILQL, q: list[float], v: float) -> None:
    """Constant heads: Q_i(s, a) = q[i] (and its target), V(s) = v, for every state and token."""
    heads = agent.heads
    for value, head, target in zip(q, heads.q_heads, heads.target_q_heads):
        for module in (head, target):
            torch.nn.init.zeros_(module[2].weight)
            torch.nn.init.constant_(module[2].bias, value)
    torch.nn.init.zeros_(heads.v_head[2].weight)
    torch.nn.init.constant_(heads.v_head[2].bias, v)


def last_logits(module, ids: torch.Tensor) -> torch.Tensor:
    return module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]


# ---------------------------------------------------------------------------------------------- losses by hand
def test_expectile_loss_by_hand():
    q_hat, v = torch.tensor([3.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0])  # u = Q̂ − V = 2, −1, 0
    # |τ − 1(u < 0)|·u²: 0.7·4, 0.3·1, 0.7·0
    assert expectile_loss(q_hat, v, 0.7).item() == pytest.approx((2.8 + 0.3 + 0.0) / 3)
    assert expectile_loss(q_hat, v, 0.5).item() == pytest.approx(0.5 * (4 + 1 + 0) / 3)  # half the MSE
    assert expectile_loss(q_hat, v, 0.9).item() == pytest.approx((0.9 * 4 + 0.1 * 1) / 3)


def test_q_cql_and_awac_losses_by_hand():
    q1, q2 = torch.tensor([1.0, 0.0], requires_grad=True), torch.tensor([0.5, 0.5])
    rewards, next_values = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 0.0], requires_grad=True)
    # targets r + γ·V(s') with γ = 0.5: [1, 1]; head 1 errs (0, 1), head 2 (0.25, 0.25)
    loss = q_loss([q1, q2], rewards, next_values, gamma=0.5)
    assert loss.item() == pytest.approx((0 + 1) / 2 + (0.25 + 0.25) / 2)
    loss.backward()
    assert q1.grad is not None and next_values.grad is None  # the target r + γ·V(s') is not differentiated
    q = torch.log(torch.tensor([[1.0, 2.0, 1.0]]))  # log Σ exp Q = log 4, Q(a=1) = log 2
    assert cql_loss([q, q], torch.tensor([1])).item() == pytest.approx(2 * math.log(2))
    logprobs, advantages = torch.tensor([-1.0, -2.0]), torch.tensor([math.log(2), 0.0])
    assert awac_loss(logprobs, advantages, awac_beta=1.0).item() == pytest.approx((2 * 1 + 1 * 2) / 2)
    assert awac_loss(logprobs, advantages, awac_beta=0.0).item() == pytest.approx(1.5)  # plain NLL


def test_agent_losses_on_a_hand_made_sequence(tiny_model_dir):
    """One completion of n tokens, reward R on its last: with constant heads every loss has a closed form."""
    agent = ILQL(make_env(tiny_model_dir), data=[ROWS[0]], normalize_rewards=False, gamma=0.9, tau=0.7)
    q, v, reward = [0.5, 0.3], 0.2, 0.8
    set_heads(agent, q, v)
    batch = collate(agent.data, agent.env.tokenizer.pad_token_id)
    n = batch.num_tokens
    loss = agent.losses(batch, torch.tensor([reward]))
    # targets: γ·V = 0.18 for the first n − 1 tokens, R for the last (its next state is terminal)
    expected_q = sum(((n - 1) * (qi - 0.9 * v) ** 2 + (qi - reward) ** 2) / n for qi in q)
    assert loss.q.item() == pytest.approx(expected_q, rel=1e-5)
    assert loss.v.item() == pytest.approx(0.7 * (min(q) - v) ** 2, rel=1e-5)  # Q̂ = min_i Q̂_i ≥ V
    vocab = len(agent.env.tokenizer)
    assert loss.cql.item() == pytest.approx(2 * math.log(vocab), rel=1e-5)  # constant Q: CE = log V per head
    assert loss.total.item() == pytest.approx(loss.q.item() + loss.v.item() + 0.1 * loss.cql.item()
                                              + loss.lm.item(), rel=1e-6)


def test_rewards_are_standardised_over_the_dataset():
    assert normalised_rewards([1.0, 3.0]) == pytest.approx([-1.0, 1.0])
    assert normalised_rewards([2.0, 2.0]) == [0.0, 0.0]  # no spread: centred only


# ---------------------------------------------------------------------------------------------- targets, training
def test_target_heads_move_by_polyak_averaging(tiny_model_dir):
    agent = ILQL(make_env(tiny_model_dir), data=ROWS, batch_size=2, learning_rate=1e-2, target_update_rate=0.3,
                 target_update_every=2)
    online = [p.detach().clone() for p in agent.heads.q_heads.parameters()]
    targets = [p.detach().clone() for p in agent.heads.target_q_heads.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(online, targets))  # the targets start as copies
    agent.train_iteration()  # step 1: not due (every 2)
    assert all(torch.equal(a, b.detach()) for a, b in zip(targets, agent.heads.target_q_heads.parameters()))
    assert not all(torch.equal(a, b.detach()) for a, b in zip(online, agent.heads.q_heads.parameters()))
    agent.iterations += 1  # what learn() counts
    agent.train_iteration()  # step 2: θ̂ ← 0.3·θ + 0.7·θ̂
    for before, online_now, target_now in zip(targets, agent.heads.q_heads.parameters(),
                                              agent.heads.target_q_heads.parameters()):
        assert torch.allclose(target_now, 0.3 * online_now.detach() + 0.7 * before, atol=1e-7)
        assert not target_now.requires_grad


def test_one_learn_on_a_jsonl_file_gives_finite_losses(tiny_model_dir, data_file):
    agent = make_agent("ilql", make_env(tiny_model_dir), data=str(data_file), batch_size=2)
    agent.learn(total_timesteps=20, progress_bar=False)
    metrics = agent.last_metrics
    for key in ("train/loss", "train/loss_q", "train/loss_v", "train/loss_cql", "train/loss_lm", "train/entropy"):
        assert math.isfinite(metrics[key]), key
    assert agent.num_timesteps >= 20 and agent.iterations >= 1
    assert all(math.isfinite(value) for value in agent.evaluate_losses().values())


def test_micro_batches_give_the_same_update(tiny_model_dir):
    whole = ILQL(make_env(tiny_model_dir), data=ROWS, batch_size=4, learning_rate=1e-3)
    micro = ILQL(make_env(tiny_model_dir), data=ROWS, batch_size=4, learning_rate=1e-3, micro_batch_size=1)
    expected, got = whole.train_iteration(), micro.train_iteration()
    assert got["num_tokens"] == expected["num_tokens"]
    for key in ("train/loss", "train/loss_q", "train/loss_cql", "train/loss_lm"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4), key
    for a, b in zip(whole.heads.parameters(), micro.heads.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_training_raises_the_probability_of_the_high_reward_token(tiny_model_dir):
    """Half the completions are " good" (reward 1), half " bad" (reward 0): the LM clones both alike, the Q-weighted
    policy prefers " good"."""
    rows = [{"prompt": "the film was", "completion": " good", "reward": 1.0},
            {"prompt": "the film was", "completion": " bad", "reward": 0.0}] * 4
    agent = ILQL(make_env(tiny_model_dir), data=rows, batch_size=8, learning_rate=3e-3)
    tokenizer = agent.env.tokenizer
    good, bad = (tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (" good", " bad"))
    ids = torch.tensor([tokenizer("the film was")["input_ids"]])

    def probabilities(module) -> torch.Tensor:
        with torch.no_grad():
            return last_logits(module, ids).softmax(-1)

    before = probabilities(agent.sampling_module)[good].item()
    for _ in range(100):
        agent.train_iteration()
    ilql, lm = probabilities(agent.sampling_module), probabilities(agent.policy)
    assert ilql[good] > before + 0.4
    assert ilql[good] > lm[good] + 0.1 and ilql[bad] < lm[bad] - 0.1  # the Q-weighting, not the cloning
    assert ilql[good] > ilql[bad] + 0.3


# ---------------------------------------------------------------------------------------------- decoding
def test_q_weighted_decoding_with_beta_zero_is_the_lm_exactly(tiny_model_dir):
    untrained = ILQL(make_env(tiny_model_dir), data=ROWS, beta=1.0)  # heads start at Q = V = 0
    ids = torch.tensor([untrained.env.tokenizer("the film was")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(last_logits(untrained.sampling_module, ids), last_logits(untrained.policy, ids))
    env = make_env(tiny_model_dir)
    agent = ILQL(env, data=ROWS, beta=0.0)
    set_heads(agent, [1.0, 2.0], 0.5)
    assert env.policy is agent.sampling_module and isinstance(env.policy, ILQLPolicy)
    with torch.no_grad():
        assert torch.equal(last_logits(agent.sampling_module, ids), last_logits(agent.policy, ids))
        assert torch.equal(agent.sampling_module.get_output_embeddings()(torch.ones(3, 32)),
                           agent.policy.get_output_embeddings()(torch.ones(3, 32)))


def test_the_env_samples_with_the_q_weighted_policy(tiny_model_dir):
    env = make_env(tiny_model_dir)
    agent = ILQL(env, data=ROWS, beta=2.0)
    torch.manual_seed(1)
    for parameter in agent.heads.parameters():  # heads with a visible effect
        torch.nn.init.normal_(parameter, std=0.5)
    env.reset(options={"prompts": ["the film was", "the book"]})
    ids, mask = env.episode_tokens()
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        out = agent.policy(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        hidden = out.hidden_states[-1][:, -1]
        q_hat = torch.minimum(*(head(hidden) for head in agent.heads.target_q_heads))
        expected = out.logits[:, -1] + 2.0 * (q_hat - agent.heads.v_head(hidden))  # z_β + β·(Q̂ − V)
    assert torch.allclose(env.next_token_logits(), expected, atol=1e-4)
    assert not torch.allclose(env.next_token_logits(), out.logits[:, -1], atol=1e-2)
    top1 = ILQL(make_env(tiny_model_dir), data=ROWS, top_k=1)  # top-k restriction: one finite logit per state
    top1.env.reset()
    assert (torch.isfinite(top1.env.next_token_logits()).sum(dim=-1) == 1).all()
    actions, _ = top1.predict(top1.env.observation())
    assert (actions == top1.env.next_token_logits().argmax(dim=-1).numpy()).all()


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_exact_and_eval_samples_with_the_ilql_policy(tiny_model_dir, tmp_path, data_file):
    agent = ILQL(make_env(tiny_model_dir, kl_coef=0.1), data=str(data_file), batch_size=2, learning_rate=1e-3,
                 beta=10.0)
    agent.learn(total_timesteps=40, progress_bar=False)
    agent.save(tmp_path / "ckpt")
    ids = torch.tensor([agent.env.tokenizer("the film was")["input_ids"]])
    with torch.no_grad():
        logits = last_logits(agent.sampling_module, ids)
    expected = agent.train_iteration()

    resumed = ILQL.load(tmp_path / "ckpt", make_env(tiny_model_dir, kl_coef=0.1))
    assert resumed.iterations == agent.iterations >= 2 and resumed.num_timesteps == agent.num_timesteps
    with torch.no_grad():
        assert torch.equal(last_logits(resumed.sampling_module, ids), logits)
    got = resumed.train_iteration()
    assert got["train/loss"] == pytest.approx(expected["train/loss"], rel=1e-5)
    assert got["num_tokens"] == expected["num_tokens"]
    for a, b in zip(agent.heads.state_dict().values(), resumed.heads.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)

    # evaluation of the checkpoint directory samples with the Q-weighted policy, not with policy/ alone
    settings = {"prompts": ["the film was", "the book"], "gold": "vader", "max_new_tokens": 4, "seed": 3,
                "device": "cpu"}
    restored = ILQL.load(tmp_path / "ckpt", make_env(tiny_model_dir, kl_coef=0.1))
    from_checkpoint = evaluate_policy(tmp_path / "ckpt", **settings)
    from_module = evaluate_policy(restored.sampling_module, reference=str(tiny_model_dir), **settings)
    lm_only = evaluate_policy(tmp_path / "ckpt" / "policy", reference=str(tiny_model_dir), **settings)
    assert [s["completion"] for s in from_checkpoint["samples"]] == [s["completion"] for s in from_module["samples"]]
    assert from_checkpoint["kl"] == pytest.approx(from_module["kl"])
    assert [s["completion"] for s in from_checkpoint["samples"]] != [s["completion"] for s in lm_only["samples"]]


def test_textenv_train_and_eval_with_ilql(tiny_model_dir, tmp_path, data_file, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "agent": "ilql", "eval_prompts": 4, "checkpoint_every": 0,
        "env": {"num_envs": 4, "model": str(tiny_model_dir), "max_new_tokens": 4},
        "agent_kwargs": {"data": str(data_file), "batch_size": 2},
    }))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--total-timesteps", "16", "--output", str(out),
                 "--no-progress"]) == 0
    assert (out / "checkpoint" / "modules.safetensors").is_file() and (out / "summary.json").is_file()
    meta = json.loads((out / "checkpoint" / "agent.json").read_text())
    assert meta["agent"] == "ilql" and meta["hyperparameters"]["data"] == str(data_file)
    assert main(["eval", str(out), "--num-prompts", "2", "--output", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["agent"] == "ilql"
    assert "ilql" in AGENTS


# ---------------------------------------------------------------------------------------------- data
def test_collect_rankings_and_scored_rows_both_load(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"prompt": "p", "ranked": [" a", " b"], "meta": {"gold": "vader", "scores": [0.5, -1]}})
                    + "\n\n" + json.dumps({"prompt": "q", "completion": " c", "reward": 2, "meta": {}}) + "\n")
    rows = load_scored_completions(path)
    assert [(r.prompt, r.completion, r.reward) for r in rows] == [("p", " a", 0.5), ("p", " b", -1.0), ("q", " c", 2.0)]


BAD_LINES = [
    ('{"prompt": "p", "completion": " c"}', r"missing \['reward'\]"),
    ('{"prompt": "p", "completion": " c", "reward": NaN}', "finite number"),
    ('{"prompt": "p", "completion": " c", "reward": true}', "finite number"),
    ('{"prompt": "p", "completion": " c", "reward": "1"}', "finite number"),
    ('{"prompt": "p", "completion": "  ", "reward": 1}', "non-empty string"),
    ('{"prompt": 3, "completion": " c", "reward": 1}', '"prompt" must be a string'),
    ('{"prompt": "p", "completion": " c", "rewrad": 1}', r"unknown keys \['rewrad'\]"),
    ('{"prompt": "p", "ranked": [" a", " b"]}', "one score per completion"),
    ('{"prompt": "p", "ranked": [" a", " b"], "meta": {"scores": [1]}}', "one score per completion"),
    ('["p", " c", 1]', "expected a JSON object"),
    ('{"prompt": "p", "completion": " c", "reward": 1', "not valid JSON"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize(("line", "match"), BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_a_bad_data_line_names_the_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + line + "\n")
    with pytest.raises(InputError, match=match) as err:
        load_scored_completions(path)
    assert f"{path}:2:" in str(err.value)


@pytest.fixture(scope="module")
def untouchable_env(tiny_model_dir):
    """An env whose ``reset`` fails the test: every bad value must be refused before an agent uses the env."""
    env = make_env(tiny_model_dir)
    env.reset = lambda *args, **kwargs: pytest.fail("the env was touched before the arguments were checked")
    return env


@pytest.mark.bad_input
@pytest.mark.parametrize(("make", "match"), [
    (lambda tmp: None, "data=None"),
    (lambda tmp: str(tmp / "missing.jsonl"), "not an existing JSONL file"),
    (lambda tmp: str(tmp), "not an existing JSONL file"),
    (lambda tmp: (tmp / "empty.jsonl").write_text("\n \n") and str(tmp / "empty.jsonl"), "holds no rows"),
    (lambda tmp: (tmp / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n') and str(tmp / "latin1.jsonl"),
     "latin1.jsonl:1: not UTF-8"),
    (lambda tmp: {"prompt": "p"}, "a JSONL path or a list of rows"),
    (lambda tmp: [{"prompt": "p", "completion": " c", "reward": math.inf}], r"data\[0\]: reward"),
])
def test_bad_data_is_refused_before_the_env_is_touched(untouchable_env, tmp_path, make, match):
    with pytest.raises(InputError, match=match):
        ILQL(untouchable_env, data=make(tmp_path))


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs", [
    {"tau": 0.0}, {"tau": 1.0}, {"tau": math.nan}, {"gamma": 1.5}, {"gamma": -0.1}, {"beta": -1.0},
    {"beta": math.inf}, {"top_k": 0}, {"top_k": 2.5}, {"target_update_rate": 0.0}, {"target_update_rate": 1.5},
    {"target_update_every": 0}, {"cql_scale": -1.0}, {"awac_scale": math.nan}, {"awac_beta": -0.5},
    {"two_qs": "yes"}, {"normalize_rewards": "yes"}, {"batch_size": 0}, {"heads_learning_rate": 0.0},
    {"heads_learning_rate": math.nan},
], ids=lambda kwargs: "-".join(f"{k}={v!r}" for k, v in kwargs.items()))
def test_bad_hyperparameters_are_refused(untouchable_env, kwargs):
    (argument,) = kwargs
    with pytest.raises(InputError, match=rf"\b{argument}\b"):
        ILQL(untouchable_env, data=ROWS, **kwargs)
