"""What differs between training methods, as one strategy object per method.

The training loop (:class:`~alrao_tune.train.trainer.Trainer`) is the same for every
method; a *method* owns what is not: the model and optimizer it trains, one training
step's loss, one evaluation batch, and the metrics it adds to each epoch's record.

* :class:`PlainMethod` (``sgd``, ``adam``): the zoo model with ``torch.optim.SGD`` or
  ``torch.optim.Adam`` at the learning rate ``lr``.
* :class:`LrFreeMethod` (``prodigy``, ``dadapt_sgd``, ``dadapt_adam``, ``schedulefree_sgd``,
  ``schedulefree_adamw``): the zoo model with a learning-rate-free optimizer at its
  package's defaults (:mod:`alrao_tune.train.optimizers`).
* :class:`AlraoMethod` (``alrao``): the zoo model's pre-classifier with K output heads
  (:class:`~alrao_tune.alrao.AlraoModel`) and Alrao's per-feature rates
  (:class:`~alrao_tune.alrao.AlraoSGD` / :class:`~alrao_tune.alrao.AlraoAdam`); per epoch
  it adds the switch posterior (per step, as ``step_metrics``), each head's validation
  loss, the effective learning rate and the share of features in its decade.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alrao_tune.alrao import AlraoAdam, AlraoModel, AlraoSGD
from alrao_tune.alrao.lr import UnsupportedLayerError
from alrao_tune.schema import STEP_METRICS_KEY, head_key
from alrao_tune.train.config import TrainConfig
from alrao_tune.train.optimizers import adapted_lr, build_optimizer, eval_mode, train_mode
from alrao_tune.zoo import ArchError, ZooModel


def task_loss(out: Tensor, y: Tensor, task: str) -> Tensor:
    """Mean loss of raw outputs: cross-entropy (classification) or 0.5·squared error."""
    if task == "classification":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return 0.5 * (out - y).pow(2).sum(-1).mean()


class BatchEval(NamedTuple):
    """One evaluation batch: mean loss, number correct (classification), and for Alrao
    each head's mean NLL ``[K]`` (else None)."""

    loss: Tensor
    correct: float
    head_nll: Tensor | None


