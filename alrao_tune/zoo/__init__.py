"""Architectures from plain config dicts (see :mod:`.build`); building blocks in
:mod:`.blocks`."""

from __future__ import annotations

from alrao_tune.zoo.build import (
    FAMILIES,
    ArchError,
    ZooModel,
    arch_name,
    build_model,
    count_parameters,
    default_family,
    family_defaults,
    validate_spec,
)

__all__ = [
    "FAMILIES",
    "ArchError",
    "ZooModel",
    "arch_name",
    "build_model",
    "count_parameters",
    "default_family",
    "family_defaults",
    "validate_spec",
]
