"""Reward models: Bradley–Terry loss and training, save/load, classifier, ensemble, names, env integration."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.preferences import PreferencePair, PreferenceRanking, expand_pairs
from textenv.reward_models import (
    REWARD_MODELS,
    CallableReward,
    ClassifierReward,
    EnsembleReward,
    PreferenceRewardModel,
    RewardModel,
    VaderSentimentReward,
    bradley_terry_loss,
    make_reward_model,
    pair_accuracy,
    parse_ensemble,
    train_preference_model,
)
from textenv.reward_models.preference import split_groups
from textenv.validation import InputError

SUBJECTS = ["the film", "the book", "the hotel room", "the pasta", "this blender", "the staff", "the acting"]
FILLER = ["was", "and", "the", "it", "works", "loud", "clean", "room", "liked", "but"]


def good_bad_rankings(n: int, seed: int = 0) -> list[PreferenceRanking]:
    """Easy signal: n distinct prompts, each ranking a completion containing "good" ≻ a neutral one ≻ one
    containing "bad" (random filler words around them)."""
    rng = np.random.default_rng(seed)
    rows: list[PreferenceRanking] = []
    i = 0
    while len(rows) < n:
        i += 1
        prompt = f"{SUBJECTS[i % len(SUBJECTS)]} {' '.join(rng.choice(FILLER, 2))}"
        if any(row.prompt == prompt for row in rows):
            continue
        ranked = []
        for word in ("good", None, "bad"):
            words = list(rng.choice(FILLER, 3))
            if word:
                words.insert(int(rng.integers(0, 4)), word)
            ranked.append(" " + " ".join(words))
        if len(set(ranked)) == 3:
            rows.append(PreferenceRanking(prompt, tuple(ranked)))
    return rows


# ---------------------------------------------------------------------------------------------- BT loss
def test_bradley_terry_loss_and_gradient_match_hand_computation() -> None:
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([1.0, 1.0], requires_grad=True)
    loss = bradley_terry_loss(chosen, rejected)
    # −log σ(1) = log(1 + e^−1) = 0.313262, −log σ(−1) = log(1 + e) = 1.313262
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2, abs=1e-6)
    loss.backward()
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    # d/dr_w [−log σ(r_w − r_l)] = −σ(r_l − r_w); averaged over 2 pairs
    expected = torch.tensor([-sig(-1.0) / 2, -sig(1.0) / 2])
    assert torch.allclose(chosen.grad, expected, atol=1e-6)
    assert torch.allclose(rejected.grad, -expected, atol=1e-6)
    weighted = bradley_terry_loss(chosen.detach(), rejected.detach(), torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx((math.log1p(math.exp(-1)) + 3 * math.log1p(math.e)) / 4, abs=1e-6)


def test_bt_loss_is_small_for_confident_correct_and_large_for_wrong() -> None:
    assert bradley_terry_loss(torch.tensor([10.0]), torch.tensor([0.0])).item() < 1e-4
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([10.0])).item() == pytest.approx(10.0, abs=1e-3)


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path):
    rows = good_bad_rankings(80)
    model, metrics = train_preference_model(rows, backbone=str(tiny_model_dir), epochs=3, lr=3e-3, batch_prompts=8,
                                            eval_fraction=0.25, seed=0, device="cpu")
    return rows, model, metrics


def test_training_learns_an_easy_signal_on_held_out_prompts(trained) -> None:
    rows, model, metrics = trained
    assert metrics["num_eval_prompts"] == 20 and metrics["num_eval_pairs"] == 60
    assert metrics["eval/pair_accuracy"] >= 0.9
    _, eval_groups = split_groups(expand_pairs(rows), 0.25, seed=0)
    assert pair_accuracy(model, eval_groups) == pytest.approx(metrics["eval/pair_accuracy"])
    good, bad = model.score(["the film was"] * 2, [" good and clean", " bad and clean"])
    assert good > bad


def test_untrained_model_is_near_chance(tiny_model_dir: Path) -> None:
    model = PreferenceRewardModel.from_backbone(str(tiny_model_dir), device="cpu")
    groups = expand_pairs(good_bad_rankings(80))
    assert pair_accuracy(model, groups) < 0.8  # the trained model's accuracy is not a property of the data


def test_mean_reward_on_training_completions_is_zero(trained) -> None:
    rows, model, metrics = trained
    train_groups, _ = split_groups(expand_pairs(rows), 0.25, seed=0)
    prompts = [g.prompt for g in train_groups for _ in g.completions]
    completions = [c for g in train_groups for c in g.completions]
    scores = model.score(prompts, completions)
    assert abs(scores.mean()) < 1e-5
    assert scores.std() > 0.1 and metrics["bias"] == model.bias != 0


def test_all_pairs_of_a_prompt_share_a_batch(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each forward during training holds whole prompts: every completion of a prompt, scored once."""
    from textenv.reward_models import preference

    rows = good_bad_rankings(10)
    batches: list[int] = []
    original = preference.RewardNetwork.forward

    def spy(self, input_ids, attention_mask):
        if self.training:
            batches.append(input_ids.shape[0])
        return original(self, input_ids, attention_mask)

    monkeypatch.setattr(preference.RewardNetwork, "forward", spy)
    train_preference_model(rows, backbone=str(tiny_model_dir), epochs=1, batch_prompts=4, eval_fraction=0.0, device="cpu")
    assert batches == [12, 12, 6]  # 10 prompts × K=3 completions in batches of 4 prompts; not 3 pairs each


