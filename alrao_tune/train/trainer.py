"""ONE training loop for ``method = alrao | sgd | adam`` and the learning-rate-free methods
(``prodigy``, ``dadapt_sgd``, ``dadapt_adam``, ``schedulefree_sgd``, ``schedulefree_adamw``:
see :mod:`alrao_tune.train.optimizers`).

The same architecture trained with Alrao, with SGD at a given learning rate or with Adam
differs only in the optimizer (and, for Alrao, the K output heads): that is what makes
the comparison against a grid-searched SGD fair.

Typical use::

    history = fit(TrainConfig(dataset="mnist1d", arch={"family": "cnn1d"}, method="alrao"))
    history.best["val_loss"], history.test_acc

Per epoch the loop records train loss, validation loss/accuracy, time, and for Alrao the
switch posterior, each head's validation loss, the effective learning rate (the
posterior-weighted geometric mean of the head rates) and the share of features whose rate
lies in the decade of that effective rate. A diverged run (non-finite loss) stops and is
returned with ``status="diverged"``; it does not raise. :class:`Trainer` can be
checkpointed after any epoch and resumed exactly (model, optimizer, scheduler, switch,
RNG states, early-stopping state).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alrao_tune.alrao import AlraoAdam, AlraoModel, AlraoSGD
from alrao_tune.alrao.lr import UnsupportedLayerError
from alrao_tune.data import DatasetSplits, iterate_batches, load_dataset
from alrao_tune.errors import AlraoTuneError
from alrao_tune.schema import head_key
from alrao_tune.train.config import TrainConfig
from alrao_tune.train.history import History
from alrao_tune.train.optimizers import adapted_lr, build_optimizer, eval_mode, train_mode
from alrao_tune.train.schedule import build_schedule
from alrao_tune.zoo import ArchError, build_model, count_parameters

EpochCallback = Callable[[dict[str, Any], "Trainer"], None]
StepHook = Callable[["Trainer", int, Tensor], None]

_DIVERGENCE_CHECK_EVERY = 25


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device='cpu' or 'auto'.")
    return device


def task_loss(out: Tensor, y: Tensor, task: str) -> Tensor:
    """Mean loss of raw outputs: cross-entropy (classification) or 0.5·squared error."""
    if task == "classification":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return 0.5 * (out - y).pow(2).sum(-1).mean()


class Trainer:
    """Trains one architecture with one method; checkpointable after every epoch."""

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
        self.model, self.optimizer = self._build(zoo_model)
        self._tensors = [t.to(self.device) for t in (
            self.data.x_train, self.data.y_train, self.data.x_val, self.data.y_val,
            self.data.x_test, self.data.y_test)]
        self.steps_per_epoch = max(1, math.ceil(len(self.data.x_train) / config.batch_size))
        self.schedule = build_schedule(
            self.optimizer, config.schedule, epochs=config.epochs,
            steps_per_epoch=self.steps_per_epoch, has_momentum=self._has_momentum())
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
        self._feature_log10 = self._body_feature_log10()

    # ----------------------------------------------------------------- building
    @property
    def is_alrao(self) -> bool:
        return self.config.method == "alrao"

    def _build(self, zoo_model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
        cfg = self.config
        if not self.is_alrao:
            model = zoo_model.to(self.device)
            opt = build_optimizer(cfg.method, model.parameters(), lr=cfg.lr,
                                  momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                  nesterov=cfg.nesterov)
            return model, opt
        model = AlraoModel(
            zoo_model.preclassifier, zoo_model.feature_dim, self.data.n_outputs,
            n_heads=cfg.n_heads, task=self.task, theta=cfg.theta).to(self.device)
        try:
            if cfg.alrao_optimizer == "sgd":
                opt = AlraoSGD(model, cfg.lr_min, cfg.lr_max, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
                               seed=cfg.seed)
            else:
                opt = AlraoAdam(model, cfg.lr_min, cfg.lr_max, weight_decay=cfg.weight_decay,
                                seed=cfg.seed)
        except UnsupportedLayerError as err:  # a user builder's layer: bad input
            raise ArchError(str(err)) from err
        return model, opt

    def _has_momentum(self) -> bool:
        """Whether a cyclic schedule may cycle momentum (learning-rate-free methods: no)."""
        cfg = self.config
        if self.is_alrao:
            return cfg.alrao_optimizer == "adam" or cfg.momentum > 0
        return cfg.method == "adam" or (cfg.method == "sgd" and cfg.momentum > 0)

    def _body_feature_log10(self) -> Tensor | None:
        """log10 of every body feature rate (heads excluded), for the decade share."""
        if not self.is_alrao:
            return None
        rates = [self.optimizer.state[p]["feature_lr"] for p in
                 self.model.preclassifier.parameters() if p in self.optimizer.state]
        return torch.cat([r.detach().float().cpu() for r in rates]).log10() if rates else None

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
        train_loss, step_posteriors = self._train_steps()
        eval_mode(self.optimizer, self.model, iterate_batches(  # schedule-free only
            self._tensors[0], self._tensors[1], self.config.batch_size, shuffle=False))
        train_s = time.perf_counter() - t0
        val = self.evaluate(self._tensors[2], self._tensors[3])
        eval_s = time.perf_counter() - t0 - train_s
        self.schedule.step_epoch()
        self.epoch += 1
        record = self._record(train_loss, val, train_s, step_posteriors)
        record["eval_time_s"] = eval_s
        record["epoch_time_s"] = epoch_s = time.perf_counter() - t0
        self.train_time_s += epoch_s
        self.records.append(record)
        self._update_stopping(record)
        record["status"] = self.status
        return record

    def _train_steps(self) -> tuple[float, list[tuple[int, Tensor]]]:
        cfg, model = self.config, self.model
        model.train()
        train_mode(self.optimizer)  # schedule-free only
        x, y = self._tensors[0], self._tensors[1]
        total = torch.zeros((), device=self.device)
        seen, posteriors = 0, []
        batches = iterate_batches(x, y, cfg.batch_size, shuffle=True, generator=self.shuffle_gen)
        for i, (xb, yb) in enumerate(batches):
            if self.data.augment is not None:
                xb = self.data.augment(xb, self.aug_gen)
            loss = self._step(xb, yb)
            total += loss.detach() * len(xb)
            seen += len(xb)
            self.global_step += 1
            for hook in self.step_hooks:
                hook(self, self.global_step, loss)
            every = cfg.posterior_every
            if self.is_alrao and every and self.global_step % every == 0:
                posteriors.append((self.global_step, model.switch.posterior.detach().clone()))
            if (i + 1) % _DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(total):
                break
        if self.is_alrao and (not posteriors or posteriors[-1][0] != self.global_step):
            posteriors.append((self.global_step, model.switch.posterior.detach().clone()))
        return float(total) / max(seen, 1), posteriors

    def _step(self, xb: Tensor, yb: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        if self.is_alrao:
            out = self.model.training_loss(xb, yb, with_output=False)
            out.loss.backward()
            loss = out.model_loss
        else:
            loss = task_loss(self.model(xb), yb, self.task)
            loss.backward()
        self.optimizer.step()
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
            loss, n_correct, head_nll = self._eval_batch(model, xb, yb)
            m = yb.numel() if self.task == "classification" else len(yb)
            loss_sum += float(loss) * m
            if head_nll is not None:
                head_sum = head_nll * m if head_sum is None else head_sum + head_nll * m
            correct += n_correct
            n += m
        result: dict[str, Any] = {"loss": loss_sum / max(n, 1)}
        if self.task == "classification":
            result["acc"] = correct / max(n, 1)
        if head_sum is not None:
            result["head_losses"] = (head_sum / max(n, 1)).cpu().tolist()
        return result

    def _eval_batch(
        self, model: nn.Module, xb: Tensor, yb: Tensor
    ) -> tuple[Tensor, float, Tensor | None]:
        """(mean loss, number correct, per-head mean NLL or None) of one batch."""
        if not self.is_alrao:
            out = model(xb)
            correct = float((out.argmax(-1) == yb).sum()) if self.task == "classification" else 0.0
            return task_loss(out, yb, self.task), correct, None
        head_out = model.heads(model.preclassifier(xb))  # [..., K, C]
        flat = head_out.reshape(-1, *head_out.shape[-2:])  # [N, K, C]
        target = yb.reshape(flat.shape[0], *yb.shape[head_out.dim() - 2:])
        head_nll = model.heads.nll(flat, target).mean(0)  # [K]
        avg = model._average(flat, model.switch.log_posterior)  # skips non-finite heads
        if self.task == "classification":
            correct = float((avg.argmax(-1) == target).sum())
            return F.nll_loss(avg, target), correct, head_nll
        return task_loss(avg, target, self.task), 0.0, head_nll

    def _record(self, train_loss: float, val: dict[str, Any], train_s: float,
                step_posteriors: list[tuple[int, Tensor]]) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "epoch": self.epoch, "train_loss": train_loss, "val_loss": val["loss"],
            "train_time_s": train_s, "global_step": self.global_step,
            "lr_scale": float(self.optimizer.param_groups[0]["lr"]),
        }
        if "acc" in val:
            rec["val_acc"] = val["acc"]
        if (d_lr := adapted_lr(self.optimizer)) is not None:
            rec["adapted_lr"] = d_lr  # D-Adaptation / Prodigy: the step size it found
        if self.is_alrao:
            rec.update(self._alrao_metrics(val, step_posteriors))
        return rec

    def _alrao_metrics(self, val: dict[str, Any],
                       step_posteriors: list[tuple[int, Tensor]]) -> dict[str, Any]:
        posterior = self.model.switch.posterior.detach().cpu()
        rates = self.head_rates()
        lr_eff = math.exp(float((posterior * rates.log()).sum()))
        head_losses = val["head_losses"]
        finite = [v if math.isfinite(v) else math.inf for v in head_losses]
        out: dict[str, Any] = {
            "lr_eff": lr_eff * float(self.optimizer.param_groups[0]["lr"]),
            "best_head": int(min(range(len(finite)), key=finite.__getitem__)),
            "best_head_val_loss": min(finite),
            "posterior_max": float(posterior.max()),
        }
        if self._feature_log10 is not None:
            decade = math.floor(math.log10(out["lr_eff"]))
            out["share_in_decade"] = float((self._feature_log10.floor() == decade).float().mean())
        for k, v in enumerate(head_losses):
            out[f"head_loss/{head_key(k)}"] = v
        stacked = torch.stack([p for _, p in step_posteriors]).cpu().tolist()
        steps = [s for s, _ in step_posteriors]
        out["step_metrics"] = {
            f"posterior/{head_key(k)}": [[s, row[k]] for s, row in zip(steps, stacked)]
            for k in range(len(posterior))
        }
        return out

    def head_rates(self) -> Tensor:
        """The K heads' learning rates (before the group multiplier), on CPU."""
        return self.model.heads.head_rates(self.config.lr_min, self.config.lr_max).cpu()

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
            test = self.evaluate(self._tensors[4], self._tensors[5], model=best_model)
            best = {k: v for k, v in self.records[self.best_epoch - 1].items()
                    if k != "step_metrics"}
        return History(
            config=self.config.to_dict(), records=self.records, status=self.status,
            best_epoch=self.best_epoch, best=best, test_loss=test.get("loss"),
            test_acc=test.get("acc"), n_params=self.n_params, train_time_s=self.train_time_s,
            steps=self.global_step,
            head_rates=self.head_rates().tolist() if self.is_alrao else None)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: model, optimizer, schedule, RNGs, loop state."""
        sched = self.schedule.scheduler
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "shuffle_gen": self.shuffle_gen.get_state(), "aug_gen": self.aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "loop": {"epoch": self.epoch, "global_step": self.global_step,
                     "records": self.records, "status": self.status,
                     "best_epoch": self.best_epoch, "best_val": self.best_val,
                     "bad_epochs": self.bad_epochs, "train_time_s": self.train_time_s},
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
