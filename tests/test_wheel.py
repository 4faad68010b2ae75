"""The package as a user installs it: a wheel built from the source, installed with
``--no-deps`` into a temporary folder, its entry points run from outside the repository
(no source tree on the path: shipped search spaces and the dashboard come from the wheel).

A full ``alrao-tune screen quickstart`` from the wheel takes minutes on 2 cores; here the
screening's inputs are checked (the shipped space by name) and a short ``train`` run, the
dashboard server and ``python -m alrao_tune`` run from the installed copy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Builds the wheel from a copy of the sources (nothing is written into the
    repository) and installs it into ``site``; returns the folders."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "alrao_tune", src / "alrao_tune",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("alrao_tune-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target",
                    str(tmp / "site"), str(wheel)], check=True, capture_output=True)
    outside = tmp / "elsewhere"
    outside.mkdir()
    return {"site": tmp / "site", "cwd": outside, "script": tmp / "site" / "bin" / "alrao-tune"}


def _env(installed: dict[str, Path]) -> dict[str, str]:
    """Only the installed copy on the path (the repository's is not)."""
    return {**os.environ, "PYTHONPATH": str(installed["site"]), "RAY_AUTH_MODE": "disabled"}


def run(installed: dict[str, Path], *args: str, timeout: float = 300
        ) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed["script"]), *args], cwd=installed["cwd"],
                          env=_env(installed), capture_output=True, text=True,
                          timeout=timeout)


def test_the_wheel_ships_the_spaces_and_the_dashboard(installed):
    package = installed["site"] / "alrao_tune"
    assert (package / "dashboard" / "app.py").is_file()
    assert {p.stem for p in (package / "searchspaces").glob("*.yaml")} >= {
        "quickstart", "digits", "mnist1d", "cifar10"}
    code = ("import alrao_tune, alrao_tune.space as s; print(alrao_tune.__file__); "
            "print(s.load_space('quickstart').name, s.load_space('digits.yaml').name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=installed["cwd"],
                         env=_env(installed), capture_output=True, text=True, check=True)
    where, names = out.stdout.splitlines()
    assert Path(where).is_relative_to(installed["site"])  # not the repository's copy
    assert names == "quickstart digits"


def test_entry_point_runs_from_outside_the_repository(installed):
    assert run(installed, "--help").returncode == 0
    # a space name that is neither a file nor shipped: exit 2, the shipped names listed
    bad = run(installed, "screen", "nosuchspace")
    assert bad.returncode == 2 and "quickstart" in bad.stderr and "digits" in bad.stderr
    # `compare digits` finds the shipped space (and stops at the bad override, before Ray)
    bad = run(installed, "compare", "digits", "--set", "training.epochs=0")
    assert bad.returncode == 2 and "digits" in bad.stderr and "epochs" in bad.stderr
    out = run(installed, "train", "--dataset", "blobs", "--data-option", "n_train=100",
              "--arch", "mlp", "--epochs", "1", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    module = subprocess.run([sys.executable, "-m", "alrao_tune", "--help"],
                            cwd=installed["cwd"], env=_env(installed), capture_output=True)
    assert module.returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_dashboard_from_the_wheel(installed, mlflow_uri):
    pytest.importorskip("streamlit")
    port = _free_port()
    proc = subprocess.Popen(
        [str(installed["script"]), "ui", "--tracking-uri", mlflow_uri, "--no-mlflow",
         "--port", str(port), "--timeout", "120"], cwd=installed["cwd"],
        env=_env(installed), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    answered = False
    try:
        deadline = time.monotonic() + 150
        while not answered and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as resp:
                    answered = resp.status == 200
            except OSError:
                time.sleep(0.5)
        assert answered and proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert proc.returncode == 0, out  # Ctrl-C stops it cleanly
    assert f"dashboard: http://127.0.0.1:{port}" in out
