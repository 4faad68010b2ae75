"""ONE training loop for ``method = alrao | sgd | adam`` and the learning-rate-free methods.

The same architecture trained with Alrao, with SGD at a given learning rate or with Adam
differs only in the optimizer (and, for Alrao, the K output heads): that is what makes
the comparison against a grid-searched SGD fair. What differs is a *method* strategy
(:mod:`alrao_tune.train.methods`); the loop below is the same for all.

Typical use::

    history = fit(TrainConfig(dataset="mnist1d", arch={"family": "cnn1d"}, method="alrao"))
    history.best["val_loss"], history.test_acc

Per epoch the loop records train loss, validation loss/accuracy, time, and what the
method adds (for Alrao: the switch posterior, each head's validation loss, the effective
learning rate and the share of features in its decade). A diverged run (non-finite loss)
stops and is returned with ``status="diverged"``; it does not raise. :class:`Trainer` can
be checkpointed after any epoch and resumed exactly (model, optimizer, scheduler, switch,
RNG states, early-stopping state).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from alrao_tune.data import DatasetSplits, iterate_batches, load_dataset
from alrao_tune.errors import AlraoTuneError
from alrao_tune.train.config import TrainConfig
from alrao_tune.train.history import History
from alrao_tune.train.methods import method_for, task_loss
from alrao_tune.train.schedule import build_schedule
from alrao_tune.train.step import make_step
from alrao_tune.zoo import build_model, count_parameters

__all__ = ["CheckpointError", "EpochCallback", "Split", "StepHook", "Trainer", "fit",
           "resolve_device", "task_loss"]

EpochCallback = Callable[[dict[str, Any], "Trainer"], None]
StepHook = Callable[["Trainer", int, Tensor], None]

_DIVERGENCE_CHECK_EVERY = 25
# What a checkpoint's "loop" entry holds: the Trainer attributes that resume the loop.
_LOOP_STATE = ("epoch", "global_step", "records", "status", "best_epoch", "best_val",
               "bad_epochs", "train_time_s")


class Split(NamedTuple):
    """Inputs and targets of one split, on the training device."""

    x: Tensor
    y: Tensor


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device='cpu' or 'auto'.")
    return device


class Trainer:
    """Trains one architecture with one method; checkpointable after every epoch.

    Attributes:
        config, data: what it trains on.
        method: the method strategy (:func:`~alrao_tune.train.methods.method_for`).
        model, optimizer, schedule: what the method built.
        splits: ``{"train", "val", "test"}`` -> :class:`Split` on the device.
        step_hooks: ``hook(trainer, global_step, loss)`` after every step.
        epoch, global_step, records, status, best_epoch: the loop's state.
    """

    def __init__(self, config: TrainConfig, data: DatasetSplits | None = None) -> None:
        self.config = config
        self.data = data if data is not None else load_dataset(
            config.dataset, seed=config.data_seed, **dict(config.dataset_options)
        )
        self.device = resolve_device(config.device)
        self.task = self.data.task
        torch.manual_seed(config.seed)
        zoo_model = build_model(config.arch, self.data)
        self.n_params = count_parameters(zoo_model)
        self.method = method_for(config, self.task)
        self.model, self.optimizer = self.method.build(zoo_model, self.data.n_outputs,
                                                       self.device)
        d = self.data
        self.splits = {name: Split(x.to(self.device), y.to(self.device)) for name, x, y in (
            ("train", d.x_train, d.y_train), ("val", d.x_val, d.y_val),
            ("test", d.x_test, d.y_test))}
        self.steps_per_epoch = max(1, math.ceil(len(d.x_train) / config.batch_size))
        self.schedule = build_schedule(
            self.optimizer, config.schedule, epochs=config.epochs,
            steps_per_epoch=self.steps_per_epoch, has_momentum=self.method.has_momentum)
        self._step_fn = make_step(self._batch_loss, self.optimizer, compile=config.compile)
        self.shuffle_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + 1)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(config.seed + 7)
        self.step_hooks: list[StepHook] = []
        self.epoch = 0
        self.global_step = 0
        self.records: list[dict[str, Any]] = []
        self.status = "running"
        self.best_epoch: int | None = None
        self.best_val = math.inf
        self.bad_epochs = 0
        self.train_time_s = 0.0
        self.best_state: dict[str, Tensor] | None = None

    # ---------------------------------------------------------------- training
    def run(self, callback: EpochCallback | None = None) -> History:
        """Trains until the epoch budget, early stopping, the time budget or divergence."""
        while self.status == "running":
            record = self.train_epoch()
            if callback is not None:
                callback(record, self)
        return self.history()

    def train_epoch(self) -> dict[str, Any]:
        """Runs one epoch of training plus validation and updates the stopping state."""
        t0 = time.perf_counter()
        train_loss = self._train_steps()
        train = self.splits["train"]
        self.method.start_evaluation(self.model, self.optimizer, iterate_batches(
            train.x, train.y, self.config.batch_size, shuffle=False))
        train_s = time.perf_counter() - t0
        val = self.evaluate(*self.splits["val"])
        eval_s = time.perf_counter() - t0 - train_s
        self.schedule.step_epoch()
        self.epoch += 1
        record: dict[str, Any] = {
            "epoch": self.epoch, "train_loss": train_loss, "val_loss": val["loss"],
            "train_time_s": train_s, "global_step": self.global_step,
            "lr_scale": float(self.optimizer.param_groups[0]["lr"]),
        }
        if "acc" in val:
            record["val_acc"] = val["acc"]
        record.update(self.method.epoch_metrics(self.model, self.optimizer, val,
                                                self.global_step))
        record["eval_time_s"] = eval_s
        record["epoch_time_s"] = epoch_s = time.perf_counter() - t0
        self.train_time_s += epoch_s
        self.records.append(record)
        self._update_stopping(record)
        record["status"] = self.status
        return record

    def _train_steps(self) -> float:
        """One pass over the training split; returns the mean training loss."""
        self.model.train()
        self.method.start_training(self.model, self.optimizer)
        train = self.splits["train"]
        total = torch.zeros((), device=self.device)
        seen = 0
        batches = iterate_batches(train.x, train.y, self.config.batch_size, shuffle=True,
                                  generator=self.shuffle_gen)
        for i, (xb, yb) in enumerate(batches):
            if self.data.augment is not None:
                xb = self.data.augment(xb, self.aug_gen)
            loss = self.train_step(xb, yb)
            total += loss.detach() * len(xb)
            seen += len(xb)
            self.global_step += 1
            for hook in self.step_hooks:
                hook(self, self.global_step, loss)
            self.method.after_step(self.model, self.global_step)
            if (i + 1) % _DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(total):
                break
        return float(total) / max(seen, 1)

    def _batch_loss(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """(loss to backpropagate, loss to report) of one batch, by the method; the step
        function (``train/step.py``, eager or compiled) runs it."""
        return self.method.batch_loss(self.model, xb, yb)

    def train_step(self, xb: Tensor, yb: Tensor) -> Tensor:
        """One optimizer step on one batch (and a per-step schedule's step); returns the
        batch's loss. The loop's counters are not touched."""
        loss = self._step_fn(xb, yb)  # zero_grad, loss, backward, optimizer step
        self.schedule.step_batch()
        return loss

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, model: nn.Module | None = None) -> dict[str, Any]:
        """Loss and accuracy on ``(x, y)``; for Alrao also each head's loss."""
        model = self.model if model is None else model
        model.eval()
        n, loss_sum, correct = 0, 0.0, 0.0
        head_sum: Tensor | None = None
        for xb, yb in iterate_batches(x, y, self.config.eval_batch_size, shuffle=False):
            batch = self.method.eval_batch(model, xb, yb)
            m = yb.numel() if self.task == "classification" else len(yb)
            loss_sum += float(batch.loss) * m
            if batch.head_nll is not None:
                head_sum = batch.head_nll * m if head_sum is None else head_sum + batch.head_nll * m
            correct += batch.correct
            n += m
        result: dict[str, Any] = {"loss": loss_sum / max(n, 1)}
        if self.task == "classification":
            result["acc"] = correct / max(n, 1)
        if head_sum is not None:
            result["head_losses"] = (head_sum / max(n, 1)).cpu().tolist()
        return result

    def _update_stopping(self, record: dict[str, Any]) -> None:
        cfg = self.config
        if not (math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])):
            self.status = "diverged"
            return
        if record["val_loss"] < self.best_val:
            self.best_val, self.best_epoch, self.bad_epochs = record["val_loss"], self.epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        if self.epoch >= cfg.epochs:
            self.status = "completed"
        elif (cfg.patience is not None and self.epoch >= cfg.min_epochs
              and self.bad_epochs >= cfg.patience):
            self.status = "early_stopped"
        elif cfg.time_budget_s is not None and self.train_time_s >= cfg.time_budget_s:
            self.status = "time_budget"

    # ------------------------------------------------------------------ result
    def history(self) -> History:
        """The run's result; test metrics are measured at the best validation epoch."""
        test: dict[str, Any] = {}
        best: dict[str, Any] = {}
        if self.best_state is not None:
            best_model = copy.deepcopy(self.model)
            best_model.load_state_dict(self.best_state)
            test = self.evaluate(*self.splits["test"], model=best_model)
            best = {k: v for k, v in self.records[self.best_epoch - 1].items()
                    if k != "step_metrics"}
        return History(
            config=self.config.to_dict(), records=self.records, status=self.status,
            best_epoch=self.best_epoch, best=best, test_loss=test.get("loss"),
            test_acc=test.get("acc"), n_params=self.n_params, train_time_s=self.train_time_s,
            steps=self.global_step, head_rates=self.method.head_rates(self.model))

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: model, optimizer, schedule, RNGs, loop state."""
        sched = self.schedule.scheduler
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "shuffle_gen": self.shuffle_gen.get_state(), "aug_gen": self.aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "loop": {key: getattr(self, key) for key in _LOOP_STATE},
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`; the next epoch continues exactly."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule.scheduler is not None and state["scheduler"] is not None:
            self.schedule.scheduler.load_state_dict(state["scheduler"])
        self.shuffle_gen.set_state(state["shuffle_gen"])
        self.aug_gen.set_state(state["aug_gen"])
        torch.set_rng_state(state["torch_rng"])
        for key, value in state["loop"].items():
            setattr(self, key, value)
        self.best_state = state["best_state"]
        if self.status in ("completed", "time_budget") and self.epoch < self.config.epochs:
            self.status = "running"  # resumed with a larger budget: keep training

    def save(self, path: str | Path) -> None:
        """Writes a checkpoint atomically (``torch.save`` to a temp file, then rename)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def restore(self, path: str | Path) -> None:
        """Loads a checkpoint written by :meth:`save` (``weights_only=True``: no code runs)."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:  # corrupted or foreign file
            raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
        self.load_state_dict(state)


class CheckpointError(AlraoTuneError, RuntimeError):
    """A checkpoint file is missing, corrupted or does not match the run."""


def fit(config: TrainConfig | dict[str, Any], *, data: DatasetSplits | None = None,
        callback: EpochCallback | None = None, resume_from: str | Path | None = None) -> History:
    """Trains one run and returns its :class:`History` (diverged runs are returned, not raised).

    Args:
        config: a :class:`TrainConfig` or a plain dict of its fields.
        data: preloaded dataset splits (loaded from ``config`` when omitted).
        callback: called after every epoch with the epoch's record and the trainer
            (e.g. to report to Ray Tune and checkpoint with ``trainer.save``).
        resume_from: a checkpoint written by :meth:`Trainer.save` to continue from.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    trainer = Trainer(cfg, data)
    if resume_from is not None:
        trainer.restore(resume_from)
    return trainer.run(callback)