def test_centering_pulls_prompt_means_towards_zero(tiny_model_dir: Path) -> None:
    rows = good_bad_rankings(16, seed=1)
    groups = expand_pairs(rows)

    def prompt_mean_spread(center_coef: float) -> float:
        model, _ = train_preference_model(rows, backbone=str(tiny_model_dir), epochs=2, lr=3e-3, batch_prompts=8,
                                          eval_fraction=0.0, seed=0, center_coef=center_coef, normalize=False,
                                          device="cpu")  # in the units the centring term acts on
        means = [model.score([g.prompt] * len(g.completions), g.completions).mean() for g in groups]
        return float(np.mean(np.square(np.asarray(means) - np.mean(means))))

    assert prompt_mean_spread(10.0) < prompt_mean_spread(0.0)


def test_training_validates_arguments(tiny_model_dir: Path) -> None:
    rows = good_bad_rankings(4)
    for kwargs, match in (({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"center_coef": -1.0}, "center_coef"),
                          ({"eval_fraction": 1.0}, "eval_fraction"), ({"pooling": "max"}, "pooling")):
        with pytest.raises(ValueError, match=match):
            train_preference_model(rows, backbone=str(tiny_model_dir), device="cpu", **kwargs)
    with pytest.raises(ValueError, match="empty"):
        train_preference_model([], backbone=str(tiny_model_dir))


def test_mean_pooling_and_pair_rows_train(tiny_model_dir: Path) -> None:
    pairs = [p for r in good_bad_rankings(40) for p in r.pairs()]
    assert all(isinstance(p, PreferencePair) for p in pairs)
    model, metrics = train_preference_model(pairs, backbone=str(tiny_model_dir), epochs=2, lr=3e-3, pooling="mean",
                                            eval_fraction=0.25, device="cpu")
    assert model.network.pooling == "mean"
    assert metrics["num_train_pairs"] == 30 * 3  # pair rows of one prompt were regrouped
    assert metrics["eval/pair_accuracy"] > 0.7


