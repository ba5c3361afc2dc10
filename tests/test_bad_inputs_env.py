"""Bad inputs to the env, its reward models and its input files: each raises InputError naming what is wrong.

The table of issue 11 for the env side: constructor arguments (checked before any model loads), the env API
(step / reset / actions), reward functions and reward-model specs, prompt and preference files, models and
devices. Every case asserts the error type and, with ``match``, that the message names the argument, the
file (and line) or the reward model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import RunsWhenUnpickled

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.preferences import as_preference_rows, load_completion_sets, load_preferences
from textenv.prompts import load_prompts
from textenv.reward_models import EnsembleReward, RewardModel, make_reward_model
from textenv.validation import InputError
from textenv.vector_env import TextGenVectorEnv

pytestmark = pytest.mark.bad_input


def letters(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(sum(ch.isalpha() for ch in text)) for text in completions]


@pytest.fixture
def base(tiny_model_dir: Path, tiny_prompts: list[str]) -> dict[str, Any]:
    return dict(num_envs=2, model=str(tiny_model_dir), prompts=tiny_prompts, reward_model=letters,
                max_new_tokens=2, autoreset_mode="disabled", device="cpu")


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if the env loads its model or tokenizer: argument mistakes must be found before."""

    def loaded(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the env loaded a model before finding the mistake")

    monkeypatch.setattr("textenv.vector_env.load_models", loaded)  # the models layer: tokenizer, policy, reference


# ---------------------------------------------------------------------------------------------- constructor
CONSTRUCTOR = [
    ("num_envs zero", {"num_envs": 0}, r"num_envs=0 must be an integer >= 1"),
    ("num_envs float", {"num_envs": 2.5}, r"num_envs=2.5 must be an integer"),
    ("num_envs bool", {"num_envs": True}, r"num_envs=True must be an integer"),
    ("max_new_tokens negative", {"max_new_tokens": -1}, r"max_new_tokens=-1"),
    ("max_new_tokens string", {"max_new_tokens": "32"}, r"max_new_tokens='32'"),
    ("max_prompt_tokens zero", {"max_prompt_tokens": 0}, r"max_prompt_tokens=0"),
    ("kl_coef NaN", {"kl_coef": float("nan")}, r"kl_coef=nan must be a finite number >= 0"),
    ("kl_coef inf", {"kl_coef": float("inf")}, r"kl_coef=inf must be a finite number"),
    ("kl_coef negative", {"kl_coef": -0.1}, r"kl_coef=-0.1 must be a finite number >= 0"),
    ("kl_coef string", {"kl_coef": "0.1"}, r"kl_coef='0.1'"),
    ("target_kl zero", {"target_kl": 0.0}, r"target_kl=0.0 must be a finite number > 0"),
    ("target_kl NaN", {"target_kl": float("nan")}, r"target_kl=nan"),
    ("target_kl without beta", {"target_kl": 6.0, "kl_coef": 0.0}, r"target_kl needs kl_coef > 0"),
    ("kl_horizon zero", {"kl_horizon": 0}, r"kl_horizon=0"),
    ("kl_estimator unknown", {"kl_estimator": "k2"}, r"kl_estimator='k2' is not one of \['k1', 'k3'\]"),
    ("kl_penalty unknown", {"kl_penalty": "sometimes"}, r"kl_penalty='sometimes' is not one of"),
    ("group_size not a divisor", {"num_envs": 4, "group_size": 3}, r"num_envs=4 must be a multiple of group_size=3"),
    ("group_size with next_step", {"group_size": 2, "autoreset_mode": "next_step"}, r"group_size > 1.*'disabled'"),
    ("autoreset_mode unknown", {"autoreset_mode": "same_step"}, r"autoreset_mode='same_step' is not one of"),
    ("render_mode unknown", {"render_mode": "rgb_array"}, r"render_mode='rgb_array' is not supported.*'ansi'.*'human'"),
    ("render_top_k zero", {"render_top_k": 0}, r"render_top_k=0 must be an integer >= 1"),
    ("render_top_k float", {"render_top_k": 2.5}, r"render_top_k=2.5 must be an integer"),
    ("render_top_k bool", {"render_top_k": True}, r"render_top_k=True must be an integer"),
    ("render_top_k string", {"render_top_k": "5"}, r"render_top_k='5' must be an integer"),
    ("prompts wrong type", {"prompts": 42}, r"prompts must be 'builtin', a list of str.*got int"),
    ("prompts empty list", {"prompts": []}, r"prompts is empty"),
    ("prompts empty string", {"prompts": ["ok", "  "]}, r"prompts\[1\]='  ' is not a non-empty string"),
    ("prompts non-string item", {"prompts": ["ok", 3]}, r"prompts\[1\]=3"),
    ("prompts missing file", {"prompts": "no/such/prompts.txt"}, r"prompts='no/such/prompts.txt' is neither"),
    ("prompt_split unknown", {"prompt_split": "test"}, r"prompt_split='test' is not one of \['train', 'eval'\]"),
    ("model wrong type", {"model": 123}, r"model must be a name, a directory path or a loaded PreTrainedModel"),
    ("tokenizer wrong type", {"tokenizer": 1.5}, r"tokenizer must be None, a name"),
    ("reference wrong type", {"reference": "gpt2"}, r"reference must be None or a loaded causal LM"),
    ("lora wrong type", {"lora": "yes"}, r"lora='yes' must be True, False/None, a dict"),
    ("lora unknown key", {"lora": {"rank": 8}}, r"lora has unknown key\(s\) \['rank'\]"),
    ("lora r zero", {"lora": {"r": 0}}, r"lora\['r'\]=0 must be an integer >= 1"),
    ("lora dropout NaN", {"lora": {"lora_dropout": float("nan")}}, r"lora\['lora_dropout'\]=nan"),
    ("lora with reference", {"lora": True, "reference": torch.nn.Linear(1, 1)}, r"lora=.*drop reference="),
    ("reward_model unknown name", {"reward_model": "sentiment"}, r"reward_model='sentiment' is not a known.*vader"),
    ("reward_model wrong type", {"reward_model": 42}, r"reward_model must be a name.*got int"),
    ("device cuda missing", {"device": "cuda"}, r"device='cuda' is not available on this machine.*'auto'.*'cpu'"),
    ("device cuda:3 missing", {"device": "cuda:3"}, r"device='cuda:3' is not available"),
    ("device mps missing", {"device": "mps"}, r"device='mps' is not available"),
    ("device not a name", {"device": "gpu"}, r"device='gpu' is not a device name"),
    ("device wrong type", {"device": 0}, r"device=0 must be a string"),
    ("model missing directory", {"model": "/no/such/model-dir"}, r"model not found: '/no/such/model-dir'"),
    ("model unknown hub name offline", {"model": "no-such-org/no-such-model"},
     r"model not found: 'no-such-org/no-such-model' \(not a local directory.*no model hub is reachable"),
]


@pytest.mark.parametrize(("overrides", "match"), [(o, m) for _, o, m in CONSTRUCTOR], ids=[c[0] for c in CONSTRUCTOR])
def test_constructor_refuses_before_loading_a_model(base, no_model_load, monkeypatch, overrides, match) -> None:
    device = str(overrides.get("device", ""))
    if device.startswith("cuda") and torch.cuda.is_available() and device != "cuda:3":
        pytest.skip("this machine has CUDA")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub name is then refused at once, network or not
    with pytest.raises(InputError, match=match):
        TextGenVectorEnv(**{**base, **overrides})


def test_model_directory_without_config(base, tmp_path, no_model_load) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(InputError, match=rf"model='{re.escape(str(tmp_path))}' is a directory without config.json"):
        TextGenVectorEnv(**{**base, "model": str(tmp_path)})


def test_model_path_is_a_file(base, tiny_model_dir, no_model_load) -> None:
    file = tiny_model_dir / "config.json"
    with pytest.raises(InputError, match=rf"model='{re.escape(str(file))}' is a file; give the save_pretrained directory"):
        TextGenVectorEnv(**{**base, "model": str(file)})


def test_tokenizer_directory_without_tokenizer_files(base, tmp_path, no_model_load) -> None:
    with pytest.raises(InputError, match=r"tokenizer='.*' is a directory without tokenizer files"):
        TextGenVectorEnv(**{**base, "tokenizer": str(tmp_path)})


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"max_new_tokens": 500}, r"max_prompt_tokens \+ max_new_tokens = \d+ exceeds the model's context of 96"),
     ({"prompts": ["the film was good and long"], "max_prompt_tokens": 2}, r"has \d+ tokens > max_prompt_tokens=2"),
     ({"lora": {"target_modules": ["no_such_layer"]}}, r"lora=.*peft refused it")],
    ids=["context too long", "prompt longer than max_prompt_tokens", "lora target modules missing"],
)
def test_constructor_refuses_what_needs_the_model(base, overrides, match) -> None:
    with pytest.raises(InputError, match=match):
        TextGenVectorEnv(**{**base, **overrides})


