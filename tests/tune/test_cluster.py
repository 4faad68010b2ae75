"""Running on a Ray cluster: a 2-node cluster on this machine, a node removed mid-run, a
real ``mlflow server`` over HTTP, Tune storage given as a ``file://`` URI (a screening
killed and resumed through it).

The cluster is a ``ray.cluster_utils.Cluster`` (two raylets, 1 CPU each) started by this
test process; every screening runs as ``python -m alrao_tune.cli screen`` in a subprocess
(:class:`Screening`) that connects with ``--address``, so the cluster never meets a Ray
of the test process (these tests use no ``ray_local``; only the ``resources.gpu=1`` case
of the bad-input test starts, and stops, a local Ray in it, or reuses ``ray_local`` if
another module started it). The cluster keeps its files in a private ``RAY_TMPDIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from alrao_tune.cli import main
from tests.tune.reliability_helpers import (
    Screening,
    mlflow_runs,
    newest_state_text,
    stage_dir,
    tree_of,
)
from tests.tune.test_screen import TINY, write_space

pytestmark = pytest.mark.slow

SPACE = {**TINY, "name": "cluster"}  # 3 tiny MLPs: 3 Alrao trials, then 2 x 2 Optuna trials
# Longer stage-1 trials (no stage 2), so that a node can be removed while they run.
LONG = {**TINY, "name": "nodeloss",
        "dataset": {"name": "blobs", "options": {"n_train": 3000, "n_features": 6,
                                                 "n_classes": 3}},
        "architectures": [{"name": f"mlp-{w}", "family": "mlp", "widths": [w]}
                          for w in (8, 16, 24, 32)],
        "training": {"epochs": 12, "batch_size": 32, "patience": None},
        "stage1": {"seeds": [0], "top_k": 1}, "stage2": {"enabled": False}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def mlflow_server(tmp, mlflow_db_template):
    """``mlflow server`` on 127.0.0.1 (a free port, SQLite, artifacts served over HTTP);
    its store starts as a copy of the migrated empty database (no migrations to wait for)."""
    shutil.copyfile(mlflow_db_template, tmp / "server.db")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp / "mlflow-server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", f"sqlite:///{tmp}/server.db",
         "--artifacts-destination", str(tmp / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, (tmp / "mlflow-server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "mlflow server did not start in 90 s"
                time.sleep(0.5)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, 1 CPU each, on this machine.

    Its session folders and the ``ray_current_cluster`` file live in a private
    ``RAY_TMPDIR`` (short: Unix socket paths are limited to 107 characters), so that no
    other Ray on this machine (``ray.init()`` reads ``/tmp/ray/ray_current_cluster``)
    joins it by accident.
    """
    from ray.cluster_utils import Cluster

    tmpdir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_AUTH_MODE")}
    os.environ.update(RAY_TMPDIR=tmpdir, RAY_AUTH_MODE="disabled")
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "object_store_memory": 80 * 1024**2, "include_dashboard": False})
        worker = c.add_node(num_cpus=1, object_store_memory=80 * 1024**2)
        c.wait_for_nodes()
        yield c, c.head_node.node_id, worker
    finally:
        if c is not None:
            c.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmpdir, ignore_errors=True)


def _screen(args: list[str], log: Path, timeout: float = 300) -> Screening:
    run = Screening(args, log)
    code = run.wait(timeout)
    assert code == 0, run.output[-4000:]
    return run


@pytest.fixture(scope="module")
def single_node_started(tmp, mlflow_server):
    """The reference screening, started in a thread (not awaited): a local Ray (no
    --address), Tune storage as a ``file://`` URI, MLflow on the HTTP server. It is
    SIGKILLed once a stage-1 trial has ended, then ``--resume``d to the end (the state
    files and Tune's experiment are read back through the URI). Requested before
    ``two_nodes``, it runs alongside that screening."""
    space = write_space(tmp, SPACE)
    storage = f"file://{tmp}/uri-runs"
    args = [str(space), "--storage", storage, "--tracking-uri", mlflow_server,
            "--output", str(tmp / "single-out")]
    out: dict = {"space": space, "storage": storage}

    def run() -> None:
        try:
            first = Screening(args, tmp / "single-first.log")
            stage1 = lambda: stage_dir(tmp / "uri-runs", "cluster", "stage1")  # noqa: E731
            first.wait_until(lambda: "TERMINATED" in newest_state_text(stage1()),
                             what="a finished stage-1 trial")
            first.kill()
            second = Screening([*args, "--resume"], tmp / "single.log")
            out["code"], out["log"] = second.wait(300), second.output
        except BaseException as err:  # noqa: BLE001 - reported by single_node
            out["error"] = err

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