class PlainMethod:
    """``sgd`` or ``adam`` at the learning rate ``config.lr`` (see the module docstring)."""

    def __init__(self, config: TrainConfig, task: str) -> None:
        self.config, self.task = config, task

    @property
    def has_momentum(self) -> bool:
        """Whether the optimizer keeps a momentum a cyclic schedule may cycle."""
        return self.config.method == "adam" or self.config.momentum > 0

    def build(self, zoo_model: ZooModel, n_outputs: int,
              device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        cfg = self.config
        model = zoo_model.to(device)
        if cfg.method == "sgd":
            return model, torch.optim.SGD(
                model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        return model, torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                       weight_decay=cfg.weight_decay)

    def start_training(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called before an epoch's training steps."""

    def start_evaluation(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                         train_batches: Any) -> None:
        """Called after an epoch's training steps, before evaluation (and checkpoints)."""

    def batch_loss(self, model: nn.Module, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss to backpropagate, detached loss to record)`` of one batch. No backward
        here: the step function (``train/step.py``) runs it, eager or compiled."""
        loss = task_loss(model(xb), yb, self.task)
        return loss, loss.detach()

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after every optimizer step (``step``: the global step count)."""

    def eval_batch(self, model: nn.Module, xb: Tensor, yb: Tensor) -> BatchEval:
        out = model(xb)
        correct = float((out.argmax(-1) == yb).sum()) if self.task == "classification" else 0.0
        return BatchEval(task_loss(out, yb, self.task), correct, None)

    def epoch_metrics(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                      val: dict[str, Any], step: int) -> dict[str, Any]:
        """What this method adds to an epoch's record (nothing for a plain optimizer)."""
        return {}

    def head_rates(self, model: nn.Module) -> list[float] | None:
        """The heads' learning rates (None: no heads)."""
        return None


class LrFreeMethod(PlainMethod):
    """A learning-rate-free optimizer (see the module docstring); ``config.lr`` is ignored.
    Schedule-free optimizers train at one point and evaluate at their average: the loop's
    :meth:`start_training` / :meth:`start_evaluation` switch between the two."""

    @property
    def has_momentum(self) -> bool:
        return False  # a cyclic schedule does not cycle these optimizers' momentum

    def build(self, zoo_model: ZooModel, n_outputs: int,
              device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = zoo_model.to(device)
        return model, build_optimizer(self.config.method, model.parameters(), lr=self.config.lr,
                                      weight_decay=self.config.weight_decay)

    def start_training(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        train_mode(optimizer)

    def start_evaluation(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                         train_batches: Any) -> None:
        eval_mode(optimizer, model, train_batches)

    def epoch_metrics(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                      val: dict[str, Any], step: int) -> dict[str, Any]:
        """D-Adaptation / Prodigy: the step size it adapted to (``adapted_lr``)."""
        found = adapted_lr(optimizer)
        return {} if found is None else {"adapted_lr": found}


class AlraoMethod(PlainMethod):
    """Alrao (see the module docstring): ``config.lr_min``, ``lr_max``, ``n_heads``,
    ``theta``, ``alrao_optimizer``; the switch posterior is recorded every
    ``config.posterior_every`` steps and at the end of every epoch."""

    def __init__(self, config: TrainConfig, task: str) -> None:
        super().__init__(config, task)
        self._posteriors: list[tuple[int, Tensor]] = []  # this epoch's (step, posterior)
        self._feature_log10: Tensor | None = None  # log10 of every body feature's rate

    @property
    def has_momentum(self) -> bool:
        return self.config.alrao_optimizer == "adam" or self.config.momentum > 0

    def build(self, zoo_model: ZooModel, n_outputs: int,
              device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        cfg = self.config
        model = AlraoModel(zoo_model.preclassifier, zoo_model.feature_dim, n_outputs,
                           n_heads=cfg.n_heads, task=self.task, theta=cfg.theta,
                           head_interval=cfg.head_interval).to(device)
        try:
            if cfg.alrao_optimizer == "sgd":
                opt: torch.optim.Optimizer = AlraoSGD(
                    model, cfg.lr_min, cfg.lr_max, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, seed=cfg.seed)
            else:
                opt = AlraoAdam(model, cfg.lr_min, cfg.lr_max, weight_decay=cfg.weight_decay,
                                seed=cfg.seed)
        except UnsupportedLayerError as err:  # a user builder's layer: bad input
            raise ArchError(str(err)) from err
        rates = [opt.state[p]["feature_lr"] for p in model.preclassifier.parameters()
                 if p in opt.state]
        if rates:
            self._feature_log10 = torch.cat([r.detach().float().cpu() for r in rates]).log10()
        return model, opt

    def batch_loss(self, model: nn.Module, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        out = model.training_loss(xb, yb, with_output=False)
        return out.loss, out.model_loss

    def after_step(self, model: nn.Module, step: int) -> None:
        every = self.config.posterior_every
        if every and step % every == 0:
            self._posteriors.append((step, model.switch.posterior.detach().clone()))

    def eval_batch(self, model: nn.Module, xb: Tensor, yb: Tensor) -> BatchEval:
        head_out = model.heads(model.preclassifier(xb))  # [..., K, C]
        flat = head_out.reshape(-1, *head_out.shape[-2:])  # [N, K, C]
        target = yb.reshape(flat.shape[0], *yb.shape[head_out.dim() - 2:])
        head_nll = model.heads.nll(flat, target).mean(0)  # [K]
        avg = model.average(flat)  # skips non-finite heads
        if self.task == "classification":
            correct = float((avg.argmax(-1) == target).sum())
            return BatchEval(F.nll_loss(avg, target), correct, head_nll)
        return BatchEval(task_loss(avg, target, self.task), 0.0, head_nll)

    def epoch_metrics(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                      val: dict[str, Any], step: int) -> dict[str, Any]:
        """The epoch's switch posteriors (from :meth:`after_step`, plus the final one),
        head losses, effective rate ``exp(Σ_k p_k log lr_k)`` times the schedule's group
        multiplier, and the share of body features whose rate lies in its decade."""
        if not self._posteriors or self._posteriors[-1][0] != step:
            self._posteriors.append((step, model.switch.posterior.detach().clone()))
        steps, self._posteriors = self._posteriors, []
        posterior = model.switch.posterior.detach().cpu()
        scale = float(optimizer.param_groups[0]["lr"])
        rates = model.heads.head_rates(self.config.lr_min, self.config.lr_max).cpu()
        head_losses = [v if math.isfinite(v) else math.inf for v in val["head_losses"]]
        out: dict[str, Any] = {
            "lr_eff": math.exp(float((posterior * rates.log()).sum())) * scale,
            "best_head": int(min(range(len(head_losses)), key=head_losses.__getitem__)),
            "best_head_val_loss": min(head_losses),
            "posterior_max": float(posterior.max()),
        }
        if self._feature_log10 is not None:
            decade = math.floor(math.log10(out["lr_eff"]))
            out["share_in_decade"] = float((self._feature_log10.floor() == decade).float().mean())
        for k, v in enumerate(val["head_losses"]):
            out[f"head_loss/{head_key(k)}"] = v
        stacked = torch.stack([p for _, p in steps]).cpu().tolist()
        out[STEP_METRICS_KEY] = {
            f"posterior/{head_key(k)}": [[s, row[k]] for (s, _), row in zip(steps, stacked)]
            for k in range(len(posterior))}
        return out

    def head_rates(self, model: nn.Module) -> list[float] | None:
        return model.heads.head_rates(self.config.lr_min, self.config.lr_max).cpu().tolist()


def method_for(config: TrainConfig, task: str) -> PlainMethod:
    """The strategy of ``config.method``."""
    if config.method == "alrao":
        return AlraoMethod(config, task)
    return PlainMethod(config, task) if config.method in ("sgd", "adam") else LrFreeMethod(
        config, task)