def test_single_env_refuses_group_size(base) -> None:
    single = {k: v for k, v in base.items() if k not in ("num_envs", "autoreset_mode")}
    with pytest.raises(InputError, match=r"group_size=2 applies to the vector env"):
        gym.make("TextGen-v0", group_size=2, **single)


# ---------------------------------------------------------------------------------------------- env API
@pytest.fixture
def vec(base) -> TextGenVectorEnv:
    return TextGenVectorEnv(**base)


@pytest.fixture
def single(base) -> gym.Env:
    return gym.make("TextGen-v0", **{k: v for k, v in base.items() if k not in ("num_envs", "autoreset_mode")})


def test_step_before_reset(vec) -> None:
    with pytest.raises(InputError, match=r"step\(\) before reset\(\): call env.reset\(\) first"):
        vec.step(np.array([5, 5]))


def test_step_after_the_episode_ended(single) -> None:
    single.reset(seed=0)
    single.step(5)
    single.step(5)  # max_new_tokens=2: truncated
    with pytest.raises(InputError, match=r"episode has ended \(terminated or truncated\): call env.reset\(\)"):
        single.step(5)


@pytest.mark.parametrize(
    ("action", "match"),
    [(300, r"action=300 is outside the action space: token ids are in \[0, 300\)"),
     (-2, r"action=-2 is outside"),
     (2.0, r"action must be one int token id in \[0, 300\).*got 2.0"),
     (True, r"action must be one int token id"),
     (np.array([1, 2]), r"action must be one int token id")],
    ids=["too large", "negative", "float", "bool", "array of two"],
)
def test_single_env_bad_action(single, action, match) -> None:
    assert single.action_space.n == 300  # the tiny tokenizer: the range in the messages
    single.reset(seed=0)
    with pytest.raises(InputError, match=match):
        single.step(action)


