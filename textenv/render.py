"""The env's render: each row's state of the MDP, as text a person reads (``render_mode="ansi"`` / ``"human"``).

Two parts, so the same screen serves the env, ``textenv play`` and a notebook:

* :func:`row_states` reads a :class:`~textenv.vector_env.TextGenVectorEnv` through its public API only
  (:meth:`episode_tokens`, :meth:`episode_logprobs`, :meth:`token_kl`, :meth:`next_token_logits`,
  :meth:`reference_next_token_logits`, ``row_prompts``, ``finished``) into plain :class:`RowState` values;
* :func:`format_row` / :func:`row_text` (and :func:`format_rows`, :func:`print_rows` for a batch) turn one
  :class:`RowState` into text: pure functions of plain values, no model, no env.

What one row shows (an example on the embedded model, ``render_top_k=3``)::

    [0] t=3/8  prompt: "The food was"
        tokens: ␣really·␣good·.
        a_t = "."  log π_θ = -1.234  log π_ref = -1.301  Σ KL = 0.214 nats
        next    π_θ     π_ref
        ␣The    0.231   0.220
        ...

Tokens are separated by ``·`` and whitespace is made visible (``␣`` space, ``↵`` newline, ``⇥`` tab), so the
boundaries the policy acts on can be seen. On the last step of an episode the row also shows the completion the
reward model scored and the return: r_φ(x, y), the episode's Σ_t KL_t, β and R = r_φ − β·Σ_t KL_t (InstructGPT
eq. 2; with ``kl_penalty="dense"`` the same R is paid spread over the steps). Long rows are shortened: the prompt
keeps its end, the tokens their last ones, each behind ``…``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

#: Between two tokens.
TOKEN_SEPARATOR = "·"
#: Whitespace and control characters made visible inside a token.
VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
#: Where shortened text was cut.
ELLIPSIS = "…"
#: Columns of an ``"ansi"`` render (and of ``"human"`` when stdout is not a terminal).
DEFAULT_WIDTH = 100
#: Longest shown form of one token (longer ones are cut in the middle).
MAX_TOKEN_CHARS = 24
#: Alternating colours of consecutive tokens on a terminal, so that boundaries show without the separator too.
TOKEN_STYLES = ("cyan", "magenta")


@dataclass(frozen=True)
class Candidate:
    """One possible next token: its text, π_θ(token | s_t) and π_ref(token | s_t) (``None`` without a reference)."""

    token: str
    prob: float
    ref_prob: float | None = None


@dataclass(frozen=True)
class Outcome:
    """How an episode ended: the completion y the reward model scored, r_φ(x, y), Σ_t KL_t (nats), the β it paid,
    and whether it ended at EOS (``terminated``) or at the length limit."""

    text: str
    rm_score: float
    episode_kl: float
    kl_coef: float
    terminated: bool = True

    @property
    def episode_return(self) -> float:
        """R = r_φ(x, y) − β · Σ_t KL_t."""
        return self.rm_score - self.kl_coef * self.episode_kl


@dataclass(frozen=True)
class RowState:
    """One row of the env, as plain values (what :func:`format_row` shows).

    Attributes:
        row: the row's index in the batch.
        prompt: the prompt x.
        tokens: the generated tokens y_<t so far, each decoded on its own (raw text, whitespace as is).
        max_new_tokens: the episode's length limit T (``None``: not shown).
        last_logprob: log π_θ(a_{t-1} | s_{t-1}) of the last action, as recorded when it was taken (nats).
        last_ref_logprob: log π_ref of the last action (``None`` without a reference).
        sum_kl: Σ KL_t of the episode so far (nats; ``None`` without a reference, where β = 0 and KL is not paid).
        candidates: the top-k next tokens under π_θ, most likely first (empty once the row has finished).
        finished: whether the episode has ended.
        outcome: the end of the episode (on its last step and until the row restarts), else ``None``.
    """

    row: int
    prompt: str
    tokens: Sequence[str] = ()
    max_new_tokens: int | None = None
    last_logprob: float | None = None
    last_ref_logprob: float | None = None
    sum_kl: float | None = None
    candidates: Sequence[Candidate] = field(default_factory=tuple)
    finished: bool = False
    outcome: Outcome | None = None


# ---------------------------------------------------------------------------------------------- formatting
def visible(token: str, max_chars: int = MAX_TOKEN_CHARS) -> str:
    """``token`` with whitespace made visible (``␣``, ``↵``, ``⇥``), other control characters escaped, and cut in
    the middle to at most ``max_chars`` characters."""
    shown = "".join(VISIBLE_WHITESPACE.get(ch, ch if ch.isprintable() else ch.encode("unicode_escape").decode())
                    for ch in token)
    if len(shown) > max_chars:
        half = (max_chars - 1) // 2
        shown = shown[:half] + ELLIPSIS + shown[len(shown) - (max_chars - 1 - half):]
    return shown or "∅"


def shorten_start(text: str, width: int) -> str:
    """``text`` on one line (newlines shown as ``↵``), keeping its end: ``…`` + the last ``width - 1`` characters
    when it is longer than ``width``."""
    text = text.replace("\r", "").replace("\n", "↵")
    return text if len(text) <= width else ELLIPSIS + text[len(text) - max(width - 1, 0):]


def row_text(state: RowState, width: int = DEFAULT_WIDTH) -> Text:
    """One row's state as styled :class:`rich.text.Text` (several lines, each at most ``width`` columns);
    ``.plain`` is the text without styles (:func:`format_row`). See the module docstring for what it shows."""
    lines = [_header_line(state, width), _tokens_line(state.tokens, width)]
    if state.tokens:
        lines.append(_action_line(state))
    if state.outcome is not None:
        lines.extend(_outcome_lines(state.outcome, width))
    elif not state.finished and state.candidates:
        lines.extend(_candidate_lines(state.candidates, width))
    return Text("\n").join(lines)


def format_row(state: RowState, width: int = DEFAULT_WIDTH) -> str:
    """One row's state as plain text: the prompt, the tokens so far with visible boundaries, the last action with
    log π_θ and log π_ref, the running Σ KL, the top-k next tokens with their π_θ (and π_ref) probabilities, and,
    on the last step, the completion, r_φ, Σ KL, β and the return R = r_φ − β·Σ KL. Lines are at most ``width``
    columns. Pure: takes only plain values, so ``textenv play`` and tests build a :class:`RowState` themselves."""
    return row_text(state, width).plain


def format_rows(states: Sequence[RowState], width: int = DEFAULT_WIDTH) -> str:
    """:func:`format_row` of every row, one block per row, ending with a newline (what ``render()`` returns)."""
    return "\n".join(format_row(state, width) for state in states) + "\n"


def print_rows(states: Sequence[RowState], file: TextIO | None = None) -> None:
    """Print every row (``render_mode="human"``): in colour at the terminal's width when ``file`` (default
    ``sys.stdout``) is a terminal, else the plain text of :func:`format_rows`; then a blank line."""
    file = sys.stdout if file is None else file
    if not file.isatty():
        file.write(format_rows(states) + "\n")  # a blank line between two screens
        file.flush()
        return
    console = Console(file=file, highlight=False)
    for state in states:
        console.print(row_text(state, console.width), soft_wrap=True)
    console.print()


def _header_line(state: RowState, width: int) -> Text:
    steps = f"{len(state.tokens)}" + ("" if state.max_new_tokens is None else f"/{state.max_new_tokens}")
    status = ""
    if state.finished:
        status = " [done]" + ("" if state.outcome is None else
                              " EOS" if state.outcome.terminated else " length limit")
    head = f"[{state.row}] t={steps}{status}  prompt: "
    line = Text(head, style="bold")
    line.append(f'"{shorten_start(state.prompt, max(width - len(head) - 2, 8))}"', style="dim")
    return line


def _tokens_line(tokens: Sequence[str], width: int) -> Text:
    """``    tokens: a·b·c`` keeping the last tokens that fit in ``width`` (``…·`` before them when some are cut)."""
    head = "    tokens: "
    line = Text(head)
    if not tokens:
        line.append("(none yet)", style="dim")
        return line
    shown = [visible(token) for token in tokens]
    room, first, used = width - len(head), len(shown), 0
    while first > 0 and used + len(shown[first - 1]) + 1 <= room - 2:
        first -= 1
        used += len(shown[first]) + 1
    first = min(first, len(shown) - 1)  # always the last token, even alone
    if first > 0:
        line.append(ELLIPSIS + TOKEN_SEPARATOR, style="dim")
    for i in range(first, len(shown)):
        if i > first:
            line.append(TOKEN_SEPARATOR, style="dim")
        line.append(shown[i], style=TOKEN_STYLES[i % 2] + (" bold" if i == len(shown) - 1 else ""))
    return line


def _action_line(state: RowState) -> Text:
    line = Text("    a_t = ")
    line.append(f'"{visible(state.tokens[-1])}"', style="bold")
    if state.last_logprob is not None:
        line.append(f"  log π_θ = {_number(state.last_logprob, 3)}")
    if state.last_ref_logprob is not None:
        line.append(f"  log π_ref = {_number(state.last_ref_logprob, 3)}")
    if state.sum_kl is not None:
        line.append(f"  Σ KL = {_number(state.sum_kl)} nats", style="yellow")
    return line


def _candidate_lines(candidates: Sequence[Candidate], width: int) -> list[Text]:
    """A table: rank, token, π_θ(token | s_t) and, when known, π_ref(token | s_t)."""
    label = f"next (top-{len(candidates)})"
    column = max(len(label) - 3, min(max(len(visible(c.token)) for c in candidates), max(width - 30, 8)))
    with_ref = any(c.ref_prob is not None for c in candidates)
    lines = [Text(f"    {label:<{column + 3}}  {'π_θ':<6}" + ("   π_ref" if with_ref else ""), style="bold")]
    for rank, candidate in enumerate(candidates, start=1):
        line = Text(f"    {rank:>2} ")
        line.append(f"{visible(candidate.token, column):<{column}}", style=TOKEN_STYLES[0])
        line.append(f"  {candidate.prob:.4f}")
        if candidate.ref_prob is not None:
            line.append(f"   {candidate.ref_prob:.4f}")
        lines.append(line)
    return lines


def _number(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals, without the sign of a value that rounds to zero (no ``-0.0000``)."""
    shown = f"{value:.{digits}f}"
    return shown[1:] if shown.startswith("-") and float(shown) == 0 else shown


