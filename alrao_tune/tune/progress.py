"""Progress of a stage: a bar on a terminal, one plain line per finished trial otherwise.

On a terminal (``say`` is ``print`` and stdout is a TTY) each stage gets a ``tqdm`` bar
(trials done of the stage's total, the last trial's result as its postfix) and the
per-trial lines are written above it; in a log file, a pipe or CI the same lines are
printed plainly, one per finished trial.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

Progress = Callable[[str], None]


def use_bar(say: Progress | None) -> bool:
    """Whether to draw a bar: output goes to ``print`` on a terminal."""
    return say is print and sys.stdout.isatty()


def trial_line(label: str, done: int, total: int, name: str, result: dict | None) -> str:
    """The line of one finished trial (``result``: its last result; None: it failed)."""
    if result is None:
        return f"  [{label}] {done}/{total} {name}: FAILED"
    r = result
    return (f"  [{label}] {done}/{total} {name}: "
            f"val_loss={r.get('best_val_loss', float('nan')):.4f} "
            f"val_acc={r.get('best_val_acc', float('nan')):.3f} "
            f"({r.get('run_status', r.get('status', 'stopped'))}, "
            f"{r.get('time_total_s', 0):.0f}s)")


def progress_callback(say: Progress, label: str, total: int | None = None,
                      name_fn: Callable[[Any], str] | None = None, start: int = 0) -> Any:
    """A Tune callback reporting every finished trial of the stage ``label``."""
    from ray import tune

    name = name_fn or (lambda trial: str(trial.trial_id))
    bar_wanted = use_bar(say)

    class StageProgress(tune.Callback):
        def __init__(self) -> None:
            self.done, self.bar = start, None

        def _report(self, trials: list, trial: Any, result: dict | None) -> None:
            self.done += 1
            n = total or len(trials)
            line = trial_line(label, self.done, n, name(trial), result)
            if not bar_wanted:
                say(line)
                return
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=n, initial=self.done - 1, desc=f"[{label}]",
                                unit="trial", file=sys.stdout, leave=False)
            self.bar.write(line)
            self.bar.update(1)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **kw: Any):
            self._report(trials, trial, trial.last_result or {})

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **kw: Any):
            self._report(trials, trial, None)

        def on_experiment_end(self, trials: list, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return StageProgress()
