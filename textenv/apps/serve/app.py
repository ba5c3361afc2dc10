"""The web app of ``textenv serve`` (Starlette): three pages, their static files, and a JSON API.

Pages: ``/`` (start: your name, links), ``/label`` (rank completions), ``/play`` (be the policy). Static files
come only from the package's ``static/`` folder, from a table of its files made at start-up: a request names a
file of that table or gets 404, so no path can leave the folder. The API (``POST``, JSON bodies checked field by
field in :mod:`textenv.apps.serve.requests`):

=============================  =========================================================================
``GET  /api/info``             what the server offers (label, play, items, top-k...)
``POST /api/label/session``    ``{name}`` → ``{session}``: a labelling session
``POST /api/label/next``       ``{session}`` → the item to rank now (leased to the session), or ``item: null``
``POST /api/label/submit``     ``{session, item, order}``: save a ranking (indices best first); 409 if taken
``POST /api/label/skip``       ``{session, item}``: leave it for someone else
``POST /api/label/back``       ``{session, steps}``: an item saved or skipped earlier
``POST /api/label/renew``      ``{session, item}``: keep the lease while the item is on screen
``POST /api/play/new``         ``{prompt?}`` → a new game and its state
``POST /api/play/move``        ``{game, move, token?, text?}`` → the game's new state (and result at the end)
``POST /api/play/prefer``      ``{game, prefer, name?}``: which completion is better, appended to ``--output``
=============================  =========================================================================

Every request passes the guard first (:class:`Guard`): the access token when one is set (cookie, ``Authorization:
Bearer``, or ``?token=`` once, which sets the cookie), the ``Host`` header when the server is bound to loopback
(a web page elsewhere cannot reach it by DNS rebinding), and security headers on every answer (a Content Security
Policy that allows only the app's own scripts: text from the model is data, inserted with ``textContent``).
Labelling runs on the server's thread pool and never waits for the model; games run on the one model worker,
and a full queue is answered 503 at once.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from textenv.apps.serve import requests as fields
from textenv.apps.serve.games import MOVES, PREFERENCES, GameTable
from textenv.apps.serve.labelling import LabelDesk
from textenv.apps.serve.model_worker import ModelBusy, ModelWorker
from textenv.apps.serve.requests import MAX_BODY_BYTES, MAX_NAME_CHARS, MAX_TEXT_CHARS, Refused

STATIC = Path(__file__).resolve().parent / "static"
#: Content types of the static files (any other file of the folder is not served).
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
PAGES = {"/": "index.html", "/label": "label.html", "/play": "play.html"}
COOKIE = "textenv_token"
SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
#: Host names a loopback-bound server answers to (any port).
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}


@dataclass
class ServeOptions:
    """What the app needs besides its parts: ``token`` (``None``: no token asked), ``check_host`` (answer only
    ``Host: 127.0.0.1 / localhost / [::1]`` or another loopback IP, for a loopback-bound server), ``model_timeout`` (seconds a game move
    may wait for the model), and figures for ``/api/info``."""

    token: str | None = None
    check_host: bool = True
    model_timeout: float = 120.0
    info: dict[str, Any] | None = None


def static_files() -> dict[str, Path]:
    """File name → path of every servable file of the package's ``static/`` folder (no sub-folders)."""
    return {path.name: path for path in sorted(STATIC.iterdir())
            if path.is_file() and path.suffix in CONTENT_TYPES}


def is_loopback_host(name: str) -> bool:
    """Whether the Host header's name (port removed) is this machine: ``localhost`` or a loopback IP literal
    (``127.x.x.x``, ``[::1]`` in any spelling), which DNS cannot rebind."""
    if name.lower() in LOOPBACK_NAMES:
        return True
    bracketed = name.startswith("[") and name.endswith("]")
    try:
        address = ipaddress.ip_address(name[1:-1] if bracketed else name)
    except ValueError:
        return False
    return address.is_loopback and (address.version == 6) == bracketed


