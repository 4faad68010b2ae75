"""alrao_tune: screen architectures cheaply with Alrao, then tune only the best.

Python API (imported lazily, so ``import alrao_tune`` stays light)::

    import alrao_tune
    result = alrao_tune.screen("quickstart")   # a shipped space, or a YAML file: ScreenResult
    result.leaderboard                         # pandas DataFrame
    model = alrao_tune.load_best("quickstart")  # the winner, a torch.nn.Module
    history = alrao_tune.fit({"dataset": "mnist1d", "arch": {"family": "cnn1d"}})

Layers (each imports only those before it): ``alrao`` (the method, torch only), ``schema``
and ``errors`` (shared names, the error base), ``data``, ``zoo``, ``train``, ``space``,
``tracking`` (MLflow), ``report`` (pure tables and figures), ``tune`` (Ray Tune: the
pipeline driver of ``screen`` and ``compare``), ``bench``, ``dashboard``, ``cli``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "screen": ("alrao_tune.tune.screen", "screen"),
    "compare": ("alrao_tune.tune.compare", "compare"),
    "fit": ("alrao_tune.train", "fit"),
    "Trainer": ("alrao_tune.train", "Trainer"),
    "TrainConfig": ("alrao_tune.train", "TrainConfig"),
    "lr_find": ("alrao_tune.train", "lr_find"),
    "load_best": ("alrao_tune.tracking.models", "load_best"),
    "load_space": ("alrao_tune.space", "load_space"),
    "AlraoTuneError": ("alrao_tune.errors", "AlraoTuneError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'alrao_tune' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
