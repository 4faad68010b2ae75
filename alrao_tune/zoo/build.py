"""Architectures from plain config dicts.

A spec is ``{"family": ..., **options, "name": optional}`` (families and their options:
:data:`FAMILIES`, :func:`family_defaults`) or ``{"builder": "package.module:function",
**kwargs, "name": optional}``. :func:`build_model` returns a :class:`ZooModel`: a
*pre-classifier* (inputs -> features) followed by one ``nn.Linear`` classifier, which is the
split Alrao needs (Blier et al., 2018: the pre-classifier gets per-feature learning rates,
the classifier is cloned into K heads).

Input conventions: ``vector`` inputs ``[N, L]`` are 1-channel sequences ``[N, 1, L]`` for
``cnn1d``/``cnn_gru`` and ``[N, L, 1]`` sequences for ``gru``/``lstm``; ``image`` inputs
``[N, C, H, W]`` feed the 2-D families (``gru``/``lstm`` read them row by row); ``mlp``
flattens; ``tokens`` ``[N, T]`` go through an ``nn.Embedding`` in ``gru``/``lstm``/
``transformer``, which then return one feature vector per position (``[N, T, D]``,
next-token prediction). ``transformer`` (see :mod:`.transformer`) cuts images into patches and
vectors into chunks of ``patch_size`` values.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from alrao_tune import schema
from alrao_tune.data.splits import DataInfo, DatasetSplits
from alrao_tune.errors import AlraoTuneError
from alrao_tune.zoo.blocks import ACTIVATIONS, PRECLASSIFIERS


class ArchError(AlraoTuneError, ValueError):
    """Bad architecture spec: unknown family or option, bad value, unusable builder."""


class ZooModel(nn.Module):
    """``forward(x) = classifier(preclassifier(x))``: raw logits or regression outputs.

    Attributes:
        preclassifier: inputs -> features ``[N, D]`` (``[N, T, D]`` when
            ``sequence_output``).
        classifier: ``nn.Linear(D, n_outputs)``.
        feature_dim: ``D``.
        name: readable architecture name (:func:`arch_name`).
        sequence_output: True when there is one output per position (token inputs).
    """

    def __init__(
        self, preclassifier: nn.Module, feature_dim: int, n_outputs: int, *,
        name: str = "model", sequence_output: bool = False,
    ) -> None:
        super().__init__()
        self.preclassifier = preclassifier
        self.classifier = nn.Linear(feature_dim, n_outputs)
        self.feature_dim = feature_dim
        self.name = name
        self.sequence_output = sequence_output

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.preclassifier(x))


# --------------------------------------------------------------------------- option checks
Check = Callable[[Any], Any]  # returns the normalised value or raises ValueError(what)


def _int(minimum: int = 1, odd: bool = False) -> Check:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or (odd and v % 2 == 0):
            raise ValueError(f"an {'odd ' if odd else ''}integer >= {minimum}")
        return v
    return check


def _ints(min_len: int = 1, minimum: int = 1) -> Check:
    def check(v: Any) -> tuple[int, ...]:
        what = f"a list of at least {min_len} integers >= {minimum}"
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list | tuple) or len(v) < min_len:
            raise ValueError(what)
        for item in v:
            if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
                raise ValueError(what)
        return tuple(v)
    return check


def _choice(*values: str) -> Check:
    def check(v: Any) -> str:
        if v not in values:
            raise ValueError(f"one of {', '.join(map(repr, values))}")
        return v
    return check


def _prob(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v < 1.0:
        raise ValueError("a number in [0, 1)")
    return float(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


_ACT = ("activation", "relu", _choice(*ACTIVATIONS))
_BN = ("norm", "batch", _choice("batch", "none"))
_NO_BN = ("norm", "none", _choice("none", "batch"))
_RNN = [("hidden", 64, _int()), ("layers", 1, _int()), ("bidirectional", False, _bool)]

# family -> [(option, default, check)]; the first option names the architecture
_SCHEMAS: dict[str, list[tuple[str, Any, Check]]] = {
    "mlp": [("widths", (64, 64), _ints(min_len=0)), _ACT,
            ("norm", "none", _choice("none", "batch", "layer")), ("dropout", 0.0, _prob)],
    "cnn1d": [("channels", (32, 64), _ints()), ("kernel_size", 5, _int(odd=True)), _NO_BN,
              ("pool", 2, _int()), ("global_pool", "avg", _choice("avg", "max", "flatten")),
              ("fc_width", 0, _int(0)), _ACT],
    "cnn2d": [("channels", (32, 64), _ints()), ("convs_per_stage", 1, _int()),
              ("kernel_size", 3, _int(odd=True)), _BN,
              ("global_pool", "avg", _choice("avg", "max", "flatten")),
              ("fc_width", 0, _int(0)), _ACT],
    "mobilenet": [("widths", (32, 64, 128), _ints()), ("strides", None, _ints()),
                  ("stem_channels", 16, _int()), _BN],
    "inception": [("widths", (64, 128), _ints(minimum=4)), ("stem_channels", 32, _int()),
                  ("pool", True, _bool), _BN],
    "resnet": [("widths", (16, 32, 64), _ints()), ("blocks_per_stage", 1, _int()),
               ("stem_channels", 16, _int()), _BN],
    "gru": [*_RNN, ("embedding_dim", 32, _int()), ("dropout", 0.0, _prob)],
    "lstm": [*_RNN, ("embedding_dim", 32, _int()), ("dropout", 0.0, _prob)],
    "cnn_gru": [("channels", (32,), _ints()), ("kernel_size", 5, _int(odd=True)), _NO_BN,
                ("pool", 2, _int()), _ACT, *_RNN],
    "transformer": [("dim", 32, _int()), ("depth", 2, _int()), ("heads", 4, _int()),
                    ("mlp_ratio", 2, _int()), ("patch_size", 4, _int()),
                    ("pool", "cls", _choice("cls", "mean")), ("dropout", 0.0, _prob)],
}
FAMILIES: tuple[str, ...] = schema.FAMILIES  # the keys of _SCHEMAS, in this order
_KINDS: dict[str, tuple[str, ...]] = {
    "mlp": ("vector", "image"), "cnn1d": ("vector",), "cnn2d": ("image",),
    "mobilenet": ("image",), "inception": ("image",), "resnet": ("image",),
    "gru": ("vector", "image", "tokens"), "lstm": ("vector", "image", "tokens"),
    "cnn_gru": ("vector",), "transformer": ("vector", "image", "tokens"),
}


# The family ``alrao-tune train`` uses when no --arch is given, by the dataset's input kind.
DEFAULT_FAMILY = {"vector": "cnn1d", "image": "cnn2d", "tokens": "gru"}


def default_family(kind: str) -> str:
    """The default family for ``vector``, ``image`` or ``tokens`` inputs."""
    return DEFAULT_FAMILY[kind]


def family_defaults(family: str) -> dict[str, Any]:
    """Options of ``family`` with their defaults (``strides=None``: 1, then 2 per block)."""
    return {key: default for key, default, _ in _SCHEMAS[_check_family(family)]}


def _check_family(family: Any) -> str:
    if family not in _SCHEMAS:
        close = difflib.get_close_matches(str(family), FAMILIES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ArchError(f"unknown architecture family {family!r}; known families: "
                        f"{', '.join(FAMILIES)}.{hint}")
    return family


def validate_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a family spec and fill in defaults (builder specs are returned as given).

    Returns:
        ``{"family": ..., **all options}`` plus ``"name"`` when the spec had one.

    Raises:
        ArchError: not a mapping, unknown family, unknown option or bad value.
    """
    if not isinstance(spec, Mapping):
        raise ArchError(f"an architecture spec must be a mapping, but got {spec!r}.")
    if "builder" in spec:
        if "family" in spec:
            raise ArchError("give either 'family' or 'builder' in an architecture spec, not both.")
        return dict(spec)
    if "family" not in spec:
        raise ArchError(f"an architecture spec needs 'family' (one of {', '.join(FAMILIES)}) "
                        f"or 'builder' ('package.module:function'); got keys {sorted(spec)}.")
    family = _check_family(spec["family"])
    schema = {key: (default, check) for key, default, check in _SCHEMAS[family]}
    out: dict[str, Any] = {"family": family}
    for key, value in spec.items():
        if key in ("family", "name"):
            continue
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ArchError(f"unknown option {key!r} for family {family!r}; allowed options: "
                            f"{', '.join(schema)}.{hint}")
        try:
            out[key] = schema[key][1](value) if value is not None else schema[key][0]
        except ValueError as exc:
            raise ArchError(f"family {family!r}: option {key!r} must be {exc}, "
                            f"but got {value!r}.") from None
    for key, (default, _) in schema.items():
        out.setdefault(key, default)
    if family == "mobilenet":
        out["strides"] = _mobilenet_strides(out["widths"], out["strides"])
    if family == "transformer" and out["dim"] % out["heads"]:
        raise ArchError(f"family 'transformer': option 'dim' ({out['dim']}) must be divisible "
                        f"by 'heads' ({out['heads']}).")
    if spec.get("name") is not None:
        out["name"] = str(spec["name"])
    return out


