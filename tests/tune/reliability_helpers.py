"""Helpers of ``test_reliability.py`` and ``test_faults.py``: a screening in a killable
subprocess, MLflow reads.

A killed screening runs ``python -m alrao_tune.cli screen ...`` in its own session
(``start_new_session``), so that SIGKILL to its process group takes its local Ray (GCS,
raylet, workers) down with it; the test process itself never starts Ray for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def _default_sigint() -> None:
    """A shell starts background jobs with SIGINT ignored, and Python keeps an ignored
    SIGINT ignored: the child gets the default back, so Ctrl-C tests work under `cmd &`."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Screening:
    """``alrao-tune <command>`` (default ``screen``) in a subprocess (its own session),
    output to ``log``."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 command: str = "screen") -> None:
        self.log = log
        full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "alrao_tune.cli", command, *args], cwd=REPO,
                env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_default_sigint)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, condition: Callable[[], bool], timeout: float = 400,
                   what: str = "condition") -> None:
        """Polls ``condition`` every 50 ms; fails if the process ends first or on timeout."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"screening ended (code {self.proc.returncode}) before "
                                     f"{what}:\n{self.output[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.output[-3000:]}")
            time.sleep(0.05)

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> dict[str, int]:
        """SIGKILL to the whole process group; then any process left in the session (a
        Ray process that moved to its own group) is killed by pid. Returns how many were
        left after the group kill and how many after waiting."""
        sid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, signal.SIGKILL)
        self.proc.wait(30)
        left = session_pids(sid)
        deadline = time.monotonic() + 15
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)  # fate-shared Ray processes die with their parent
        stray = session_pids(sid)
        for pid in stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return {"after_group_kill": len(left), "stray": len(stray)}


def run_here(args: Sequence[str], log: Path, command: str = "screen") -> int:
    """``alrao-tune <command> ...`` in this process (on the session's Ray, no Ray start-up
    of its own), its output (``print`` progress, one-line errors) to ``log``; returns the
    exit code. For an invocation no test kills, e.g. the ``--resume`` that finishes a
    killed one."""
    from alrao_tune.cli import main

    with open(log, "w") as out, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        return main([command, *args])


def fresh_store(template: Path, db: Path) -> str:
    """A tracking URI for ``db``, an empty, migrated MLflow SQLite store copied from the
    session's template (creating one takes seconds; see ``mlflow_db_template``)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)
    return f"sqlite:///{db}"


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def stage_dir(storage: Path, space: str, stage: str) -> Path | None:
    """``<storage>/<space>/<LATEST>/<stage>`` if it exists yet."""
    latest = storage / space / "LATEST"
    if not latest.exists():
        return None
    path = storage / space / latest.read_text().strip() / stage
    return path if path.is_dir() else None


def checkpoints(folder: Path | None) -> list[Path]:
    """Every ``trainer.pt`` under a Tune experiment folder."""
    return sorted(folder.glob("*/checkpoint_*/trainer.pt")) if folder is not None else []


def newest_state_text(folder: Path | None) -> str:
    """The newest ``experiment_state-*.json`` of a Tune experiment folder, as text."""
    if folder is None:
        return ""
    files = sorted(folder.glob("experiment_state-*.json"))
    try:
        return files[-1].read_text() if files else ""
    except OSError:
        return ""


def mlflow_runs(uri: str, experiment: str, *, all_runs: bool = False) -> tuple[Any, list[Any]]:
    """(client, runs of ``experiment``): active runs, or every run with ``all_runs``."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    view = ViewType.ALL if all_runs else ViewType.ACTIVE_ONLY
    return client, client.search_runs([exp.experiment_id], run_view_type=view,
                                      max_results=1000)


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, in step order."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def tree_of(runs: list[Any]) -> dict[str, Any]:
    """{"pipeline": run, "stages": {name: run}, "trials": {stage name: [runs]}}."""
    parent = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in runs}
    pipelines = [r for r in runs if parent[r.info.run_id] is None]
    assert len(pipelines) == 1, [r.info.run_name for r in pipelines]
    stages = {r.info.run_name: r for r in runs if parent[r.info.run_id] == pipelines[0].info.run_id}
    trials = {name: [r for r in runs if parent[r.info.run_id] == s.info.run_id]
              for name, s in stages.items()}
    return {"pipeline": pipelines[0], "stages": stages, "trials": trials}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def write_space(folder: Path, space: dict) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def trial_index(checkpoint: Path) -> int:
    """The trial counter in a Tune trial folder name ``train_trial_<id>_<n>_...``."""
    return int(checkpoint.parts[-3].split("_")[3])


