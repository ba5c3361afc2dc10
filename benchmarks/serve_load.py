"""Load test of ``textenv serve``'s labelling: simulated labellers against a real server on 127.0.0.1, bounded in time.

It writes a completion-set file, starts ``textenv serve --no-play --port 0`` in a subprocess (loopback only: the
script refuses any other host), and runs ``--labellers`` threads for ``--seconds``; each opens a session and loops
next → submit (one in 20 items skipped instead), with no think time, over its own keep-alive HTTP connection. Then
it stops the server with Ctrl-C and checks the output file against what the server acknowledged:

* every line is a whole JSON preference row (no half line) and the file ends with a newline;
* no lost label: every submit answered 200 is in the file;
* no duplicated label: no item id appears twice;
* with a clean stop, nothing extra: the file holds exactly the acknowledged labels.

``--kill-after S`` SIGKILLs the server S seconds into the load instead (mid-write, as a crash would), then counts
labels acknowledged vs lines in the file (lines may exceed acknowledgements by the answers the kill cut off, at
most one per labeller), checks there is no half line, and restarts the server on the same output to show it
resumes (the labelled items are not asked again). Prints p50/p95/p99 latency per request kind and the
throughput; ``--json FILE`` also writes the figures.

    python benchmarks/serve_load.py [--seconds 60] [--labellers 20] [--kill-after 20]

Figures depend on the machine's load (fsync per saved label dominates a save).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


@dataclass
class LabellerLog:
    """What one simulated labeller saw: latencies per request kind (seconds), items acknowledged, errors."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"next": [], "submit": [], "skip": []})
    acknowledged: list[str] = field(default_factory=list)
    conflicts: int = 0
    errors: list[str] = field(default_factory=list)


def write_sets(path: Path, count: int, k: int = 4) -> None:
    """``count`` completion sets of ``k`` completions (distinct prompts)."""
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(json.dumps({"prompt": f"review {i}: the product", "completions": [
                f" is great ({i}).", f" is fine ({i}).", f" broke at once ({i}).", f" is loud ({i})."][:k]}) + "\n" for i in range(count))


def start_server(data: Path, output: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """``textenv serve --no-play`` on 127.0.0.1 with a free port; returns the process and its port."""
    with open(log, "a", encoding="utf-8") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "textenv", "serve", "--no-play", "--host", HOST, "--port", "0", "--data",
             str(data), "--output", str(output)], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        found = re.findall(r"listening on http://127\.0\.0\.1:(\d+)/", log.read_text(encoding="utf-8"))
        if found:
            return process, int(found[-1])
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"textenv serve did not start:\n{log.read_text(encoding='utf-8')}")


