"""The Ray Tune function trainable: one trial = one :func:`alrao_tune.train` run.

The trial config is a plain dict ``{"train": {...TrainConfig fields...}, "arch_name": ...,
"stage": ...}`` plus, in stage 2, the searched values at the top level (``lr``,
``momentum``, ``weight_decay``) which override ``train``. It is converted once into a
frozen :class:`~alrao_tune.train.TrainConfig`.

Every epoch reports the epoch's record (flat numbers, ``status``, and ``step_metrics``
with per-step switch posteriors for the driver-side MLflow callback) plus running bests
(``best_val_loss``, ``best_val_acc``, ``best_best_head_val_loss``) and the Ray
``node_id`` running it, with a checkpoint of the whole trainer state; the last report
also carries the test metrics measured at the best validation epoch. A resumed trial
continues from its last checkpoint exactly; its first report also carries the metrics of
the epochs in that checkpoint (``RESTORED_KEY``). ``epoch_hook(trainer)`` runs after each
epoch, before its report and checkpoint: the fault-injecting trainables of the tests and of
``alrao-tune bench soak`` (:mod:`alrao_tune.bench.faults`) wrap this function with one.

On a cluster the driver ships only this small config to the workers, never arrays: each
worker process loads the trial's dataset itself, once (:func:`dataset_for`, kept by reused
actors). Generated datasets (``blobs``, ``synthetic``) are generated from their seed in
memory; ``mnist1d`` is generated once per node into the node's on-disk cache
(``$ALRAO_TUNE_CACHE``, default ``~/.cache/alrao_tune``; written atomically, so concurrent
workers are safe) and read from there afterwards; ``digits`` comes with scikit-learn;
``cifar10`` and ``text`` read ``dataset.options.path``, which must therefore exist on every
node (a shared filesystem, or the same path copied to each). The device follows the
trial's resources: ``training.device: auto`` becomes ``cuda`` when ``resources.gpu > 0``
(Ray sets ``CUDA_VISIBLE_DEVICES`` to the trial's GPU, fractional shares included).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from alrao_tune.data import DatasetSplits, load_dataset
from alrao_tune.schema import CHECKPOINT_FILE, RESTORED_KEY
from alrao_tune.train.config import TrainConfig

SEARCHED_KEYS = ("lr", "momentum", "weight_decay")
# Trial config key: when true, every epoch that improves the validation loss also measures
# the test accuracy of that model (``best_test_acc``), so that a trial stopped early (ASHA,
# a compute budget) still has the test accuracy of its best model (``compare`` strategies).
TRACK_TEST_KEY = "track_test"
EpochHook = Callable[[Any], None]  # called with the Trainer after every epoch


def trial_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat trial config (stage 1 nests it under ``trial``, its one grid axis)."""
    return {**config, **config["trial"]} if "trial" in config else dict(config)


def trial_train_config(config: Mapping[str, Any]) -> TrainConfig:
    """The typed training config of a trial (searched values override ``train``)."""
    config = trial_config(config)
    train = dict(config["train"])
    for key in SEARCHED_KEYS:
        if key in config:
            train[key] = config[key]
    return TrainConfig.from_dict(train)


@lru_cache(maxsize=4)
def _cached_dataset(name: str, options: tuple, seed: int) -> DatasetSplits:
    return load_dataset(name, seed=seed, **dict(options))


def dataset_for(cfg: TrainConfig) -> DatasetSplits:
    """Loads (once per worker process: reused actors keep it) the trial's dataset."""
    options = tuple(sorted((k, _freeze(v)) for k, v in cfg.dataset_options.items()))
    return _cached_dataset(cfg.dataset, options, cfg.data_seed)


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


class _RunningBest:
    """Best-so-far values over epochs, for ranking trials stopped at any epoch.

    Every key is always reported (Tune requires the ranking metric in every result): a
    run with no finite value yet reports the worst value, ``inf`` loss or 0 accuracy.
    """

    KEYS = (("val_loss", min), ("val_acc", max), ("best_head_val_loss", min))
    WORST = {"val_loss": math.inf, "val_acc": 0.0, "best_head_val_loss": math.inf}

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def update(self, record: Mapping[str, Any]) -> dict[str, float]:
        for key, better in self.KEYS:
            value = record.get(key)
            if key == "best_head_val_loss" and value is None:
                continue  # not an Alrao run
            if value is None or not math.isfinite(value):
                value = self.WORST[key]
            old = self.values.get(f"best_{key}")
            self.values[f"best_{key}"] = value if old is None else better(old, value)
        return dict(self.values)


