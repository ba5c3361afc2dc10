"""``textenv serve``: its flags, the checks of what they name (before any model loads), and the running server.

    textenv serve --data sets.jsonl --output prefs.jsonl            # Label + Play on http://127.0.0.1:8000/
    textenv serve --host 0.0.0.0 --port 8000 --data ... --output ... # a class: prints http://...:8000/?token=...

The web framework (Starlette, served by uvicorn) is an optional extra: without it the command says
``pip install textenv[serve]`` in one line. Everything is checked first (files parse, the output is not the input,
the checkpoint exists, host/port/token are sane), then the port is bound, the address is printed, and the
server runs until Ctrl-C. The model loads in the background (the Label page works meanwhile); with ``--no-play``
no model is loaded at all.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import re
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from textenv.apps.arguments import COUNT, NON_NEGATIVE, POSITIVE, SEED, integer_at_least
from textenv.validation import InputError

#: Access tokens are URL-safe so they fit in the printed link.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{16,256}")
DEFAULT_PORT = 8000
#: Longest prompt a player may type on the Play page (tokens).
MAX_PROMPT_TOKENS = 64


class MissingServeDependencies(RuntimeError):
    """Starlette or uvicorn is not installed: one line (exit 2) saying how to install them."""

    user_facing = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``textenv serve``."""
    parser.description = ("A web app for people: rank the K completions of each prompt (Label) and play the policy "
                          "token by token (Play). Binds 127.0.0.1 unless --host says otherwise; any other host "
                          "needs an access token (generated and printed, or --token).")
    data = parser.add_argument_group("labelling (the Label page)")
    data.add_argument("--data", help="completion sets to rank: JSONL of {prompt, completions} (textenv collect "
                                     "--unranked writes it; the same file textenv label reads)")
    data.add_argument("--output", help="preference JSONL the rankings are appended to (what textenv label writes "
                                       "and textenv train-rm reads); items already in it are not asked again")
    data.add_argument("--labels-per-item", dest="labels_per_item", type=COUNT, default=1,
                      help="labels wanted per item, each from a different name (default: %(default)s: nobody "
                           "gets an item someone else holds)")
    data.add_argument("--lease-minutes", dest="lease_minutes", type=POSITIVE, default=10.0,
                      help="how long an item stays reserved for the person who has it on screen (default: "
                           "%(default)s)")
    data.add_argument("--no-shuffle", dest="no_shuffle", action="store_true", help="show completions in file order")
    game = parser.add_argument_group("the game (the Play page)")
    game.add_argument("--model", help="policy model name or directory (default: the embedded model); with "
                                      "--checkpoint: the reference π_ref (default: the checkpoint's base model)")
    game.add_argument("--checkpoint", help="play against a trained policy: RUN/checkpoint (or RUN)")
    game.add_argument("--reward-model", dest="reward_model",
                      help="reward model spec (default: vader, or the one the checkpoint trained with)")
    game.add_argument("--kl-coef", dest="kl_coef", type=NON_NEGATIVE,
                      help="β of the return R = r − β·KL (default: 0.05, or the checkpoint's)")
    game.add_argument("--top-k", dest="top_k", type=integer_at_least(1), default=10,
                      help="next-token candidates shown (1-50, default: %(default)s)")
    game.add_argument("--max-new-tokens", dest="max_new_tokens", type=COUNT,
                      help="tokens per episode (default: 24, or the checkpoint's)")
    game.add_argument("--queue-size", dest="queue_size", type=COUNT, default=8,
                      help="game moves that may wait for the model; more get 503 busy (default: %(default)s)")
    game.add_argument("--no-play", dest="no_play", action="store_true", help="Label only: no model is loaded")
    game.add_argument("--device", default="auto", help="auto, cpu, cuda... (default: %(default)s)")
    game.add_argument("--seed", type=SEED, default=0, help="seeds the games and the display order")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default: %(default)s, this machine only; 0.0.0.0 for a class)")
    net.add_argument("--port", type=integer_at_least(0), default=DEFAULT_PORT,
                     help="port (default: %(default)s; 0 picks a free one)")
    net.add_argument("--token", help="access token (16+ characters A-Z a-z 0-9 . _ ~ -); default: none on "
                                     "127.0.0.1, a random one otherwise")


