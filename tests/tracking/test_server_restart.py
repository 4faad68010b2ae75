"""A remote MLflow that restarts: a real `mlflow server` killed mid-screening and started
again on the same backend store; the screening goes on, every value is stored once and no
run is left RUNNING. And a server that never comes back: a clear error, exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from alrao_tune.cli import main
from alrao_tune.dashboard.launch import _answers, mlflow_command
from alrao_tune.tracking import retry
from tests.tune.test_screen import TINY, write_space

pytestmark = pytest.mark.slow

EPOCHS = 12
OUTAGE_S = 1.0  # on top of the seconds a restarted server takes to answer
SPACE = {**TINY, "name": "restart",
         "architectures": TINY["architectures"][:2],
         "training": {"epochs": EPOCHS, "batch_size": 32, "patience": None},
         "stage1": {"seeds": [0], "top_k": 1},
         "stage2": {"lr": {"low": 1e-3, "high": 1.0}, "trials_per_arch": 2}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """The lean `mlflow server` (STACK.md) on a SQLite store, killable and restartable."""

    def __init__(self, db: Path, port: int) -> None:
        self.cmd = mlflow_command(f"sqlite:///{db}", "127.0.0.1", port)
        self.db, self.url, self.log = db, f"http://127.0.0.1:{port}", db.parent / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> None:
        self.launch()
        self.wait(timeout_s)

    def launch(self) -> None:
        """Starts the process; :meth:`wait` waits until it answers."""
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)

    def wait(self, timeout_s: float = 90) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while not _answers(f"{self.url}/health"):
            assert self.proc.poll() is None and time.monotonic() < deadline, \
                self.log.read_text()[-2000:]
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture(scope="module")
def shared_server(request, tmp_path_factory, mlflow_db_template):
    """One server for the module (each start costs seconds): its SQLite store is shared, each
    test screens into an experiment of its own. It boots while Ray starts."""
    db = tmp_path_factory.mktemp("restart-server") / "mlflow.db"
    shutil.copyfile(mlflow_db_template, db)  # migrated already: the server starts faster
    srv = MlflowServer(db, _free_port())
    srv.launch()
    try:
        request.getfixturevalue("ray_local")
        srv.wait()
        yield srv
    finally:
        srv.kill()


@pytest.fixture
def server(shared_server):
    """The module's server, answering (started again if a test left it stopped), and Ray."""
    if shared_server.proc is None or shared_server.proc.poll() is not None:
        shared_server.start()
    return shared_server


def _restart_when_a_trial_logged(srv: MlflowServer, experiment: str, outage_s: float | None,
                                 done: dict) -> None:
    """Kills the server once a stage-1 trial run of ``experiment`` holds a value, waits
    ``outage_s``, starts it again (never with ``None``)."""
    from mlflow import MlflowClient

    client, deadline = MlflowClient(f"sqlite:///{srv.db}"), time.monotonic() + 300
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], "tags.`alrao_tune.trial_id` != ''") \
            if exp else []
        if any(r.data.metrics for r in runs):
            break
        time.sleep(0.1)
    srv.kill()
    done["killed_at"] = time.monotonic()
    if outage_s is None:
        return
    time.sleep(outage_s)
    srv.start()
    done["back_at"] = time.monotonic()


def test_a_server_restart_mid_screening_loses_nothing(server, tmp_path, caplog):
    from mlflow import MlflowClient

    space, db = write_space(tmp_path, SPACE), server.db
    done: dict = {}
    # the outage lasts OUTAGE_S plus the seconds a new server takes to answer
    restarter = threading.Thread(target=_restart_when_a_trial_logged,
                                 args=(server, SPACE["name"], OUTAGE_S, done), daemon=True)
    restarter.start()
    code = main(["screen", str(space), "--tracking-uri", server.url, "--storage",
                 str(tmp_path / "runs"), "--output", str(tmp_path / "out"), "--json"])
    ended = time.monotonic()
    restarter.join(120)
    assert code == 0
    # the outage happened while the screening ran, which waited for the server and went on
    assert done["killed_at"] < done["back_at"] < ended
    assert "does not answer" in caplog.text and "answers again" in caplog.text
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    client = MlflowClient(f"sqlite:///{db}")  # read the backend store itself
    runs = client.search_runs([results["experiment_id"]], max_results=1000)
    assert {r.info.status for r in runs} == {"FINISHED"}  # nothing left RUNNING
    trials = [r for r in runs if "alrao_tune.trial_id" in r.data.tags]
    assert len(trials) == 2 + 2
    stored = {"stage1": 0, "stage2": 0}
    stage_of = {results["run_ids"][s]: s for s in stored}
    for run in trials:
        history = {k: client.get_metric_history(run.info.run_id, k) for k in run.data.metrics}
        # every epoch's value once
        assert [m.step for m in history["val_loss"]] == list(range(1, EPOCHS + 1))
        for values in history.values():
            assert len({(m.step, m.timestamp) for m in values}) == len(values)
        stored[stage_of[run.data.tags["mlflow.parentRunId"]]] += sum(map(len,
                                                                         history.values()))
    # ... and exactly as many values as the callback logged: none lost, none twice
    for stage, n in stored.items():
        assert n == results["timings"][f"{stage}_mlflow_values"], stage


def test_a_server_that_never_comes_back_fails_clearly(server, tmp_path, capsys, monkeypatch):
    name = "restart-gone"  # an experiment of its own in the module's store
    space = write_space(tmp_path, {**SPACE, "name": name, "stage2": {"enabled": False}})
    monkeypatch.setenv(retry.RETRY_ENV, "1")  # each second waited out is test time
    done: dict = {}
    stopper = threading.Thread(target=_restart_when_a_trial_logged,
                               args=(server, name, None, done), daemon=True)
    stopper.start()  # kills the server, never starts it again
    code = main(["screen", str(space), "--tracking-uri", server.url, "--storage",
                 str(tmp_path / "runs")])
    stopper.join(30)
    assert code == 2
    assert "killed_at" in done  # the server was killed mid-screening
    err = capsys.readouterr().err
    assert f"the MLflow tracking server at {server.url} did not answer" in err
    assert "--resume" in err
