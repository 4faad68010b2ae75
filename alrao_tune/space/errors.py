"""Errors of the search-space package: :class:`SpaceError` and how problems become one.

Validators raise :class:`_Invalid` (a key relative to pydantic's error location, the
value and a hint); :func:`_convert` turns each pydantic error into ``(dotted key, value,
hint)``, suggesting the closest known name ("did you mean ...?") for unknown keys, and
:func:`_check_choice` does the same for unknown values.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from alrao_tune.errors import AlraoTuneError

_MISSING: Any = object()


class SpaceError(AlraoTuneError, ValueError):
    """A search space is invalid; ``str()`` is one line: ``file: key = value: hint``.

    Attributes:
        file: the YAML file (or ``<dict>``) the space came from.
        key: dotted YAML path of the bad key, e.g. ``stage1.top_k`` or
            ``architectures[3].family``; ``""`` for file-level problems.
        value: the offending value (``None`` when there is none: see ``has_value``).
        has_value: whether the message shows a value (``False`` e.g. for a missing key).
        hint: what is wrong and what is allowed.
        more: further problems found in the same pass (not shown beyond their count).
    """

    def __init__(self, file: str, key: str, value: Any, hint: str, more: Sequence[str] = ()):
        self.file, self.key, self.value, self.hint, self.more = file, key, value, hint, tuple(more)
        self.has_value = value is not _MISSING
        where = f"{key} = {_short(value)}" if self.has_value else key
        where = f"{where}: " if key else ""
        extra = f" (+{len(more)} more problem(s))" if more else ""
        super().__init__(f"{file}: {where}{hint}{extra}")
        if value is _MISSING:
            self.value = None

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Ray ships errors between processes)
        return (_rebuild_error, (str(self), dict(self.__dict__)))


def _rebuild_error(message: str, state: dict[str, Any]) -> SpaceError:
    err = SpaceError.__new__(SpaceError)
    ValueError.__init__(err, message)
    err.__dict__.update(state)
    return err


class _Invalid(ValueError):
    """Raised inside validators; ``rel_key`` is relative to pydantic's error location."""

    def __init__(self, rel_key: str, value: Any, hint: str):
        super().__init__(hint)
        self.rel_key, self.value, self.hint = rel_key, value, hint


def _convert(err: Mapping[str, Any], root: type[BaseModel]) -> tuple[str, Any, str]:
    """pydantic error -> (dotted key, value, hint); ``root`` is the validated model class."""
    loc = [p for i, p in enumerate(err["loc"]) if not _is_tag(err["loc"], i)]
    key = _dotted(loc)
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _Invalid):
        rel = ctx_err.rel_key
        key = key + rel if rel.startswith("[") or not key else f"{key}.{rel}" if rel else key
        return key, ctx_err.value, ctx_err.hint
    if err["type"] == "missing":
        return key, _MISSING, "required key is missing"
    if err["type"] == "extra_forbidden":
        known = _fields_at(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"
        return key, _MISSING, f"{hint} (allowed: {', '.join(known)})"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return key, err.get("input", _MISSING), msg[:1].lower() + msg[1:]


def _is_tag(loc: Sequence[Any], i: int) -> bool:
    return i > 0 and loc[i] in ("fixed", "range") and loc[i - 1] in ("momentum", "weight_decay")


def _dotted(loc: Sequence[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _fields_at(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Field names of the model at a pydantic location (walking annotations from ``root``)."""
    cls: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        found = _model_in(field.annotation) if field else None
        if found is None:
            return []
        cls = found
    return list(cls.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _check_choice(key: str, value: Any, allowed: Sequence[str], what: str) -> Any:
    if value in allowed:
        return value
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f"unknown {what}; known: {', '.join(allowed) or '(none)'}"
    raise _Invalid(key, value, hint + (f"; did you mean {close[0]!r}?" if close else ""))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