def test_save_load_round_trip_is_atomic_and_exact(trained, tmp_path: Path) -> None:
    _, model, _ = trained
    target = tmp_path / "rm"
    model.save(target)
    model.save(target)  # overwriting an existing save works
    assert sorted(p.name for p in target.iterdir()) == ["backbone", "head.safetensors", "reward_model.json",
                                                         "textenv.json"]  # textenv.json: the manifest of what textenv wrote
    assert (target / "backbone" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    loaded = PreferenceRewardModel.load(target, device="cpu")
    prompts, completions = ["the film was"] * 3, [" good", " bad and loud", ""]
    np.testing.assert_allclose(loaded.score(prompts, completions), model.score(prompts, completions), atol=1e-5)
    assert loaded.bias == model.bias
    assert loaded.metadata["metrics"]["eval/pair_accuracy"] == pytest.approx(model.metadata["metrics"]["eval/pair_accuracy"])
    with pytest.raises(ValueError, match="not a saved PreferenceRewardModel"):
        PreferenceRewardModel.load(tmp_path)


def test_backbone_may_be_a_loaded_causal_lm_which_is_not_modified(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    train_preference_model(good_bad_rankings(8), backbone=lm, epochs=1, lr=1e-2, eval_fraction=0.0, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())


# ---------------------------------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def tiny_classifier_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    directory = tmp_path_factory.mktemp("tiny-classifier")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=96, n_embd=32, n_layer=1, n_head=2, num_labels=3,
                        id2label={0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"},
                        label2id={"NEGATIVE": 0, "NEUTRAL": 1, "POSITIVE": 2},
                        pad_token_id=tokenizer.eos_token_id)
    GPT2ForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_classifier_labels_outputs_and_text_modes(tiny_classifier_dir: Path) -> None:
    prompts, completions = ["the film was", "the book"], [" good and clean", " bad"]
    probs = [ClassifierReward(tiny_classifier_dir, label=i, device="cpu").score(prompts, completions) for i in range(3)]
    np.testing.assert_allclose(np.sum(probs, axis=0), 1.0, atol=1e-6)
    by_name = ClassifierReward(tiny_classifier_dir, label="positive", device="cpu")
    np.testing.assert_allclose(by_name.score(prompts, completions), probs[2])
    default = ClassifierReward(tiny_classifier_dir, device="cpu")
    assert default.label == 2 and default.labels == ["NEGATIVE", "NEUTRAL", "POSITIVE"]

    logits = by_name.logits(prompts, completions).double().numpy()
    diff = ClassifierReward(tiny_classifier_dir, label="POSITIVE", minus_label="NEGATIVE", device="cpu")
    np.testing.assert_allclose(diff.score(prompts, completions), logits[:, 2] - logits[:, 0], atol=1e-5)
    logit = ClassifierReward(tiny_classifier_dir, label=1, output="logit", device="cpu")
    np.testing.assert_allclose(logit.score(prompts, completions), logits[:, 1], atol=1e-5)

    # "completion" ignores the prompt; the other modes do not.
    other_prompts = ["zzz qqq", "xx"]
    np.testing.assert_allclose(by_name.score(other_prompts, completions), by_name.score(prompts, completions))
    for mode in ("prompt+completion", "pair"):
        with_prompt = ClassifierReward(tiny_classifier_dir, label=2, text=mode, device="cpu")
        assert not np.allclose(with_prompt.score(other_prompts, completions), with_prompt.score(prompts, completions))
    concat = ClassifierReward(tiny_classifier_dir, label=2, text="prompt+completion", device="cpu")
    np.testing.assert_allclose(concat.score(prompts, completions), by_name.score(["", ""], [p + c for p, c in zip(prompts, completions)]), atol=1e-6)


def test_classifier_scores_match_unbatched(tiny_classifier_dir: Path) -> None:
    texts = [" good", " a much longer completion that was clean and liked", " bad", ""]
    batched = ClassifierReward(tiny_classifier_dir, batch_size=4, device="cpu").score([""] * 4, texts)
    single = ClassifierReward(tiny_classifier_dir, batch_size=1, device="cpu").score([""] * 4, texts)
    np.testing.assert_allclose(batched, single, atol=1e-5)  # padding does not change a score


def test_classifier_bad_arguments(tiny_classifier_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NEGATIVE"):
        ClassifierReward(tiny_classifier_dir, label="joy", device="cpu")
    with pytest.raises(ValueError, match="out of range"):
        ClassifierReward(tiny_classifier_dir, label=3, device="cpu")
    with pytest.raises(ValueError, match="different"):
        ClassifierReward(tiny_classifier_dir, label=0, minus_label="negative", device="cpu")
    with pytest.raises(ValueError, match="output"):
        ClassifierReward(tiny_classifier_dir, output="odds", device="cpu")
    with pytest.raises(InputError, match="model not found"):
        ClassifierReward(tmp_path / "missing", device="cpu")


# ---------------------------------------------------------------------------------------------- ensemble
def const(value: float):
    return CallableReward(lambda p, c: np.full(len(c), value))


def length_reward(scale: float):
    return CallableReward(lambda p, c: scale * np.array([len(x) for x in c], dtype=float))


def test_ensemble_weighted_sum_with_objects_and_names() -> None:
    vader = VaderSentimentReward()
    ens = EnsembleReward([length_reward(1.0), "vader"], weights=[0.5, 2.0])
    completions = [" good", " terrible day", ""]
    expected = 0.5 * np.array([5, 13, 0]) + 2.0 * vader.score([""] * 3, completions)
    np.testing.assert_allclose(ens.score([""] * 3, completions), expected)
    np.testing.assert_allclose(EnsembleReward([const(1.0), const(3.0)]).score(["p"], ["c"]), [2.0])  # equal weights


def test_ensemble_normalisation_balances_scales() -> None:
    small, large = length_reward(1.0), length_reward(-1000.0)
    ens = EnsembleReward([small, large], weights=[1.0, 1.0], normalize=True)
    completions = [" a", " abc", " abcdef", " abcdefghij"]
    mean, std = ens.calibrate([""] * 4, completions)
    np.testing.assert_allclose(std[1], 1000 * std[0])
    np.testing.assert_allclose(ens.score([""] * 4, completions), 0.0, atol=1e-6)  # equal and opposite after scaling
    running = EnsembleReward([small], normalize=True)
    z = running.score([""] * 4, completions)
    assert abs(z.mean()) < 1e-9 and z.std() == pytest.approx(1.0, rel=1e-5)
    running.score([""], [" abcdefghijklmnopqrstuvwxyz"])
    assert running.stats[0][0] > np.mean([len(c) for c in completions])  # running mean moved


@pytest.mark.parametrize(
    ("weights", "match"),
    [([1.0], "2 members"), ([1.0, float("nan")], "finite"), ([0, 0], "all ensemble weights are 0"),
     ([1.0, "x"], "finite"), ("ab", "list of numbers")],
)
def test_ensemble_validates_weights(weights, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        EnsembleReward([const(1.0), const(2.0)], weights=weights)


def test_ensemble_rejects_empty_and_unknown_members() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        EnsembleReward([])
    with pytest.raises(ValueError, match="not a known reward model"):
        EnsembleReward(["nope"])


# ---------------------------------------------------------------------------------------------- names
@pytest.fixture(scope="module")
def saved_rm(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained[1].save(tmp_path_factory.mktemp("saved") / "rm")


def test_name_resolution(saved_rm: Path, tiny_classifier_dir: Path) -> None:
    assert isinstance(make_reward_model("vader"), VaderSentimentReward) and "vader" in REWARD_MODELS
    for spec in (f"preference:{saved_rm}", str(saved_rm), saved_rm):
        assert isinstance(make_reward_model(spec, device="cpu"), PreferenceRewardModel)
    clf = make_reward_model(f"classifier:{tiny_classifier_dir}")
    assert isinstance(clf, ClassifierReward) and clf.label == 2 and clf.minus_label is None
    clf = make_reward_model(f"classifier:{tiny_classifier_dir}#neutral")
    assert clf.label == 1 and clf.output == "probability"
    clf = make_reward_model(f"classifier:{tiny_classifier_dir}#label=2,minus=NEGATIVE,text=pair")
    assert (clf.label, clf.minus_label, clf.text) == (2, 0, "pair")
    clf = make_reward_model(f"classifier:{tiny_classifier_dir}#0,output=logit")
    assert (clf.label, clf.output) == (0, "logit")
    ens = make_reward_model(f"ensemble:0.7*preference:{saved_rm}+0.3*vader")
    assert isinstance(ens, EnsembleReward) and not ens.normalize
    assert [type(m) for m in ens.members] == [PreferenceRewardModel, VaderSentimentReward]
    assert make_reward_model("ensemble-normalized:1*vader+-0.5*vader").normalize
    assert parse_ensemble("2*a+b/c+1e-3*d") == (["a+b/c", "d"], [2.0, 0.001])


@pytest.mark.parametrize(
    ("spec", "match"),
    [("nope", "valid forms"), ("preference:", "missing its argument"), ("preference", "needs an argument"),
     ("classifier:x#label=1,colour=red", "unknown classifier option"), ("ensemble:vader", "<weight>\\*"),
     ("preference:/no/such/dir", "/no/such/dir is not a directory")],
)
def test_bad_names_give_clear_errors(spec: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make_reward_model(spec)


def test_valid_forms_are_listed() -> None:
    with pytest.raises(ValueError) as err:
        make_reward_model("sentiment")
    for form in ("vader", "preference:<dir>", "classifier:<name_or_path>", "ensemble:<w>*<spec>"):
        assert form in str(err.value)


# ---------------------------------------------------------------------------------------------- env integration
def play_episode(env, seed: int = 0):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    while True:
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            return reward, info


@pytest.mark.parametrize("form", ["object", "name"])
@pytest.mark.parametrize("kind", ["vader", "preference", "classifier", "ensemble"])
def test_env_accepts_reward_models_by_object_and_name(kind: str, form: str, saved_rm: Path, tiny_classifier_dir: Path,
                                                      tiny_model_dir: Path, tiny_prompts: list[str]) -> None:
    names = {
        "vader": "vader",
        "preference": f"preference:{saved_rm}",
        "classifier": f"classifier:{tiny_classifier_dir}#POSITIVE",
        "ensemble": f"ensemble:0.5*vader+2*preference:{saved_rm}",
    }
    reference: RewardModel = make_reward_model(names[kind])
    spec = reference if form == "object" else names[kind]
    env = gym.make("TextGen-v0", model=str(tiny_model_dir), reward_model=spec, prompts=tiny_prompts, max_new_tokens=4,
                   kl_coef=0.0, device="cpu")
    reward, info = play_episode(env.unwrapped)
    expected = reference.score([info["prompt"]], [info["text"]])[0]
    assert info["rm_score"] == pytest.approx(expected, abs=1e-5)
    assert reward == pytest.approx(expected, abs=1e-5)
    assert env.unwrapped.vector_env.spec_kwargs.get("reward_model") == (names[kind] if form == "name" else None)


def test_train_rm_command(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from textenv.apps.train_rm import main
    from textenv.preferences import write_preferences

    data = tmp_path / "prefs.jsonl"
    write_preferences(data, good_bad_rankings(12))
    out = tmp_path / "rm"
    assert main(["--data", str(data), "--output", str(out), "--backbone", str(tiny_model_dir), "--epochs", "1",
                 "--eval-fraction", "0.25", "--device", "cpu"]) == 0
    assert '"eval/pair_accuracy"' in capsys.readouterr().out
    assert isinstance(make_reward_model(f"preference:{out}"), PreferenceRewardModel)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "ranked": ["a"]}\n', encoding="utf-8")
    assert main(["--data", str(bad), "--output", str(tmp_path / "rm2"), "--backbone", str(tiny_model_dir)]) == 2
    assert f"{bad}:1:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- normalisation
def _training_texts(rows: list[PreferenceRanking]) -> tuple[list[str], list[str]]:
    """(prompts, completions) of the training prompts of ``trained`` (eval_fraction 0.25, seed 0), each once."""
    train_groups, _ = split_groups(expand_pairs(rows), 0.25, seed=0)
    return [g.prompt for g in train_groups for _ in g.completions], [c for g in train_groups for c in g.completions]


def test_trained_rm_is_normalised_on_its_reference_completions(trained) -> None:
    """Mean 0 and standard deviation 1 on the training prompts' completions; the statistics are kept."""
    rows, model, metrics = trained
    scores = model.score(*_training_texts(rows))
    assert abs(scores.mean()) < 1e-5 and scores.std() == pytest.approx(1.0, abs=1e-5)
    stats = model.normalization
    assert stats["num_texts"] == len(scores) and stats["std"] > 0 and stats["texts"].startswith("reference")
    assert model.scale == pytest.approx(1 / stats["std"]) and model.bias == pytest.approx(-stats["mean"])
    assert metrics["normalization"] == stats and metrics["scale"] == model.scale


def test_unnormalised_training_keeps_the_raw_spread(tiny_model_dir: Path) -> None:
    rows = good_bad_rankings(24)
    model, metrics = train_preference_model(rows, backbone=str(tiny_model_dir), epochs=2, lr=3e-3, eval_fraction=0.25,
                                            seed=0, normalize=False, device="cpu")
    assert model.scale == 1.0 and model.normalization is None and metrics["normalization"] is None
    scores = model.score(*_training_texts(rows))
    assert abs(scores.mean()) < 1e-5 and abs(scores.std() - 1.0) > 1e-3


def test_normalisation_is_saved_and_loaded(trained, tmp_path: Path) -> None:
    import json

    rows, model, _ = trained
    model.save(tmp_path / "rm")
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert meta["version"] == 2 and meta["normalization"] == model.normalization and meta["scale"] == model.scale
    loaded = PreferenceRewardModel.load(tmp_path / "rm", device="cpu")
    assert loaded.normalization == model.normalization and loaded.scale == model.scale
    scores = loaded.score(*_training_texts(rows))
    assert abs(scores.mean()) < 1e-5 and scores.std() == pytest.approx(1.0, abs=1e-5)


def test_normalize_recomputes_on_other_reference_completions(trained) -> None:
    import copy

    rows, model, _ = trained
    model = copy.copy(model)  # the module fixture keeps its statistics
    prompts, completions = ["the film was"] * 4, [" good and clean", " bad and loud", " the room", " it works"]
    stats = model.normalize(prompts, completions, texts="my samples")
    scores = model.score(prompts, completions)
    assert abs(scores.mean()) < 1e-5 and scores.std() == pytest.approx(1.0, abs=1e-5)
    assert stats == model.normalization and stats["num_texts"] == 4 and stats["texts"] == "my samples"


def test_a_version_1_directory_loads_unnormalised_and_scores_as_before(trained, tmp_path: Path) -> None:
    """An RM saved before normalisation existed (no scale, no normalization): scale 1, r + bias, as it scored."""
    import json

    rows, model, _ = trained
    target = tmp_path / "old"
    model.save(target)
    meta_file = target / "reward_model.json"
    meta = json.loads(meta_file.read_text())
    for key in ("scale", "normalization"):
        del meta[key]
    meta["version"] = 1
    meta_file.write_text(json.dumps(meta))  # the manifest checks the weights only
    old = PreferenceRewardModel.load(target, device="cpu")
    assert old.scale == 1.0 and old.normalization is None
    prompts, completions = _training_texts(rows)
    np.testing.assert_allclose(old.score(prompts, completions), model.score(prompts, completions) / model.scale,
                               atol=1e-5)


@pytest.mark.bad_input
@pytest.mark.parametrize(("prompts", "completions", "match"), [
    (["p"], [" good"], "no spread"),  # one text: no standard deviation
    (["p", "p"], [" good", " good"], "no spread"),  # all alike
    (["p"], [" good", " bad"], "1 prompts for 2 completions"),
])
def test_normalize_refuses_texts_without_spread(trained, prompts, completions, match) -> None:
    import copy

    model = copy.copy(trained[1])
    with pytest.raises(InputError, match=match):
        model.normalize(prompts, completions)
    assert model.normalization == trained[1].normalization  # unchanged


@pytest.mark.bad_input
@pytest.mark.parametrize("scale", [0, -1.0, "2", None, float("nan")])
def test_a_damaged_scale_in_reward_model_json_is_refused(trained, tmp_path: Path, scale) -> None:
    import json

    target = tmp_path / "rm"
    trained[1].save(target)
    meta = json.loads((target / "reward_model.json").read_text())
    meta["scale"] = scale
    (target / "reward_model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="scale"):
        PreferenceRewardModel.load(target, device="cpu")


# ---------------------------------------------------------------------------------------------- fluent sentiment
def test_fluent_sentiment_ranks_varied_praise_above_loops_salad_and_complaints() -> None:
    """Hand-written completions of "The film" in the embedded model's review style (what it finds likely)."""
    gold = make_reward_model("fluent-sentiment")
    texts = {
        "fluent positive": " was wonderful. Everything about it felt superb. Highly recommended.",
        "looped positive": " I loved it. I loved it. I loved it. I loved it. I loved it. I loved it.",
        "salad of praise": " enjoyed adored it superb fresh to love it enjoyed wonderful perfect lovely",
        "one word looped": " great great great great great great great great",
        "fluent negative": " was dull, and I regret it. Everything about it felt crappy. One star.",
    }
    prompts = ["The film"] * len(texts)
    scores = dict(zip(texts, gold(prompts, list(texts.values()))))
    vader = dict(zip(texts, VaderSentimentReward().score(prompts, list(texts.values()))))
    nll = dict(zip(texts, gold.likelihood(prompts, list(texts.values()))))
    assert min(vader["looped positive"], vader["salad of praise"]) > vader["fluent positive"] * 0.9  # VADER is fooled
    assert nll["fluent positive"] < 2.0 < 6.0 < nll["salad of praise"]  # the reference LM is not
    assert scores["fluent positive"] > 0.8
    assert scores["fluent positive"] > scores["looped positive"] + 0.5
    assert scores["fluent positive"] > scores["salad of praise"] + 2.0
    assert scores["one word looped"] < scores["fluent negative"] < 0 < scores["looped positive"]
    assert scores["fluent positive"] == pytest.approx(vader["fluent positive"])  # no repeats, NLL below τ: VADER
    assert gold(["p"], [""]).tolist() == [0.0]  # nothing said: neutral, no repeats, no tokens to judge


def test_fluent_sentiment_terms_and_weights() -> None:
    from textenv.reward_models.fluent_sentiment import FluentSentimentReward, distinct_bigram_fraction

    assert distinct_bigram_fraction("Good, good. Good!") == 0.5  # words ignore case and punctuation
    assert distinct_bigram_fraction("one") == 1.0 and distinct_bigram_fraction("a b c a b c") == pytest.approx(3 / 5)
    text = [" it is nice it is nice it is nice"]
    vader = VaderSentimentReward().score(["p"], text)[0]
    plain = FluentSentimentReward(repetition_weight=0.0, fluency_weight=0.0)
    assert plain.likelihood is None and plain.score(["p"], text)[0] == pytest.approx(vader)
    assert FluentSentimentReward(2.0, fluency_weight=0.0).score(["p"], text)[0] == pytest.approx(vader - 2.0 * (1 - 3 / 8))
    judged = FluentSentimentReward(0.0, fluency_weight=1.0, max_nll=0.0)
    nll = judged.likelihood(["p"], text)[0]
    assert nll > 0 and judged.score(["p"], text)[0] == pytest.approx(vader - nll)


def test_reference_likelihood_is_the_mean_completion_nll(tiny_model_dir: Path) -> None:
    """Against a direct computation with the model: −mean log p(completion tokens | prompt)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from textenv.reward_models.fluent_sentiment import ReferenceLikelihood

    likelihood = ReferenceLikelihood(tiny_model_dir)
    prompts, completions = ["the film", "a", ""], [" was good", " long text here and there", " ok"]
    got = likelihood(prompts, completions)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    for prompt, completion, value in zip(prompts, completions, got):
        head = tokenizer(prompt)["input_ids"] or [tokenizer.bos_token_id or tokenizer.eos_token_id]
        tail = tokenizer(completion)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([head + tail])).logits[0, len(head) - 1 : -1]
        expected = -torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(tail)[:, None]).mean().item()
        assert value == pytest.approx(expected, abs=1e-4)
    assert likelihood(["p"], [""]).tolist() == [0.0]


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["repetition_weight", "fluency_weight", "max_nll"])
@pytest.mark.parametrize("value", [-0.5, float("inf"), "1", True])
def test_fluent_sentiment_refuses_bad_weights(name, value) -> None:
    with pytest.raises(InputError, match=name):
        make_reward_model("fluent-sentiment", **{name: value})


def test_train_rm_command_normalises_unless_told_not_to(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from textenv.apps.train_rm import main
    from textenv.preferences import write_preferences

    data = tmp_path / "prefs.jsonl"
    write_preferences(data, good_bad_rankings(12))
    common = ["--data", str(data), "--backbone", str(tiny_model_dir), "--epochs", "1", "--device", "cpu"]
    assert main([*common, "--output", str(tmp_path / "normalised")]) == 0
    assert "normalised to mean 0, std 1 on the 33 training completions" in capsys.readouterr().err
    assert PreferenceRewardModel.load(tmp_path / "normalised", device="cpu").normalization["num_texts"] == 33  # 11 of 12 prompts (eval_fraction 0.1) × 3
    assert main([*common, "--output", str(tmp_path / "raw"), "--no-normalize"]) == 0
    assert "normalised" not in capsys.readouterr().err
    raw = PreferenceRewardModel.load(tmp_path / "raw", device="cpu")
    assert raw.scale == 1.0 and raw.normalization is None


@pytest.mark.bad_input
@pytest.mark.parametrize("value", ["yes", 1.5, None])
def test_normalize_must_be_true_or_false(tiny_model_dir: Path, value) -> None:
    with pytest.raises(InputError, match="normalize"):
        train_preference_model(good_bad_rankings(4), backbone=str(tiny_model_dir), normalize=value, device="cpu")