@pytest.mark.parametrize(
    ("actions", "match"),
    [(np.array([0, 300]), r"actions must be token ids in \[0, 300\) \(the action space\), got \[300\]"),
     (np.array([0.0, 1.0]), r"actions must be an integer array of shape \(2,\).*got dtype float64"),
     (torch.tensor([True, False]), r"actions must be an integer array.*got a torch.bool tensor"),
     (np.array([[1, 2]]), r"actions must be an integer array of shape \(2,\).*got shape \(1, 2\)"),
     (["a", "b"], r"actions must be an integer array.*got dtype <U1")],
    ids=["out of range", "float", "bool tensor", "wrong shape", "strings"],
)
def test_vector_env_bad_actions(vec, actions, match) -> None:
    vec.reset(seed=0)
    with pytest.raises(InputError, match=match):
        vec.step(actions)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"prompt": "x"}, r"reset\(options=...\) has unknown key\(s\) \['prompt'\]; allowed keys are \['prompts'"),
     ({"prompts": ["only one"]}, r"options\['prompts'\] has 1 prompts for 2 rows"),
     ({"prompts": "two"}, r"options\['prompts'\] must be a list of 2 prompt strings"),
     ("prompts", r"reset\(options=...\) must be a dict")],
    ids=["unknown key", "wrong count", "a string", "not a dict"],
)
def test_vector_env_bad_reset_options(vec, options, match) -> None:
    with pytest.raises(InputError, match=match):
        vec.reset(seed=0, options=options)


def test_reset_mask_of_the_wrong_shape(vec) -> None:
    vec.reset(seed=0)
    with pytest.raises(InputError, match=r"options\['reset_mask'\] must be a bool array of shape \(2,\)"):
        vec.reset(options={"reset_mask": [True, False, True]})