@pytest.fixture(scope="module")
def single_node(single_node_started, tmp):
    started = single_node_started
    started["thread"].join(400)
    if "error" in started:
        raise started["error"]
    assert started.get("code") == 0, started.get("log", "(still running)")[-4000:]
    results = json.loads((tmp / "single-out" / "results.json").read_text())
    return {**started, "results": results}


@pytest.fixture(scope="module")
def two_nodes(tmp, cluster, mlflow_db_template):
    c, head, worker = cluster
    space = tmp / "two" / "space.yaml"
    space.parent.mkdir()
    write_space(space.parent, SPACE)
    shutil.copyfile(mlflow_db_template, tmp / "two.db")  # migrated before anyone reads it
    uri = f"sqlite:///{tmp}/two.db"
    _screen([str(space), "--address", c.address, "--storage", str(tmp / "two-runs"),
             "--tracking-uri", uri, "--output", str(tmp / "two-out")], tmp / "two.log")
    results = json.loads((tmp / "two-out" / "results.json").read_text())
    return {"uri": uri, "results": results, "head": head, "worker": worker.node_id}


def _board(results: dict) -> list[tuple]:
    return [(r["arch"], r["val_loss"], r["best_lr"], r["alrao_score"])
            for r in results["leaderboard"]]


def test_two_nodes_spread_trials_and_match_a_single_node_run(single_node_started, two_nodes,
                                                             single_node):
    results = two_nodes["results"]
    trials = results["stage1_trials"] + results["stage2_trials"]
    nodes = {t["node_id"] for t in trials}
    assert nodes == {two_nodes["head"], two_nodes["worker"]}  # both nodes ran trials
    # MLflow holds the node of every trial (the string metric becomes a tag)
    _, runs = mlflow_runs(two_nodes["uri"], "cluster")
    tagged = {r.data.tags["alrao_tune.trial_id"]: r.data.tags.get("node_id")
              for r in runs if "alrao_tune.trial_id" in r.data.tags}
    assert tagged == {t["trial_id"]: t["node_id"] for t in trials}
    # the same seeds give the same leaderboard as one local node
    reference = single_node["results"]
    assert [r[0] for r in _board(results)] == [r[0] for r in _board(reference)]
    for row, ref in zip(_board(results), _board(reference)):
        for value, expected in zip(row[1:], ref[1:]):  # None: not tuned in stage 2
            assert value == (expected if expected is None else pytest.approx(expected,
                                                                               rel=1e-9))


