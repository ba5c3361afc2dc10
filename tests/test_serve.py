"""``textenv serve`` through Starlette's TestClient: every endpoint, leases under concurrency, resume, escaping, path
traversal, the access token, bad requests and bad flags (the last ones are ``bad_input`` cases).

The Play endpoints run a real :class:`~textenv.apps.play.PlaySession` on the tiny model; the queue tests use a
worker blocked on purpose, to show a busy model answers 503 at once and never delays labelling.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="textenv serve needs the serve extra: pip install textenv[serve]")
from starlette.testclient import TestClient

from textenv.apps.cli import main
from textenv.apps.serve.app import STATIC, ServeOptions, build_app
from textenv.apps.serve.games import GameTable
from textenv.apps.serve.labelling import LabelDesk, LineAppender, item_id, prepare_items
from textenv.apps.serve.model_worker import ModelBusy, ModelWorker
from textenv.preferences import (
    PreferenceRanking,
    as_preference_rows,
    expand_pairs,
    load_completion_sets,
    load_preferences,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"
BASE = "http://127.0.0.1:8000"
JSON = {"Content-Type": "application/json"}


def write_sets(path: Path, count: int = 6, k: int = 3) -> Path:
    """``count`` completion sets of ``k`` completions; item 0 holds a completion with HTML in it."""
    rows = []
    for i in range(count):
        completions = [f" was fine {i}.", f" was bad {i}.", f" was great {i}!", f" was long {i}"][:k]
        if i == 0:
            completions[1] = SCRIPT
        rows.append({"prompt": f"the film {i}", "completions": completions})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


class FakeClock:
    """A monotonic clock the test moves by hand (leases expire without waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_desk(tmp_path: Path, count: int = 6, **kwargs) -> LabelDesk:
    sets = load_completion_sets(write_sets(tmp_path / "sets.jsonl", count))
    return LabelDesk(prepare_items(sets), tmp_path / "prefs.jsonl", **kwargs)


def client_for(desk=None, games=None, worker=None, **options) -> TestClient:
    options.setdefault("check_host", True)
    return TestClient(build_app(desk, games, worker, ServeOptions(**options)), base_url=BASE)


def post(client: TestClient, path: str, body) -> tuple[int, dict]:
    response = client.post(path, content=json.dumps(body), headers=JSON)
    return response.status_code, response.json()


def labelling_session(client: TestClient, name: str = "ada") -> str:
    status, answer = post(client, "/api/label/session", {"name": name})
    assert status == 200, answer
    return answer["session"]


# ---------------------------------------------------------------------------------------------- pages and files
def test_pages_and_static_files_are_served_with_security_headers(tmp_path):
    client = client_for(make_desk(tmp_path))
    for path, marker in (("/", "Human feedback"), ("/label", "Who is labelling"), ("/play", "You are the policy")):
        response = client.get(path)
        assert response.status_code == 200 and marker in response.text
        assert response.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        for src in re.findall(r'(?:src|href)="([^"]+)"', response.text):
            assert src.startswith("/"), f"{path} loads {src} from elsewhere (everything is served locally)"
            assert client.get(src).status_code == 200, src
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/label.js").headers["content-type"].startswith("text/javascript")
    info = client.get("/api/info").json()
    assert info["label"] is True and info["play"] is False and info["labelling"]["items"] == 6


@pytest.mark.parametrize("path", [
    "/static/../app.py", "/static/..%2fapp.py", "/static/%2e%2e/app.py", "/static/%2e%2e%2fcommand.py",
    "/static/....//app.py", "/static/..\\app.py", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/static/.keep", "/static/", "/static/style.css/..", "/../../../../etc/passwd", "/static/~/.ssh/id_rsa",
    "/static/__init__.py", "/label/../app.py", "/static/style.css%00.js",
])
def test_no_path_reaches_a_file_outside_the_static_folder(path, tmp_path):
    client = client_for(make_desk(tmp_path))
    response = client.get(path)
    assert response.status_code in (404, 405), (path, response.status_code)
    assert "import" not in response.text and "root:" not in response.text


def test_raw_traversal_paths_are_refused_by_the_app_itself(tmp_path):
    """The app, given the raw path (no client normalising the dots), still serves only its table of files."""
    import asyncio

    app = build_app(make_desk(tmp_path), None, None, ServeOptions(check_host=False))

    async def get(raw: str) -> tuple[int, bytes]:
        sent: list[dict] = []
        scope = {"type": "http", "method": "GET", "path": raw, "raw_path": raw.encode(), "query_string": b"",
                 "headers": [(b"host", b"127.0.0.1")], "scheme": "http", "server": ("127.0.0.1", 80),
                 "client": ("127.0.0.1", 1), "http_version": "1.1", "root_path": ""}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    for raw in ("/static/../app.py", "/static/../../cli.py", "/static/..", "/static/../labelling.py"):
        status, body = asyncio.run(get(raw))
        assert status == 404 and b"import" not in body, raw
    assert asyncio.run(get("/static/common.js"))[0] == 200


def test_the_pages_never_parse_text_as_html():
    """The scripts insert server text with textContent only: no innerHTML, outerHTML, insertAdjacentHTML,
    document.write or eval anywhere; no inline script or handler in the HTML (the CSP forbids them too)."""
    for script in STATIC.glob("*.js"):
        source = script.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{script.name} uses {sink}"
    for page in STATIC.glob("*.html"):
        source = page.read_text(encoding="utf-8")
        assert not re.search(r"<script>(?!</script>)|<script(?![^>]*\bsrc=)", source), page.name
        assert not re.search(r"\son[a-z]+=", source), f"{page.name} has an inline event handler"
        assert "http://" not in source and "https://" not in source, f"{page.name} loads something remote"


def test_html_in_a_completion_is_returned_as_json_data(tmp_path):
    client = client_for(make_desk(tmp_path, count=1))
    session = labelling_session(client)
    response = client.post("/api/label/next", content=json.dumps({"session": session}), headers=JSON)
    assert response.headers["content-type"] == "application/json"
    assert SCRIPT in response.json()["item"]["completions"]  # the exact text, as a JSON string
    assert "<script>" not in response.text.replace(json.dumps(SCRIPT)[1:-1], "")  # nowhere else


# ---------------------------------------------------------------------------------------------- the access token
def test_a_token_is_asked_on_every_request_when_set(tmp_path):
    token = "a-long-enough-secret-token"
    client = client_for(make_desk(tmp_path), token=token, check_host=False)
    for path in ("/", "/label", "/static/style.css", "/api/info"):
        assert client.get(path).status_code == 401, path
    assert client.post("/api/label/session", content=b'{"name": "x"}', headers=JSON).status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer wrong-token-of-some-length"}).status_code == 401
    assert client.get("/api/info", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    link = client.get(f"/label?token={token}", follow_redirects=False)  # the printed link: cookie, then the page
    assert link.status_code == 303 and link.headers["location"] == "/label"
    cookie = link.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert client.get("/label").status_code == 200  # the client kept the cookie
    assert client.get("/static/label.js").status_code == 200
    fresh = client_for(make_desk(tmp_path / "b"), token=token, check_host=False)
    assert fresh.get("/?token=nope-nope-nope-nope", follow_redirects=False).status_code == 401


def test_the_token_link_never_redirects_off_the_server():
    """``GET //evil.example?token=T`` (a raw path starting with two slashes) must not answer ``Location:
    //evil.example``, which a browser follows to another site (an open redirect)."""
    import asyncio

    token = "a-long-enough-secret-token"
    app = build_app(None, None, None, ServeOptions(token=token, check_host=False))

    async def location(raw: str) -> str:
        sent: list[dict] = []
        scope = {"type": "http", "method": "GET", "path": raw, "raw_path": raw.encode(),
                 "query_string": f"token={token}".encode(), "headers": [(b"host", b"127.0.0.1")], "scheme": "http",
                 "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1), "http_version": "1.1", "root_path": ""}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 303
        return dict(sent[0]["headers"])[b"location"].decode()

    for raw in ("//evil.example", "///evil.example/x", "/\\evil.example"):
        target = asyncio.run(location(raw))
        assert target.startswith("/") and not target.startswith(("//", "/\\")), (raw, target)
    assert asyncio.run(location("/label")) == "/label"


def test_a_loopback_server_answers_only_to_loopback_host_names(tmp_path):
    client = client_for(make_desk(tmp_path))
    assert client.get("/api/info").status_code == 200
    for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example:8000", "127.0.0.1.evil.example", "attacker"):  # DNS rebinding
        assert client.get("/api/info", headers={"Host": host}).status_code == 400, host


def test_a_server_bound_to_another_loopback_address_answers_its_own_link(tmp_path):
    """``textenv serve --host 127.0.0.2`` prints http://127.0.0.2:PORT/: the Host check must let that link in (an
    IP literal cannot be rebound by DNS), as it does 127.0.0.1."""
    client = client_for(make_desk(tmp_path))
    for host in ("127.0.0.2:8000", "127.1.2.3", "[0:0:0:0:0:0:0:1]:8000"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
    for host in ("127.0.0.2.evil.example", "10.0.0.1:8000", "[::2]:8000", "[127.0.0.1]"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 400, host


# ---------------------------------------------------------------------------------------------- labelling
def test_label_an_item_writes_the_preference_format_train_rm_reads(tmp_path):
    desk = make_desk(tmp_path, count=2)
    client = client_for(desk)
    session = labelling_session(client, "Ada Lovelace")
    status, view = post(client, "/api/label/next", {"session": session})
    assert status == 200 and view["status"] == "todo" and len(view["item"]["completions"]) == 3
    shown = view["item"]["completions"]
    status, answer = post(client, "/api/label/submit", {"session": session, "item": view["item"]["id"],
                                                         "order": [2, 0, 1]})
    assert status == 200 and answer["saved"] and answer["progress"]["mine"] == 1
    rows = load_preferences(tmp_path / "prefs.jsonl")
    assert rows == [PreferenceRanking(view["item"]["prompt"], (shown[2], shown[0], shown[1]))]
    assert rows[0].meta == {"labeller": "Ada Lovelace", "item": view["item"]["id"]}
    groups = expand_pairs(as_preference_rows(tmp_path / "prefs.jsonl"))  # what train-rm trains on
    assert len(groups) == 1 and len(groups[0].pairs) == 3
    status, view2 = post(client, "/api/label/next", {"session": session})
    assert view2["item"]["id"] != view["item"]["id"]


def test_the_display_order_is_the_one_textenv_label_shows(tmp_path):
    from textenv.apps.label import LabelSession

    sets = load_completion_sets(write_sets(tmp_path / "sets.jsonl", 4))
    terminal = LabelSession(sets, tmp_path / "o.jsonl", seed=3)
    for entry, item in zip(sets, prepare_items(sets, seed=3)):
        assert list(item.shown) == terminal._display_order(entry)


def test_two_people_never_get_the_same_item_at_the_same_time(tmp_path):
    clock = FakeClock()
    desk = make_desk(tmp_path, count=2, lease_seconds=60, clock=clock)
    client = client_for(desk)
    ada, bob, cy = (labelling_session(client, name) for name in ("ada", "bob", "cy"))
    first = post(client, "/api/label/next", {"session": ada})[1]["item"]["id"]
    second = post(client, "/api/label/next", {"session": bob})[1]["item"]["id"]
    assert first != second
    assert post(client, "/api/label/next", {"session": cy})[1]["item"] is None  # both are on someone's screen
    assert post(client, "/api/label/next", {"session": ada})[1]["item"]["id"] == first  # a reload: the same item
    clock.now += 61  # ada's lease ran out (bob renewed his)
    assert post(client, "/api/label/renew", {"session": bob, "item": second})[1]["leased"] is True
    clock.now += 1
    assert post(client, "/api/label/next", {"session": cy})[1]["item"]["id"] == first
    assert post(client, "/api/label/submit", {"session": cy, "item": first, "order": [0, 1, 2]})[0] == 200
    status, refused = post(client, "/api/label/submit", {"session": ada, "item": first, "order": [1, 0, 2]})
    assert status == 409 and "someone else" in refused["error"]  # no item is labelled twice
    assert len(load_preferences(tmp_path / "prefs.jsonl")) == 1


def test_labels_per_item_asks_different_people_for_the_same_item(tmp_path):
    desk = make_desk(tmp_path, count=1, labels_per_item=2)
    client = client_for(desk)
    ada, bob, ada_again = (labelling_session(client, name) for name in ("ada", "bob", "ada"))
    item = post(client, "/api/label/next", {"session": ada})[1]["item"]["id"]
    assert post(client, "/api/label/next", {"session": bob})[1]["item"]["id"] == item
    assert post(client, "/api/label/submit", {"session": ada, "item": item, "order": [0, 1, 2]})[0] == 200
    assert post(client, "/api/label/next", {"session": ada_again})[1]["item"] is None  # ada labelled it already
    assert post(client, "/api/label/submit", {"session": ada_again, "item": item, "order": [0, 1, 2]})[0] == 409
    assert post(client, "/api/label/submit", {"session": bob, "item": item, "order": [2, 1, 0]})[0] == 200
    names = [row.meta["labeller"] for row in load_preferences(tmp_path / "prefs.jsonl")]
    assert names == ["ada", "bob"]


def test_concurrent_labellers_label_every_item_exactly_once(tmp_path):
    """12 threads label through the HTTP API at once: every item ends in the file once, every line parses."""
    desk = make_desk(tmp_path, count=60)
    client = client_for(desk)
    acknowledged: list[str] = []
    errors: list[str] = []

    def labeller(name: str) -> None:
        session = labelling_session(client, name)
        while True:
            status, view = post(client, "/api/label/next", {"session": session})
            if status != 200:
                errors.append(str(view))
                return
            if view["item"] is None:
                return
            k = len(view["item"]["completions"])
            status, answer = post(client, "/api/label/submit", {"session": session, "item": view["item"]["id"],
                                                                 "order": list(range(k))[::-1]})
            if status == 200:
                acknowledged.append(view["item"]["id"])
            else:
                errors.append(str(answer))

    threads = [threading.Thread(target=labeller, args=(f"labeller {i}",)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    rows = load_preferences(tmp_path / "prefs.jsonl")
    ids = [row.meta["item"] for row in rows]
    assert sorted(ids) == sorted(acknowledged) and len(set(ids)) == len(ids) == 60


def test_resume_skips_the_items_already_in_the_output(tmp_path):
    """Rows written by textenv label (no item id in meta) and by an earlier serve both count as done."""
    sets = load_completion_sets(write_sets(tmp_path / "sets.jsonl", 4))
    first, second = sets[0], sets[1]
    with open(tmp_path / "prefs.jsonl", "w", encoding="utf-8") as out:  # what `textenv label` wrote before
        out.write(json.dumps({"prompt": first.prompt, "ranked": list(first.completions)[::-1],
                              "meta": {"labeller": "ada"}}) + "\n")
        out.write(json.dumps({"prompt": second.prompt, "ranked": list(second.completions)}))  # no final newline
    desk = LabelDesk(prepare_items(sets), tmp_path / "prefs.jsonl")
    assert desk.already_done == 2
    client = client_for(desk)
    session = labelling_session(client, "bob")
    seen = set()
    while (view := post(client, "/api/label/next", {"session": session})[1])["item"] is not None:
        seen.add(view["item"]["prompt"])
        post(client, "/api/label/submit", {"session": session, "item": view["item"]["id"], "order": [0, 1, 2]})
    assert seen == {sets[2].prompt, sets[3].prompt}
    assert [row.prompt for row in load_preferences(tmp_path / "prefs.jsonl")] == [s.prompt for s in sets]
    assert item_id(first.prompt, first.completions) not in {row.meta.get("item") for row in
                                                            load_preferences(tmp_path / "prefs.jsonl")[2:]}


def test_skip_and_back(tmp_path):
    client = client_for(make_desk(tmp_path, count=3))
    session = labelling_session(client)
    one = post(client, "/api/label/next", {"session": session})[1]["item"]
    post(client, "/api/label/submit", {"session": session, "item": one["id"], "order": [1, 2, 0]})
    two = post(client, "/api/label/next", {"session": session})[1]["item"]
    assert post(client, "/api/label/skip", {"session": session, "item": two["id"]})[1]["skipped"]
    three = post(client, "/api/label/next", {"session": session})[1]["item"]
    assert three["id"] not in (one["id"], two["id"])
    status, back = post(client, "/api/label/back", {"session": session, "steps": 1})
    assert status == 200 and back["item"]["id"] == two["id"] and back["status"] == "todo"  # rank it now
    status, back2 = post(client, "/api/label/back", {"session": session, "steps": 2})
    assert back2["status"] == "saved" and back2["ranking"] == [1, 2, 0]  # read-only: the file is append-only
    assert post(client, "/api/label/back", {"session": session, "steps": 3})[0] == 404
    assert post(client, "/api/label/submit", {"session": session, "item": two["id"], "order": [0, 1, 2]})[0] == 200
    assert post(client, "/api/label/next", {"session": session})[1]["item"]["id"] == three["id"]
    assert post(client, "/api/label/submit", {"session": session, "item": one["id"], "order": [0, 1, 2]})[0] == 409


def test_without_data_the_label_api_says_how_to_enable_it():
    client = client_for(None)
    status, answer = post(client, "/api/label/session", {"name": "ada"})
    assert status == 404 and "--data" in answer["error"]


BAD_REQUESTS = [
    ("/api/label/session", {"name": ""}, 400, "name"),
    ("/api/label/session", {"name": "x" * 65}, 400, "at most 64"),
    ("/api/label/session", {"name": "a\x07b"}, 400, "printable"),
    ("/api/label/session", {"name": 3}, 400, "string"),
    ("/api/label/session", {"name": "ada", "admin": True}, 400, "unknown field"),
    ("/api/label/session", {}, 400, "missing"),
    ("/api/label/next", {"session": "../../etc"}, 400, "session"),
    ("/api/label/next", {"session": "unknown-session-id"}, 404, "unknown session"),
    ("/api/label/submit", {"session": "SESSION", "item": "0123456789abcdef", "order": [0, 1, 2]}, 404, "item"),
    ("/api/label/submit", {"session": "SESSION", "item": "ITEM", "order": [0, 0, 1]}, 400, "each of the 3"),
    ("/api/label/submit", {"session": "SESSION", "item": "ITEM", "order": [0, 1]}, 400, "each of the 3"),
    ("/api/label/submit", {"session": "SESSION", "item": "ITEM", "order": [True, 0, 2]}, 400, "order"),
    ("/api/label/submit", {"session": "SESSION", "item": "ITEM", "order": "012"}, 400, "order"),
    ("/api/label/submit", {"session": "SESSION", "item": "ITEM", "order": [0, 1, 2.0]}, 400, "order"),
    ("/api/label/submit", {"session": "SESSION", "item": "ITEM", "order": list(range(10))}, 400, "order"),
    ("/api/label/submit", {"session": "SESSION", "item": "<script>", "order": [0, 1, 2]}, 400, "item"),
    ("/api/label/back", {"session": "SESSION", "steps": 0}, 400, "steps"),
    ("/api/label/back", {"session": "SESSION", "steps": 1}, 404, "nothing 1 step"),
    ("/api/label/skip", {"session": "SESSION"}, 400, "missing"),
    ("/api/play/new", {}, 404, "--no-play"),
]


@pytest.mark.parametrize("path, body, status, message", BAD_REQUESTS, ids=[f"{p}:{m}" for p, _, _, m in BAD_REQUESTS])
def test_bad_requests_are_refused_with_a_message(tmp_path, path, body, status, message):
    desk = make_desk(tmp_path, count=1)
    client = client_for(desk)
    session = labelling_session(client)
    item = post(client, "/api/label/next", {"session": session})[1]["item"]["id"]
    body = {key: session if value == "SESSION" else item if value == "ITEM" else value for key, value in body.items()}
    got, answer = post(client, path, body)
    assert got == status and message in answer["error"], answer
    assert not (tmp_path / "prefs.jsonl").read_text()


def test_malformed_bodies_are_refused(tmp_path):
    client = client_for(make_desk(tmp_path, count=1))
    path = "/api/label/session"
    assert client.post(path, content=b'{"name": "ada"}', headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.post(path, data={"name": "ada"}).status_code == 415  # a cross-site form cannot post JSON
    assert client.post(path, content=b"{not json", headers=JSON).status_code == 400
    assert client.post(path, content=b"\xff\xfe", headers=JSON).status_code == 400
    assert client.post(path, content=b'["ada"]', headers=JSON).status_code == 400
    big = json.dumps({"name": "x" * 40_000}).encode()
    assert client.post(path, content=big, headers=JSON).status_code == 413
    assert client.get(path).status_code == 405
    assert client.get("/api/nothing-here").status_code == 404


# ---------------------------------------------------------------------------------------------- the appender
def test_the_appender_waits_for_another_textenv_process_appending_to_the_file(tmp_path):
    """textenv play appends under flock; the labelling desk takes the same lock, so neither cuts into the other."""
    import fcntl

    from textenv.apps.play import append_jsonl

    path = tmp_path / "prefs.jsonl"
    appender = LineAppender(path)
    holder = os.open(path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process in the middle of its append
    writer = threading.Thread(target=appender.append, args=({"prompt": "p", "chosen": "a", "rejected": "b"},))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive() and path.read_text() == ""  # it waits for the lock
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    writer.join(5)
    append_jsonl(path, {"prompt": "q", "chosen": "c", "rejected": "d"})
    assert [json.loads(line)["prompt"] for line in path.read_text().splitlines()] == ["p", "q"]
    appender.close()


def test_a_failed_write_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    appender = LineAppender(path)
    real_write = os.write

    def half_then_full(fd, data):
        if fd == appender._fd and len(data) > 10:
            real_write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        appender.append({"prompt": "q", "chosen": "c", "rejected": "d"})
    monkeypatch.undo()
    assert path.read_text() == '{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
    appender.append({"prompt": "q", "chosen": "c", "rejected": "d"})
    appender.close()
    assert len(load_preferences(path)) == 2


def test_a_failed_fsync_takes_the_line_back_so_a_retry_does_not_duplicate_it(tmp_path, monkeypatch):
    """A row whose fsync fails was not acknowledged (the request fails): it must not stay in the file, or the retry
    writes the same label twice (and a restart counts a label the labeller was told was not saved)."""
    desk = make_desk(tmp_path, count=2)
    client = client_for(desk)
    session = labelling_session(client)
    item = post(client, "/api/label/next", {"session": session})[1]["item"]
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        desk.submit(session, item["id"], [0, 1, 2])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (tmp_path / "prefs.jsonl").read_text() == ""
    status, answer = post(client, "/api/label/submit", {"session": session, "item": item["id"], "order": [0, 1, 2]})
    assert status == 200, answer
    assert len(load_preferences(tmp_path / "prefs.jsonl")) == 1


# ---------------------------------------------------------------------------------------------- play
@pytest.fixture(scope="module")
def game_table(tiny_model_dir):
    from conftest import letter_e

    from textenv.vector_env import TextGenVectorEnv

    def make_env():
        return TextGenVectorEnv(num_envs=1, model=str(tiny_model_dir), reward_model=letter_e,
                                prompts=["the film was", "the book"], max_new_tokens=4, kl_coef=0.1, max_prompt_tokens=80,
                                autoreset_mode="disabled", device="cpu")

    return GameTable(make_env, top_k=5, seed=0)


@pytest.fixture
def play_client(game_table):
    worker = ModelWorker(max_waiting=4)
    yield client_for(None, game_table, worker)
    worker.close()


def test_play_an_episode_through_the_api(play_client):
    status, view = post(play_client, "/api/play/new", {"prompt": "the film was"})
    assert status == 200, view
    game, state = view["game"], view["state"]
    assert state["prompt"] == "the film was" and state["step"] == 0 and len(state["candidates"]) == 5
    assert all(0 <= c["prob"] <= 1 and c["ref_prob"] is not None for c in state["candidates"])
    assert sum(c["prob"] for c in state["candidates"]) <= 1 + 1e-6
    state = post(play_client, "/api/play/move", {"game": game, "move": "choose",
                                                 "token": state["candidates"][1]["id"]})[1]["state"]
    assert state["step"] == 1 and state["tokens"][0]["source"] == "chosen"
    state = post(play_client, "/api/play/move", {"game": game, "move": "sample"})[1]["state"]
    assert state["step"] == 2 and state["tokens"][1]["source"] == "sampled"
    state = post(play_client, "/api/play/move", {"game": game, "move": "undo"})[1]["state"]
    assert state["step"] == 1
    view = post(play_client, "/api/play/move", {"game": game, "move": "type", "text": " good film"})[1]
    assert view["state"]["tokens"][1]["source"] == "typed"
    while not view["state"]["done"]:
        view = post(play_client, "/api/play/move", {"game": game, "move": "sample"})[1]
    result = view["result"]
    assert result["return"] == pytest.approx(result["rm_score"] - result["kl_coef"] * result["kl"])
    assert isinstance(result["policy"]["completion"], str) and "return" in result["policy"]
    status, refused = post(play_client, "/api/play/move", {"game": game, "move": "sample"})
    assert status == 409 and "over" in refused["error"]
    assert post(play_client, "/api/play/move", {"game": game, "move": "undo"})[1]["state"]["done"] is False


@pytest.mark.parametrize("body, status, message", [
    ({"game": "unknown-game-id", "move": "sample"}, 404, "unknown game"),
    ({"game": "GAME", "move": "explode"}, 400, "move"),
    ({"game": "GAME", "move": "choose"}, 400, "token"),
    ({"game": "GAME", "move": "choose", "token": -1}, 400, "token"),
    ({"game": "GAME", "move": "choose", "token": 10**9}, 400, "token"),
    ({"game": "GAME", "move": "choose", "token": 299_999}, 409, "token_id"),
    ({"game": "GAME", "move": "type", "text": ""}, 400, "text"),
    ({"game": "GAME", "move": "type", "text": "x" * 2001}, 400, "at most 2000"),
    ({"game": "GAME", "move": "undo"}, 409, "nothing to undo"),
    ({"game": "GAME", "move": "sample", "extra": 1}, 400, "unknown field"),
])
def test_bad_moves_are_refused(play_client, body, status, message):
    game = post(play_client, "/api/play/new", {})[1]["game"]
    body = {key: game if value == "GAME" else value for key, value in body.items()}
    got, answer = post(play_client, "/api/play/move", body)
    assert got == status and message in answer["error"], answer


def test_model_text_in_the_game_is_json_data(play_client):
    status, view = post(play_client, "/api/play/new", {"prompt": SCRIPT})
    assert status == 200 and view["state"]["prompt"] == SCRIPT


def test_a_busy_model_answers_503_and_never_delays_labelling(tmp_path):
    """The worker is blocked by a slow job: game requests beyond the queue get 503 at once, labelling answers."""
    release = threading.Event()
    worker = ModelWorker(max_waiting=1)
    slow = worker.submit(release.wait, 30)  # the slow model call that holds the worker
    deadline = time.monotonic() + 10
    while not slow.running() and time.monotonic() < deadline:  # the worker took it: the queue is empty again
        time.sleep(0.01)
    games = GameTable(lambda: None)  # never reached while the worker is blocked
    client = client_for(make_desk(tmp_path, count=2), games, worker, model_timeout=30)
    waiting = threading.Thread(target=post, args=(client, "/api/play/new", {}))
    waiting.start()  # fills the one place in the queue
    while worker.waiting() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.perf_counter()
    status, answer = post(client, "/api/play/new", {})
    assert status == 503 and "busy" in answer["error"]
    session = labelling_session(client)
    assert post(client, "/api/label/next", {"session": session})[1]["item"] is not None
    assert time.perf_counter() - start < 5  # nothing waited for the model
    release.set()
    waiting.join(30)
    worker.close()


def test_a_model_call_that_takes_too_long_is_504(tmp_path):
    release = threading.Event()
    worker = ModelWorker(max_waiting=2)
    worker.submit(release.wait, 30)
    client = client_for(None, GameTable(lambda: None), worker, model_timeout=0.2)
    status, answer = post(client, "/api/play/new", {})
    assert status == 504 and "did not answer" in answer["error"]
    release.set()
    worker.close()


def test_the_worker_runs_jobs_in_order_on_one_thread():
    worker = ModelWorker(max_waiting=3)
    threads = [worker.submit(lambda: threading.get_ident()).result(5) for _ in range(3)]
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident()
    failing = worker.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    block = threading.Event()
    worker.submit(block.wait, 10)
    time.sleep(0.1)
    for _ in range(3):
        worker.submit(lambda: None)
    with pytest.raises(ModelBusy):
        worker.submit(lambda: None)
    block.set()
    worker.close()


# ---------------------------------------------------------------------------------------------- the command line
def test_serve_is_a_textenv_command(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--output", "--model", "--checkpoint", "--reward-model", "--host", "--port", "--token",
                 "--top-k", "--max-new-tokens", "--labels-per-item", "--no-play"):
        assert flag in out


def _sets(tmp: Path) -> None:
    write_sets(tmp / "sets.jsonl", 2)


SERVE_CASES = {
    "data-without-output": (["--data", "{tmp}/sets.jsonl"], ["--output"], _sets),
    "output-without-data": (["--output", "{tmp}/o.jsonl"], ["--data"], None),
    "data-missing": (["--data", "{tmp}/nope.jsonl", "--output", "{tmp}/o.jsonl"], ["--data", "no such file"], None),
    "data-is-a-directory": (["--data", "{tmp}", "--output", "{tmp}/o.jsonl"], ["--data", "directory"], None),
    "data-bad-row": (["--data", "{tmp}/bad.jsonl", "--output", "{tmp}/o.jsonl"], ["bad.jsonl:1", "completions"],
                     lambda tmp: (tmp / "bad.jsonl").write_text('{"prompt": "p", "completion": ["a", "b"]}\n')),
    "data-empty": (["--data", "{tmp}/empty.jsonl", "--output", "{tmp}/o.jsonl"], ["empty"],
                   lambda tmp: (tmp / "empty.jsonl").write_text("")),
    "output-is-the-data": (["--data", "{tmp}/sets.jsonl", "--output", "{tmp}/./sets.jsonl"], ["--output", "--data"],
                           _sets),
    "output-is-a-directory": (["--data", "{tmp}/sets.jsonl", "--output", "{tmp}"], ["--output", "directory"], _sets),
    "output-damaged": (["--data", "{tmp}/sets.jsonl", "--output", "{tmp}/o.jsonl"], ["o.jsonl:2", "not valid JSON"],
                       lambda tmp: (_sets(tmp), (tmp / "o.jsonl").write_text(
                           '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "cho'))),
    "too-many-completions": (["--data", "{tmp}/k.jsonl", "--output", "{tmp}/o.jsonl", "--no-play"], ["at most 9"],
                             lambda tmp: (tmp / "k.jsonl").write_text(json.dumps(
                                 {"prompt": "p", "completions": [str(i) for i in range(10)]}) + "\n")),
    "short-token": (["--token", "abc"], ["--token", "16-256"], None),
    "token-with-spaces": (["--token", "a token with spaces in it"], ["--token"], None),
    "port-out-of-range": (["--port", "70000"], ["--port", "65535"], None),
    "port-negative": (["--port", "-1"], ["--port"], None),
    "host-with-a-path": (["--host", "127.0.0.1/evil"], ["--host"], None),
    "top-k-too-large": (["--top-k", "99"], ["--top-k", "1 to 50"], None),
    "top-k-zero": (["--top-k", "0"], ["--top-k"], None),
    "queue-size-zero": (["--queue-size", "0"], ["--queue-size"], None),
    "labels-per-item-zero": (["--labels-per-item", "0"], ["--labels-per-item"], None),
    "lease-minutes-nan": (["--lease-minutes", "nan"], ["--lease-minutes"], None),
    "kl-coef-negative": (["--kl-coef", "-0.1"], ["--kl-coef"], None),
    "checkpoint-missing": (["--checkpoint", "{tmp}/no-run"], ["--checkpoint", "no such directory"], None),
    "nothing-to-serve": (["--no-play"], ["nothing to serve"], None),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", list(SERVE_CASES), ids=list(SERVE_CASES))
def test_bad_serve_flags_are_one_line_before_anything_starts(case, tmp_path, capsys, monkeypatch):
    argv, messages, setup = SERVE_CASES[case]
    if setup is not None:
        setup(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr("textenv.apps.serve.command.bind", lambda *a: pytest.fail("the port was bound"))
    code = main(["serve", *[arg.replace("{tmp}", str(tmp_path)) for arg in argv]])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("textenv serve: error: "), err
    for message in messages:
        assert message in lines[0], lines[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.bad_input
def test_without_the_web_framework_serve_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "starlette", None)  # `import starlette` raises ImportError
    assert main(["serve"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "pip install textenv[serve]" in lines[0]


@pytest.mark.bad_input
def test_a_port_in_use_is_one_line(tmp_path, capsys):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        assert main(["serve", "--no-play", "--data", str(write_sets(tmp_path / "s.jsonl")), "--output",
                     str(tmp_path / "o.jsonl"), "--port", str(busy.getsockname()[1])]) == 2
    finally:
        busy.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--port" in lines[0] and "--port 0" in lines[0]


def test_a_host_other_than_loopback_always_gets_a_token():
    from argparse import Namespace

    from textenv.apps.serve.command import check_network

    assert check_network(Namespace(host="127.0.0.1", port=8000, token=None)) is None
    assert check_network(Namespace(host="localhost", port=8000, token=None)) is None
    generated = check_network(Namespace(host="0.0.0.0", port=8000, token=None))
    assert generated and len(generated) >= 16
    assert check_network(Namespace(host="0.0.0.0", port=8000, token=None)) != generated
    given = "my-class-token-2026"
    assert check_network(Namespace(host="127.0.0.1", port=8000, token=given)) == given


# ---------------------------------------------------------------------------------------------- a real server under load
def serve_load():
    """benchmarks/serve_load.py as a module (the same code the benchmark runs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_twenty_labellers_for_five_seconds_lose_and_duplicate_nothing(tmp_path):
    figures = serve_load().run_load(seconds=5, labellers=20, workdir=tmp_path)
    assert figures["acknowledged"] > 20 and figures["lines_in_file"] == figures["acknowledged"]
    assert figures["lost"] == figures["duplicated"] == figures["broken_lines"] == figures["errors"] == 0


@pytest.mark.slow
def test_a_server_killed_mid_load_loses_no_acknowledged_label_and_leaves_no_half_line(tmp_path):
    """SIGKILL a real server while 20 labellers save: every acknowledged label is in the file, every line is whole,
    and the restarted server resumes after exactly the labels in the file (run_load asserts all of it)."""
    figures = serve_load().run_load(seconds=6, labellers=20, kill_after=3, workdir=tmp_path)
    assert figures["killed"] and figures["acknowledged"] > 0
    assert figures["acknowledged"] <= figures["lines_in_file"] <= figures["acknowledged"] + 20
    assert figures["broken_lines"] == 0 and figures["file_ends_with_newline"]
    assert figures["resumed_already_labelled"] == figures["lines_in_file"]


# ---------------------------------------------------------------------------------------------- the game's env from the flags
def serve_args(**flags):
    from textenv.apps.cli import build_parser

    argv = ["serve", "--device", "cpu"]
    for flag, value in flags.items():
        argv += [f"--{flag.replace('_', '-')}", str(value)]
    return build_parser().parse_args(argv)


def test_the_game_env_takes_typed_prompts_and_the_flags(tiny_model_dir):
    from textenv.apps.play import PlaySession
    from textenv.apps.serve.command import MAX_PROMPT_TOKENS, play_env_factory

    env = play_env_factory(serve_args(model=tiny_model_dir, max_new_tokens=3, kl_coef=0.2))()
    assert env.max_new_tokens == 3 and env.kl_coef == pytest.approx(0.2) and env.reference is not None
    long_prompt = " ".join(["the film was good"] * 7)  # 56 tokens: longer than every built-in prompt
    assert len(env.tokenizer(long_prompt)["input_ids"]) > 48
    session = PlaySession(env, prompt=long_prompt, top_k=3)
    assert session.prompt == long_prompt and MAX_PROMPT_TOKENS == 64
    assert play_env_factory(serve_args(model=tiny_model_dir, kl_coef=0))().reference is None


def test_the_game_plays_a_trained_checkpoint_against_its_base_model(tiny_model_dir, tmp_path, length_reward):
    from textenv.agents.sft import SFT
    from textenv.apps.serve.command import check_play, play_env_factory
    from textenv.vector_env import TextGenVectorEnv

    train_env = TextGenVectorEnv(num_envs=2, model=str(tiny_model_dir), prompts=["the film was", "the book"],
                                 max_new_tokens=3, autoreset_mode="disabled", kl_coef=0.0,
                                 reward_model=length_reward, device="cpu")
    agent = SFT(train_env, demonstrations=["the film was good"], batch_size=1, learning_rate=1e-2)
    agent.learn(total_timesteps=10, progress_bar=False)
    agent.save(tmp_path / "ckpt")
    args = serve_args(checkpoint=tmp_path / "ckpt", kl_coef=0.1)
    check_play(args)
    table = GameTable(play_env_factory(args), top_k=3)
    view = table.new("the film was")
    while not view["state"]["done"]:
        view = table.move(view["game"], "sample")
    result = view["result"]
    assert result["num_tokens"] <= 3 and result["kl_coef"] == pytest.approx(0.1)  # its length, β from the flag
    assert result["rm_score"] == pytest.approx(len(result["completion"]))  # its reward model
    assert abs(result["env_kl"]) > 1e-3  # π_θ (trained) is not π_ref (the base model)


def test_a_model_that_cannot_load_is_a_clear_503(tmp_path):
    from textenv.apps.serve.command import play_env_factory

    worker = ModelWorker()
    games = GameTable(play_env_factory(serve_args(model=tmp_path / "no-such-model")))
    client = client_for(None, games, worker)
    status, answer = post(client, "/api/play/new", {})
    assert status == 503 and "could not be loaded" in answer["error"] and "no-such-model" in answer["error"]
    worker.close()


def test_the_player_prefers_one_completion_and_it_is_saved_as_a_pair(tmp_path, game_table):
    desk = make_desk(tmp_path, count=1)
    worker = ModelWorker()
    client = client_for(desk, game_table, worker)
    assert client.get("/api/info").json()["preferences"] is True
    view = post(client, "/api/play/new", {"prompt": "the film was"})[1]
    game = view["game"]
    status, refused = post(client, "/api/play/prefer", {"game": game, "prefer": "player"})
    assert status == 409 and "not over" in refused["error"]
    while not view["state"]["done"]:
        view = post(client, "/api/play/move", {"game": game, "move": "choose",
                                               "token": view["state"]["candidates"][-1]["id"]})[1]
    mine, theirs = view["result"]["completion"], view["result"]["policy"]["completion"]
    assert post(client, "/api/play/prefer", {"game": game, "prefer": "nobody"})[0] == 400
    status, answer = post(client, "/api/play/prefer", {"game": game, "prefer": "policy", "name": "Ada"})
    assert status == 200, answer
    assert mine != theirs and answer["saved"] is True  # seeded: the player's least likely tokens differ
    [row] = load_preferences(tmp_path / "prefs.jsonl")
    assert (row.prompt, row.chosen, row.rejected) == ("the film was", theirs, mine)
    assert row.meta["labeller"] == "Ada" and row.meta["chosen_by"] == "policy"
    assert post(client, "/api/play/prefer", {"game": game, "prefer": "player"})[0] == 409  # once per episode
    assert post(client_for(None, game_table, worker), "/api/play/prefer",
                {"game": game, "prefer": "player"})[0] == 404  # no --output: nothing is saved
    worker.close()
