"""``--resume`` over checkpoint folders a kill left incomplete (no ``trainer.pt``), on real
Tune storage built without timing: a trial of the real trainable ends in ERROR after its
last epoch (a trainable that raises once), so Tune's state names its final checkpoint;
each case then takes that storage apart by hand the way a SIGKILL can, and resumes it
through ``run_job`` with the real MLflow callback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from alrao_tune.schema import CHECKPOINT_FILE
from alrao_tune.tune.checkpoints import usable_checkpoint

pytestmark = pytest.mark.slow

EPOCHS = 4
SPACE = {
    "name": "ckpt",
    "dataset": {"name": "blobs", "options": {"n_train": 120, "n_features": 4, "n_classes": 3}},
    "architectures": [{"name": "mlp-8", "family": "mlp", "widths": [8]}],
    "training": {"epochs": EPOCHS, "batch_size": 40, "patience": None},
    "alrao": {"lr_min": 1e-3, "lr_max": 1.0, "n_heads": 2},
}


def _raise_once_at_the_end(marker: str):
    """The real trainable, then (first time only) an error after its last epoch: the trial
    ends in ERROR with every epoch checkpointed, and ``--resume`` continues it."""
    from alrao_tune.tune.trainable import train_trial

    def trainable(config):
        train_trial(config)
        if not Path(marker).exists():
            Path(marker).write_text("raised")
            raise RuntimeError("injected after the last epoch")

    return trainable


def _job(storage: Path, uri: str, tree_state: dict):
    from alrao_tune.space import parse_space
    from alrao_tune.tracking import RunTree
    from alrao_tune.tracking.callback import MLflowTrialCallback
    from alrao_tune.tune.runner import TuneJob
    from alrao_tune.tune.stages import train_config

    space = parse_space(SPACE)
    arch = space.architectures_resolved()[0]
    trial = {"stage": "stage1", "arch_name": arch["name"],
             "train": train_config(space, arch, method="alrao", seed=0)}
    tree = RunTree(uri, tree_state["experiment_id"])
    callback = MLflowTrialCallback(tree, tree_state["stage_run"], background=False)
    return TuneJob(name="stage1", param_space={"trial": trial}, storage=storage,
                   resources={"cpu": 1}, metric="best_val_loss", mode="min",
                   callbacks=[callback], max_failures=0)


@pytest.fixture(scope="module")
def errored(ray_local, tmp_path_factory, mlflow_db_template):
    """A Tune experiment whose only trial ended in ERROR after epoch 4, and its MLflow."""
    from alrao_tune.tracking import RunTree, prepare_store
    from alrao_tune.tune.runner import experiment_trials, run_job

    tmp = tmp_path_factory.mktemp("ckpt")
    shutil.copyfile(mlflow_db_template, tmp / "mlflow.db")
    uri = f"sqlite:///{tmp}/mlflow.db"
    experiment_id = prepare_store(uri, "ckpt")
    state = {"experiment_id": experiment_id,
             "stage_run": RunTree(uri, experiment_id).start("stage1")}
    run_job(_job(tmp / "runs", uri, state),
            trainable=_raise_once_at_the_end(str(tmp / "raised")))
    (trial,) = experiment_trials(tmp / "runs" / "stage1")
    assert trial.status == "ERROR"
    named = Path(trial.checkpoint.path)
    older = sorted(p for p in named.parent.glob("checkpoint_*") if p != named)
    assert len(older) == 1  # Tune kept two: epochs 3 and 4
    return {"tmp": tmp, "state": state, "named": named, "older": older[0]}


def _resume(errored, tmp_path: Path, damage) -> dict:
    """A copy of the errored storage and MLflow store, ``damage(trial folder, named,
    older)`` applied, then ``check_resumable`` and ``run_job(resume=True)``."""
    from mlflow import MlflowClient

    from alrao_tune.tune.runner import check_resumable, experiment_trials, run_job

    shutil.copytree(errored["tmp"] / "runs", tmp_path / "runs")
    shutil.copyfile(errored["tmp"] / "mlflow.db", tmp_path / "mlflow.db")
    rel = errored["named"].relative_to(errored["tmp"])
    named = tmp_path / rel
    older = named.parent / errored["older"].name
    damage(named.parent, named, older)
    uri, notes = f"sqlite:///{tmp_path}/mlflow.db", []
    assert check_resumable(tmp_path / "runs" / "stage1", say=notes.append) == 1
    # the same trainable (Tune checks its name); it raised once already, so it won't again
    run_job(_job(tmp_path / "runs", uri, errored["state"]), resume=True,
            trainable=_raise_once_at_the_end(str(errored["tmp"] / "raised")))
    (trial,) = experiment_trials(tmp_path / "runs" / "stage1")
    client = MlflowClient(uri)
    (run,) = [r for r in client.search_runs([errored["state"]["experiment_id"]])
              if "alrao_tune.trial_id" in r.data.tags]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
    return {"notes": notes, "trial": trial, "steps": steps, "run": run}


def test_named_checkpoint_left_incomplete_resumes_from_the_newest_complete(errored, tmp_path):
    """The kill landed while Tune deleted the checkpoint its state names: the resume
    continues from the newest complete checkpoint (epoch 3), redoes epoch 4 only, and
    MLflow holds every epoch once."""
    got = _resume(errored, tmp_path, lambda _, named, older: (named / CHECKPOINT_FILE).unlink())
    (note,) = got["notes"]
    assert f"{errored['named'].name}, the checkpoint Tune's experiment state names, is " \
        "incomplete (no trainer.pt)" in note
    assert f"continues from a copy of {errored['older'].name} (epoch 3)" in note
    result = got["trial"].last_result
    assert got["trial"].status == "TERMINATED" and result["epoch"] == EPOCHS
    assert result["iterations_since_restore"] == 1  # epoch 4 again, nothing before it
    assert got["steps"] == list(range(1, EPOCHS + 1))
    assert got["run"].info.status == "FINISHED"


def test_newest_folder_left_incomplete_is_skipped_and_said(errored, tmp_path):
    """The kill landed while Tune wrote a newer checkpoint folder than the one it names:
    that folder is skipped (said), the trial continues from the named one."""
    def damage(trial_dir: Path, named: Path, older: Path) -> None:
        index = int(named.name.split("_")[1]) + 1
        (trial_dir / f"checkpoint_{index:06d}").mkdir()
        (trial_dir / f"checkpoint_{index:06d}" / ".partial").write_text("")

    got = _resume(errored, tmp_path, damage)
    (note,) = got["notes"]
    index = int(errored["named"].name.split("_")[1]) + 1
    assert note.endswith(f"skipped incomplete checkpoint folder(s) checkpoint_{index:06d} "
                         "(no readable trainer.pt: the process was killed while Tune wrote "
                         "or deleted them)")
    result = got["trial"].last_result
    assert got["trial"].status == "TERMINATED" and result["epoch"] == EPOCHS
    assert result["iterations_since_restore"] == 1  # the final state, reported once more
    assert got["steps"] == list(range(1, EPOCHS + 1))


def test_older_sibling_left_incomplete_is_skipped_and_said(errored, tmp_path):
    """The kill landed while Tune deleted an older kept checkpoint: the named one is
    complete, the trial continues from it."""
    got = _resume(errored, tmp_path, lambda _, named, older: (older / CHECKPOINT_FILE).unlink())
    (note,) = got["notes"]
    assert f"skipped incomplete checkpoint folder(s) {errored['older'].name}" in note
    assert "is gone" not in note and "incomplete (no trainer.pt)" not in note
    assert got["trial"].status == "TERMINATED" and got["trial"].last_result["epoch"] == EPOCHS
    assert got["steps"] == list(range(1, EPOCHS + 1))


def test_usable_checkpoint_reads_the_cases_without_resuming(errored, tmp_path):
    """The rule alone: named complete -> itself; named incomplete or gone -> the newest
    complete sibling; nothing complete -> CheckpointError naming the folder."""
    from ray import tune

    from alrao_tune.train import CheckpointError

    trial_dir = tmp_path / "trial"
    shutil.copytree(errored["named"].parent, trial_dir)
    named, older = trial_dir / errored["named"].name, trial_dir / errored["older"].name
    assert usable_checkpoint(tune.Checkpoint(str(named))) == (None, None)
    (named / CHECKPOINT_FILE).unlink()
    source, note = usable_checkpoint(tune.Checkpoint(str(named)))
    assert source == str(older) and "incomplete (no trainer.pt)" in note
    shutil.rmtree(named)
    source, note = usable_checkpoint(tune.Checkpoint(str(named)))
    assert source == str(older) and "is gone" in note
    (older / CHECKPOINT_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{named} is gone and no other checkpoint"):
        usable_checkpoint(tune.Checkpoint(str(named)))
