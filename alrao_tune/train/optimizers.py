"""The plain optimizers of the training loop, learning-rate-free ones included.

``sgd`` and ``adam`` are torch's, at the run's ``lr``. The learning-rate-free methods are
the real packages at their documented defaults (the run's ``lr`` is ignored; only
``weight_decay`` is passed on):

=====================  ==============================================  ==================
method                 optimizer                                        reference
=====================  ==============================================  ==================
``prodigy``            ``prodigyopt.Prodigy(lr=1.0)``                   Mishchenko & Defazio 2023
``dadapt_sgd``         ``dadaptation.DAdaptSGD(lr=1.0)``                Defazio & Mishchenko 2023
``dadapt_adam``        ``dadaptation.DAdaptAdam(lr=1.0)``               Defazio & Mishchenko 2023
``schedulefree_sgd``   ``schedulefree.SGDScheduleFree(lr=1.0, m=0.9)``  Defazio et al. 2024
``schedulefree_adamw`` ``schedulefree.AdamWScheduleFree(lr=0.0025)``    Defazio et al. 2024
=====================  ==============================================  ==================

Schedule-free optimizers evaluate at a different point than they train at: the loop calls
:func:`train_mode` before the training steps and :func:`eval_mode` before evaluation and
checkpoints. Their README's caveat for BatchNorm is followed: in eval mode the running
statistics are recomputed with a few forward passes over training batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from alrao_tune.schema import LR_FREE_METHODS

PLAIN_METHODS = ("sgd", "adam")
SCHEDULE_FREE = ("schedulefree_sgd", "schedulefree_adamw")
_PACKAGES = {"prodigy": "prodigyopt", "dadapt_sgd": "dadaptation",
             "dadapt_adam": "dadaptation", "schedulefree_sgd": "schedulefree",
             "schedulefree_adamw": "schedulefree"}
BN_BATCHES = 50  # training batches that re-estimate BatchNorm statistics (schedule-free)


def build_optimizer(method: str, params: Iterable[Tensor], *, lr: float, momentum: float = 0.0,
                    weight_decay: float = 0.0, nesterov: bool = False) -> torch.optim.Optimizer:
    """The optimizer of a plain (non-Alrao) ``method`` over ``params``.

    Raises:
        ValueError: an unknown method.
        ImportError: a learning-rate-free method whose package is missing (with a hint).
    """
    params = list(params)
    if method == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov)
    if method == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if method not in LR_FREE_METHODS:
        raise ValueError(f"unknown optimizer method {method!r}; use one of "
                         f"{', '.join(PLAIN_METHODS + LR_FREE_METHODS)}.")
    return _lr_free(method, params, weight_decay)


def _lr_free(method: str, params: list[Tensor], weight_decay: float) -> torch.optim.Optimizer:
    try:
        if method == "prodigy":
            from prodigyopt import Prodigy

            return Prodigy(params, weight_decay=weight_decay)
        if method in ("dadapt_sgd", "dadapt_adam"):
            import dadaptation

            cls = dadaptation.DAdaptSGD if method == "dadapt_sgd" else dadaptation.DAdaptAdam
            return cls(params, weight_decay=weight_decay)
        import schedulefree

        cls = (schedulefree.SGDScheduleFree if method == "schedulefree_sgd"
               else schedulefree.AdamWScheduleFree)
        return cls(params, weight_decay=weight_decay)
    except ImportError as err:
        raise ImportError(f"method {method!r} needs the package {_PACKAGES[method]!r}: "
                          f"pip install {_PACKAGES[method]}") from err


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` has schedule-free train/eval modes."""
    return hasattr(optimizer, "train") and hasattr(optimizer, "eval") and any(
        "train_mode" in g for g in optimizer.param_groups)


def train_mode(optimizer: torch.optim.Optimizer) -> None:
    """Puts a schedule-free optimizer's parameters at its training point (else nothing)."""
    if is_schedule_free(optimizer) and not optimizer.param_groups[0]["train_mode"]:
        optimizer.train()


def eval_mode(optimizer: torch.optim.Optimizer, model: nn.Module,
              batches: Iterator[tuple[Tensor, Tensor]] | None = None) -> None:
    """Puts a schedule-free optimizer's parameters at its averaged (evaluation) point and,
    when the model has BatchNorm layers, recomputes their running statistics there from
    up to :data:`BN_BATCHES` of ``batches`` (the schedule-free README's recipe)."""
    if not is_schedule_free(optimizer) or not optimizer.param_groups[0]["train_mode"]:
        return
    optimizer.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches is None:
        return
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i, (xb, _) in enumerate(batches):
            if i >= BN_BATCHES:
                break
            model(xb)
    model.train(was_training)


def adapted_lr(optimizer: torch.optim.Optimizer) -> float | None:
    """The step size a D-Adaptation/Prodigy optimizer found (``d * lr`` of its first group),
    else None."""
    group: dict[str, Any] = optimizer.param_groups[0]
    if "d" in group and "lr" in group:
        return float(group["d"]) * float(group["lr"])
    return None