def _running_on(db: Path, node_id: str) -> bool:
    """Whether a RUNNING trial run tagged with ``node_id`` has logged 2 epochs (read-only
    SQL on the MLflow database: the callback flushes a trial's values, and its string
    results as tags, before Tune records the epoch's checkpoint)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            row = con.execute(
                "SELECT COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "JOIN latest_metrics m ON m.run_uuid = r.run_uuid WHERE r.status = 'RUNNING' "
                "AND t.key = 'node_id' AND t.value = ? AND m.key = 'epoch' AND m.value >= 2",
                (node_id,)).fetchone()
    except sqlite3.Error:
        return False
    return bool(row and row[0])


def test_removed_node_trials_continue_elsewhere_from_checkpoints(tmp, cluster,
                                                                 mlflow_db_template):
    c, head, worker = cluster
    space = tmp / "long" / "space.yaml"
    space.parent.mkdir()
    write_space(space.parent, LONG)
    db = tmp / "long.db"
    shutil.copyfile(mlflow_db_template, db)  # migrated before anyone reads it
    uri = f"sqlite:///{db}"
    run = Screening([str(space), "--address", c.address, "--storage", str(tmp / "long-runs"),
                     "--tracking-uri", uri, "--output", str(tmp / "long-out")],
                    tmp / "long.log")
    run.wait_until(lambda: _running_on(db, worker.node_id), timeout=240,
                   what="a trial on the second node with a checkpoint")
    c.remove_node(worker)
    code = run.wait(300)
    assert code == 0, run.output[-4000:]
    results = json.loads((tmp / "long-out" / "results.json").read_text())
    trials = results["stage1_trials"]
    assert len(trials) == 4 and {t["status"] for t in trials} == {"completed"}
    assert all(t["epochs"] == 12 for t in trials)
    client, runs = mlflow_runs(uri, "nodeloss")
    tree = tree_of(runs)
    trial_runs = tree["trials"]["stage1 (alrao)"]
    # one MLflow run per trial, every run ended; nothing RUNNING anywhere
    assert sorted(r.data.tags["alrao_tune.trial_id"] for r in trial_runs) == \
        sorted(t["trial_id"] for t in trials)
    assert {r.info.status for r in runs} == {"FINISHED"}
    # the trial(s) of the removed node failed once and finished on the head node, from
    # their checkpoint: every epoch logged exactly once
    retried = [r for r in trial_runs if r.data.tags.get("alrao_tune.failures")]
    assert retried, run.output[-3000:]
    for r in retried:
        assert r.data.tags["node_id"] == head
        epochs = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        assert sorted(epochs) == list(range(1, 13))
        # continued from its checkpoint (>= epoch 2), not from scratch: at most the one
        # epoch reported after the last checkpoint Tune recorded came again
        assert int(r.data.tags.get("alrao_tune.replayed_results", 0)) <= 1
    assert "resuming" not in run.output  # retried inside the same invocation


def test_mlflow_server_over_http_holds_the_run_tree(single_node, mlflow_server):
    _, runs = mlflow_runs(mlflow_server, "cluster")
    tree = tree_of(runs)
    assert sorted(tree["stages"]) == ["stage1 (alrao)", "stage2 (optuna)"]
    assert len(tree["trials"]["stage1 (alrao)"]) == 3
    assert len(tree["trials"]["stage2 (optuna)"]) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert single_node["results"]["run_ids"]["pipeline"] == tree["pipeline"].info.run_id
    # artifacts went through the server (it serves them; the driver wrote no local files)
    from mlflow import MlflowClient

    arts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(
        tree["pipeline"].info.run_id)}
    assert {"leaderboard.csv", "results.json", "figures"} <= arts


def test_file_uri_storage_holds_the_state_and_resume_says_nothing_to_resume(
        single_node, mlflow_server, capsys):
    from pyarrow import fs as pafs

    from alrao_tune.tune.runner import check_resumable, experiment_trials

    storage = single_node["storage"]
    results = single_node["results"]
    # the killed screening was resumed through the URI (pipeline.json and Tune's
    # experiment read back from it); the kill usually lands in stage 1
    log = single_node["log"]
    assert f"resuming {storage}/cluster/" in log or "finished before the interruption" in log
    assert results["storage"].startswith(f"{storage}/cluster/")
    filesystem, base = pafs.FileSystem.from_uri(f"{storage}/cluster")
    with filesystem.open_input_stream(f"{base}/LATEST") as f:
        latest = f.read().decode()
    with filesystem.open_input_stream(f"{base}/{latest}/pipeline.json") as f:
        state = json.loads(f.read())
    assert state["status"] == "FINISHED" and set(state["done"]) == {"stage1", "stage2"}
    # Tune wrote its experiments there, readable by URI
    stage1 = f"{storage}/cluster/{latest}/stage1"
    assert {t.status for t in experiment_trials(stage1)} == {"TERMINATED"}
    assert check_resumable(stage1) == 0
    # --resume of the finished screening: exit 2, nothing written
    code = main(["screen", str(single_node["space"]), "--storage", storage,
                 "--tracking-uri", mlflow_server, "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "finished" in err


BAD_CLUSTER_INPUT = [
    (["--storage", "nosuchscheme://bucket/x"], "nosuchscheme://bucket/x"),
    (["--address", "127.0.0.1:9"], "cannot reach the Ray cluster at '127.0.0.1:9'"),
    (["--address", "ray://127.0.0.1:10001"], "Ray Client"),
    (["--address", "not-an-address"], "is not HOST:PORT"),
    (["--set", "resources.gpu=1"], "no Ray node can run a trial"),
]


@pytest.mark.parametrize("extra,match", BAD_CLUSTER_INPUT)
def test_bad_cluster_input_exits_2(tmp_path, extra, match, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = write_space(tmp_path, SPACE)
    args = ["screen", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    if "--storage" not in extra:
        args += ["--storage", str(tmp_path / "runs")]
    code = main([*args, *extra])
    assert code == 2
    # the last line (Ray's log handlers may print a "Logging error" above it in pytest)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("alrao-tune: error:") and match in last
    assert not (tmp_path / "runs").exists()
