"""The per-token lens: what the policy did at each token of a few episodes, as TensorBoard summaries and an HTML page.

An episode is a prompt x and the tokens y_1..y_T the policy sampled. For every token the lens shows

* log π_θ(y_t|s_t): the policy's log-probability of the token when it was sampled (nats);
* log π_ref(y_t|s_t): the reference's (recomputed by one forward of the reference over the shown episodes only);
* KL_t: the per-token KL estimate the env charged (its ``kl_estimator``; k1 = log π_θ − log π_ref), so the reward
  of step t is r_t = −β·KL_t and the last step adds the reward model's score (InstructGPT eq. 2);
* what the agent computed from it, where it has it: PPO's per-token advantage Â_t and value V(s_t); the
  per-episode advantage A_i of REINFORCE, ReMax, RLOO and GRPO.

TensorBoard tags (written every ``lens_every`` iterations by :meth:`textenv.agents.base.Agent.log_lens`, rank 0's
episodes under torchrun; docs/lens.md says how to read them): ``lens/episodes`` (text: one Markdown table per
shown episode), histograms ``lens/returns``, ``lens/rm_scores``, ``lens/lengths``, ``lens/token_kl`` and one per
agent extra (``lens/advantage``, ``lens/value``).

The functions are pure (a rollout and arrays in, text and arrays out) except :func:`reference_logprobs` (one
no-grad forward of the reference) and :func:`write_lens` (the writer's calls); none draws a random number, so a run
is bit-identical with the lens on or off.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from textenv.rollout import Rollout
from textenv.scoring import score_rollout

#: Prefix of every TensorBoard tag the lens writes.
PREFIX = "lens"
#: Episodes shown per lens summary (evenly spread over the batch: with groups of K, different prompts).
EPISODES_SHOWN = 3
#: ``<meta name="generator">`` of the HTML page: how textenv recognises a page it wrote (and may replace).
HTML_GENERATOR = "textenv lens"


@dataclass
class EpisodeLens:
    """One episode seen token by token. T = its number of completion tokens.

    tokens: the text of each token ``(T,)`` (decoded one by one); logprobs, kl: ``(T,)`` log π_θ and KL_t (nats);
    ref_logprobs: ``(T,)`` log π_ref, ``None`` without a reference (β = 0); columns: the agent's per-token numbers
    by name, each ``(T,)``; summary: per-episode numbers by name (score, kl = Σ_t KL_t, length, return, the
    agent's per-episode numbers). Arrays may be lists (a JSON round trip).
    """

    index: int
    prompt: str
    completion: str
    tokens: list[str]
    logprobs: Sequence[float]
    kl: Sequence[float]
    ref_logprobs: Sequence[float] | None = None
    columns: dict[str, Sequence[float]] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (arrays as lists of floats); ``EpisodeLens(**d)`` rebuilds it."""
        data = dataclasses.asdict(self)
        data.update(logprobs=_float_list(self.logprobs), kl=_float_list(self.kl),
                    ref_logprobs=None if self.ref_logprobs is None else _float_list(self.ref_logprobs),
                    columns={k: _float_list(v) for k, v in self.columns.items()},
                    summary={k: float(v) for k, v in self.summary.items()})
        return data


# ---------------------------------------------------------------------------------------------- from a rollout
def shown_rows(batch_size: int, n: int = EPISODES_SHOWN) -> list[int]:
    """``min(n, batch_size)`` row indices spread evenly over ``0 .. batch_size − 1`` (first and last included); no
    random draw."""
    n = min(n, batch_size)
    if n <= 1:
        return list(range(n))
    return sorted({i * (batch_size - 1) // (n - 1) for i in range(n)})


@torch.no_grad()
def reference_logprobs(reference: torch.nn.Module | None, rollout: Rollout, rows: Sequence[int]) -> torch.Tensor | None:
    """log π_ref(y_t|s_t) ``(len(rows), T)`` of the rollout's episodes ``rows`` (0 where not taken), by one no-grad
    forward of ``reference`` over those episodes; ``None`` without a reference."""
    if reference is None or not len(rows):
        return None
    index = torch.as_tensor(list(rows), dtype=torch.long, device=rollout.action_mask.device)
    return score_rollout(reference, rollout, index).logprobs.float()


def episode_lenses(
    rollout: Rollout,
    tokenizer: Any,
    rows: Sequence[int],
    ref_logprobs: torch.Tensor | np.ndarray | None = None,
    extras: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    with_return: bool = True,
) -> list[EpisodeLens]:
    """The episodes ``rows`` of ``rollout`` token by token.

    ``ref_logprobs``: ``(len(rows), T)`` log π_ref aligned with ``rows`` (:func:`reference_logprobs`), or ``None``.
    ``extras``: the agent's numbers for the whole batch by name: per token ``(B, T)`` (a column) or per episode
    ``(B,)`` (a summary entry). ``with_return``: include the env's return R (training; an evaluation env's
    return is not the training objective)."""
    extras = {name: _numpy(value) for name, value in (extras or {}).items()}
    batch, steps = rollout.action_mask.shape
    for name, value in extras.items():
        if value.shape not in ((batch,), (batch, steps)):
            raise ValueError(f"lens extra {name!r} has shape {value.shape}; expected ({batch},) or ({batch}, {steps})")
    mask, logprobs, kl = (_numpy(t) for t in (rollout.action_mask, rollout.logprobs, rollout.kl))
    actions = _numpy(rollout.actions)
    reference = None if ref_logprobs is None else _numpy(ref_logprobs)
    episodes = []
    for position, row in enumerate(rows):
        taken = mask[row] > 0
        summary = {"score": rollout.rm_score[row], "KL": rollout.episode_kl[row], "length": float(taken.sum())}
        if with_return:
            summary["return"] = rollout.returns[row]
        summary.update({name: value[row] for name, value in extras.items() if value.ndim == 1})
        episodes.append(EpisodeLens(
            index=int(row), prompt=rollout.prompts[row], completion=rollout.texts[row],
            tokens=[tokenizer.decode([int(token)]) for token in actions[row][taken]],
            logprobs=logprobs[row][taken], kl=kl[row][taken],
            ref_logprobs=None if reference is None else reference[position][taken],
            columns={name: value[row][taken] for name, value in extras.items() if value.ndim == 2},
            summary={name: float(value) for name, value in summary.items()},
        ))
    return episodes


def lens_histograms(rollout: Rollout, extras: Mapping[str, torch.Tensor | np.ndarray] | None = None
                    ) -> dict[str, np.ndarray]:
    """The batch's distributions by TensorBoard tag: returns, RM scores, lengths (tokens) ``(B,)``; KL_t of every
    taken token; each extra over its episodes or taken tokens. Non-finite values are left out."""
    mask = _numpy(rollout.action_mask) > 0
    values = {
        f"{PREFIX}/returns": np.asarray(rollout.returns, dtype=np.float64),
        f"{PREFIX}/rm_scores": np.asarray(rollout.rm_score, dtype=np.float64),
        f"{PREFIX}/lengths": mask.sum(axis=1).astype(np.float64),
        f"{PREFIX}/token_kl": _numpy(rollout.kl)[mask],
    }
    for name, value in (extras or {}).items():
        value = _numpy(value)
        values[f"{PREFIX}/{name}"] = value[mask] if value.ndim == 2 else value
    return {tag: v[np.isfinite(v)] for tag, v in values.items()}


def write_lens(writer: Any, rollout: Rollout, tokenizer: Any, reference: torch.nn.Module | None,
               extras: Mapping[str, torch.Tensor | np.ndarray], step: int, kl_coef: float | None = None) -> None:
    """Write the lens of ``rollout`` to the TensorBoard ``writer`` at ``step``: ``lens/episodes`` (the
    :data:`EPISODES_SHOWN` episodes of :func:`shown_rows` as Markdown tables) and the :func:`lens_histograms`."""
    rows = shown_rows(len(rollout.prompts))
    episodes = episode_lenses(rollout, tokenizer, rows, reference_logprobs(reference, rollout, rows), extras)
    beta = rollout.kl_coef if kl_coef is None else kl_coef
    header = (f"{len(episodes)} of {len(rollout.prompts)} episodes; β = {beta:.4g}; return = score − β·Σ KL_t. "
              "Token: ␣ is a space, ↵ a newline.\n\n")
    writer.add_text(f"{PREFIX}/episodes", header + "\n\n".join(markdown_episode(e) for e in episodes), step)
    for tag, values in lens_histograms(rollout, extras).items():
        if values.size:
            writer.add_histogram(tag, values, step)


# ---------------------------------------------------------------------------------------------- Markdown
_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_{}[]()#+-.!|~"})


#: Spaces, newlines, tabs and the other control characters as visible symbols (a random model emits them too).
_CONTROLS = {"\n": "↵", "\t": "⇥", "\x7f": "␡", **{chr(c): chr(0x2400 + c) for c in range(32) if chr(c) not in "\n\t"}}
_VISIBLE = str.maketrans({" ": "␣", **_CONTROLS})
_VISIBLE_CONTROLS = str.maketrans(_CONTROLS)


def visible_token(text: str) -> str:
    """A token's text with its boundaries visible: spaces as ␣, newlines as ↵, tabs as ⇥, other control
    characters as their Unicode control pictures (␍, ␚...)."""
    return text.translate(_VISIBLE)


def markdown_text(text: str) -> str:
    """``text`` shown literally inside Markdown (TensorBoard's text plugin): HTML and Markdown syntax escaped."""
    text = html.escape(text, quote=False).translate(_VISIBLE_CONTROLS)
    return text.translate(_MARKDOWN_SPECIAL)


def markdown_episode(episode: EpisodeLens) -> str:
    """A heading line (per-episode numbers, prompt, completion) and a table: t, token, log π, log π_ref, KL_t and
    the agent's per-token columns."""
    summary = " · ".join(f"{name} {value:.4g}" for name, value in episode.summary.items())
    head = (f"**episode {episode.index}** · {markdown_text(summary)}\n\n"
            f"prompt: {markdown_text(episode.prompt)}  \ncompletion: {markdown_text(episode.completion)}\n\n")
    names = ["t", "token", "log π", "log π_ref", "KL_t", *episode.columns]
    lines = ["| " + " | ".join(markdown_text(n) for n in names) + " |",
             "|--:|:--|" + "--:|" * (len(names) - 2)]
    for t, row in enumerate(_token_rows(episode)):
        cells = [str(t), markdown_text(visible_token(row[0])), *row[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def _token_rows(episode: EpisodeLens) -> list[list[str]]:
    """Per token: its text and the formatted numbers (log π, log π_ref or "–", KL_t, then the columns)."""
    columns = [np.asarray(episode.logprobs, dtype=np.float64),
               None if episode.ref_logprobs is None else np.asarray(episode.ref_logprobs, dtype=np.float64),
               np.asarray(episode.kl, dtype=np.float64),
               *(np.asarray(v, dtype=np.float64) for v in episode.columns.values())]
    return [[token, *("–" if c is None else f"{c[t]:.3f}" for c in columns)] for t, token in enumerate(episode.tokens)]


# ---------------------------------------------------------------------------------------------- HTML
_PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.15em 0.5em; text-align: right; font-variant-numeric: tabular-nums; }
td.token, th.token, .summary th, .summary td { text-align: left; }
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }
.prompt { color: #777; }
.tok { border-right: 1px solid #bbb; padding: 0.1em 0; }
.legend-bar { display: inline-block; width: 16em; height: 1em; vertical-align: middle; border: 1px solid #999;
  background: linear-gradient(to right, rgba(40,90,220,0.75), rgba(255,255,255,0), rgba(220,40,40,0.75)); }
section { border-top: 1px solid #ccc; margin-top: 1.2em; }
"""


def kl_colour(value: float, scale: float) -> str:
    """CSS background of a token with KL_t = ``value``: red for KL_t > 0, blue for KL_t < 0 (k1 can be negative),
    opacity |KL_t| / ``scale`` (clipped at 1, at most 0.75 so the text stays readable)."""
    alpha = 0.75 * min(abs(value) / scale, 1.0) if scale > 0 and np.isfinite(value) else 0.0
    rgb = "220,40,40" if value > 0 else "40,90,220"
    return f"rgba({rgb},{alpha:.3f})"


def colour_scale(episodes: Sequence[EpisodeLens]) -> float:
    """The |KL_t| that gets the full colour: the 98th percentile over the episodes' tokens (one outlier does
    not wash out the rest), at least 1e-6."""
    values = np.concatenate([np.abs(np.asarray(e.kl, dtype=np.float64)) for e in episodes] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    return max(float(np.percentile(values, 98)) if values.size else 0.0, 1e-6)


def html_page(episodes: Sequence[EpisodeLens], summary: Mapping[str, Any], title: str) -> str:
    """One self-contained HTML page (inline CSS, no script): ``summary`` (label → value) on top, a legend of the
    KL colour scale, then every episode with its tokens coloured by KL_t (hover a token for its numbers) and a
    table of the numbers. All text is HTML-escaped."""
    scale = colour_scale(episodes)
    rows = "".join(f"<tr><th>{_escape(label)}</th><td>{_escape(_format(value))}</td></tr>"
                   for label, value in summary.items())
    legend = (f'<p>Token colour: per-token KL_t (nats) <span class="legend-bar"></span> from −{scale:.3g} (blue: '
              f"π_θ less likely than π_ref) through 0 (white) to +{scale:.3g} (red: π_θ more likely), clipped "
              "beyond. Hover a token for its numbers; spaces show as ␣ in the tables.</p>")
    body = "\n".join(_html_episode(e, scale) for e in episodes)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="{HTML_GENERATOR}"><title>{_escape(title)}</title>'
            f"<style>{_PAGE_STYLE}</style></head><body>\n<h1>{_escape(title)}</h1>\n"
            f'<table class="summary">{rows}</table>\n{legend}\n{body}\n</body></html>\n')


def _html_episode(episode: EpisodeLens, scale: float) -> str:
    """One episode: heading with its numbers, the coloured text, and a collapsible table of the numbers."""
    numbers = " · ".join(f"{name} {value:.4g}" for name, value in episode.summary.items())
    names = ["t", "token", "log π", "log π_ref", "KL_t", *episode.columns]
    spans, table = [], []
    for t, row in enumerate(_token_rows(episode)):
        token, values = row[0], row[1:]
        hover = f"{token!r}: " + ", ".join(f"{n} = {v}" for n, v in zip(names[2:], values))
        kl = float(np.asarray(episode.kl, dtype=np.float64)[t])
        shown = token.translate(_VISIBLE_CONTROLS).replace("↵", "↵\n")  # a newline shows and breaks the line
        spans.append(f'<span class="tok" style="background:{kl_colour(kl, scale)}" title="{_escape(hover)}">'
                     f"{_escape(shown)}</span>")
        cells = "".join(f"<td>{_escape(v)}</td>" for v in values)
        table.append(f'<tr><td>{t}</td><td class="token">{_escape(visible_token(token))}</td>{cells}</tr>')
    header = "".join(f'<th{" class=token" if n == "token" else ""}>{_escape(n)}</th>' for n in names)
    return (f"<section><h2>episode {episode.index}</h2><p>{_escape(numbers)}</p>"
            f'<p class="text"><span class="prompt">{_escape(episode.prompt.translate(_VISIBLE_CONTROLS))}</span>{"".join(spans)}</p>'
            f"<details><summary>numbers per token</summary><table><tr>{header}</tr>{''.join(table)}</table>"
            "</details></section>")


def _escape(text: str) -> str:
    return html.escape(str(text), quote=True)


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _float_list(values: Sequence[float] | np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64)]


def _numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    """A float64 (or, for token ids, int64) NumPy copy of a tensor or array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.numpy().astype(np.int64 if not value.is_floating_point() else np.float64)
    value = np.asarray(value)
    return value if value.dtype.kind in "iu" else value.astype(np.float64)
