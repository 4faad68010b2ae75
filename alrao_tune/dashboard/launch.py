"""``alrao-tune ui``: the dashboard and MLflow's own UI over one tracking store, on localhost.

Starts two servers, each in its own process group, and waits until both answer:

- a lean MLflow server (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server
  --backend-store-uri URI --default-artifact-root <db dir>/mlartifacts --host H --port P
  -w 1``: 2 processes instead of 15), polled on ``/health``; skipped with ``--no-mlflow``
  or when the tracking URI already is an MLflow server (``http(s)://``), which then is the
  UI the dashboard links to;
- ``streamlit run <package>/dashboard/app.py --server.address H --server.port P
  --server.headless true``, polled on ``/_stcore/health``; it gets the tracking URI and
  the UI address in ``ALRAO_TUNE_TRACKING_URI`` and ``ALRAO_TUNE_MLFLOW_UI``.

Both bind 127.0.0.1 unless ``--host`` says otherwise. Ctrl-C or SIGTERM stops both:
SIGTERM to each process group, a wait, SIGKILL after ``STOP_TIMEOUT_S``. Their output
goes to log files in a temporary folder (printed; its tail is shown when a server fails).

The dashboard is :mod:`alrao_tune.dashboard.app`, next to this module: it comes with any
install, a wheel included (Streamlit is the ``dashboard`` extra:
``pip install "alrao_tune[dashboard]"``). Another script can be given with ``--app``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alrao_tune import tracking
from alrao_tune.errors import EXIT_USAGE, AlraoTuneError

APP = Path(__file__).resolve().with_name("app.py")
STOP_TIMEOUT_S = 10.0


class UIError(AlraoTuneError, RuntimeError):
    """Bad input or a server that did not start (printed as one line, exit code 2)."""


def add_ui_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers the ``ui`` subcommand on ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser("ui", help="browse the results: dashboard + MLflow UI")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--port", type=int, default=8501, help="dashboard port (8501)")
    p.add_argument("--mlflow-port", dest="mlflow_port", type=int, default=5055,
                   help="MLflow UI port (5055)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address both servers bind (127.0.0.1: this machine only)")
    p.add_argument("--no-mlflow", dest="no_mlflow", action="store_true",
                   help="do not start MLflow's UI (the dashboard shows no MLflow links)")
    p.add_argument("--app", type=Path, default=APP, help="the dashboard script to serve")
    p.add_argument("--timeout", type=float, default=90.0,
                   help="seconds to wait for both servers to answer (90)")
    p.set_defaults(func=cmd_ui)
    return p


@dataclass
class Server:
    """One started server: its process (own process group), health URL and log file."""

    name: str
    proc: subprocess.Popen
    health_url: str
    log: Path


def _reachable_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _check_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise UIError(f"{flag} {port}: cannot bind {host}:{port} ({err.strerror}); "
                          f"pick a free port, e.g. {flag} {port + 1}.") from err


def mlflow_command(uri: str, host: str, port: int) -> list[str]:
    """The lean ``mlflow server`` command line for ``uri`` (artifacts next to a SQLite DB)."""
    db = tracking.sqlite_path(uri)
    artifacts = ["--default-artifact-root", str(db.parent / "mlartifacts")] if db else []
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, *artifacts,
            "--host", host, "--port", str(port), "-w", "1"]


def streamlit_command(app: Path, host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line serving the dashboard headless."""
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]


