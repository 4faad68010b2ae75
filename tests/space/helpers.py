"""Small search-space dicts and files for the tests of alrao_tune.space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def minimal(**sections: Any) -> dict[str, Any]:
    """The smallest valid space: one MLP on MNIST-1D, plus ``sections``."""
    raw: dict[str, Any] = {
        "dataset": {"name": "mnist1d"},
        "architectures": [{"family": "mlp", "widths": [8]}],
    }
    raw.update(sections)
    return raw


def two_archs(**sections: Any) -> dict[str, Any]:
    archs = [{"family": "mlp", "widths": [8]}, {"family": "gru", "hidden": 6}]
    return minimal(**{"architectures": archs, **sections})


def write(tmp_path: Path, raw: Any, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw), encoding="utf-8")
    return path
