"""The Streamlit dashboard (headless AppTest, then a real Chromium) and `alrao-tune ui`."""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from alrao_tune.dashboard import launch as ui
from tests.report.test_store import Store, dashboard_store

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "alrao_tune" / "dashboard" / "app.py"  # what `alrao-tune ui` serves
LAUNCHER = ROOT / "dashboards" / "app.py"  # `streamlit run dashboards/app.py` in a clone
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "dashboard.png"


@pytest.fixture(scope="module")
def store(ray_local, tmp_path_factory) -> Store:
    return dashboard_store(tmp_path_factory)


def run_app(monkeypatch: pytest.MonkeyPatch, uri: str, app: Path = APP,
            env: str = "ALRAO_TUNE_TRACKING_URI", **selected: str):
    """The app run once headless on ``uri`` (given in the variable ``env``; sidebar widgets
    set by key, then rerun)."""
    from streamlit.testing.v1 import AppTest

    for name in ("ALRAO_TUNE_TRACKING_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(env, uri)
    monkeypatch.setenv("ALRAO_TUNE_MLFLOW_UI", "http://127.0.0.1:5055")
    at = AppTest.from_file(str(app), default_timeout=120)
    at.run()
    for key, value in selected.items():
        at.selectbox(key=key).select(value)
        at.run()
    return at


def charts(at) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.main if getattr(e, "type", "") ==
            "vega_lite_chart"]


# ------------------------------------------------------------------------- `ui` command
def test_ui_parser_defaults_and_commands(tmp_path):
    parser = argparse.ArgumentParser()
    ui.add_ui_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ui"])
    assert (args.host, args.port, args.mlflow_port, args.no_mlflow) == \
        ("127.0.0.1", 8501, 5055, False)
    assert args.app == APP and APP.is_file()  # found from the package (editable install)
    cmd = ui.mlflow_command(f"sqlite:///{tmp_path}/mlflow.db", "127.0.0.1", 5055)
    assert cmd[cmd.index("--default-artifact-root") + 1] == str(tmp_path / "mlartifacts")
    assert cmd[-2:] == ["-w", "1"]


def test_ui_refuses_a_missing_store_and_a_busy_port(tmp_path, capsys):
    code = ui.main(["--tracking-uri", f"sqlite:///{tmp_path}/nothing.db"])
    assert code == 2
    assert "no MLflow store at" in capsys.readouterr().err
    (tmp_path / "mlflow.db").touch()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = ui.main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                        "--port", str(port), "--no-mlflow"])
    assert code == 2
    assert f"--port {port}: cannot bind" in capsys.readouterr().err


# ------------------------------------------------------------------------------ AppTest
def test_app_messages_for_store_problems(monkeypatch, tmp_path, mlflow_uri):
    # an empty (migrated) store: an info message, no traceback
    at = run_app(monkeypatch, mlflow_uri)
    assert not at.exception
    assert "holds no screening yet" in at.info[0].value
    # nothing listens on port 9
    at = run_app(monkeypatch, "http://127.0.0.1:9")
    assert not at.exception
    assert "cannot reach MLflow tracking server" in at.error[0].value
    # a path with no database
    at = run_app(monkeypatch, f"sqlite:///{tmp_path}/none/mlflow.db")
    assert not at.exception
    assert "no MLflow store at" in at.info[0].value


def test_app_follows_mlflow_tracking_uri(monkeypatch, mlflow_uri):
    at = run_app(monkeypatch, mlflow_uri, env="MLFLOW_TRACKING_URI")
    assert not at.exception
    assert at.sidebar.text_input(key="uri").value == mlflow_uri
    assert "holds no screening yet" in at.info[0].value


def test_the_clone_launcher_runs_the_same_app(monkeypatch, mlflow_uri):
    # dashboards/app.py only imports and calls alrao_tune.dashboard.app.main
    assert len(LAUNCHER.read_text().splitlines()) <= 8
    at = run_app(monkeypatch, mlflow_uri, app=LAUNCHER)
    assert not at.exception and "holds no screening yet" in at.info[0].value


@pytest.mark.slow
def test_app_shows_leaderboard_posterior_and_compare(monkeypatch, store):
    at = run_app(monkeypatch, store.uri)
    assert not at.exception and not at.error
    board = at.dataframe[0].value
    assert board["arch"].tolist() == [r["arch"] for r in store.results["leaderboard"]]
    specs = json.dumps(charts(at))
    # the posterior chart: one line per head, labelled with the head's learning rate
    assert '"head 0 (lr 0.001)", "head 1 (lr 0.032)", "head 2 (lr 1)"' in specs
    assert "alrao_lr_eff" in specs  # stage 2: the Alrao effective rate marked
    labels = {m.label: m.value for m in at.metric}
    assert labels["Best architecture"] == store.results["leaderboard"][0]["arch"]
    assert "Kendall τ (Alrao vs grid)" in labels  # the compare tab


@pytest.mark.slow
def test_app_experiment_with_only_failed_runs(monkeypatch, store):
    at = run_app(monkeypatch, store.uri, experiment=store.failed_experiment_id)
    assert not at.exception
    assert at.sidebar.selectbox(key="experiment").value == store.failed_experiment_id
    assert any("no stage-1 trial" in e.value and "RuntimeError: boom" in e.value
               for e in at.error), [e.value for e in at.error]