OBSERVATION_LOGPROBS = [
    ("observation not a dict", lambda obs: ([1, 2], [0, 0]), r"observation must be the dict reset\(\)/step\(\) return"),
    ("observation without mask", lambda obs: ({"input_ids": obs["input_ids"]}, [0, 0]), r"'input_ids' and 'attention_mask'"),
    ("observation shapes differ", lambda obs: ({**obs, "attention_mask": obs["attention_mask"][:, 1:]}, [0, 0]),
     r"must both be \(W,\) or \(B, W\)"),
    ("observation float ids", lambda obs: ({**obs, "input_ids": obs["input_ids"] * 1.0}, [0, 0]), r"integer token ids"),
    ("observation left-aligned", lambda obs: ({**obs, "attention_mask": obs["attention_mask"][:, ::-1].copy()}, [0, 0]),
     r"right-aligned \(last column 1\)"),
    ("actions float", lambda obs: (obs, [0.5, 1.0]), r"actions must be integer token ids"),
    ("actions wrong count", lambda obs: (obs, [0, 1, 2]), r"one token id per observation, shape \(2,\)"),
    ("actions out of vocabulary", lambda obs: (obs, [0, 10**6]), r"token ids in \[0, \d+\)"),
]


@pytest.mark.parametrize(("make_inputs", "match"), [(f, m) for _, f, m in OBSERVATION_LOGPROBS],
                         ids=[c[0] for c in OBSERVATION_LOGPROBS])
def test_observation_logprobs_bad_inputs(vec, make_inputs, match) -> None:
    from textenv.logprobs import observation_logprobs

    obs, _ = vec.reset(seed=0)
    observation, actions = make_inputs(obs)
    with pytest.raises(InputError, match=match):
        observation_logprobs(vec.policy, observation, actions)


# ---------------------------------------------------------------------------------------------- reward functions
def returns_none(prompts, completions):
    return None


def returns_strings(prompts, completions):
    return ["good"] * len(completions)


def returns_too_few(prompts, completions):
    return [1.0]


def returns_nan(prompts, completions):
    return [float("nan")] * len(completions)


def returns_inf(prompts, completions):
    return [float("-inf")] * len(completions)


def returns_grad_tensor(prompts, completions):
    return torch.ones(len(completions), requires_grad=True) * 2


def returns_list_of_grad_tensors(prompts, completions):
    weight = torch.ones((), requires_grad=True)
    return [weight * 1.0 for _ in completions]


def returns_one_float(prompts, completions):
    return 0.5


def returns_nones(prompts, completions):
    return [None] * len(completions)


class DictScores(RewardModel):
    def score(self, prompts, completions):
        return {"score": 1.0}


REWARDS = [
    (returns_none, r"reward model function returns_none returned None"),
    (returns_strings, r"function returns_strings returned non-numbers \(e.g. 'good' of type str\)"),
    (returns_too_few, r"function returns_too_few returned an array of shape \(1,\) \(expected \(2,\)\)"),
    (returns_nan, r"function returns_nan returned 2 non-finite score\(s\) \(NaN/inf"),
    (returns_inf, r"function returns_inf returned 2 non-finite score\(s\).*-inf"),
    (returns_grad_tensor, r"function returns_grad_tensor returned a torch tensor that requires grad.*detach\(\)"),
    (returns_list_of_grad_tensors, r"function returns_list_of_grad_tensors returned a torch tensor that requires grad"),
    (returns_one_float, r"function returns_one_float returned a single float 0.5 for 2 completion\(s\)"),
    (returns_nones, r"function returns_nones returned non-numbers \(e.g. None"),
    (DictScores(), r"reward model DictScores returned a single dict"),
]


@pytest.mark.parametrize(("reward", "match"), REWARDS, ids=[getattr(r, "__name__", type(r).__name__) for r, _ in REWARDS])
def test_reward_function_output_is_checked(base, reward, match) -> None:
    env = TextGenVectorEnv(**{**base, "reward_model": reward, "max_new_tokens": 1})
    env.reset(seed=0)
    with pytest.raises(InputError, match=match) as err:
        env.step(np.array([5, 5]))
    assert "one finite float per completion" in str(err.value)  # how to fix it


def test_ensemble_names_the_failing_member() -> None:
    rm = EnsembleReward(["vader", returns_nan], weights=[1.0, 1.0])
    with pytest.raises(InputError, match=r"reward model function returns_nan returned 1 non-finite"):
        rm(["p"], ["c"])


# ---------------------------------------------------------------------------------------------- reward-model specs
@pytest.fixture(scope="module")
def tiny_classifier_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    directory = tmp_path_factory.mktemp("tiny-classifier")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=2,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                        pad_token_id=tokenizer.eos_token_id)
    GPT2ForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


