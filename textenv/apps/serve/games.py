"""The games of the Play page: one :class:`~textenv.apps.play.PlaySession` per player, all on one env.

The env (policy, reference, reward model) is built once, on first use, by ``make_env``; every player's episode is a
:class:`PlaySession` on it (a session replays its own tokens when another player moved the env). Every method of
:class:`GameTable` runs on the model worker's one thread (:mod:`textenv.apps.serve.model_worker`), so the models
are never called from two threads at once and the table needs no lock. At most :data:`MAX_GAMES` games are kept;
a new one forgets the least recently played.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from textenv.apps.serve.requests import Refused
from textenv.validation import InputError

#: Games kept at once (the least recently played is forgotten first).
MAX_GAMES = 256
#: The moves of the Play page and the :class:`PlaySession` method each one calls.
MOVES = ("choose", "type", "sample", "undo", "end", "state")
#: Who the player may prefer at the end of an episode.
PREFERENCES = ("player", "policy")


class GameTable:
    """The players' games: ``new`` starts one, ``move`` plays in one; both return the game's view (a dict of JSON
    values: the session's ``state()``, and its ``result()`` once the episode is over).

    Args:
        make_env: builds the env all games share (called once, on the worker thread).
        top_k: candidates shown at each state.
        seed: base seed; game n is seeded with ``seed + n`` (its samples and the policy's own completion).
    """

    def __init__(self, make_env: Callable[[], Any], top_k: int = 10, seed: int = 0) -> None:
        self.make_env = make_env
        self.top_k = top_k
        self.seed = seed
        self._env: Any = None
        self._games: OrderedDict[str, Any] = OrderedDict()
        self._started = 0
        self._preferred: set[tuple[str, int]] = set()  # (game, episode) whose preference is saved
        self.load_seconds: float | None = None

    @property
    def env(self) -> Any:
        """The shared env, built on first use."""
        if self._env is None:
            start = time.perf_counter()
            try:
                self._env = self.make_env()
            except (InputError, OSError) as err:  # a model or reward model that cannot load: said on every request
                raise Refused(503, f"the Play page's model could not be loaded: {' '.join(str(err).split())}") from None
            self.load_seconds = time.perf_counter() - start
        return self._env

    def new(self, prompt: str | None) -> dict[str, Any]:
        """Start a game on ``prompt`` (``None``: the env draws one of its prompts); returns its view with ``game``,
        the id the page sends with every move."""
        from textenv.apps.play import PlaySession

        env = self.env
        try:
            session = PlaySession(env, prompt=prompt, top_k=self.top_k, seed=(self.seed + self._started) % 2**32)
        except InputError as err:
            raise Refused(400, str(err)) from None
        self._started += 1
        game = secrets.token_urlsafe(12)
        self._games[game] = session
        while len(self._games) > MAX_GAMES:
            self._games.popitem(last=False)
        return self._view(game, session)

    def move(self, game: str, move: str, token: int | None = None, text: str | None = None) -> dict[str, Any]:
        """Play ``move`` in ``game``: ``"choose"`` token id ``token``, ``"type"`` ``text``, ``"sample"`` (the policy
        picks), ``"undo"``, ``"end"`` (EOS now) or ``"state"`` (no move); returns the new view. A move the game
        refuses (the episode is over, nothing to undo...) is a 409 with the game's message."""
        session = self._games.get(game)
        if session is None:
            raise Refused(404, "unknown game (the server restarted or forgot it): start a new game")
        self._games.move_to_end(game)
        try:
            if move == "choose":
                session.choose(token)
            elif move == "type":
                session.type_text(text)
            elif move == "sample":
                session.sample()
            elif move == "undo":
                session.undo()
            elif move == "end":
                session.end()
        except InputError as err:
            raise Refused(409, str(err)) from None
        return self._view(game, session)

    def preference(self, game: str, prefer: str, labeller: str | None) -> dict[str, Any] | None:
        """The player's choice between their completion and the policy's (``prefer``: ``"player"`` or ``"policy"``)
        as a preference row (``PlaySession.preference``, the pair format ``train-rm`` reads; ``meta`` gains the
        player's name), or ``None`` when both completions are the same text. Once per episode (409 after)."""
        session = self._games.get(game)
        if session is None:
            raise Refused(404, "unknown game (the server restarted or forgot it): start a new game")
        if (game, session.episode) in self._preferred:
            raise Refused(409, "this episode's preference is saved already")
        try:
            row = session.preference(prefer)
        except InputError as err:
            raise Refused(409, str(err)) from None
        self._preferred.add((game, session.episode))
        if row is None:
            return None
        saved = row.to_json()
        if labeller:
            saved["meta"] = {**saved.get("meta", {}), "labeller": labeller}
        return saved

    def forget_preference(self, game: str) -> None:
        """Allow the preference of ``game``'s episode again (its row could not be written)."""
        session = self._games.get(game)
        if session is not None:
            self._preferred.discard((game, session.episode))

    def _view(self, game: str, session: Any) -> dict[str, Any]:
        view = {"game": game, "state": session.state()}
        if session.done:
            view["result"] = session.result()
        return view

    def __len__(self) -> int:
        return len(self._games)
