"""Reading a search space: YAML -> ``--set`` overrides -> a validated :class:`SearchSpace`."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import _MISSING, SpaceError, _convert, _short
from .models import SearchSpace

# The shipped search spaces (package data; a clone also has them at ./searchspaces).
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "searchspaces"
_NOT_A_MAPPING = "the top level must be a mapping of sections (dataset, architectures, ...), got "


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-5`` as a float (YAML 1.2; 1.1 needs ``1.0e-5``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


def shipped_spaces() -> dict[str, Path]:
    """The search spaces shipped inside the package, by name (``quickstart``, ...)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}


def find_space(path: str | Path) -> Path:
    """The YAML file of ``path``: that file when it exists, else the shipped space of that
    name (``quickstart`` or ``quickstart.yaml``: a name without a folder).

    Raises:
        SpaceError: neither (the message lists the shipped names).
    """
    given = Path(path)
    if given.is_file():
        return given
    shipped = shipped_spaces()
    name = given.stem if given.suffix in (".yaml", ".yml") else given.name
    if given.parent == Path(".") and name in shipped:
        return shipped[name]
    raise SpaceError(str(path), "", _MISSING, f"no such file: {given.resolve()}; or give "
                     f"the name of a shipped space: {', '.join(shipped) or 'none'}")


def load_space(path: str | Path, overrides: Sequence[str] = ()) -> SearchSpace:
    """Reads, overrides (``--set`` items) and validates one search-space YAML file, given
    by its path or by the name of a shipped space (:func:`shipped_spaces`)."""
    path, source = find_space(path), str(path)
    try:
        raw = _safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceError(source, "", _MISSING, f"{where}invalid YAML: {problem}") from None
    if raw is not None and not isinstance(raw, Mapping):
        raise SpaceError(source, "", _MISSING, _NOT_A_MAPPING + type(raw).__name__)
    raw = apply_overrides(raw or {}, overrides, source=source)
    try:
        return parse_space(raw, source=source, base_dir=path.resolve().parent)
    except SpaceError as err:
        hit = [o for o in overrides if _covers(_override_key(o), err.key)]
        if not hit:
            raise
        value = err.value if err.has_value else _MISSING
        hint = f"{err.hint} (from --set {hit[-1]})"
        raise SpaceError(err.file, err.key, value, hint, err.more) from None


def parse_space(
    raw: Mapping[str, Any], *, source: str = "<dict>", base_dir: Path | None = None
) -> SearchSpace:
    """Validates a plain mapping into a :class:`SearchSpace` (relative paths from ``base_dir``)."""
    if not isinstance(raw, Mapping):
        raise SpaceError(source, "", _MISSING, _NOT_A_MAPPING + type(raw).__name__)
    raw = dict(raw)
    if "name" not in raw and source != "<dict>":
        raw["name"] = Path(source).stem
    try:
        return SearchSpace.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as err:
        errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
        problems = [_convert(e, SearchSpace) for e in errors]
        key, value, hint = problems[0]
        more = [f"{k}: {h}" for k, _, h in problems[1:]]
        raise SpaceError(source, key, value, hint, more) from None


def apply_overrides(
    raw: Mapping[str, Any], overrides: Sequence[str], *, source: str = "<dict>"
) -> dict[str, Any]:
    """Returns a deep copy of ``raw`` with ``"dotted.key=value"`` items applied.

    Values are parsed as YAML, safely (``3`` -> int, ``1e-4`` -> float, ``[1,2]`` -> list,
    ``null`` -> None).
    Integer parts index lists (``architectures.0.widths=[32]``; the index equal to the
    length appends). Missing (or null) intermediate mappings are created, so
    ``stage1.asha.grace_period=2`` works without an ``asha`` section.
    """
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep or not dotted.strip():
            raise SpaceError(source, "--set", item, "expected KEY=VALUE, e.g. training.epochs=5")
        try:
            value = _safe_load(text)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "unparsable"
            raise SpaceError(source, dotted, text, f"bad --set value: {problem}") from None
        _set_path(out, dotted.strip().split("."), value, source, item)
    return out


def _set_path(node: Any, parts: list[str], value: Any, source: str, item: str) -> None:
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) <= len(node):
                hint = f"not a list index (0..{len(node)}; {len(node)} appends)"
                raise SpaceError(source, ".".join(parts[: depth + 1]), item, hint)
            idx = int(part)
            if idx == len(node):
                node.append(None if last else {})
        elif isinstance(node, dict):
            idx = part
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            hint = f"cannot set a key inside {_short(node)}"
            raise SpaceError(source, ".".join(parts[:depth]), item, hint)
        if last:
            node[idx] = value
        else:
            node = node[idx]


def _override_key(item: str) -> str:
    parts = item.partition("=")[0].strip().split(".")
    return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".")


def _covers(prefix: str, key: str) -> bool:
    return key == prefix or key.startswith((prefix + ".", prefix + "["))
