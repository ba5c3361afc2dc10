"""Prompt sources: built-in splits, lists, .txt / .jsonl files, datasets; malformed input is named."""

from __future__ import annotations

import json

import pytest

from textenv.prompts import builtin_prompts, load_prompts
from textenv.validation import InputError


def test_builtin_splits_are_large_and_disjoint():
    train, held_out = builtin_prompts("train"), builtin_prompts("eval")
    assert len(set(train)) >= 300 and len(set(held_out)) >= 100
    assert not set(train) & set(held_out)
    with pytest.raises(ValueError, match="prompt_split='test'"):
        builtin_prompts("test")


def test_list_txt_and_jsonl(tmp_path):
    assert load_prompts(["a b", "c"]) == ["a b", "c"]
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\nsecond prompt\n")
    assert load_prompts(txt) == ["first prompt", "second prompt"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "one"}) + "\n" + json.dumps({"prompt": "two", "extra": 1}) + "\n")
    assert load_prompts(str(jsonl)) == ["one", "two"]


def test_malformed_jsonl_names_the_line(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps({"prompt": "ok"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompts(jsonl)
    jsonl.write_text(json.dumps({"text": "no prompt field"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*\"prompt\" field"):
        load_prompts(jsonl)


def test_missing_file_and_bad_types():
    with pytest.raises(ValueError, match="neither 'builtin' nor an existing"):
        load_prompts("no/such/file.txt")
    with pytest.raises(InputError, match="prompts must be"):
        load_prompts(42)
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        load_prompts([3])


def test_datasets_dataset():
    datasets = pytest.importorskip("datasets")  # an optional dependency (installed with the `bench` extra)
    dataset = datasets.Dataset.from_dict({"prompt": ["x y", "z"], "other": [1, 2]})
    assert load_prompts(dataset) == ["x y", "z"]
    with pytest.raises(ValueError, match="'prompt' or 'text' column"):
        load_prompts(datasets.Dataset.from_dict({"other": [1]}))