class Guard:
    """ASGI middleware: Host check, access token, security headers (see the module docstring)."""

    def __init__(self, app: ASGIApp, options: ServeOptions) -> None:
        self.app = app
        self.options = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is None and self.options.token is not None and request.query_params.get("token") is not None:
            refusal = self._accept_token_link(request)
        if refusal is not None:
            await self._secured(refusal)(scope, receive, send)
            return

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_secured)

    def _refusal(self, request: Request) -> Response | None:
        """A response refusing ``request`` (bad Host, missing or wrong token), or ``None`` to let it through."""
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if self.options.check_host and not is_loopback_host(name):
            return PlainTextResponse(f"unexpected Host {host[:80]!r}: this server answers only on 127.0.0.1", 400)
        token = self.options.token
        if token is None or self._token_given(request, token):
            return None
        message = ("this textenv serve needs its access token: open the address it printed when it started "
                   "(http://HOST:PORT/?token=...)")
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, 401)
        return PlainTextResponse(message, 401)

    @staticmethod
    def _token_given(request: Request, token: str) -> bool:
        auth = request.headers.get("authorization", "")
        candidates = [request.cookies.get(COOKIE, ""), request.query_params.get("token", ""),
                      auth[7:] if auth.lower().startswith("bearer ") else ""]
        return any(hmac.compare_digest(c.encode(), token.encode()) for c in candidates if c)

    def _accept_token_link(self, request: Request) -> Response | None:
        """``GET /page?token=T`` with the right token: set the cookie and redirect to the page without the token
        (so it stays out of the address bar and history). API calls with ``?token=`` just pass."""
        if request.method != "GET" or request.url.path.startswith("/api/"):
            return None
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        path = "/" + request.url.path.lstrip("/\\")  # "//host" would be a redirect to another site
        target = path + ("?" + urlencode(rest) if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, self.options.token or "", httponly=True, samesite="strict", path="/")
        return response

    @staticmethod
    def _secured(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response


# ---------------------------------------------------------------------------------------------- request bodies
async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object: ``Content-Type: application/json`` (415 otherwise; a cross-site form cannot send
    it), at most :data:`MAX_BODY_BYTES` (413), valid UTF-8 JSON holding an object (400)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise Refused(415, "send the body as JSON with Content-Type: application/json")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise Refused(413, f"request body too large: at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Refused(413, f"request body too large: at most {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused(400, "the body is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise Refused(400, "the body must be a JSON object")
    return value


Handler = Callable[[Request], Awaitable[Any]]


def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A JSON endpoint: the handler's value as JSON; :class:`Refused` as ``{"error": message}`` with its status."""

    async def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(await handler(request))
        except Refused as refused:
            return JSONResponse({"error": str(refused)}, status_code=refused.status)

    endpoint.__name__ = handler.__name__
    return endpoint


# ---------------------------------------------------------------------------------------------- labelling
def label_routes(desk: LabelDesk | None) -> list[Route]:
    """The ``/api/label/*`` endpoints on ``desk`` (each answers 404 with a hint when no ``--data`` was given).
    The desk's methods take its lock and may fsync, so they run on the thread pool, never on the event loop."""

    def the_desk() -> LabelDesk:
        if desk is None:
            raise Refused(404, "nothing to label: start textenv serve with --data FILE --output FILE")
        return desk

    async def session(request: Request) -> Any:
        body = await read_json(request)
        fields.check_keys(body, {"name"})
        opened = await run_in_threadpool(the_desk().open_session, fields.labeller_name(body))
        return {"session": opened.id, "name": opened.name}

    async def next_item(request: Request) -> Any:
        body = await read_json(request)
        fields.check_keys(body, {"session"})
        return await run_in_threadpool(the_desk().next_item, fields.token_id(body, "session"))

    async def submit(request: Request) -> Any:
        body = await read_json(request)
        fields.check_keys(body, {"session", "item", "order"})
        order = fields.index_list(body, "order", 9)
        return await run_in_threadpool(the_desk().submit, fields.token_id(body, "session"),
                                       fields.item_id_field(body), order)

    async def skip(request: Request) -> Any:
        body = await read_json(request)
        fields.check_keys(body, {"session", "item"})
        return await run_in_threadpool(the_desk().skip, fields.token_id(body, "session"), fields.item_id_field(body))

    async def renew(request: Request) -> Any:
        body = await read_json(request)
        fields.check_keys(body, {"session", "item"})
        return await run_in_threadpool(the_desk().renew, fields.token_id(body, "session"), fields.item_id_field(body))

    async def back(request: Request) -> Any:
        body = await read_json(request)
        fields.check_keys(body, {"session", "steps"})
        steps = fields.integer(body, "steps", 1, 100_000)
        return await run_in_threadpool(the_desk().back, fields.token_id(body, "session"), steps)

    return [Route(f"/api/label/{name}", api(handler), methods=["POST"])
            for name, handler in (("session", session), ("next", next_item), ("submit", submit), ("skip", skip),
                                  ("renew", renew), ("back", back))]


# ---------------------------------------------------------------------------------------------- play
def play_routes(games: GameTable | None, worker: ModelWorker | None, timeout: float,
                desk: LabelDesk | None = None) -> list[Route]:
    """``/api/play/new``, ``/api/play/move`` and ``/api/play/prefer`` (the player's choice between the two
    completions, appended to ``desk``'s output as a preference pair): each game call is one job of the model
    worker; a full queue is 503 at once, a job that waits longer than ``timeout`` seconds is 504 (and dropped if
    it has not started)."""

    def the_games() -> GameTable:
        if games is None or worker is None:
            raise Refused(404, "the Play page is off on this server (started with --no-play)")
        return games

    async def on_worker(function: Callable[..., Any], *args: Any) -> Any:
        try:
            future = worker.submit(function, *args)  # type: ignore[union-attr]
        except ModelBusy as busy:
            raise Refused(503, str(busy)) from None
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise Refused(504, f"the model did not answer within {timeout:g} s; try again") from None

    async def new(request: Request) -> Any:
        table = the_games()
        body = await read_json(request)
        fields.check_keys(body, set(), {"prompt"})
        prompt = None if body.get("prompt") in (None, "") else fields.text(body, "prompt", MAX_TEXT_CHARS)
        return await on_worker(table.new, prompt)

    async def move(request: Request) -> Any:
        table = the_games()
        body = await read_json(request)
        fields.check_keys(body, {"game", "move"}, {"token", "text"})
        game, kind = fields.token_id(body, "game"), fields.choice(body, "move", MOVES)
        token = fields.integer(body, "token", 0, 10_000_000) if kind == "choose" else None
        text = fields.text(body, "text", MAX_TEXT_CHARS, allow_empty=False) if kind == "type" else None
        return await on_worker(table.move, game, kind, token, text)

    async def prefer(request: Request) -> Any:
        table = the_games()
        body = await read_json(request)
        fields.check_keys(body, {"game", "prefer"}, {"name"})
        if desk is None:
            raise Refused(404, "preferences are not saved on this server: start textenv serve with --output FILE")
        game, prefer = fields.token_id(body, "game"), fields.choice(body, "prefer", PREFERENCES)
        name = fields.labeller_name(body) if body.get("name") not in (None, "") else None
        row = await on_worker(table.preference, game, prefer, name)
        if row is None:
            return {"saved": False, "reason": "both completions are the same text: nothing to compare"}
        try:
            await run_in_threadpool(desk.append_row, row)
        except BaseException:
            worker.submit(table.forget_preference, game)  # type: ignore[union-attr]
            raise
        return {"saved": True, "row": row}

    return [Route("/api/play/new", api(new), methods=["POST"]), Route("/api/play/move", api(move), methods=["POST"]),
            Route("/api/play/prefer", api(prefer), methods=["POST"])]


# ---------------------------------------------------------------------------------------------- the app
def page_and_static_routes() -> list[Route]:
    """The three pages and ``/static/NAME`` (only files of the start-up table)."""
    files = static_files()

    def file_response(name: str) -> Response:
        path = files.get(name)
        if path is None:
            return PlainTextResponse("not found", 404)
        return Response(path.read_bytes(), media_type=CONTENT_TYPES[path.suffix])

    async def page(request: Request) -> Response:
        return file_response(PAGES[request.url.path])

    async def static(request: Request) -> Response:
        return file_response(request.path_params["name"])

    return [*(Route(path, page, methods=["GET"]) for path in PAGES), Route("/static/{name}", static, methods=["GET"])]


def build_app(desk: LabelDesk | None, games: GameTable | None, worker: ModelWorker | None,
              options: ServeOptions) -> Starlette:
    """The app: pages, static files, the label API on ``desk`` and the play API on ``games`` through ``worker``
    (either may be ``None``: that page is off), all behind the :class:`Guard`."""
    info = dict(options.info or {})
    info.update(label=desk is not None, play=games is not None, preferences=desk is not None and games is not None)

    async def labelling_summary(request: Request) -> Response:
        summary = await run_in_threadpool(desk.summary) if desk is not None else None
        return JSONResponse({**info, "max_name_chars": MAX_NAME_CHARS, "max_text_chars": MAX_TEXT_CHARS,
                             "labelling": summary})

    routes = [*page_and_static_routes(), Route("/api/info", labelling_summary, methods=["GET"]), *label_routes(desk),
               *play_routes(games, worker, options.model_timeout, desk)]
    app = Starlette(routes=routes)
    return Guard(app, options)  # type: ignore[return-value]