def train_trial(config: dict[str, Any], *, epoch_hook: EpochHook | None = None) -> None:
    """Ray Tune function trainable (see the module docstring)."""
    from ray import tune

    from alrao_tune.train import Trainer

    config = trial_config(config)
    cfg = trial_train_config(config)
    node_id = _node_id()
    data = dataset_for(cfg)
    if config.get("lr_find"):
        cfg = apply_lr_find(cfg, data, config["lr_find"])
    trainer = Trainer(cfg, data)
    checkpoint = tune.get_checkpoint()
    best = _RunningBest()

    def epoch_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
        metrics = {k: v for k, v in record.items() if v is not None}
        metrics.update(best.update(record))
        metrics["n_params"] = trainer.n_params
        if cfg.method == "alrao":
            metrics.update(run_lr_min=cfg.lr_min, run_lr_max=cfg.lr_max)
        else:
            metrics["run_lr"] = cfg.lr
        return metrics

    restored: list[dict[str, Any]] = []
    best_test: dict[str, float] = {}
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.restore(Path(d) / CHECKPOINT_FILE)
        restored = [epoch_metrics(record) for record in trainer.records]
        if config.get(TRACK_TEST_KEY) and trainer.best_state is not None:
            best_test["best_test_acc"] = trainer.history().test_acc

    def report(record: dict[str, Any], trainer: Trainer) -> None:
        metrics = epoch_metrics(record)
        if config.get(TRACK_TEST_KEY) and trainer.best_epoch == trainer.epoch:
            best_test["best_test_acc"] = trainer.history().test_acc
        metrics.update({k: v for k, v in best_test.items() if v is not None})
        metrics["node_id"] = node_id  # a string: the MLflow callback stores it as a tag
        if restored:  # once: the epochs in the checkpoint, for values MLflow may lack
            metrics[RESTORED_KEY] = restored.copy()
            restored.clear()
        if trainer.status != "running":
            metrics.update(_final_metrics(trainer))
        if epoch_hook is not None:
            epoch_hook(trainer)
        with tempfile.TemporaryDirectory() as d:
            trainer.save(Path(d) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    if trainer.status != "running":  # restored from the final checkpoint: report once more
        report(dict(trainer.records[-1]), trainer)
        return
    trainer.run(report)


def _node_id() -> str:
    """The id of the Ray node running this trial ("" outside Ray). Tune's own ``node_ip``
    cannot tell apart two nodes on one machine (or behind one NAT); the id can."""
    import ray

    try:
        return str(ray.get_runtime_context().get_node_id() or "")
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return ""


def apply_lr_find(cfg: TrainConfig, data: DatasetSplits, how: str) -> TrainConfig:
    """Runs an LR range test and derives the run's learning rate(s) from it.

    ``how="1cycle"``: SGD with the 1cycle policy peaking at the suggested rate (the
    practitioner's shortcut). ``how="alrao_range"``: Alrao with the interval
    ``[r * 1e-4, r]`` where ``r`` is the rate at the range test's minimum loss, i.e. four
    decades that end where training starts to blow up.
    """
    from alrao_tune.train.lr_finder import lr_find

    found = lr_find(cfg.replace(method="sgd"), data, num_iter=100, start_lr=1e-6, end_lr=10.0)
    if how == "1cycle":
        return cfg.replace(method="sgd", lr=found.suggested, schedule={"name": "onecycle"})
    if how == "alrao_range":
        return cfg.replace(method="alrao", lr_min=found.lr_min_loss * 1e-4,
                           lr_max=found.lr_min_loss)
    raise ValueError(f"unknown lr_find mode {how!r}; use '1cycle' or 'alrao_range'.")


def _final_metrics(trainer: Any) -> dict[str, Any]:
    summary = trainer.history().summary()
    out = {"run_status": summary["status"], "best_epoch": summary["best_epoch"] or 0}
    for key in ("test_loss", "test_acc"):
        if summary.get(key) is not None:
            out[key] = summary[key]
    return out