# ------------------------------------------------------------------------- real browser
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Chromium:
    """Headless Chromium driven over its DevTools protocol (a websocket; ``websockets``
    comes with Streamlit)."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--hide-scrollbars", "--window-size=1500,1000", "--remote-debugging-port=0")

    def __init__(self, url: str, profile: Path) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [str(CHROMIUM), *self.FLAGS, f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == call_id:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def wait(self, expression: str, timeout_s: float) -> object:
        """Polls ``expression`` until it is truthy (returns it) or the time is up."""
        deadline = time.monotonic() + timeout_s
        while not (value := self.js(expression)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return value

    def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(png)
        return png

    def close(self) -> None:
        self.ws.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=20)


def _wait_for_text(browser: Chromium, text: str, timeout_s: float) -> str:
    deadline, body = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        body = browser.js("document.body ? document.body.innerText : ''") or ""
        if text in body:
            break
        time.sleep(0.5)
    return body


def _streamlit_run(uri: str, port: int, cwd: Path) -> subprocess.Popen:
    """`streamlit run dashboards/app.py` with only MLFLOW_TRACKING_URI set to ``uri``."""
    env = {k: v for k, v in os.environ.items() if k != "ALRAO_TUNE_TRACKING_URI"}
    env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(LAUNCHER), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false"], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _alrao_tune_ui(uri: str, port: int, mlflow_port: int, cwd: Path) -> subprocess.Popen:
    """``alrao-tune ui`` (dashboard + MLflow UI); prints a banner once both answer."""
    return subprocess.Popen(
        [sys.executable, "-m", "alrao_tune.dashboard.launch", "--tracking-uri", uri, "--port",
         str(port), "--mlflow-port", str(mlflow_port)], cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def launched(store, tmp_path_factory) -> Iterator[dict]:
    """Both ways of serving the dashboard, launched together: each boots for seconds, so
    `alrao-tune ui` (an MLflow server too) boots while the first browser test uses
    `streamlit run`. Each test waits for its own server and stops it; whatever a failed
    test left running is stopped here."""
    cwd = tmp_path_factory.mktemp("served")
    port = _free_port()
    procs = {"streamlit_run": (_streamlit_run(store.uri, port, cwd), (port,))}
    ports = (_free_port(), _free_port())
    procs["ui"] = (_alrao_tune_ui(store.uri, *ports, cwd), ports)
    yield procs
    streamlit_run, ui_proc = procs["streamlit_run"][0], procs["ui"][0]
    if streamlit_run.poll() is None:
        os.killpg(streamlit_run.pid, signal.SIGTERM)
        streamlit_run.wait(timeout=30)
    if ui_proc.poll() is None:
        ui_proc.send_signal(signal.SIGTERM)
        ui_proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium (see below)")
def test_streamlit_run_follows_mlflow_tracking_uri(store, launched, tmp_path):
    """`streamlit run dashboards/app.py` with only MLFLOW_TRACKING_URI set shows that store."""
    proc, (port,) = launched["streamlit_run"]
    try:
        deadline = time.monotonic() + 60
        while not ui._answers(f"http://127.0.0.1:{port}/_stcore/health"):
            assert proc.poll() is None and time.monotonic() < deadline, "streamlit did not start"
            time.sleep(0.3)
        browser = Chromium(f"http://127.0.0.1:{port}", tmp_path / "profile")
        try:
            winner = store.results["leaderboard"][0]["arch"]
            text = _wait_for_text(browser, winner, 90)
        finally:
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert winner in text and "Traceback" not in text, text[:2000]


@pytest.fixture
def served(launched) -> Iterator[tuple[str, str]]:
    """``alrao-tune ui`` (dashboard + MLflow UI) on free ports; stopped with SIGTERM."""
    proc, (port, mlflow_port) = launched["ui"]
    lines = []
    for line in proc.stdout:  # returns once both servers answer
        lines.append(line)
        if "Ctrl-C stops both" in line:
            break
    assert proc.poll() is None, "".join(lines)
    yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{mlflow_port}"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    for p in (port, mlflow_port):  # both servers are gone
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", p)) != 0


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium: apt-get install -y "
                    "--no-install-recommends chromium fonts-liberation")
def test_dashboard_in_a_real_browser(served, store, tmp_path):
    url, mlflow_url = served
    with urllib.request.urlopen(f"{mlflow_url}/health") as resp:
        assert resp.status == 200
    browser = Chromium(url, tmp_path / "profile")
    try:
        winner = store.results["leaderboard"][0]["arch"]
        deadline, text, tables = time.monotonic() + 90, "", 0
        while time.monotonic() < deadline:
            text = browser.js("document.body ? document.body.innerText : ''") or ""
            tables = browser.js("document.querySelectorAll('[data-testid=stDataFrame]').length")
            if winner in text and tables:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # let the table's canvas paint
        shot = browser.screenshot(tmp_path / "dashboard.png")
        errors = browser.js("document.querySelectorAll('[data-testid=stException],"
                            "[data-testid=stAlertContentError]').length")
        # the Trial tab draws the learning curves and the switch posterior
        browser.js("[...document.querySelectorAll('[data-testid=stTab]')]"
                   ".find(b => b.innerText.trim() === 'Trial').click()")
        drawn = browser.wait("document.querySelectorAll('[data-testid=stVegaLiteChart] "
                             "canvas, [data-testid=stVegaLiteChart] svg').length", 30)
        browser.screenshot(tmp_path / "dashboard-trial.png")
    finally:
        browser.close()
    assert winner in text and tables >= 1, text[:2000]
    assert errors == 0, text[:2000]
    assert "Traceback" not in text
    assert drawn >= 2  # learning curves + posterior at least
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("ALRAO_TUNE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        for name in ("dashboard.png", "dashboard-trial.png"):
            shutil.copyfile(tmp_path / name, SCREENSHOT.parent / name)