# ---------------------------------------------------------------------------------------------- checks
def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_network(args: argparse.Namespace) -> str | None:
    """The access token the server asks for (``None``: none), after checking ``--host``, ``--port`` and
    ``--token``. A host other than loopback always gets a token (``--token`` or a random one)."""
    if not args.host or any(c.isspace() for c in args.host) or "/" in args.host:
        raise InputError(f"--host {args.host!r} is not an address; give an IP address such as 127.0.0.1 or 0.0.0.0")
    if args.port > 65535:
        raise InputError(f"--port {args.port} is not a port; give 1-65535, or 0 for a free one")
    if args.token is not None and not TOKEN_PATTERN.fullmatch(args.token):
        raise InputError("--token must be 16-256 characters A-Z a-z 0-9 . _ ~ - (it goes in the link you hand out); "
                         "leave it out to get a random one")
    if args.token is not None:
        return args.token
    return None if is_loopback(args.host) else secrets.token_urlsafe(18)


def check_label_files(args: argparse.Namespace) -> tuple[list[Any], Path] | None:
    """The items of ``--data`` (:func:`~textenv.apps.serve.labelling.prepare_items`) and the ``--output`` path
    (``None`` when neither is given): both or neither, the data file parses, the output is another file and, if it
    exists, a valid preference file."""
    from textenv.apps.serve.labelling import prepare_items
    from textenv.preferences import load_completion_sets, load_preferences

    if args.data is None and args.output is None:
        return None
    if args.data is None or args.output is None:
        raise InputError("give both --data FILE (completion sets to rank) and --output FILE (where the rankings go), "
                         "or neither (Play only)")
    data, output = Path(args.data), Path(args.output)
    if not data.is_file():
        raise InputError(f"--data {data}: " + ("is a directory; give a .jsonl file" if data.is_dir() else
                                               "no such file (textenv collect --unranked writes one)"))
    if output.is_dir():
        raise InputError(f"--output {output} is a directory; give a .jsonl file name")
    if output.exists() and output.resolve() == data.resolve():
        raise InputError("--output is the --data file; give another file for the rankings")
    sets = load_completion_sets(data)
    if not sets:
        raise InputError(f"--data {data} holds no completion sets (it is empty); textenv collect --unranked "
                         "writes them")
    items = prepare_items(sets, shuffle=not args.no_shuffle, seed=args.seed)
    if output.is_file():
        load_preferences(output)  # a damaged row (a line cut by hand, another format) is named before we append
    return items, output


def check_play(args: argparse.Namespace) -> None:
    """``--top-k`` in range, and the checkpoint exists (its models load later, on the worker)."""
    from textenv.apps.play import MAX_TOP_K

    if args.top_k > MAX_TOP_K:
        raise InputError(f"--top-k {args.top_k}: give 1 to {MAX_TOP_K} (more candidates than a player can read)")
    if args.checkpoint is not None and not args.no_play:  # everything but loading the weights, before the start
        from textenv.agents.base import CHECKPOINT_KIND
        from textenv.apps.eval_checkpoint import eval_settings
        from textenv.apps.run_directory import resolve_checkpoint
        from textenv.checkpoint import verify_directory

        checkpoint = resolve_checkpoint(args.checkpoint, "--checkpoint")
        verify_directory(checkpoint, CHECKPOINT_KIND)
        eval_settings(argparse.Namespace(reward_model=args.reward_model, reference=args.model,
                                         max_new_tokens=args.max_new_tokens), checkpoint)


