"""The embedded default model, its corpus and its built-in prompts (fast: a few seconds)."""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path

import pytest
import torch

from tools.corpus import distinct_words, generate_prompts, generate_reviews

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is package data: never touch the hub

ASSETS = Path(str(files("textenv") / "assets"))
MODEL_DIR = ASSETS / "tiny-reviews-gpt2"


def test_corpus_is_deterministic_and_varied() -> None:
    reviews = generate_reviews(2000, seed=5)
    assert reviews == generate_reviews(2000, seed=5)
    assert reviews[:100] == generate_reviews(100, seed=5)
    assert reviews != generate_reviews(2000, seed=6)
    assert len(distinct_words(reviews)) >= 1500
    assert len(set(reviews)) > 0.99 * len(reviews)
    assert all(10 <= len(r.split()) <= 60 and r[0].isupper() and r[-1] in ".!?" for r in reviews)


def test_generated_prompts_are_distinct_neutral_openings() -> None:
    prompts = generate_prompts(300, seed=1)
    assert prompts == generate_prompts(300, seed=1)
    assert len(set(prompts)) == 300
    assert all(3 <= len(p.split()) <= 10 and p[-1] not in ".!?," for p in prompts)
    vader = pytest.importorskip("vaderSentiment.vaderSentiment").SentimentIntensityAnalyzer()
    assert all(vader.polarity_scores(p)["compound"] == 0.0 for p in prompts)


def test_shipped_prompt_set() -> None:
    prompt_sets = json.loads((ASSETS / "prompts.json").read_text())
    train, evaluation = prompt_sets["train"], prompt_sets["eval"]
    assert len(train) >= 300 and len(evaluation) >= 100
    assert len(set(train)) == len(train) and len(set(evaluation)) == len(evaluation)
    assert not set(train) & set(evaluation)
    assert all(isinstance(p, str) and 3 <= len(p.split()) <= 10 for p in train + evaluation)


def test_shipped_model_files() -> None:
    assert (MODEL_DIR / "model.safetensors").is_file()
    assert (MODEL_DIR / "README.md").is_file()
    size = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 15 * 2**20


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
    return model, tokenizer


def test_shipped_model_loads_with_matching_tokenizer(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    assert 2000 <= len(tokenizer) <= 8000
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == model.config.vocab_size
    eos = tokenizer.eos_token_id
    assert eos is not None and tokenizer.convert_ids_to_tokens(eos) == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.bos_token_id == eos
    assert model.config.eos_token_id == model.generation_config.eos_token_id == eos
    assert model.generation_config.pad_token_id == eos
    assert model.dtype == torch.float32
    assert 1_500_000 <= sum(p.numel() for p in model.parameters()) <= 4_000_000


def test_shipped_model_continues_a_prompt(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    inputs = tokenizer("I ordered the lamb curry at Saffron House and", return_tensors="pt")
    with torch.no_grad():
        greedy = model.generate(**inputs, do_sample=False, max_new_tokens=40)
        torch.manual_seed(0)
        sampled = model.generate(**inputs, do_sample=True, top_k=0, max_new_tokens=40)
    n = inputs["input_ids"].shape[1]
    for out in (greedy, sampled):
        text = tokenizer.decode(out[0, n:], skip_special_tokens=True)
        assert text.strip()
    # Greedy decoding of an in-distribution opening finishes the review.
    assert tokenizer.eos_token_id in greedy[0, n:].tolist()
