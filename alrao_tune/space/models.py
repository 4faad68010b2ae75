"""Architecture grids and :class:`SearchSpace`, the validated root of one search-space file."""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from .constants import _RESERVED_ARCH_KEYS, FAMILIES
from .errors import _check_choice, _Invalid
from .sections import Alrao, Compare, Dataset, Resources, Stage1, Stage2, Training, _Model


class Grid(_Model):
    """``grids[i]``: the cartesian product of ``grid`` values, each merged over ``base``.

    ``name`` is an optional ``str.format`` template over the grid and base keys (and
    ``family``); placeholders receive compact strings (``[16, 32]`` -> ``16x32``).
    """

    family: str | None = None
    builder: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Grid:
        _check_kind({"family": self.family, "builder": self.builder}, "")
        for part in ("base", "grid"):
            for key in getattr(self, part):
                if key in _RESERVED_ARCH_KEYS:
                    raise _Invalid(f"{part}.{key}", key, "reserved; set it beside `grid`")
        for key, values in self.grid.items():
            if not values:
                raise _Invalid(f"grid.{key}", values, "needs at least one value")
        if self.name is not None:
            first = self._combos()[0][1]
            try:
                self.name.format(**{k: _compact(v) for k, v in first.items()})
            except (KeyError, IndexError, ValueError) as err:
                allowed = ", ".join(k for k in first if k != "name")
                raise _Invalid("name", self.name, f"bad template ({err}); use {allowed}") from None
        return self

    def _combos(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        kind = {"family": self.family} if self.family else {"builder": self.builder}
        out = []
        for combo in itertools.product(*self.grid.values()):
            chosen = dict(zip(self.grid, combo, strict=True))
            out.append((chosen, {**kind, **copy.deepcopy(self.base), **copy.deepcopy(chosen)}))
        return out

    def expand(self) -> list[dict[str, Any]]:
        """One architecture dict per grid combination (name generated if no template)."""
        out = []
        for chosen, arch in self._combos():
            if self.name is None:
                name = _default_name({k: arch.get(k) for k in ("family", "builder")}, chosen)
            else:
                name = self.name.format(**{k: _compact(v) for k, v in arch.items()})
            out.append({"name": name, **arch})
        return out


class SearchSpace(_Model):
    """One validated search-space file; see the shipped ``alrao_tune/searchspaces/quickstart.yaml``.

    Attributes:
        name: MLflow experiment name (default: the YAML file's stem).
        dataset, training, alrao, stage1, stage2, compare, resources: the sections.
        architectures: explicit architecture dicts (``family`` or ``builder`` + options).
        grids: architecture grids; :meth:`architectures_resolved` expands them.
    """

    name: str = Field("space", min_length=1)
    dataset: Dataset
    architectures: list[dict[str, Any]] = Field(default_factory=list)
    grids: list[Grid] = Field(default_factory=list)
    training: Training = Field(default_factory=Training)
    alrao: Alrao = Field(default_factory=Alrao)
    stage1: Stage1 = Field(default_factory=Stage1)
    stage2: Stage2 = Field(default_factory=Stage2)
    compare: Compare = Field(default_factory=Compare)
    resources: Resources = Field(default_factory=Resources)

    @field_validator("architectures")
    @classmethod
    def _archs(cls, archs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, arch in enumerate(archs):
            _check_kind(arch, f"[{i}].")
            if "name" in arch and (not isinstance(arch["name"], str) or not arch["name"]):
                raise _Invalid(f"[{i}].name", arch["name"], "must be a non-empty string")
        return archs

    @model_validator(mode="after")
    def _cross_checks(self) -> SearchSpace:
        n = len(self._resolve())  # also rejects duplicate names
        if n == 0:
            raise _Invalid("architectures", [], "no architectures: list some here or in grids")
        s1, epochs = self.stage1, self.training.epochs
        if s1.top_k > n and "top_k" not in s1.model_fields_set:
            object.__setattr__(self, "stage1", s1.model_copy(update={"top_k": n}))
        elif s1.top_k > n:
            hint = f"larger than the number of architectures ({n}); set 1 <= top_k <= {n}"
            raise _Invalid("stage1.top_k", s1.top_k, hint)
        if s1.asha is not None and s1.asha.grace_period > epochs:
            hint = f"must be <= training.epochs ({epochs})"
            raise _Invalid("stage1.asha.grace_period", s1.asha.grace_period, hint)
        if (self.compare.asha.grace_period or 1) > epochs:
            hint = f"must be <= training.epochs ({epochs})"
            raise _Invalid("compare.asha.grace_period", self.compare.asha.grace_period, hint)
        if (self.compare.min_epochs or 0) > epochs:
            hint = f"must be <= training.epochs ({epochs})"
            raise _Invalid("compare.min_epochs", self.compare.min_epochs, hint)
        return self

    def _resolve(self) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for i, arch in enumerate(self.architectures):
            kind = {k: arch[k] for k in ("family", "builder") if k in arch}
            opts = {k: v for k, v in arch.items() if k not in _RESERVED_ARCH_KEYS}
            name = arch.get("name") or _default_name(kind, opts)
            out.append((f"architectures[{i}]", {"name": name, **copy.deepcopy(arch)}))
        for j, grid in enumerate(self.grids):
            out += [(f"grids[{j}] combination #{k}", a) for k, a in enumerate(grid.expand())]
        seen: dict[str, str] = {}
        for pos, arch in out:
            if arch["name"] in seen:
                key = pos.partition(" ")[0] + ".name"
                hint = f"duplicate architecture name: {seen[arch['name']]} and {pos}; rename one"
                raise _Invalid(key, arch["name"], hint)
            seen[arch["name"]] = pos
        return out

    def architectures_resolved(self) -> list[dict[str, Any]]:
        """Explicit architectures then expanded grids, each a new dict with a unique ``name``."""
        return [arch for _, arch in self._resolve()]

    @property
    def stage1_mode(self) -> str:
        """``"min"`` for loss metrics, ``"max"`` for accuracy."""
        return "min" if self.stage1.metric.endswith("loss") else "max"

    @property
    def stage2_mode(self) -> str:
        """``"min"`` for loss metrics, ``"max"`` for accuracy."""
        return "min" if self.stage2.metric.endswith("loss") else "max"

    def to_dict(self, *, expand_grids: bool = False) -> dict[str, Any]:
        """Plain dict of the validated space (defaults filled in, env vars expanded).

        ``parse_space(space.to_dict()) == space``. With ``expand_grids`` the grids are
        replaced by their expansion in ``architectures`` (same resolved architectures).
        """
        out = self.model_dump(mode="python")
        if expand_grids:
            out["architectures"], out["grids"] = self.architectures_resolved(), []
        return out

    def to_yaml(self, *, expand_grids: bool = True) -> str:
        """The resolved space as YAML (for logging as an MLflow artifact)."""
        return yaml.safe_dump(self.to_dict(expand_grids=expand_grids), sort_keys=False)


def _check_kind(arch: Mapping[str, Any], prefix: str) -> None:
    family, builder = arch.get("family"), arch.get("builder")
    if (family is None) == (builder is None):
        hint = "give exactly one of `family` (a zoo family) or `builder` ('module:function')"
        raise _Invalid(prefix + "family", family, hint)
    if family is not None:
        _check_choice(prefix + "family", family, FAMILIES, "family")
    elif not isinstance(builder, str) or not re.fullmatch(r"[\w.]+:[\w.]+", builder):
        raise _Invalid(prefix + "builder", builder, "must be 'package.module:function'")


def _default_name(kind: Mapping[str, Any], options: Mapping[str, Any]) -> str:
    head = kind.get("family") or str(kind.get("builder")).rpartition(":")[2]
    return "-".join([head, *(f"{k}={_compact(v)}" for k, v in options.items())])


def _compact(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "x".join(_compact(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={_compact(v)}" for k, v in value.items())
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
