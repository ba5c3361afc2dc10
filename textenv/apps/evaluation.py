"""Evaluate a policy: gold and proxy reward, KL to the reference, reference perplexity, diversity; and plots.

:func:`evaluate_policy` samples ``num_samples`` completions per prompt from the policy through the batched
env (:class:`~textenv.vector_env.TextGenVectorEnv` + :func:`~textenv.rollout.collect_rollout`: KV-cached,
one forward per model per token) and reports, over all samples:

* ``gold_reward``: mean score of the *gold* reward model (default VADER) — the quantity we actually want;
* ``proxy_reward``: mean score of the *proxy* (e.g. a learned Bradley–Terry RM the policy was trained on);
* ``kl``: KL(π_θ‖π_ref) estimated as the mean over samples of Σ_t [log π_θ(y_t|s_t) − log π_ref(y_t|s_t)]
  (the k1 estimator, docs/rl-framing.md#per-token-kl-estimators-kl_estimator; nats per sequence; unbiased at
  ``temperature=1``);
* ``perplexity``: exp(−Σ log π_ref(y_t|s_t) / N_tokens) — how natural the samples look to the reference
  (per token, over all samples; the EOS token counts when it was sampled);
* ``distinct_1`` / ``distinct_2``: unique word n-grams / total word n-grams over all samples (Li et al. 2016);
  collapse to a few repeated phrases shows as low distinct-n;
* ``samples``: the table of (prompt, completion, gold, proxy, kl) rows;
* ``lens`` (with ``lens_episodes``): the first episodes token by token (:class:`textenv.agents.lens.EpisodeLens`
  as dicts: token, log π_θ, log π_ref, KL_t), which :func:`save_lens_page` draws as an HTML page.

Reward over-optimisation (Gao et al. 2022; docs/rl-framing.md#what-can-go-wrong) shows as the proxy rising while
the gold reward stalls or falls as KL grows: :func:`plot_proxy_vs_gold` draws that over checkpoints, and
:func:`plot_reward_kl_frontier` draws gold reward against KL for a β sweep (the reward–KL frontier of the
DiscoPOP paper's IMDb experiment, its Fig. 5).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textenv.agents.lens import HTML_GENERATOR, EpisodeLens, episode_lenses, html_page
from textenv.checkpoint import write_file_atomically
from textenv.models.loading import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_device, resolve_model_path
from textenv.prompts import PromptSource, load_prompts
from textenv.reward_models import RewardModel, checked_scores, make_reward_model
from textenv.rollout import Rollout, collect_rollout
from textenv.validation import InputError, check_int, check_positive
from textenv.vector_env import TextGenVectorEnv

#: Scalar keys of an :func:`evaluate_policy` result (``proxy_reward`` is ``None`` without a proxy).
METRICS = (
    "gold_reward", "gold_reward_std", "proxy_reward", "proxy_reward_std", "kl", "kl_std", "perplexity",
    "policy_perplexity", "distinct_1", "distinct_2", "length",
)


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_policy(
    policy: str | os.PathLike | PreTrainedModel,
    prompts: PromptSource = "builtin",
    gold: Any = "vader",
    proxy: Any = None,
    reference: str | os.PathLike | PreTrainedModel | None = None,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    num_samples: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    prompt_split: str = "eval",
    max_table_rows: int | None = None,
    device: str | torch.device = "auto",
    lens_episodes: int = 0,
) -> dict[str, Any]:
    """Sample from ``policy`` on ``prompts`` and measure it (see the module docstring for the metrics).

    Args:
        policy: a ``PreTrainedModel``, a ``save_pretrained`` directory / model name, or a textenv agent
            checkpoint directory (``Agent.save``: its ``policy/`` is loaded; an ILQL checkpoint samples with its
            Q-weighted policy, ``ILQL.sampling_policy``).
        prompts: any prompt source of :func:`textenv.prompts.load_prompts`; default the built-in held-out
            ``"eval"`` split.
        gold: the reward model we care about: a registered name, a :class:`RewardModel`, a callable, or the
            directory of a saved :class:`~textenv.reward_models.preference.PreferenceRewardModel`.
        proxy: optional second reward model (same forms), e.g. the learned RM used for training.
        reference: π_ref for KL and perplexity (model, name or path). Default: the base model recorded in an
            agent checkpoint, else the embedded default model.
        tokenizer: default: the policy's own.
        num_samples: completions per prompt.
        max_new_tokens: completion length limit (tokens).
        temperature: sampling temperature (1: sample from π_θ itself, needed for an unbiased KL).
        seed: seeds the sampler; the same arguments give the same samples.
        batch_size: rows generated together.
        prompt_split: split of the built-in prompts.
        max_table_rows: keep only this many rows in ``samples`` (``None``: all).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        lens_episodes: keep the first this many samples token by token under ``lens`` (0: no ``lens`` key).

    Returns:
        A JSON-serialisable dict with the :data:`METRICS`, ``samples`` (list of dicts with ``prompt``,
        ``completion``, ``gold``, ``proxy``, ``kl``), counts, ``seconds``, the settings used and ``lens``
        (with ``lens_episodes``: :meth:`textenv.agents.lens.EpisodeLens.to_dict` of each).

    Note: a passed-in ``PreTrainedModel`` is used in place (moved to ``device``, dropout disabled by the env).
    The evaluation builds its own env, so no training env's β moves.
    """
    _check_evaluation_arguments(policy, reference, num_samples, max_new_tokens, temperature, seed, batch_size,
                                max_table_rows, lens_episodes)
    start = time.perf_counter()
    prompt_list = load_prompts(prompts, prompt_split)  # a bad prompt file or reward-model name fails before any model
    device = resolve_device(device)
    gold_model = load_reward_model(gold, device)
    proxy_model = None if proxy is None else load_reward_model(proxy, device)
    policy_model, policy_tokenizer, base_model = _load_policy(policy, device)
    reference = reference if reference is not None else base_model or DEFAULT_MODEL
    reference_model = _load_reference(reference, device, vocabulary_of=policy_model)
    rows = [p for p in prompt_list for _ in range(num_samples)]
    env = TextGenVectorEnv(
        num_envs=min(batch_size, len(rows)), model=policy_model,
        tokenizer=tokenizer if tokenizer is not None else policy_tokenizer, reward_model=gold_model,
        prompts=prompt_list, max_new_tokens=max_new_tokens, kl_coef=1.0, kl_estimator="k1", autoreset_mode="disabled",
        reference=reference_model, device=device,
    )  # β only makes the env compute π_ref's log-probs; the env's reward is not used here
    sampled = _sample(env, rows, seed, temperature, lens_episodes)
    proxy_scores = None if proxy_model is None else checked_scores(proxy_model, rows, sampled.texts)
    table = sampled.table(rows, proxy_scores)
    return {
        **sampled.metrics(proxy_scores),
        "num_prompts": len(prompt_list), "num_samples": len(rows),
        "num_tokens": int(sampled.num_tokens), "seconds": time.perf_counter() - start,
        "settings": {"policy": _describe(policy), "reference": _describe(reference), "gold": _describe(gold),
                     "proxy": None if proxy is None else _describe(proxy), "prompt_split": prompt_split,
                     "samples_per_prompt": num_samples, "max_new_tokens": max_new_tokens, "temperature": temperature,
                     "seed": seed},
        "samples": table if max_table_rows is None else table[:max_table_rows],
        **({"lens": [episode.to_dict() for episode in sampled.lens]} if lens_episodes else {}),
    }


def _check_evaluation_arguments(policy: Any, reference: Any, num_samples: Any, max_new_tokens: Any, temperature: Any,
                                seed: Any, batch_size: Any, max_table_rows: Any, lens_episodes: Any = 0) -> None:
    """:class:`InputError` for a bad number, or a checkpoint that names no base model when ``reference`` is not
    given, before anything loads."""
    for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        check_int(name, value, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("lens_episodes", lens_episodes, minimum=0)
    if max_table_rows is not None:
        check_int("max_table_rows", max_table_rows, minimum=0)
    try:
        check_positive("temperature", temperature)
    except InputError as err:
        raise InputError(f"{err} (sampling; greedy decoding has no KL estimate)") from None
    if reference is None and isinstance(policy, (str, os.PathLike)):
        meta_file = Path(resolve_model_path(policy)) / "agent.json"
        if meta_file.is_file() and _recorded_base_model(meta_file) is None:
            raise InputError(f"{meta_file} names no base model (the agent was trained from a model object): pass "
                             "reference=<the model the policy started from> to measure KL and perplexity")


@dataclass
class _Samples:
    """Completions of every row with their gold score, KL (nats per sequence), length (tokens) and the summed
    log-probs of their tokens under π_ref and π_θ; ``lens``: the first episodes token by token."""

    texts: list[str] = field(default_factory=list)
    gold: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kl: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ref_logprob_sum: float = 0.0
    policy_logprob_sum: float = 0.0
    lens: list[EpisodeLens] = field(default_factory=list)

    @property
    def num_tokens(self) -> float:
        return float(self.lengths.sum())

    def table(self, prompts: Sequence[str], proxy: np.ndarray | None) -> list[dict[str, Any]]:
        """One row per sample: prompt, completion, gold, proxy (``None`` without one) and KL."""
        return [
            {"prompt": p, "completion": t, "gold": float(g), "proxy": None if proxy is None else float(proxy[i]),
             "kl": float(k)}
            for i, (p, t, g, k) in enumerate(zip(prompts, self.texts, self.gold, self.kl))
        ]

    def metrics(self, proxy: np.ndarray | None) -> dict[str, Any]:
        """The :data:`METRICS` (``proxy``: the proxy's scores of the texts, or ``None``)."""
        tokens = max(self.num_tokens, 1.0)
        return {
            "gold_reward": float(self.gold.mean()),
            "gold_reward_std": float(self.gold.std()),
            "proxy_reward": None if proxy is None else float(proxy.mean()),
            "proxy_reward_std": None if proxy is None else float(proxy.std()),
            "kl": float(self.kl.mean()),
            "kl_std": float(self.kl.std()),
            "perplexity": math.exp(-self.ref_logprob_sum / tokens),
            "policy_perplexity": math.exp(-self.policy_logprob_sum / tokens),
            "distinct_1": distinct_n(self.texts, 1),
            "distinct_2": distinct_n(self.texts, 2),
            "length": float(self.lengths.mean()),
        }


def _sample(env: TextGenVectorEnv, rows: list[str], seed: int, temperature: float, lens_episodes: int = 0) -> _Samples:
    """One completion per entry of ``rows`` (prompts), ``env.num_envs`` at a time; the last batch is topped up with
    copies of its last prompt, whose rows are dropped. The first ``lens_episodes`` are also kept token by token."""
    generator = torch.Generator(device=env.device).manual_seed(seed)
    sampled = _Samples()
    gold, kls, lengths = [], [], []
    for first in range(0, len(rows), env.num_envs):
        chunk = rows[first : first + env.num_envs]
        filler = [chunk[-1]] * (env.num_envs - len(chunk))
        rollout = collect_rollout(env, generator, prompts=chunk + filler, temperature=temperature)
        n = len(chunk)
        mask = rollout.action_mask[:n]
        # k1: KL_t = log π_θ(y_t|s_t) − log π_ref(y_t|s_t), so log π_ref = logprob − KL_t.
        sampled.ref_logprob_sum += float(((rollout.logprobs[:n] - rollout.kl[:n]) * mask).sum())
        sampled.policy_logprob_sum += float((rollout.logprobs[:n] * mask).sum())
        keep = min(n, lens_episodes - len(sampled.lens))
        if keep > 0:
            sampled.lens += _lens_of(env, rollout, keep, first)
        sampled.texts += rollout.texts[:n]
        gold.append(rollout.rm_score[:n])
        kls.append(rollout.episode_kl[:n])
        lengths.append(mask.sum(dim=1).cpu().numpy())
    sampled.gold, sampled.kl, sampled.lengths = np.concatenate(gold), np.concatenate(kls), np.concatenate(lengths)
    return sampled


def _lens_of(env: TextGenVectorEnv, rollout: Rollout, n: int, first: int) -> list[EpisodeLens]:
    """The rollout's first ``n`` episodes token by token, numbered from ``first``; log π_ref = log π_θ − KL_t (the
    evaluation env's k1 estimator); the score is the gold reward model's."""
    episodes = episode_lenses(rollout, env.tokenizer, range(n), (rollout.logprobs - rollout.kl)[:n], with_return=False)
    for episode in episodes:
        episode.index += first
        episode.summary = {"gold": episode.summary.pop("score"), **episode.summary}
    return episodes


def evaluate_checkpoints(checkpoints: Sequence[str | os.PathLike], **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`evaluate_policy` on each agent checkpoint directory, in order; each result also gets
    ``checkpoint`` and ``num_timesteps`` (from its ``agent.json``, ``None`` if absent). ``kwargs`` are
    passed on (use the same ``seed`` and prompts for comparable points)."""
    results = []
    for checkpoint in checkpoints:
        result = evaluate_policy(checkpoint, **kwargs)
        meta = Path(checkpoint) / "agent.json"
        result["checkpoint"] = str(checkpoint)
        result["num_timesteps"] = json.loads(meta.read_text())["num_timesteps"] if meta.is_file() else None
        results.append(result)
    return results


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams / total word n-grams over all ``texts`` (whitespace words; 0.0 if there are none).

    >>> distinct_n(["a b a b"], 2)  # bigrams (a b), (b a), (a b): 2 unique of 3
    0.6666666666666666
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    ngrams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def load_reward_model(spec: Any, device: str | torch.device = "auto") -> RewardModel:
    """:func:`~textenv.reward_models.make_reward_model`, plus the directory of a saved
    ``PreferenceRewardModel`` (it holds ``reward_model.json``)."""
    if isinstance(spec, (str, os.PathLike)) and (Path(spec) / "reward_model.json").is_file():
        from textenv.reward_models.preference import PreferenceRewardModel

        return PreferenceRewardModel.load(spec, device=device)
    return make_reward_model(spec)


def _load_policy(
    policy: str | os.PathLike | PreTrainedModel, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None, str | None]:
    """``(model, tokenizer or None, base model name recorded in an agent checkpoint or None)``."""
    if isinstance(policy, torch.nn.Module):  # a PreTrainedModel or a peft-wrapped one
        return policy.to(device).eval(), None, None
    if not isinstance(policy, (str, os.PathLike)):
        raise TypeError(f"policy must be a PreTrainedModel, a model directory or a checkpoint, got {type(policy)}")
    path = Path(resolve_model_path(policy))
    if (path / "agent.json").is_file() and (path / "policy").is_dir():  # an Agent.save checkpoint
        model = load_causal_lm(path / "policy", device).eval()
        return _sampling_policy(path, model), load_tokenizer(path / "policy"), _recorded_base_model(path / "agent.json")
    return load_causal_lm(path, device).eval(), load_tokenizer(path), None


def _sampling_policy(checkpoint: Path, model: PreTrainedModel) -> torch.nn.Module:
    """What the checkpoint's agent samples with: its LM ``model``, or the module its class builds around it when the
    class has a ``sampling_policy(checkpoint, model)`` (ILQL's Q-weighted decoding)."""
    from textenv.agents import AGENTS

    name = _read_agent_json(checkpoint / "agent.json").get("agent")
    build = getattr(AGENTS[name], "sampling_policy", None) if isinstance(name, str) and name in AGENTS else None
    return model if build is None else build(checkpoint, model).to(model.device)


def _recorded_base_model(file: Path) -> str | None:
    """The base model name an ``agent.json`` records (``env.model``), ``None`` when it was a Python object."""
    env = _read_agent_json(file).get("env")
    model = env.get("model") if isinstance(env, dict) else None
    return model if isinstance(model, str) else None


def _read_agent_json(file: Path) -> dict[str, Any]:
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{file} is not valid UTF-8 JSON ({err}); the checkpoint is damaged") from None
    if not isinstance(meta, dict):
        raise InputError(f"{file} must hold a JSON object; the checkpoint is damaged")
    return meta


def _load_reference(reference: str | os.PathLike | PreTrainedModel, device: torch.device,
                    vocabulary_of: PreTrainedModel) -> PreTrainedModel:
    """π_ref, frozen, in eval mode on ``device``; its vocabulary must be that of the policy ``vocabulary_of``."""
    model = reference if isinstance(reference, torch.nn.Module) else load_causal_lm(reference, device)
    model = model.to(device).eval()
    model.requires_grad_(False)
    _check_same_vocabulary(vocabulary_of, model)
    return model


def _check_same_vocabulary(policy: PreTrainedModel, reference: PreTrainedModel) -> None:
    sizes = (policy.config.vocab_size, reference.config.vocab_size)
    if sizes[0] != sizes[1]:
        raise InputError(
            f"the policy's vocabulary ({sizes[0]} tokens) differs from the reference's ({sizes[1]}): KL and "
            "perplexity need the same tokenizer; pass reference=<the policy's base model>"
        )


def _describe(spec: Any) -> Any:
    if spec is None or isinstance(spec, (str, int, float)):
        return spec
    if isinstance(spec, os.PathLike):
        return str(spec)
    if isinstance(spec, PreTrainedModel):
        return getattr(spec, "name_or_path", None) or type(spec).__name__
    return type(spec).__name__


# ---------------------------------------------------------------------------------------------- files
def save_eval_json(path: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """Write ``result`` as indented JSON atomically (temporary file beside ``path``, fsync, ``os.replace``):
    a crash leaves either the old file or the new one. NumPy scalars/arrays and paths are converted."""
    text = json.dumps(result, indent=2, default=_json_default, allow_nan=True)
    return write_file_atomically(Path(path), text.encode("utf-8"))


def results_writer(path: str | os.PathLike) -> str | None:
    """The textenv command that wrote the JSON results file ``path`` (``"textenv eval"``, ``"textenv pipeline"``,
    ``"textenv train"``), or ``None`` when it is not a textenv results file (or cannot be read as one).

    Files carry a ``"command"`` key; files of earlier versions are recognised by their keys.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    command = data.get("command")
    if isinstance(command, str) and command.startswith("textenv "):
        return command
    if {"rm_pair_accuracy", "stages", "settings"} <= set(data):
        return "textenv pipeline"
    if {"gold_reward", "kl", "settings", "samples"} <= set(data):
        return "textenv eval"
    return None


def lens_page_writer(path: str | os.PathLike) -> str | None:
    """``"textenv eval"`` when ``path`` is an HTML page :func:`save_lens_page` wrote (its ``<meta name="generator">``
    in the first kilobytes), else ``None``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    return "textenv eval" if f'<meta name="generator" content="{HTML_GENERATOR}">'.encode() in head else None


def check_results_path(path: str | os.PathLike, overwrite: bool = False, flag: str = "--output",
                       writer_of: Callable[[Path], str | None] = results_writer, example: str = "eval.json") -> None:
    """Refuse (:class:`InputError`, naming ``flag``) to write results to ``path`` when it is a directory, lies under
    a file, is a file textenv did not write (never replaced), or holds textenv results and ``overwrite`` is off.
    ``writer_of``: which textenv command wrote an existing file (``None``: not textenv); default: a results JSON
    (:func:`lens_page_writer` for an HTML page); ``example``: the file name suggested for a directory."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path} is a directory; give a file name such as {path / example}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{flag} {path}: {parent} is a file, not a directory")
            break
    if not path.exists():
        return
    writer = writer_of(path)
    if writer is None:
        raise InputError(f"{flag} {path} exists and was not written by textenv; textenv never replaces your files: "
                         f"choose another {flag}")
    if not overwrite:
        raise InputError(f"{flag} {path} holds results of `{writer}`; pass --overwrite to replace them or choose "
                         f"another {flag}")


def save_lens_page(path: str | os.PathLike, result: Mapping[str, Any], title: str = "textenv eval") -> Path:
    """Write the HTML page of an :func:`evaluate_policy` result run with ``lens_episodes`` (its ``lens``): a summary
    (mean gold reward, KL, perplexity...) on top, then each episode with its tokens coloured by KL_t
    (:func:`textenv.agents.lens.html_page`). Self-contained, written atomically like :func:`save_eval_json`."""
    episodes = [EpisodeLens(**episode) for episode in result.get("lens", [])]
    settings = result.get("settings", {})
    summary = {name: result[key] for name, key in (("checkpoint", "checkpoint"), ("agent", "agent"),
                                                   ("trained tokens", "num_timesteps")) if result.get(key) is not None}
    summary.update({
        "policy": settings.get("policy"), "reference (π_ref)": settings.get("reference"),
        "gold reward model": settings.get("gold"),
        "mean gold reward": f"{result['gold_reward']:.4g} ± {result['gold_reward_std']:.3g} (std)",
        "mean KL(π_θ‖π_ref)": f"{result['kl']:.4g} ± {result['kl_std']:.3g} nats per sequence (k1)",
    })
    if result.get("objective") is not None:
        summary["gold − β·KL (the run's objective)"] = result["objective"]
    if result.get("proxy_reward") is not None:
        summary["mean proxy reward"] = result["proxy_reward"]
    summary.update({"perplexity under π_ref": result["perplexity"], "distinct-1 / distinct-2":
                    f"{result['distinct_1']:.3g} / {result['distinct_2']:.3g}", "mean length (tokens)": result["length"],
                    "samples": f"{result['num_samples']} ({len(episodes)} shown)",
                    "temperature, seed": f"{settings.get('temperature')}, {settings.get('seed')}"})
    return write_file_atomically(Path(path), html_page(episodes, summary, title).encode("utf-8"))


def load_eval_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_eval_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# ---------------------------------------------------------------------------------------------- plots
def plot_reward_kl_frontier(
    results_by_beta: Mapping[Any, Mapping[str, Any] | Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    reward_key: str = "gold_reward",
    title: str = "Reward–KL frontier",
) -> Path:
    """Reward against KL(π‖π_ref), one labelled series per β (DiscoPOP Fig. 5 style); writes a PNG.

    Args:
        results_by_beta: ``{β: result}`` or ``{β: [result per checkpoint, ...]}`` of :func:`evaluate_policy`
            results (any mapping with ``"kl"`` and ``reward_key``). Numeric keys are labelled ``β = key``,
            others (e.g. ``"dpo β=0.1"``) as given. A series with several checkpoints is joined in order.
        path: the PNG file to write (atomically).
        reward_key: which reward to plot (``"gold_reward"`` or ``"proxy_reward"``).
    """
    if not results_by_beta:
        raise ValueError("results_by_beta is empty: give {beta: evaluate_policy(...) result(s)}")
    figure = new_figure()
    axes = figure.subplots()
    numeric = sorted(k for k in results_by_beta if isinstance(k, (int, float)))  # βs in order, then named series
    keys = numeric + [k for k in results_by_beta if not isinstance(k, (int, float))]
    for key in keys:
        series = results_by_beta[key]
        series = [series] if isinstance(series, Mapping) else list(series)
        kl = [_value(r, "kl", key) for r in series]
        reward = [_value(r, reward_key, key) for r in series]
        label = f"β = {key:g}" if isinstance(key, (int, float)) else str(key)
        axes.plot(kl, reward, marker="o", label=label)
    axes.set_xlabel("KL(π‖π_ref)  [nats / sequence]")
    axes.set_ylabel(reward_key.replace("_", " "))
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def plot_proxy_vs_gold(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "Proxy vs gold reward"
) -> Path:
    """Proxy and gold reward against KL over a run's checkpoints (in order); writes a PNG.

    The two rewards live on different scales, so each has its own y-axis (gold left, proxy right).
    Over-optimisation shows as the proxy still rising while the gold reward flattens or falls.
    ``history``: :func:`evaluate_policy` results with a proxy (``"kl"``, ``"gold_reward"``, ``"proxy_reward"``);
    a ``"num_timesteps"`` key, if present, labels the points.
    """
    if not history:
        raise ValueError("history is empty: give a list of evaluate_policy(..., proxy=...) results")
    kl = [_value(r, "kl", i) for i, r in enumerate(history)]
    gold = [_value(r, "gold_reward", i) for i, r in enumerate(history)]
    proxy = [_value(r, "proxy_reward", i) for i, r in enumerate(history)]
    figure = new_figure()
    gold_axes = figure.subplots()
    proxy_axes = gold_axes.twinx()
    gold_axes.plot(kl, gold, marker="o", color="tab:blue", label="gold")
    proxy_axes.plot(kl, proxy, marker="s", color="tab:red", label="proxy")
    for x, y, r in zip(kl, gold, history):
        if r.get("num_timesteps") is not None:
            gold_axes.annotate(str(r["num_timesteps"]), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    gold_axes.set_xlabel("KL(π‖π_ref)  [nats / sequence]")
    gold_axes.set_ylabel("gold reward", color="tab:blue")
    proxy_axes.set_ylabel("proxy reward", color="tab:red")
    gold_axes.set_title(title)
    gold_axes.grid(alpha=0.3)
    handles = gold_axes.get_lines()[:1] + proxy_axes.get_lines()[:1]
    figure.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncols=2)  # clear of both
    return save_figure(figure, path)


def _value(result: Mapping[str, Any], key: str, where: Any) -> float:
    value = result.get(key) if isinstance(result, Mapping) else None
    if value is None:
        raise ValueError(
            f"result {where!r} has no {key!r}; pass evaluate_policy results (with proxy= for proxy_reward)"
        )
    return float(value)


def new_figure() -> Any:
    """A pyplot-free matplotlib Figure (Agg canvas): no global backend switch, safe in threads and notebooks."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'textenv[plot]'") from err
    return Figure(figsize=(6.4, 4.8), layout="constrained")


def save_figure(figure: Any, path: str | os.PathLike) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically (a crash leaves the old file or the new one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return write_file_atomically(Path(path), buffer.getvalue())