class Client:
    """One keep-alive HTTP/1.1 connection to the server, posting JSON."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection(HOST, port, timeout=10)

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        data = json.dumps(body).encode()
        self.connection.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")

    def close(self) -> None:
        self.connection.close()


def labeller(port: int, name: str, stop_at: float, log: LabellerLog, seed: int) -> None:
    """Label until ``stop_at`` (monotonic seconds): next, then submit a random order (or skip one in 20)."""
    rng = random.Random(seed)
    client = Client(port)
    try:
        status, answer = client.post("/api/label/session", {"name": name})
        session = answer["session"]
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            status, view = client.post("/api/label/next", {"session": session})
            log.latencies["next"].append(time.perf_counter() - start)
            if status != 200 or view["item"] is None:
                if status != 200:
                    log.errors.append(f"next: {status} {view}")
                return
            item = view["item"]["id"]
            kind = "skip" if rng.random() < 0.05 else "submit"
            body = {"session": session, "item": item}
            if kind == "submit":
                body["order"] = rng.sample(range(len(view["item"]["completions"])), len(view["item"]["completions"]))
            start = time.perf_counter()
            status, answer = client.post(f"/api/label/{kind}", body)
            log.latencies[kind].append(time.perf_counter() - start)
            if status == 200 and kind == "submit":
                log.acknowledged.append(item)
            elif status == 409:
                log.conflicts += 1
            elif status != 200:
                log.errors.append(f"{kind}: {status} {answer}")
    except (OSError, http.client.HTTPException, ValueError) as err:  # the server was killed on purpose
        log.errors.append(f"connection: {type(err).__name__}: {err}")
    finally:
        client.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def read_output(path: Path) -> tuple[list[str], bool, int]:
    """Item ids of the output's rows, whether it ends with a newline, and how many lines fail to parse."""
    raw = path.read_bytes() if path.exists() else b""
    ids, broken = [], 0
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            ids.append(row["meta"]["item"])
            assert isinstance(row["ranked"], list) and isinstance(row["prompt"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            broken += 1
    return ids, raw.endswith(b"\n") or not raw, broken


def run_load(seconds: float, labellers: int = 20, items: int | None = None, kill_after: float | None = None,
             workdir: Path | None = None) -> dict:
    """Run the load test; returns its figures (see the module docstring) and raises AssertionError when a label
    was lost or duplicated or a line was torn."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="textenv-serve-load-"))
    data, output, log_file = workdir / "sets.jsonl", workdir / "prefs.jsonl", workdir / "server.log"
    write_sets(data, items or max(2000, int(seconds * 600)))
    server, port = start_server(data, output, log_file)
    logs = [LabellerLog() for _ in range(labellers)]
    start = time.monotonic()
    stop_at = start + seconds
    threads = [threading.Thread(target=labeller, args=(port, f"labeller {i}", stop_at, logs[i], i), daemon=True)
               for i in range(labellers)]
    for thread in threads:
        thread.start()
    killed = False
    try:
        if kill_after is not None:
            time.sleep(max(0.0, kill_after - (time.monotonic() - start)))
            server.send_signal(signal.SIGKILL)
            killed = True
        for thread in threads:
            thread.join(max(1.0, stop_at - time.monotonic() + 15))
        elapsed = min(time.monotonic(), stop_at) - start
    finally:
        stop_server(server)
    if killed:
        elapsed = kill_after
    return check_and_report(logs, output, elapsed, killed, (data, output, log_file))


def check_and_report(logs: list[LabellerLog], output: Path, elapsed: float, killed: bool,
                     files: tuple[Path, Path, Path]) -> dict:
    """Compare what was acknowledged with the file; for a killed run, restart on the same output (resume)."""
    acknowledged = [item for log in logs for item in log.acknowledged]
    ids, ends_whole, broken = read_output(output)
    duplicated = [item for item, n in Counter(ids).items() if n > 1]
    lost = sorted(set(acknowledged) - set(ids))
    figures = {
        "labellers": len(logs), "seconds": round(elapsed, 1), "killed": killed,
        "acknowledged": len(acknowledged), "lines_in_file": len(ids), "broken_lines": broken,
        "file_ends_with_newline": ends_whole, "lost": len(lost), "duplicated": len(duplicated),
        "conflicts_409": sum(log.conflicts for log in logs),
        "saves_per_second": round(len(acknowledged) / elapsed, 1),
        "errors": sum(len(log.errors) for log in logs),
    }
    for kind in ("next", "submit", "skip"):
        values = [v for log in logs for v in log.latencies[kind]]
        figures[f"{kind}_requests"] = len(values)
        figures[f"{kind}_p50_ms"] = round(percentile(values, 0.50), 2)
        figures[f"{kind}_p95_ms"] = round(percentile(values, 0.95), 2)
        figures[f"{kind}_p99_ms"] = round(percentile(values, 0.99), 2)
    assert broken == 0 and ends_whole, f"a torn line in {output}: {figures}"
    assert not lost, f"{len(lost)} acknowledged label(s) missing from {output}: {lost[:5]}"
    assert not duplicated, f"item(s) labelled twice: {duplicated[:5]}"
    if not killed:
        assert len(ids) == len(acknowledged), figures
        assert figures["errors"] == 0, [e for log in logs for e in log.errors][:5]
    else:
        assert len(ids) - len(acknowledged) <= len(logs), figures  # at most one answer cut off per labeller
        figures["resumed_already_labelled"] = resume_count(*files)
        assert figures["resumed_already_labelled"] == len(ids), figures
    return figures


def resume_count(data: Path, output: Path, log_file: Path) -> int:
    """Start the server again on the same output and read how many items it says are already labelled."""
    log_file = log_file.with_name("server-restarted.log")
    server, _ = start_server(data, output, log_file)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.findall(r"(\d+) already labelled", log_file.read_text(encoding="utf-8"))
            if found:
                return int(found[-1])
            time.sleep(0.05)
        raise RuntimeError("the restarted server did not report its resume")
    finally:
        stop_server(server)


def stop_server(server: subprocess.Popen) -> None:
    """Ctrl-C, as a person stops it (a killed server is already gone); SIGKILL if it does not stop in 20 s."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load (default: %(default)s)")
    parser.add_argument("--labellers", type=int, default=20, help="concurrent simulated labellers (default: 20)")
    parser.add_argument("--items", type=int, default=None, help="items in the data file (default: enough)")
    parser.add_argument("--kill-after", type=float, default=None, help="SIGKILL the server after this many seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if not 0 < args.seconds <= 600 or not 1 <= args.labellers <= 200:
        parser.error("--seconds must be in (0, 600] and --labellers in [1, 200] (the test is bounded)")
    figures = run_load(args.seconds, args.labellers, args.items, args.kill_after, args.workdir)
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
