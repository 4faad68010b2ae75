"""The MLflow callback's writer: MLflow calls run in order on one background thread.

Workers need no MLflow access and a slow store does not hold up Tune's event loop (a
function trial waits in ``tune.report`` until the driver has handled it). A failed write
is logged as a warning (a tracking hiccup must not stop training), except a
:class:`~alrao_tune.tracking.runs.TrackingError` (the store is gone for good, e.g. a server
that did not come back within ``tracking.retry``'s budget): it becomes :attr:`fatal`,
nothing more is tried, and every later submit, call or wait raises it. :meth:`call` and
:meth:`wait` let the callback wait where it must (Tune's experiment checkpoint).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from alrao_tune.tracking.runs import TrackingError

log = logging.getLogger(__name__)


class BackgroundWriter:
    """Runs MLflow calls in order on one background thread (inline if not ``background``)."""

    def __init__(self, background: bool) -> None:
        self.background = background
        self.stats = {"calls": 0, "write_s": 0.0, "errors": 0}
        self.fatal: Exception | None = None  # a TrackingError: the store is gone
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queues ``fn(*args)``; a failure is logged as a warning (see :attr:`fatal`)."""
        self._raise_fatal()
        self._put(functools.partial(fn, *args), None)

    def _raise_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs ``fn(*args)`` after everything queued; returns its result or raises."""
        self._raise_fatal()
        future: Future = Future()
        self._put(functools.partial(fn, *args), future)
        return future.result()

    def close(self) -> None:
        """Waits until everything queued is written and stops the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _put(self, fn: Callable[[], Any], future: Future | None) -> None:
        if not self.background:
            self._run(fn, future)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mlflow-writer", daemon=True)
            self._thread.start()
        self._queue.put((fn, future))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            self._run(*item)

    def _run(self, fn: Callable[[], Any], future: Future | None) -> None:
        if self.fatal is not None:  # the store is gone: nothing more is tried
            self.stats["errors"] += 1
            if future is not None:
                future.set_exception(self.fatal)
            return
        start = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - a tracking hiccup must not stop training
            self.stats["errors"] += 1
            if isinstance(exc, TrackingError) and self.fatal is None:
                self.fatal = exc  # the next submit or call raises it
            if future is None:
                name = getattr(getattr(fn, "func", fn), "__name__", "call")
                log.warning("MLflow write %s failed: %s", name, exc)
            else:
                future.set_exception(exc)
        else:
            if future is not None:
                future.set_result(out)
        self.stats["calls"] += 1
        self.stats["write_s"] += time.perf_counter() - start

    def wait(self) -> None:
        """Returns once every write queued so far is done."""
        self.call(_barrier)


def _barrier() -> None:
    """Queued behind every pending write: :meth:`BackgroundWriter.wait` waits for it."""