def trials_at(folder: Path) -> dict[str, dict]:
    """Per Tune trial of the experiment in ``folder``: status, the checkpoint its state
    names, its last result, ``resume_epoch``: the epochs done in the checkpoint a resume
    continues from (the named one; if a kill landed while Tune deleted it, the trial's
    newest complete checkpoint, see ``tune/checkpoints.py``), and ``incomplete``: its
    checkpoint folders without a readable ``trainer.pt``."""
    from alrao_tune.train import CheckpointError
    from alrao_tune.tune.checkpoints import usable_checkpoint
    from alrao_tune.tune.runner import experiment_trials

    out = {}
    for t in experiment_trials(folder):
        named = Path(t.checkpoint.path) if t.checkpoint is not None else None
        resume_epoch, incomplete = None, []
        if named is not None:
            incomplete = [p for p in sorted(named.parent.glob("checkpoint_*"))
                          if epoch_of(p) is None]
            try:
                replacement, _ = usable_checkpoint(t.checkpoint)
                resume_epoch = epoch_of(Path(replacement) if replacement else named)
            except CheckpointError:
                pass  # nothing to continue from: the resume refuses (see test_reliability)
        out[t.trial_id] = {"status": t.status, "checkpoint": str(named) if named else None,
                           "resume_epoch": resume_epoch, "incomplete": incomplete,
                           "last_result": dict(t.last_result or {})}
    return out


def epoch_of(checkpoint: Path) -> int | None:
    """The epochs done in a checkpoint folder; None for an incomplete one (no readable
    ``trainer.pt``: a kill landed while Tune wrote or deleted it)."""
    import torch

    try:
        return torch.load(checkpoint / "trainer.pt", weights_only=True)["loop"]["epoch"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return None


def incomplete_checkpoints(folder: Path | None) -> list[Path]:
    """The ``checkpoint_*`` folders under a Tune experiment folder without a readable
    ``trainer.pt``."""
    if folder is None:
        return []
    return sorted(p for p in folder.glob("*/checkpoint_*") if epoch_of(p) is None)


def vanish_named_checkpoint(folder: Path) -> tuple[str, Path, int] | None:
    """What a SIGKILL between Tune deleting a checkpoint and saving the experiment state
    that names its successor leaves: the state names a folder that is gone (Tune refuses
    to restore from it), the trial's other checkpoints are there. Done to one unfinished
    trial with a complete named checkpoint, preferring one with a newer complete
    checkpoint (its resume continues from the newest: epochs MLflow may lack). Returns the
    trial id, the named folder and the epochs done in the checkpoint the resume will
    continue from."""
    candidates = []
    for trial_id, trial in trials_at(folder).items():
        if trial["status"] == "TERMINATED" or trial["checkpoint"] is None:
            continue
        named = Path(trial["checkpoint"])
        named_epoch = epoch_of(named)
        if named_epoch is None:
            continue  # already incomplete: the resume treats it as gone by itself
        newer = [e for e in (epoch_of(p) for p in named.parent.glob("checkpoint_*")
                             if p != named) if e is not None and e > named_epoch]
        candidates.append((not newer, trial_id, named, max(newer, default=None)))
    if not candidates:
        return None
    _, trial_id, named, newer = min(candidates, key=lambda c: c[0])
    if newer is None:
        epoch = epoch_of(named)
        named.rename(named.with_name(f"{named.name}_kept"))
        return trial_id, named, epoch
    shutil.rmtree(named)
    return trial_id, named, newer


def trial_run_ids(uri: str, experiment: str) -> dict[str, str]:
    """Tune trial id -> MLflow run id of the experiment's trial runs."""
    _, runs = mlflow_runs(uri, experiment)
    return {r.data.tags["alrao_tune.trial_id"]: r.info.run_id for r in runs
            if "alrao_tune.trial_id" in r.data.tags}
