"""An MLflow tracking server that restarts: retry with backoff, then fail clearly.

With an ``http(s)://`` tracking URI every ``MlflowClient`` call of alrao_tune goes through
:class:`RetryingClient`: a call that fails because the server does not answer (connection
refused or reset, a timeout, a 5xx from a proxy while it restarts) is repeated with
exponential backoff (0.5 s doubling to at most 5 s) until it succeeds or the server has
been silent for ``ALRAO_TUNE_MLFLOW_RETRY_S`` seconds (default 300). The trial callback's
writes queue up meanwhile (its background writer runs them in order), so a server stopped
for a minute and started again on the same backend store loses no value: MLflow's SQL
store keeps a metric ``(key, value, step, timestamp)`` once however often it is sent,
so a batch repeated after a reply was lost is stored once. A server that never comes back
raises :class:`ServerGoneError` (a :class:`~alrao_tune.tracking.errors.TrackingError`: the
command ends with exit code 2 and says what to do); after that, calls fail at once.

The command line lowers MLflow's own HTTP retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
default 7 with a backoff growing to minutes) to 1 unless the variable is set
(``runs.MLFLOW_ENV_DEFAULTS``), so that this module's shorter backoff decides how soon a
restarted server is used again; a library caller keeps MLflow's setting.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from alrao_tune.tracking.errors import ServerGoneError

log = logging.getLogger(__name__)

RETRY_ENV = "ALRAO_TUNE_MLFLOW_RETRY_S"
DEFAULT_RETRY_S = 300.0
FIRST_WAIT_S, MAX_WAIT_S = 0.5, 5.0
_UNREACHABLE = ("Connection refused", "ConnectionError", "Max retries exceeded",
                "RemoteDisconnected", "Connection reset", "Connection aborted",
                "timed out", "Read timed out", "too many 50", "Bad Gateway",
                "Service Unavailable", "Gateway Time")


def is_unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the server did not answer (worth a retry), as opposed to an
    answer that refuses the call (a bad request: not retried)."""
    import requests

    if isinstance(err, (requests.ConnectionError, requests.Timeout, ConnectionError,
                        TimeoutError)):
        return True
    status = getattr(err, "get_http_status_code", None)
    try:
        if status is not None and int(status()) >= 500 and "INTERNAL_ERROR" not in str(err):
            return True
    except (TypeError, ValueError):
        pass
    text = str(err)
    return any(marker in text for marker in _UNREACHABLE)


class RetryingClient:
    """An ``MlflowClient`` whose calls survive a server restart (see the module docstring).

    Attribute access is forwarded; methods are wrapped. Thread-safe: the state "the server
    is gone" is shared by every thread using this client.
    """

    def __init__(self, client: Any, uri: str, budget_s: float | None = None) -> None:
        self._client, self._uri = client, uri
        self._budget_s = budget_s if budget_s is not None else float(
            os.environ.get(RETRY_ENV) or DEFAULT_RETRY_S)
        self._gone: ServerGoneError | None = None
        self._lock = threading.Lock()
        self.stats = {"retried_calls": 0, "waited_s": 0.0}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if not callable(value) or name.startswith("_"):
            return value
        return functools.partial(self._call, value, name)

    def _call(self, fn: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
        if self._gone is not None:
            raise self._gone
        start, wait, retried = time.monotonic(), FIRST_WAIT_S, False
        while True:
            try:
                out = fn(*args, **kwargs)
            except Exception as err:
                if not is_unreachable(err):
                    raise
                silent = time.monotonic() - start
                if silent >= self._budget_s:
                    raise self._give_up(name, silent, err) from err
                if not retried:
                    log.warning("MLflow server %s does not answer (%s); retrying for up to "
                                "%.0f s", self._uri, _first_line(err), self._budget_s)
                retried = True
                time.sleep(min(wait, max(0.0, self._budget_s - silent)))
                wait = min(2 * wait, MAX_WAIT_S)
                continue
            if retried:
                with self._lock:
                    self.stats["retried_calls"] += 1
                    self.stats["waited_s"] += time.monotonic() - start
                log.warning("MLflow server %s answers again (after %.1f s)", self._uri,
                            time.monotonic() - start)
            return out

    def _give_up(self, name: str, silent: float, err: BaseException) -> ServerGoneError:
        with self._lock:
            if self._gone is None:
                self._gone = ServerGoneError(
                    f"the MLflow tracking server at {self._uri} did not answer for "
                    f"{silent:.0f} s ({name}: {_first_line(err)}); what it stored before is "
                    f"kept. Start it again on the same backend store, then run the same "
                    f"command with --resume (set {RETRY_ENV} to wait longer)")
            return self._gone


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text[:200]