SPECS = [
    ("unknown name", "sentiment", r"reward_model='sentiment' is not a known reward model; valid forms: .*vader"),
    ("family without argument", "preference:", r"reward_model='preference:' is missing its argument; use 'preference:<dir>'"),
    ("family without colon", "classifier", r"reward_model='classifier' needs an argument; use 'classifier:"),
    ("preference missing dir", "preference:/no/such/rm", r"preference:/no/such/rm.*is not a directory.*train-rm"),
    ("preference dir without meta", "preference:{tmp}", r"has no reward_model.json, so it is not a saved preference"),
    ("classifier unknown label", "classifier:{clf}#joy", r"classifier:.*#joy.*label='joy' is not a class.*\['NEGATIVE', 'POSITIVE'\]"),
    ("classifier label out of range", "classifier:{clf}#5", r"label=5 is out of range.*2 classes"),
    ("classifier unknown option", "classifier:{clf}#label=1,colour=red", r"unknown classifier option 'colour'.*keys"),
    ("classifier bad batch_size", "classifier:{clf}#batch_size=abc", r"batch_size='abc'.*must be an integer >= 1"),
    ("classifier positional option", "classifier:{clf}#POSITIVE,NEGATIVE", r"classifier option 'NEGATIVE'.*must be key=value"),
    ("classifier missing model", "classifier:/no/such/classifier", r"reward_model='classifier:/no/such/classifier'.*model not found"),
    ("classifier no path", "classifier:#POSITIVE", r"reward_model='classifier:#POSITIVE': no model named before '#'"),
    ("ensemble without weights", "ensemble:vader", r"reward_model='ensemble:vader': ensemble member 'vader' must be '<weight>\*<reward model>'"),
    ("ensemble NaN weight", "ensemble:nan*vader", r"ensemble member 'nan\*vader'.*must be '<weight>\*"),
    ("ensemble empty member", "ensemble:0.5*vader+1*", r"ensemble member '1\*'"),
    ("ensemble nested", "ensemble:0.5*vader+0.5*ensemble:1*vader", r"an ensemble cannot contain an ensemble"),
    ("ensemble unknown member", "ensemble:0.5*vader+0.5*nope", r"reward_model='nope' is not a known reward model"),
    ("ensemble zero weights", "ensemble:0*vader", r"all ensemble weights are 0"),
]


@pytest.mark.parametrize(("spec", "match"), [(s, m) for _, s, m in SPECS], ids=[c[0] for c in SPECS])
def test_bad_reward_model_spec(spec, match, tmp_path, tiny_classifier_dir) -> None:
    spec = spec.format(tmp=tmp_path, clf=tiny_classifier_dir)
    with pytest.raises(InputError, match=match) as err:
        make_reward_model(spec)
    assert str(err.value).startswith(f"reward_model={spec!r}")  # names the spec


# ---------------------------------------------------------------------------------------------- prompt files
def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


