"""Search-space YAML -> a validated, typed, frozen :class:`SearchSpace`.

One YAML file describes one job: the dataset, the candidate architectures (explicit and
grids), training settings, Alrao's interval, stage 1 (screening), stage 2 (Optuna
learning-rate search on the top-k), ``compare`` (proxy vs grid-searched SGD) and the Ray
resources per trial. Every problem is a :class:`SpaceError` whose one-line message names
the file, the YAML path of the bad key, the bad value and what is allowed, raised before
anything is written anywhere (this package never writes). Only yaml, pydantic and the
standard library are imported, so validation is fast and runs before anything heavy.

Modules: ``constants`` (known names), ``errors`` (:class:`SpaceError`, pydantic-error
conversion, did-you-mean), ``sections`` (the per-section models), ``models`` (grids and
:class:`SearchSpace`) and ``loading`` (YAML reading, ``--set`` overrides, validation).

Example:
    >>> space = load_space("quickstart", ["training.epochs=2"])  # a shipped space, or a path
    >>> [a["name"] for a in space.architectures_resolved()]
"""

from __future__ import annotations

from .constants import DATASETS, FAMILIES, PAPER_LR_GRID, PATH_DATASETS, SCHEDULE_OPTIONS
from .errors import _MISSING as _MISSING  # the 'no value' marker of SpaceError (tests use it)
from .errors import SpaceError
from .loading import apply_overrides, find_space, load_space, parse_space, shipped_spaces
from .models import Grid, SearchSpace
from .sections import (
    Alrao,
    Asha,
    Compare,
    Dataset,
    FixedOrRange,
    LrRange,
    Resources,
    SearchRange,
    Stage1,
    Stage2,
    Training,
)

__all__ = [
    "DATASETS",
    "FAMILIES",
    "PAPER_LR_GRID",
    "PATH_DATASETS",
    "SCHEDULE_OPTIONS",
    "Alrao",
    "Asha",
    "Compare",
    "Dataset",
    "FixedOrRange",
    "Grid",
    "LrRange",
    "Resources",
    "SearchRange",
    "SearchSpace",
    "SpaceError",
    "Stage1",
    "Stage2",
    "Training",
    "apply_overrides",
    "find_space",
    "load_space",
    "parse_space",
    "shipped_spaces",
]
