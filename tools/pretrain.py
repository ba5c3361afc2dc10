"""Builds the project's embedded default model, reproducibly, from scratch.

Run::

    python -m tools.pretrain --output textenv/assets/tiny-reviews-gpt2 --seed 0

The build, all on CPU and seeded end to end:

1. samples reviews from the grammar in :mod:`tools.corpus` and splits them into
   training and held-out sets;
2. trains a byte-level BPE tokenizer (GPT-2 conventions: ``ByteLevel``
   pre-tokenizer and decoder, no prefix space, ``<|endoftext|>`` as the only
   special token, used as BOS, EOS, PAD and UNK) and wraps it as a
   ``transformers.PreTrainedTokenizerFast``;
3. trains a small ``GPT2LMHeadModel`` on ``review + <|endoftext|>`` examples, so it
   learns to end a review with EOS (a fifth of the examples also start with
   ``<|endoftext|>``, so generating from a bare BOS works too);
4. measures held-out per-token perplexity, samples continuations of built-in
   prompts, and writes the model (float32 safetensors), tokenizer, generation
   config and a model card ``README.md`` to ``--output``;
5. writes the built-in prompt set ``prompts.json`` (``{"train": [...], "eval": [...]}``,
   sentiment-neutral review openings, disjoint) next to the output directory.

Nothing is downloaded.  Timings in the model card are wall-clock and
process CPU seconds on the building machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tools.corpus import distinct_words, generate_prompts, generate_reviews

EOS = "<|endoftext|>"
DEFAULT_OUTPUT = "textenv/assets/tiny-reviews-gpt2"


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the built model (with the library versions)."""

    seed: int = 0
    n_train: int = 80_000  # training reviews
    n_heldout: int = 2_000  # held-out reviews, for perplexity
    vocab_size: int = 4096  # BPE target size, including the special token
    n_positions: int = 512  # context length in tokens (reviews are short; 512 lets benchmarks run 256 new tokens)
    n_embd: int = 192
    n_layer: int = 4
    n_head: int = 4
    steps: int = 650  # optimizer steps
    batch_size: int = 64  # reviews per step
    lr: float = 3e-3  # peak AdamW learning rate
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    bos_fraction: float = 0.2  # share of training examples that start with EOS as BOS
    n_train_prompts: int = 400
    n_eval_prompts: int = 150
    n_samples: int = 10  # sample continuations shown in the model card


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """Trains a GPT-2 style byte-level BPE tokenizer on ``texts``.

    Returns a fast tokenizer whose BOS, EOS, PAD and UNK are all ``<|endoftext|>``
    (id 0) and whose ``model_max_length`` is ``max_length`` tokens.  Its real
    size can be below ``vocab_size`` if the corpus runs out of merges.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=max_length,
    )


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def encode_examples(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int, bos_fraction: float, seed: int
) -> list[list[int]]:
    """Token ids of ``text + EOS`` for each text, with EOS also prepended to a
    seeded ``bos_fraction`` of them; truncated to ``max_length`` tokens."""
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [([eos] if rng.random() < bos_fraction else []) + x[: max_length - 2] + [eos] for x in ids]


def batch_order(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of batches (lists of example indices) in a seeded order.

    Examples are shuffled, sorted by length within windows of 50 batches (so a
    batch needs little padding), cut into batches, and the batches shuffled.
    """
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    window = 50 * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def collate(examples: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads ``examples`` into ``input_ids``, ``attention_mask`` and ``labels``,
    each of shape ``(batch, longest)``; padded label positions are -100."""
    width = max(map(len, examples))
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        input_ids[row, : len(ex)] = torch.tensor(ex)
        mask[row, : len(ex)] = 1
    return {"input_ids": input_ids, "attention_mask": mask,
            "labels": input_ids.masked_fill(mask == 0, -100)}


# --------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------


def lr_at(step: int, cfg: BuildConfig) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then cosine."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: GPT2LMHeadModel, examples: list[list[int]], cfg: BuildConfig, pad_id: int) -> dict[str, float]:
    """Trains ``model`` in place for ``cfg.steps`` steps; returns timing and loss stats."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    lengths = [len(x) for x in examples]
    batches: list[list[int]] = []
    model.train()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    tokens, recent, losses = 0, [], []
    for step in range(cfg.steps):
        if not batches:
            batches = batch_order(lengths, cfg.batch_size, generator)
        batch = collate([examples[i] for i in batches.pop()], pad_id)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        recent.append(loss.item())
        if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - wall0
            losses.append(statistics.mean(recent))
            print(f"step {step + 1:5d}/{cfg.steps}  loss {losses[-1]:.3f}  lr {lr_at(step, cfg):.2e}  "
                  f"{tokens / elapsed:,.0f} tok/s  {elapsed / 60:.1f} min", flush=True)
            recent = []
    return {"train_wall_s": time.perf_counter() - wall0, "train_cpu_s": time.process_time() - cpu0,
            "train_tokens": tokens, "final_train_loss": losses[-1]}


@torch.no_grad()
def heldout_perplexity(model: GPT2LMHeadModel, examples: list[list[int]], pad_id: int, batch_size: int = 128) -> float:
    """Per-token perplexity, ``exp(mean NLL)``, over every predicted token
    (all but the first of each example, EOS included)."""
    model.eval()
    nll, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum")
        nll += losses.item()
        count += int((targets != -100).sum())
    return math.exp(nll / count)


@torch.no_grad()
def sample(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, prompts: list[str],
           per_prompt: int, seed: int, max_new_tokens: int = 80) -> list[dict]:
    """Samples ``per_prompt`` continuations of each prompt (pure sampling:
    temperature 1, no top-k/top-p); returns dicts with prompt, continuation,
    number of new tokens and whether it ended with EOS."""
    model.eval()
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        gen = model.generate(**ids, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                             max_new_tokens=max_new_tokens, num_return_sequences=per_prompt,
                             pad_token_id=eos, eos_token_id=eos)
        for row in gen[:, ids["input_ids"].shape[1]:].tolist():
            ended = eos in row
            new = row[: row.index(eos)] if ended else row
            out.append({"prompt": prompt, "continuation": tokenizer.decode(new),
                        "new_tokens": len(new) + int(ended), "ended_with_eos": ended})
    return out


def sample_stats(samples: list[dict], vocabulary: set[str]) -> dict[str, float]:
    """EOS rate, length, diversity, share of samples using only words of
    ``vocabulary`` (the corpus's), and VADER sentiment of sampled continuations."""
    texts = [s["prompt"] + s["continuation"] for s in samples]
    stats = {
        "n": len(samples),
        "eos_rate": statistics.mean(s["ended_with_eos"] for s in samples),
        "mean_new_tokens": statistics.mean(s["new_tokens"] for s in samples),
        "distinct_texts": len(set(texts)) / len(texts),
        "in_vocabulary": statistics.mean(distinct_words([s["continuation"]]) <= vocabulary for s in samples),
    }
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:  # the reward's dependency; the build does not need it
        return stats
    scores = [SentimentIntensityAnalyzer().polarity_scores(t)["compound"] for t in texts]
    stats.update(vader_mean=statistics.mean(scores), vader_std=statistics.pstdev(scores),
                 vader_pos=statistics.mean(s > 0.05 for s in scores),
                 vader_neg=statistics.mean(s < -0.05 for s in scores))
    return stats


# --------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------


def model_card(cfg: BuildConfig, facts: dict, samples: list[dict], stats: dict, command: str) -> str:
    """The ``README.md`` of the output directory."""
    lines = [
        "---",
        "language: en",
        "license: mit",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [gpt2, tiny, reviews, rlhf, textenv]",
        "---",
        "",
        "# tiny-reviews-gpt2",
        "",
        "The default policy model embedded in `textenv`: a tiny GPT-2 trained from scratch on CPU",
        "on short synthetic English reviews (films, books, products, restaurants, hotels, games,",
        "albums; about 35% positive, 35% negative, 30% neutral or mixed) sampled from the",
        "grammar in `textenv/corpus.py`. It continues a review opening and ends the review",
        "with `<|endoftext|>`. It is a test and demo model for RLHF, e.g. steering the",
        "sentiment of reviews with a VADER reward, not a general language model.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `GPT2LMHeadModel`, {cfg.n_layer} layers, {cfg.n_head} heads, d_model {cfg.n_embd}, "
        f"MLP {4 * cfg.n_embd}, tied input/output embeddings, no dropout |",
        f"| parameters | {facts['n_params']:,} |",
        f"| context | {cfg.n_positions} tokens |",
        f"| tokenizer | byte-level BPE (GPT-2 conventions), vocabulary {facts['vocab_size']:,} |",
        f"| special tokens | `{EOS}` (id {facts['eos_id']}) is BOS, EOS, PAD and UNK |",
        "| weights | float32 safetensors |",
        "",
        f"Prompts are tokenized without a BOS token (GPT-2 convention); {cfg.bos_fraction:.0%} of the training",
        f"examples also started with `{EOS}`, so generation from a bare BOS works as well.",
        "The default generation config samples from the full distribution (temperature 1,",
        "top-k 0, top-p 1) with up to 64 new tokens and stops at EOS.",
        f"Training examples are at most {facts['max_example_tokens']} tokens long, so positions beyond",
        "that were never trained: expect degraded text if a sequence grows much longer.",
        "",
        "## Training data",
        "",
        f"- {facts['n_train']:,} training and {facts['n_heldout']:,} held-out reviews from "
        f"`tools.corpus.generate_reviews(n, seed={cfg.seed})`",
        f"- {facts['distinct_words']:,} distinct words; {facts['mean_words']:.1f} words and "
        f"{facts['mean_tokens']:.1f} tokens per review on average (10-60 words, 1-4 sentences)",
        "- each example is `review + <|endoftext|>`",
        "",
        "## Training",
        "",
        f"- {cfg.steps} steps of {cfg.batch_size} reviews ({facts['train_tokens']:,} tokens, "
        f"about {facts['train_tokens'] / facts['train_tokens_per_epoch']:.2f} epochs)",
        f"- AdamW (betas 0.9/0.95, weight decay {cfg.weight_decay}), peak lr {cfg.lr}, "
        f"{cfg.warmup_steps} warmup steps then cosine decay to {cfg.lr * cfg.min_lr_ratio:.0e}, "
        "gradient clipping 1.0",
        f"- final training loss {facts['final_train_loss']:.3f} nats/token",
        f"- {torch.get_num_threads()} CPU threads; training took {facts['train_wall_s'] / 60:.1f} min wall "
        f"({facts['train_cpu_s'] / 60:.1f} CPU-min), the whole build {facts['build_wall_s'] / 60:.1f} min wall "
        f"({facts['build_cpu_s'] / 60:.1f} CPU-min, summed over threads; load average "
        f"{facts['load_avg']:.1f} at the end, other jobs shared the machine when above 2)",
        f"- Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, tokenizers {tokenizers.__version__}",
        "",
        "## Evaluation",
        "",
        f"- held-out perplexity: **{facts['heldout_ppl']:.2f}** per token "
        f"({math.log(facts['heldout_ppl']):.3f} nats/token, EOS included)",
        f"- {stats['n']} samples (10 per eval prompt): {stats['eos_rate']:.0%} end with EOS, "
        f"{stats['mean_new_tokens']:.1f} new tokens on average, {stats['distinct_texts']:.0%} distinct, "
        f"{stats['in_vocabulary']:.0%} use only corpus words",
    ]
    if "vader_mean" in stats:
        lines.append(f"- VADER compound of those samples: mean {stats['vader_mean']:+.2f}, std "
                     f"{stats['vader_std']:.2f}; {stats['vader_pos']:.0%} positive (> 0.05), "
                     f"{stats['vader_neg']:.0%} negative (< -0.05)")
    lines += ["", "## Samples", "",
              f"Pure sampling (temperature 1.0, top-k 0), `torch.manual_seed({cfg.seed})`, "
              "first eval prompts of `prompts.json`; the prompt is in bold, `⏎` marks EOS.", ""]
    for s in samples:
        end = " ⏎" if s["ended_with_eos"] else " …"
        lines.append(f"- **{s['prompt']}**{s['continuation']}{end}")
    lines += ["", "## Rebuild", "", "```", command, "```", "",
              "The build is seeded end to end (corpus, tokenizer, initialization, data order,",
              "sampling); the same command with the same library versions and thread count",
              "gives the same model.", "",
              "Build config:", "", "```json", json.dumps(asdict(cfg), indent=2), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------


def build(cfg: BuildConfig, output: Path, prompts_path: Path, command: str) -> dict:
    """Runs the whole build; writes ``output/`` and ``prompts_path``; returns the facts."""
    wall0, cpu0 = time.perf_counter(), time.process_time()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - wall0) / 60:5.1f} min] {message}", flush=True)

    torch.set_num_threads(2)
    torch.manual_seed(cfg.seed)

    log(f"corpus: sampling {cfg.n_train + cfg.n_heldout:,} reviews (seed {cfg.seed})")
    reviews = generate_reviews(cfg.n_train + cfg.n_heldout, seed=cfg.seed)
    train_texts, heldout_texts = reviews[: cfg.n_train], reviews[cfg.n_train :]
    n_words = len(distinct_words(reviews))
    log(f"corpus: {n_words:,} distinct words")

    prompts = generate_prompts(cfg.n_train_prompts + cfg.n_eval_prompts, seed=cfg.seed)
    prompt_sets = {"train": prompts[: cfg.n_train_prompts], "eval": prompts[cfg.n_train_prompts :]}

    tokenizer = train_tokenizer(train_texts, cfg.vocab_size, cfg.n_positions)
    eos_id = tokenizer.eos_token_id
    log(f"tokenizer: {len(tokenizer):,} tokens (target {cfg.vocab_size:,}), EOS id {eos_id}")
    train_ex = encode_examples(tokenizer, train_texts, cfg.n_positions, cfg.bos_fraction, cfg.seed)
    heldout_ex = encode_examples(tokenizer, heldout_texts, cfg.n_positions, 0.0, cfg.seed)

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params:,} parameters")

    facts: dict = {"n_params": n_params, "vocab_size": len(tokenizer), "eos_id": eos_id,
                   "n_train": len(train_texts), "n_heldout": len(heldout_texts), "distinct_words": n_words,
                   "mean_words": statistics.mean(len(r.split()) for r in reviews),
                   "mean_tokens": statistics.mean(len(x) - 1 for x in heldout_ex),
                   "train_tokens_per_epoch": sum(map(len, train_ex)),
                   "max_example_tokens": max(map(len, train_ex))}
    facts.update(train(model, train_ex, cfg, eos_id))
    facts["heldout_ppl"] = heldout_perplexity(model, heldout_ex, eos_id)
    log(f"held-out perplexity {facts['heldout_ppl']:.3f}")

    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=64,
    )
    shown = sample(model, tokenizer, prompt_sets["eval"][: cfg.n_samples], 1, cfg.seed)
    stats = sample_stats(sample(model, tokenizer, prompt_sets["eval"][:20], 10, cfg.seed + 1),
                         distinct_words(train_texts))
    for s in shown:
        print(f"  {s['prompt']!r} -> {s['continuation']!r} {'<eos>' if s['ended_with_eos'] else ''}")
    log(f"samples: { {k: round(v, 3) for k, v in stats.items()} }")

    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    # transformers 5 records its internal class name ("TokenizersBackend"); the public
    # alias also loads with transformers 4.x.
    tok_config_path = output / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config_path.write_text(json.dumps(tok_config, indent=2) + "\n")
    for path in output.iterdir():  # safetensors writes 0600; package data must be readable
        path.chmod(0o644)
    prompts_path.parent.mkdir(parents=True, exist_ok=True)
    prompts_path.write_text(json.dumps(prompt_sets, indent=1) + "\n")
    facts["build_wall_s"] = time.perf_counter() - wall0
    facts["build_cpu_s"] = time.process_time() - cpu0
    facts["load_avg"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    (output / "README.md").write_text(model_card(cfg, facts, shown, stats, command))
    size = sum(f.stat().st_size for f in output.iterdir())
    print(f"wrote {output} ({size / 1e6:.2f} MB) and {prompts_path}; "
          f"build took {facts['build_wall_s'] / 60:.1f} min ({facts['build_cpu_s'] / 60:.1f} CPU-min)")
    return facts


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python -m tools.pretrain --output DIR [--seed S] [--steps N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path(DEFAULT_OUTPUT), help="model directory")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="prompt-set file [default: prompts.json next to --output]")
    parser.add_argument("--seed", type=int, default=BuildConfig.seed)
    parser.add_argument("--steps", type=int, default=BuildConfig.steps)
    args = parser.parse_args(argv)
    cfg = BuildConfig(seed=args.seed, steps=args.steps,
                      warmup_steps=min(BuildConfig.warmup_steps, max(1, args.steps // 10)))
    command = f"python -m tools.pretrain --output {args.output} --seed {args.seed} --steps {args.steps}"
    if args.prompts is not None:
        command += f" --prompts {args.prompts}"
    build(cfg, args.output, args.prompts or args.output.parent / "prompts.json", command)


if __name__ == "__main__":
    if "OMP_WAIT_POLICY" not in os.environ:
        # Let idle OpenMP threads sleep instead of spin: on a busy 2-core machine spinning
        # makes training several times slower.  OpenMP reads this when torch loads, which
        # `import textenv` has already done, so restart the interpreter with it set.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, "-m", "tools.pretrain", *sys.argv[1:]])
    main(sys.argv[1:])
