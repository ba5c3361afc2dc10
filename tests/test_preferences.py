"""Preference JSONL format: loading, validation with line numbers, pair expansion, append-safe writing; collect."""

from __future__ import annotations

import itertools
import json
from math import comb
from pathlib import Path

import numpy as np
import pytest

from textenv.preferences import (
    CompletionSet,
    JsonlWriter,
    PreferencePair,
    PreferenceRanking,
    expand_pairs,
    load_completion_sets,
    load_preferences,
    write_preferences,
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_both_row_forms(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [
        json.dumps({"prompt": "the film", "chosen": " was great", "rejected": " was awful"}),
        "",
        json.dumps({"prompt": "the soup", "ranked": [" hot", " warm", " cold"], "meta": {"labeller": "ann"}}),
    ])
    rows = load_preferences(path)
    assert rows[0] == PreferencePair("the film", " was great", " was awful")
    assert rows[1] == PreferenceRanking("the soup", (" hot", " warm", " cold"))
    assert rows[1].meta == {"labeller": "ann"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "JSON object"),
        ('{"chosen": "a", "rejected": "b"}', 'missing "prompt"'),
        ('{"prompt": "p", "chosen": "a"}', 'missing "rejected"'),
        ('{"prompt": "p", "choosen": "a", "rejected": "b"}', "unknown key"),
        ('{"prompt": "p", "chosen": "a", "rejected": "a"}', "same text"),
        ('{"prompt": "p", "ranked": ["only one"]}', "at least 2"),
        ('{"prompt": "p", "ranked": ["a", "b", "a"]}', "twice"),
        ('{"prompt": "p", "ranked": ["a", 3]}', "list of strings"),
        ('{"prompt": "p", "ranked": ["a", "b"], "chosen": "a", "rejected": "b"}', "not both"),
        ('{"prompt": "", "ranked": ["a", "b"]}', '"prompt" is empty'),
        ('{"prompt": "p"}', 'missing "chosen"/"rejected"'),
        ('{"prompt": "p", "ranked": ["a", "b"], "meta": 3}', '"meta" must be an object'),
    ],
)
def test_malformed_rows_rejected_with_path_and_line(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    path = write_lines(tmp_path / "bad.jsonl", [good, "", line, good])
    with pytest.raises(ValueError) as err:
        load_preferences(path)
    assert f"{path}:3:" in str(err.value)  # blank lines still count
    assert message in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_preferences(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("K", [2, 3, 4, 7])
def test_ranking_expands_to_all_ordered_pairs(K: int) -> None:
    ranked = tuple(f" c{i}" for i in range(K))
    (group,) = expand_pairs([PreferenceRanking("x", ranked)])
    assert len(group.pairs) == comb(K, 2)
    assert group.completions == list(ranked)
    assert set(group.pairs) == set(itertools.combinations(range(K), 2))  # better index always wins
    assert all(PreferencePair("x", ranked[i], ranked[j]) in group.as_pairs() for i, j in itertools.combinations(range(K), 2))
    assert PreferenceRanking("x", ranked).pairs() == group.as_pairs()


def test_expand_pairs_groups_by_prompt_and_shares_completions() -> None:
    rows = [
        PreferenceRanking("a", (" 1", " 2", " 3")),
        PreferencePair("b", " x", " y"),
        PreferencePair("a", " 3", " 4"),  # same prompt later: joins group "a", reuses " 3"
        PreferenceRanking("b", (" y", " z")),
    ]
    groups = expand_pairs(rows)
    assert [g.prompt for g in groups] == ["a", "b"]
    a, b = groups
    assert a.completions == [" 1", " 2", " 3", " 4"]
    assert a.pairs == [(0, 1), (0, 2), (1, 2), (2, 3)]
    assert b.completions == [" x", " y", " z"]
    assert b.pairs == [(0, 1), (1, 2)]


def test_writer_appends_and_repairs_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_preferences(path, [PreferencePair("p", "a", "b")])
    with JsonlWriter(path) as writer:
        writer.write(PreferenceRanking("q", ("x", "y"), {"gold": "vader"}))
    assert [r.prompt for r in load_preferences(path)] == ["p", "q"]
    with open(path, "a", encoding="utf-8") as handle:  # a crash mid-line, without the newline
        handle.write('{"prompt": "torn"')
    with JsonlWriter(path) as writer:
        writer.write({"prompt": "r", "chosen": "a", "rejected": "b"})
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[-1] == json.dumps({"prompt": "r", "chosen": "a", "rejected": "b"})
    assert lines[-2] == '{"prompt": "torn"'  # left for the user to see; not glued to the new row
    with pytest.raises(ValueError, match=f"{path}:3:"):
        load_preferences(path)


def test_writer_flushes_every_row(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = JsonlWriter(path, fsync=True)
    writer.write(PreferencePair("p", "a", "b"))
    assert load_preferences(path) == [PreferencePair("p", "a", "b")]  # readable before close
    writer.close()


def test_write_preferences_validates_dicts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"rows\[0\]"):
        write_preferences(tmp_path / "o.jsonl", [{"prompt": "p", "chosen": "a"}])


def test_completion_sets_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sets.jsonl"
    with JsonlWriter(path) as writer:
        writer.write(CompletionSet("p", ("a", "b", "c")))
    assert load_completion_sets(path) == [CompletionSet("p", ("a", "b", "c"))]
    write_lines(path, ['{"prompt": "p", "completions": ["a"]}'])
    with pytest.raises(ValueError, match=f"{path}:1:.*at least 2"):
        load_completion_sets(path)


# ---------------------------------------------------------------------------------------------- collect
def test_rank_completions_dedup_min_gap_and_noise() -> None:
    from textenv.apps.collect import rank_completions

    texts = [" a", " b", " c", " a", " d"]
    scores = [0.5, 0.9, 0.0, 0.5, 0.45]
    ranked, kept = rank_completions(texts, scores)
    assert ranked == [" b", " a", " d", " c"] and kept == [0.9, 0.5, 0.45, 0.0]
    ranked, kept = rank_completions(texts, scores, min_gap=0.1)
    assert ranked == [" b", " a", " c"]  # " d" is within 0.1 of " a"
    ranked, _ = rank_completions([" x", " y", " z"], [0.0, 0.0, 0.0])
    assert len(ranked) == 1  # exact ties are dropped even with min_gap=0
    ranked, _ = rank_completions([" x", " y"], [1.0, 0.0], noise=1.0, rng=np.random.default_rng(0))
    assert ranked == [" y", " x"]
    with pytest.raises(ValueError, match="noise"):
        rank_completions([" x", " y"], [1.0, 0.0], noise=1.5)


def gold_length(prompts: list[str], completions: list[str]) -> np.ndarray:
    return np.array([len(c) for c in completions], dtype=float)


def test_collect_writes_gold_rankings(tiny_model_dir: Path, tiny_prompts: list[str], tmp_path: Path) -> None:
    from textenv.apps.collect import collect_preferences

    out = tmp_path / "prefs.jsonl"
    result = collect_preferences(model=str(tiny_model_dir), prompts=tiny_prompts, num_prompts=6, k=3,
                                 max_new_tokens=6, gold=gold_length, output=out, seed=1, batch_prompts=4,
                                 device="cpu")
    rows = load_preferences(out)
    assert len(rows) == len(result.rows) == 6 - result.skipped
    assert result.num_completions == 18
    assert {r.prompt for r in rows} <= set(tiny_prompts)
    for row in rows:
        assert isinstance(row, PreferenceRanking)
        lengths = [len(c) for c in row.ranked]
        assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == len(lengths)
        assert row.meta["scores"] == [float(n) for n in lengths]
    again = collect_preferences(model=str(tiny_model_dir), prompts=tiny_prompts, num_prompts=6, k=3,
                                max_new_tokens=6, gold=gold_length, seed=1, batch_prompts=4, device="cpu")
    assert [r.to_json() for r in again.rows] == [r.to_json() for r in result.rows]  # seeded


def test_collect_cli_unranked_and_refuses_to_overwrite(tiny_model_dir: Path, tmp_path: Path) -> None:
    from textenv.apps.collect import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the film was\nthe book\n", encoding="utf-8")
    out = tmp_path / "sets.jsonl"
    argv = ["--model", str(tiny_model_dir), "--prompts", str(prompts), "--num-prompts", "3", "--k", "4",
            "--max-new-tokens", "5", "--output", str(out), "--unranked", "--device", "cpu"]
    assert main(argv) == 0
    sets = load_completion_sets(out)
    assert 1 <= len(sets) <= 3 and all(2 <= len(s.completions) <= 4 for s in sets)
    assert main(argv) == 2  # exists: needs --append
    assert main(argv + ["--append"]) == 0
    assert len(load_completion_sets(out)) > len(sets)
    assert main(argv[:-2] + ["--k", "1", "--output", str(tmp_path / "x.jsonl")]) == 2


def test_fluent_sentiment_gold_ranks_varied_praise_first() -> None:
    """The pipeline's default labeller: a loop of praise ranks below varied praise, above a varied complaint
    (texts in the embedded model's review style, which its reference LM finds fluent)."""
    from textenv.apps.collect import rank_completions
    from textenv.reward_models import make_reward_model

    texts = [" I loved it. I loved it. I loved it. I loved it.", " was dull, and I regret it. Everything about it felt "
             "crappy. One star.", " was wonderful. Everything about it felt superb. Highly recommended."]
    scores = make_reward_model("fluent-sentiment")(["The film"] * 3, texts)
    ranked, _ = rank_completions(texts, scores)
    assert ranked == [texts[2], texts[0], texts[1]]