def import_web_framework() -> None:
    """Import Starlette and uvicorn; :class:`MissingServeDependencies` (one line) when either is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingServeDependencies("textenv serve needs the web framework (starlette and uvicorn): "
                                       "pip install textenv[serve]") from None


# ---------------------------------------------------------------------------------------------- the game's env
def play_env_factory(args: argparse.Namespace) -> Any:
    """A function building the one-row env of the games from the flags, as ``textenv play`` does
    (:func:`textenv.apps.play.build_play_env`: the policy, or ``--checkpoint``'s with ``--model`` or its base
    model as π_ref; the reward model, β and the length from the flags, else what the checkpoint trained with,
    else vader, 0.05 and 24 tokens), with prompts up to :data:`MAX_PROMPT_TOKENS` tokens."""
    from textenv.apps.play import build_play_env

    return functools.partial(build_play_env, args, max_prompt_tokens=MAX_PROMPT_TOKENS, default_max_new_tokens=24)


# ---------------------------------------------------------------------------------------------- running
def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one); a port in use is an :class:`InputError`."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        raise InputError(f"--host {host}: not an address of this machine; give 127.0.0.1 or 0.0.0.0") from None
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on TCP sockets that say so; without it a keep-alive answer
    # written in two parts waits for the client's delayed ACK (~40 ms per request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InputError(f"--host {host} --port {port}: cannot listen there ({err.strerror}); pick another port "
                         "with --port, or --port 0 for a free one") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def address(host: str, port: int, token: str | None) -> str:
    """The link to hand out (``?token=`` when one is asked)."""
    shown = "<this machine's address>" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def run(args: argparse.Namespace) -> int:
    """Execute ``textenv serve``: check everything, bind, print the address, serve until Ctrl-C."""
    import_web_framework()
    token = check_network(args)
    labelling = check_label_files(args)
    check_play(args)
    if labelling is None and args.no_play:
        raise InputError("nothing to serve: --no-play without --data/--output; give --data FILE --output FILE")
    sock = bind(args.host, args.port)
    return serve(args, sock, token, labelling)


def serve(args: argparse.Namespace, sock: socket.socket, token: str | None, labelling: Any) -> int:
    """Build the parts, print where they are, and run uvicorn on ``sock`` until Ctrl-C or SIGTERM (both a normal
    end: exit code 0, after the requests in flight finish)."""
    import uvicorn

    from textenv.apps.serve.app import ServeOptions, build_app
    from textenv.apps.serve.games import GameTable
    from textenv.apps.serve.labelling import LabelDesk
    from textenv.apps.serve.model_worker import ModelWorker

    desk = None
    if labelling is not None:
        items, output = labelling
        desk = LabelDesk(items, output, labels_per_item=args.labels_per_item, lease_seconds=args.lease_minutes * 60)
    worker = games = None
    if not args.no_play:
        worker = ModelWorker(max_waiting=args.queue_size)
        games = GameTable(play_env_factory(args), top_k=args.top_k, seed=args.seed)
        loading = worker.submit(lambda: games.env)  # load the models now, in the background
        loading.add_done_callback(_report_loading)
    port = sock.getsockname()[1]
    options = ServeOptions(token=token, check_host=is_loopback(args.host),
                           info={"top_k": args.top_k, "labels_per_item": args.labels_per_item})
    app = build_app(desk, games, worker, options)
    _say_where(args, port, token, desk)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops it as Ctrl-C does
    try:
        uvicorn.Server(config).run(sockets=[sock])  # re-raises the signal that stopped it, after a clean shutdown
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a server is stopped: a normal end
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        if worker is not None:
            worker.close(timeout=1.0)
        if desk is not None:
            desk.close()
    print("textenv serve: stopped" + (f"; every saved ranking is in {desk.output}" if desk else ""), flush=True)
    return 0


def _report_loading(loading: Any) -> None:
    """Say on the terminal when the Play page's models could not load (each game request then says why)."""
    error = loading.exception()
    print(f"textenv serve: Play is off: {error}" if error else "textenv serve: Play: the model is ready",
          file=sys.stderr if error else sys.stdout, flush=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _say_where(args: argparse.Namespace, port: int, token: str | None, desk: Any) -> None:
    link = address(args.host, port, token)
    print(f"textenv serve: listening on {link}", flush=True)
    if desk is not None:
        done = desk.summary()
        print(f"textenv serve: Label: {done['items']} item(s), {done['done']} already labelled in {desk.output}",
              flush=True)
    if not args.no_play:
        print("textenv serve: Play: loading the model in the background", flush=True)
    if token is not None and not is_loopback(args.host):
        print("textenv serve: anyone with the link (and its token) can label and play; Ctrl-C stops", flush=True)
    sys.stdout.flush()
