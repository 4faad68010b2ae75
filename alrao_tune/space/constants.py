"""Known names a search space may use: datasets, zoo families, schedules, the paper's LR grid."""

from __future__ import annotations

# Kept in sync with alrao_tune.data.DATASETS / alrao_tune.zoo / alrao_tune.schedule by tests.
DATASETS = ("mnist1d", "digits", "cifar10", "text", "synthetic", "blobs")
PATH_DATASETS = ("cifar10", "text")  # need dataset.options.path
FAMILIES = ("mlp", "cnn1d", "cnn2d", "mobilenet", "inception", "resnet", "gru", "lstm", "cnn_gru")
SCHEDULE_OPTIONS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "step": ("step_size", "gamma"),
    "cosine": ("eta_min_factor",),
    "cyclic": ("base_lr_factor", "step_size_epochs"),
    "onecycle": ("max_lr_factor", "pct_start", "div_factor", "final_div_factor"),
}
PAPER_LR_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
_RESERVED_ARCH_KEYS = ("name", "family", "builder")