PROMPT_FILES = [
    ("txt not UTF-8", "p.txt", b"the film\nthe caf\xe9 was\n", r"{path}:2: not UTF-8 text \(byte b'\\xe9' at column 8\)"),
    ("jsonl not UTF-8", "p.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', r"{path}:2: not UTF-8"),
    ("jsonl malformed", "p.jsonl", '{"prompt": "ok"}\n\n{"prompt": "x"\n', r"{path}:3: not valid JSON.*\"prompt\" field"),
    ("jsonl missing prompt", "p.jsonl", '{"text": "x"}\n', r"{path}:1: no \"prompt\" field; a .jsonl prompt file holds"),
    ("jsonl prompt not a string", "p.jsonl", '{"prompt": 3}\n', r"{path}:1: \"prompt\" is 3, not a non-empty string"),
    ("jsonl prompt empty", "p.jsonl", '{"prompt": "  "}\n', r"{path}:1: \"prompt\" is '  ', not a non-empty string"),
    ("jsonl line not an object", "p.jsonl", '["x"]\n', r"{path}:1: no \"prompt\" field"),
    ("txt empty", "p.txt", "", r"prompts file {path} has no prompts \(it is empty or blank\)"),
    ("jsonl blank", "p.jsonl", "\n  \n", r"prompts file {path} has no prompts"),
]


@pytest.mark.parametrize(("name", "content", "match"), [c[1:] for c in PROMPT_FILES], ids=[c[0] for c in PROMPT_FILES])
def test_bad_prompt_file(tmp_path, name, content, match) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(InputError, match=match.format(path=re.escape(str(path)))):
        load_prompts(path)


def test_prompt_file_is_a_directory(tmp_path) -> None:
    with pytest.raises(InputError, match=rf"prompts='{re.escape(str(tmp_path))}' is a directory; give a .txt"):
        load_prompts(str(tmp_path))


def test_env_names_a_bad_prompt_file_before_loading_a_model(base, tmp_path, no_model_load) -> None:
    path = write(tmp_path / "p.txt", b"\xff\xfe bad\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}:1: not UTF-8"):
        TextGenVectorEnv(**{**base, "prompts": str(path)})


# ---------------------------------------------------------------------------------------------- preference files
PAIR = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
PREFERENCE_FILES = [
    ("not UTF-8", PAIR + "\n" + '{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', r"{path}:2: not UTF-8 text"),
    ("malformed JSON", PAIR + "\n{oops\n", r"{path}:2: not valid JSON .*each line is \{{\"prompt\": str, \"chosen\""),
    ("ranked with one item", '{"prompt": "p", "ranked": ["a"]}\n', r"{path}:1: \"ranked\" has 1 completion\(s\); give at least 2.*each line is"),
    ("chosen not a string", '{"prompt": "p", "chosen": 1, "rejected": "b"}\n', r"{path}:1: \"chosen\" must be a string, got int"),
    ("missing prompt", '{"chosen": "a", "rejected": "b"}\n', r"{path}:1: missing \"prompt\""),
    ("ranked not a list", '{"prompt": "p", "ranked": "a, b"}\n', r"{path}:1: \"ranked\" must be a list of strings"),
    ("typo in a key", '{"prompt": "p", "choosen": "a", "rejected": "b"}\n', r"{path}:1: unknown key\(s\) \['choosen'\]"),
]


@pytest.mark.parametrize(("content", "match"), [c[1:] for c in PREFERENCE_FILES], ids=[c[0] for c in PREFERENCE_FILES])
def test_bad_preference_file(tmp_path, content, match) -> None:
    raw = content.encode("latin-1") if "not UTF-8" in match else content.encode("utf-8")
    path = write(tmp_path / "prefs.jsonl", raw)
    with pytest.raises(InputError, match=match.format(path=re.escape(str(path)))):
        load_preferences(path)


def test_empty_preference_file_is_named(tmp_path) -> None:
    path = write(tmp_path / "prefs.jsonl", "\n")
    with pytest.raises(InputError, match=rf"preference file {re.escape(str(path))} has no rows"):
        as_preference_rows(path)


def test_preference_path_is_a_directory(tmp_path) -> None:
    with pytest.raises(InputError, match=rf"{re.escape(str(tmp_path))} is a directory, not a JSONL file"):
        load_preferences(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [('{"prompt": "p", "completions": ["only"]}\n', r"{path}:1: \"completions\" has 1 completion\(s\).*each line is \{{\"prompt\": str, \"completions\""),
     (b'{"prompt": "p", "completions": ["a", "\xff"]}\n', r"{path}:1: not UTF-8")],
    ids=["one completion", "not UTF-8"],
)
def test_bad_completion_set_file(tmp_path, content, match) -> None:
    path = write(tmp_path / "sets.jsonl", content)
    with pytest.raises(InputError, match=match.format(path=re.escape(str(path)))):
        load_completion_sets(path)


# ================================================================================== pickled model weights

@pytest.mark.bad_input
@pytest.mark.parametrize("loader", ["policy", "classifier", "backbone"])
def test_model_with_only_pickled_weights_is_refused_and_never_unpickled(tiny_model_dir, tmp_path, loader) -> None:
    import pickle
    import shutil

    from textenv.models.loading import load_causal_lm
    from textenv.reward_models.classifier import ClassifierReward
    from textenv.reward_models.preference import load_backbone

    model_dir = tmp_path / "pickled-model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(RunsWhenUnpickled(marker)))
    load = {"policy": lambda: load_causal_lm(model_dir, device="cpu"),
            "classifier": lambda: ClassifierReward(str(model_dir), tokenizer=str(tiny_model_dir)),
            "backbone": lambda: load_backbone(model_dir)}[loader]
    with pytest.raises(InputError, match=r"pickled-model.*no safetensors weights.*save_pretrained"):
        load()
    assert not marker.exists()