def _start(name: str, cmd: list[str], env: dict[str, str], health_url: str,
           log_dir: Path) -> Server:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Server(name, proc, health_url, log)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_ready(servers: Sequence[Server], timeout_s: float) -> None:
    """Polls every server's health URL until all answer 200.

    Raises:
        UIError: a server exited, or did not answer within ``timeout_s``.
    """
    pending = list(servers)
    deadline = time.monotonic() + timeout_s
    while pending:
        for server in list(pending):
            if server.proc.poll() is not None:
                raise UIError(f"the {server.name} server exited with code "
                              f"{server.proc.returncode}:\n{_tail(server.log)}")
            if _answers(server.health_url):
                pending.remove(server)
        if pending and time.monotonic() > deadline:
            names = ", ".join(s.name for s in pending)
            raise UIError(f"{names} did not answer within {timeout_s:.0f} s; see "
                          f"{pending[0].log}:\n{_tail(pending[0].log)}")
        if pending:
            time.sleep(0.3)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(servers: Sequence[Server], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to each server's process group, wait, SIGKILL what is left after the timeout."""
    for server in servers:
        if server.proc.poll() is None:
            _signal_group(server.proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for server in servers:
        try:
            server.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(server.proc, signal.SIGKILL)
            server.proc.wait()
        _signal_group(server.proc, signal.SIGKILL, quiet=True)  # leftover children


def _signal_group(proc: subprocess.Popen, sig: int, *, quiet: bool = False) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group id is the pid (start_new_session=True)
    except (ProcessLookupError, PermissionError):
        if not quiet and proc.poll() is None:
            proc.send_signal(sig)


def _resolve(args: argparse.Namespace) -> tuple[str, str | None]:
    """The tracking URI (SQLite made absolute) and the MLflow UI address to link to."""
    uri = args.tracking_uri or tracking.default_tracking_uri()
    db = tracking.sqlite_path(uri)
    if db is not None:
        if not db.is_file():
            raise UIError(f"--tracking-uri {uri}: no MLflow store at {db}; run `alrao-tune "
                          "screen SPACE.yaml` there first, or pass the URI of your store.")
        uri = f"sqlite:///{db}"
    if not args.app.is_file():
        raise UIError(f"--app {args.app}: no such file; leave out --app to serve the "
                      f"dashboard that comes with alrao_tune ({APP}).")
    if importlib.util.find_spec("streamlit") is None:
        raise UIError("the dashboard needs Streamlit: pip install 'alrao_tune[dashboard]' "
                      "(or pip install streamlit).")
    if uri.startswith(("http://", "https://")):
        return uri, uri.rstrip("/")
    if args.no_mlflow:
        return uri, None
    return uri, f"http://{_reachable_host(args.host)}:{args.mlflow_port}"


def serve(args: argparse.Namespace) -> list[Server]:
    """Starts the servers (MLflow first when needed); returns them once all answer."""
    uri, ui = _resolve(args)
    start_mlflow = ui is not None and not uri.startswith(("http://", "https://"))
    _check_port_free(args.host, args.port, "--port")
    if start_mlflow:
        _check_port_free(args.host, args.mlflow_port, "--mlflow-port")
    log_dir = Path(tempfile.mkdtemp(prefix="alrao-tune-ui-"))
    env = {**tracking.MLFLOW_ENV_DEFAULTS, **os.environ, "ALRAO_TUNE_TRACKING_URI": uri,
           "ALRAO_TUNE_MLFLOW_UI": ui or "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    here = _reachable_host(args.host)
    servers: list[Server] = []
    try:
        if start_mlflow:
            servers.append(_start("mlflow", mlflow_command(uri, args.host, args.mlflow_port),
                                  env, f"{ui}/health", log_dir))
        servers.append(_start("dashboard", streamlit_command(args.app, args.host, args.port),
                              env, f"http://{here}:{args.port}/_stcore/health", log_dir))
        wait_ready(servers, args.timeout)
    except BaseException:
        stop(servers)
        raise
    print(f"dashboard: http://{here}:{args.port}")
    print(f"MLflow UI: {ui}" if ui else "MLflow UI: not started (--no-mlflow)")
    print(f"store:     {uri}\nlogs:      {log_dir}\nCtrl-C stops both.", flush=True)
    return servers


class _Terminated(Exception):
    """Raised in the main thread by the SIGTERM handler."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


def cmd_ui(args: argparse.Namespace) -> int:
    """Runs ``alrao-tune ui`` until Ctrl-C/SIGTERM or until a server exits."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    servers: list[Server] = []
    try:
        servers = serve(args)
        while all(s.proc.poll() is None for s in servers):
            time.sleep(0.5)
        gone = next(s for s in servers if s.proc.poll() is not None)
        print(f"alrao-tune: error: the {gone.name} server stopped:\n{_tail(gone.log)}",
              file=sys.stderr)
        return 1
    except UIError as err:
        print(f"alrao-tune: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, _Terminated):
        print("stopping ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this
        stop(servers)
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m alrao_tune.dashboard.launch [options]``: the same as ``alrao-tune ui``."""
    parser = argparse.ArgumentParser(prog="alrao-tune")
    add_ui_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ui", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
