"""Fault injection for the soak and the reliability tests: a Tune trainable with faults.

:func:`faulty_trainable` returns a trainable that runs the screening's own
:func:`~alrao_tune.tune.trainable.train_trial` and injects a fault into the trials of the
named architectures; pass it where a trainable is taken (``run_job``, ``screen``,
``compare``). Production code never injects anything: there is no fault key in trial
configs and no fault environment variable.

Faults, checked at the end of an epoch, before its report and checkpoint:

* ``"crash_once:<marker file>"``: at epoch 2 the worker process exits abruptly
  (``os._exit(1)``), the first time only (the marker file records it): Tune retries the
  trial from its epoch-1 checkpoint;
* ``"raise"``: raises at epoch 2 (the trial fails for good once its retry raises too);
* ``"nan"``: fills the weights with NaN at epoch 1, so that epoch 2 diverges for real.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

FAULT_KINDS = ("crash_once:<marker file>", "raise", "nan")


def check_fault(fault: str) -> str:
    """Returns ``fault`` if it is a known fault spec, else raises ValueError."""
    if fault in ("raise", "nan") or (fault.startswith("crash_once:") and len(fault) > 11):
        return fault
    raise ValueError(f"unknown fault {fault!r}; use one of {', '.join(FAULT_KINDS)}.")


def faulty_trainable(faults: Mapping[str, str]) -> Callable[[dict[str, Any]], None]:
    """A Tune function trainable: ``train_trial`` with ``faults[arch name]`` injected
    into every trial of that architecture (the others train normally).

    Raises:
        ValueError: an unknown fault spec.
    """
    plan = {str(name): check_fault(spec) for name, spec in faults.items()}

    def train_with_faults(config: dict[str, Any]) -> None:
        from alrao_tune.tune.trainable import train_trial, trial_config

        fault = plan.get(trial_config(config).get("arch_name", ""))
        hook = None if fault is None else (lambda trainer: inject(fault, trainer))
        train_trial(config, epoch_hook=hook)

    return train_with_faults


def inject(fault: str, trainer: Any) -> None:
    """Applies ``fault`` to ``trainer`` at the end of its current epoch (see the module
    docstring)."""
    if fault == "nan" and trainer.epoch == 1:
        import torch

        with torch.no_grad():
            for p in trainer.model.parameters():
                p.fill_(math.nan)
    if trainer.epoch != 2:
        return
    if fault == "raise":
        raise RuntimeError("injected fault (fault='raise')")
    if fault.startswith("crash_once:"):
        marker = Path(fault.split(":", 1)[1])
        if not marker.exists():
            marker.write_text("crashed once")
            os._exit(1)
