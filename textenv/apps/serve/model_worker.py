"""One thread that runs every model call of ``textenv serve``, fed by a bounded queue.

torch models are not safe to call from several threads at once, and a forward pass holds the CPU for a while.
So the web server never calls a model itself: it puts the call in a queue of at most ``max_waiting`` jobs and
awaits the result, and this single worker runs the jobs one at a time, in order. Requests that need no model
(labelling, static files) never wait behind it. When the queue is full, :meth:`ModelWorker.submit` refuses at
once with :class:`ModelBusy` (the server answers 503 with the message) instead of letting requests pile up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class ModelBusy(Exception):
    """The model's queue is full: the request is refused at once (HTTP 503)."""


class ModelWorker:
    """Run callables one at a time on one daemon thread; at most ``max_waiting`` wait their turn."""

    def __init__(self, max_waiting: int = 8, name: str = "textenv-serve-model") -> None:
        self.max_waiting = max_waiting
        self._jobs: queue.Queue[tuple[Future, Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue(max_waiting)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        """Queue ``function(*args)``; its future holds the result or the exception. :class:`ModelBusy` when
        ``max_waiting`` jobs are already waiting."""
        future: Future = Future()
        try:
            self._jobs.put_nowait((future, function, args))
        except queue.Full:
            raise ModelBusy(f"the model is busy ({self.max_waiting} requests are waiting); try again in a few "
                            "seconds") from None
        return future

    def waiting(self) -> int:
        """Jobs queued and not started yet."""
        return self._jobs.qsize()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, function, args = job
            if not future.set_running_or_notify_cancel():  # cancelled while waiting (its request timed out)
                continue
            try:
                future.set_result(function(*args))
            except BaseException as err:  # noqa: BLE001 - handed to the request that asked
                future.set_exception(err)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the jobs already queued (waits up to ``timeout`` seconds for the thread)."""
        try:
            self._jobs.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