def _outcome_lines(outcome: Outcome, width: int) -> list[Text]:
    text = Text("    text: ")
    text.append(f'"{shorten_start(outcome.text, max(width - 12, 8))}"')
    score = Text("    ")
    score.append(f"r_φ = {_number(outcome.rm_score)}", style="bold")
    score.append(f"  Σ KL = {_number(outcome.episode_kl)} nats  β = {outcome.kl_coef:.4g}  ", style="yellow")
    score.append(f"R = r − β·KL = {_number(outcome.episode_return)}",
                 style="bold green" if outcome.episode_return >= 0 else "bold red")
    return [text, score]


# ---------------------------------------------------------------------------------------------- from the env
def row_states(env: Any, top_k: int, outcomes: Sequence[Outcome | None]) -> list[RowState]:
    """Every row of a started :class:`~textenv.vector_env.TextGenVectorEnv` as a :class:`RowState`, read through
    the env's public API (no engine internals): the tokens and their recorded log-probs, the running KL, π_θ's
    ``top_k`` next tokens (with π_ref's probabilities of them when the env has a reference) and ``outcomes[row]``,
    the end of each row's last episode (``None`` while it runs). Computes no gradient."""
    import torch  # the env has loaded it already

    with torch.no_grad():
        ref_logits = env.reference_next_token_logits()  # first: a lazy reference catches up in one cached forward
        ids, _ = env.episode_tokens()
        logprob, ref_logprob, generated = env.episode_logprobs()
        sum_kl = env.token_kl().sum(dim=1) if env.reference is not None else None
        finished = env.finished
        probs = torch.softmax(env.next_token_logits().float(), dim=-1)
        top = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
        ref_top = None if ref_logits is None else torch.softmax(ref_logits.float(), dim=-1).gather(1, top.indices)
    decode = env.tokenizer.decode
    states = []
    for row, prompt in enumerate(env.row_prompts):
        columns = generated[row].nonzero().squeeze(1)
        last = int(columns[-1]) if len(columns) else None
        candidates = () if finished[row] else tuple(
            Candidate(decode([int(token)]), float(p), None if ref_top is None else float(ref_top[row, i]))
            for i, (token, p) in enumerate(zip(top.indices[row], top.values[row]))
        )
        states.append(RowState(
            row=row, prompt=prompt, tokens=[decode([int(token)]) for token in ids[row, columns]],
            max_new_tokens=env.max_new_tokens,
            last_logprob=None if last is None else float(logprob[row, last]),
            last_ref_logprob=None if last is None or ref_logprob is None else float(ref_logprob[row, last]),
            sum_kl=None if sum_kl is None else float(sum_kl[row]),
            candidates=candidates, finished=bool(finished[row]), outcome=outcomes[row],
        ))
    return states