def _mobilenet_strides(widths: tuple[int, ...], strides: tuple[int, ...] | None) -> tuple:
    if strides is None:
        return (1,) + (2,) * (len(widths) - 1)
    if len(strides) != len(widths):
        raise ArchError(f"family 'mobilenet': option 'strides' needs one entry per width "
                        f"({len(widths)}), but got {list(strides)}.")
    return strides


# --------------------------------------------------------------------------- names
_ABBREV = {"kernel_size": "k", "pool": "p", "fc_width": "fc", "dropout": "drop",
           "convs_per_stage": "c", "blocks_per_stage": "b", "stem_channels": "stem",
           "strides": "s", "layers": "l", "hidden": "h", "embedding_dim": "emb",
           "depth": "d", "heads": "nh", "mlp_ratio": "mlp", "patch_size": "p"}


def _token(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return ("" if value else "no") + ("bi" if key == "bidirectional" else key)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return _ABBREV.get(key, key) + "x".join(map(str, value))
    return f"{_ABBREV.get(key, key)}{value:g}"


def arch_name(spec: Mapping[str, Any]) -> str:
    """``spec["name"]`` if given, else a readable name, e.g. ``cnn1d-32x64-bn``.

    The name lists the main sizes, then every option that differs from its default; ``bn``
    or ``ln`` marks normalisation. Builder specs: the function name plus its kwargs.
    """
    if spec.get("name") is not None:
        return str(spec["name"])
    if "builder" in spec:
        func = str(spec["builder"]).rpartition(":")[2] or str(spec["builder"])
        extra = [f"{k}{v}" for k, v in sorted(spec.items()) if k not in ("builder", "name")]
        return "-".join([func, *extra])
    full = validate_spec(spec)
    family = full["family"]
    (main, _, _), *rest = _SCHEMAS[family]
    parts = [family, "x".join(map(str, full[main])) if isinstance(full[main], tuple)
             else str(full[main])]
    if family == "mlp" and not full[main]:
        parts[1] = "linear"
    defaults = family_defaults(family)
    if family == "mobilenet":
        defaults["strides"] = _mobilenet_strides(full["widths"], None)
    for key, _, _ in rest:
        if key != "norm" and full[key] != defaults[key]:
            parts.append(_token(key, full[key]))
    norm = full.get("norm", "none")
    if norm != "none":
        parts.append({"batch": "bn", "layer": "ln"}[norm])
    return "-".join(parts)


# --------------------------------------------------------------------------- building
def _data_info(data: DatasetSplits | DataInfo | Any) -> DataInfo:
    if isinstance(data, DatasetSplits):
        return data.info
    if isinstance(data, DataInfo):
        return data
    try:
        return DataInfo(data.kind, tuple(data.input_shape), int(data.n_outputs),
                        getattr(data, "vocab_size", None), getattr(data, "task", "classification"))
    except AttributeError as exc:
        raise ArchError(f"build_model needs DatasetSplits or DataInfo, got {data!r}.") from exc


def _load_builder(path: Any) -> Callable[..., Any]:
    module_name, sep, func_name = str(path).partition(":")
    if not sep or not module_name or not func_name:
        raise ArchError(f"builder must look like 'package.module:function', but got {path!r}.")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code
        raise ArchError(f"cannot import builder module {module_name!r} (builder {path!r}): "
                        f"{type(exc).__name__}: {exc}") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ArchError(f"builder {path!r}: module {module_name!r} has no callable "
                        f"{func_name!r}.")
    return func


def _build_user(spec: Mapping[str, Any], info: DataInfo) -> ZooModel:
    """Run a user builder ``function(data_info, **kwargs)`` (this runs user code)."""
    path = spec["builder"]
    func = _load_builder(path)
    kwargs = {k: v for k, v in spec.items() if k not in ("builder", "name")}
    try:
        inspect.signature(func).bind(info, **kwargs)
    except TypeError as exc:
        raise ArchError(f"builder {path!r} does not accept (data_info, **{kwargs}): "
                        f"{exc}") from exc
    except ValueError:  # no signature available (builtins): just call it
        pass
    result = func(info, **kwargs)
    name = arch_name(spec)
    if isinstance(result, ZooModel):
        if spec.get("name") is not None:
            result.name = name
        return result
    if (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)
            and isinstance(result[1], int)):
        return ZooModel(result[0], result[1], info.n_outputs, name=name,
                        sequence_output=info.kind == "tokens")
    raise ArchError(f"builder {path!r} must return a ZooModel or a tuple (preclassifier: "
                    f"nn.Module, feature_dim: int), but returned {type(result).__name__}.")


