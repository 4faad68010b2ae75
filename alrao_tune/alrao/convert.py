"""Turning an existing classifier network into Alrao's pre-classifier (``from_model``'s parts).

Alrao replaces the last layer of a network by K heads (Blier, Wolinski & Ollivier,
arXiv:1810.01322, section 3). For a given model that means two things:

* **find the classifier**: the ``nn.Linear`` the forward pass ends with. A dotted path given by
  the user wins; otherwise the first of the attributes that common model families use for it
  (:data:`CLASSIFIER_NAMES`: Hugging Face ``classifier`` / ``score``, timm ``head``,
  torchvision ``fc`` / ``classifier`` / ``heads``, ...) that is a ``Linear`` or contains one
  (then its last ``Linear``: ``Sequential(Flatten, Linear)``); failing that, the last
  ``nn.Linear`` in ``named_modules()``. The classifier is replaced by ``nn.Identity`` in a copy,
  so the copy's output is the classifier's input: the features.
* **read the features from the output**: models return a tensor, a ``ModelOutput`` (a dict
  subclass with ``.logits``), a dict with ``"logits"``, or a tuple whose first element is the
  prediction. :func:`select_features` takes the tensor in that order; a user ``output=``
  callable replaces the rule.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["CLASSIFIER_NAMES", "find_classifier", "select_features", "strip_classifier"]

_log = logging.getLogger("alrao_tune.alrao")

CLASSIFIER_NAMES = ("classifier", "score", "head", "heads", "fc", "lm_head")
"""Attribute names under which common models keep their final layer, tried in this order."""


def select_features(out: Any) -> Tensor:
    """The prediction tensor of a model output: itself, ``.logits`` / ``["logits"]`` (Hugging
    Face ``ModelOutput`` and dicts), or the first element of a tuple or list."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        if "logits" in out:
            return out["logits"]
        raise TypeError(
            f"The model returned a mapping with keys {list(out)} and no 'logits'; pass "
            "output=lambda out: ... to say which entry holds the features."
        )
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(
        f"Cannot find the features in a model output of type {type(out).__name__}; pass "
        "output=lambda out: ... to from_model / AlraoModel."
    )


def _last_linear(module: nn.Module) -> tuple[str, nn.Linear] | None:
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return found[-1] if found else None


def find_classifier(model: nn.Module, classifier: str | None = None) -> tuple[str, nn.Linear]:
    """The (dotted name, module) of the final ``nn.Linear`` of ``model`` (module docstring).

    Raises:
        ValueError: ``model`` has no ``nn.Linear``, or ``classifier`` names a module that
            does not exist or holds no ``nn.Linear``.
    """
    if classifier is None:
        for name in CLASSIFIER_NAMES:
            child = model._modules.get(name)
            found = _last_linear(child) if isinstance(child, nn.Module) else None
            if found is not None:
                return ".".join(p for p in (name, found[0]) if p), found[1]
        found = _last_linear(model)
        if found is None:
            raise ValueError(
                f"from_model needs a final nn.Linear, but {type(model).__name__} has none; "
                "build AlraoModel(preclassifier, in_features, n_classes) directly."
            )
        return found
    try:
        module = model.get_submodule(classifier)
    except AttributeError as err:
        raise ValueError(
            f"classifier={classifier!r} is not a submodule of {type(model).__name__}."
        ) from err
    found = _last_linear(module)
    if found is None:
        raise ValueError(
            f"classifier={classifier!r} must be an nn.Linear, but is {type(module).__name__}."
        )
    return ".".join(p for p in (classifier, found[0]) if p), found[1]


def strip_classifier(
    model: nn.Module, classifier: str | None = None
) -> tuple[nn.Module, str, nn.Linear]:
    """A deep copy of ``model`` with its classifier replaced by ``nn.Identity``.

    Returns:
        ``(body, name, linear)``: the copy (``nn.Identity`` if the model *is* the Linear), the
        classifier's dotted path and the (copied) ``nn.Linear`` it replaced.
    """
    body = copy.deepcopy(model)
    name, linear = find_classifier(body, classifier)
    if name == "":
        body = nn.Identity()
    else:
        parent_name, _, child = name.rpartition(".")
        setattr(body.get_submodule(parent_name), child, nn.Identity())
    _log.info("from_model: replaced %r (Linear %d -> %d) of %s by the Alrao heads.",
              name, linear.in_features, linear.out_features, type(model).__name__)  # fmt: skip
    return body, name, linear


OutputFn = Callable[[Any], Tensor]
"""Maps a pre-classifier's raw output to the feature tensor [..., D]."""