def build_model(spec: Mapping[str, Any], data: DatasetSplits | DataInfo) -> ZooModel:
    """Build the architecture ``spec`` for the inputs and outputs of ``data``.

    Args:
        spec: ``{"family": ..., **options}`` (see :func:`family_defaults`) or
            ``{"builder": "package.module:function", **kwargs}``; optional ``"name"``. A
            builder is called as ``function(data_info, **kwargs)`` and must return a
            :class:`ZooModel` or ``(preclassifier, feature_dim)`` (this imports and runs
            user code).
        data: the dataset (or its :class:`~alrao_tune.data.DataInfo`).

    Returns:
        the model; PyTorch's default initialisation under the current torch seed.

    Raises:
        ArchError: bad spec, family unsuited to the input kind, unusable builder.
    """
    info = _data_info(data)
    full = validate_spec(spec)
    if "builder" in full:
        return _build_user(full, info)
    family = full["family"]
    if info.kind not in _KINDS[family]:
        suited = [f for f in FAMILIES if info.kind in _KINDS[f]]
        raise ArchError(f"family {family!r} takes {' or '.join(_KINDS[family])} inputs, but the "
                        f"dataset has {info.kind!r} inputs of shape {info.input_shape}; families "
                        f"for {info.kind!r} inputs: {', '.join(suited)}.")
    if info.kind == "tokens" and full.get("bidirectional"):
        raise ArchError(f"family {family!r}: option 'bidirectional' must be false for token "
                        f"inputs (next-token prediction must not see the future).")
    try:
        module, dim = PRECLASSIFIERS[family](info.kind, info.input_shape, full, info.vocab_size)
    except ValueError as exc:  # an option that does not fit these inputs
        raise ArchError(f"family {family!r}: {exc}.") from None
    return ZooModel(module, dim, info.n_outputs, name=arch_name(full),
                    sequence_output=info.kind == "tokens")


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
