"""Tests of from_model's conversion (alrao_tune/alrao/convert.py): outputs, classifier search."""

from __future__ import annotations

import logging
from collections import OrderedDict

import pytest
import torch
from torch import Tensor, nn

from alrao_tune.alrao import AlraoModel
from alrao_tune.alrao.convert import find_classifier, select_features


class Output(OrderedDict):
    """Like Hugging Face's ModelOutput: a dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Tensor:
        return self[name]


class Net(nn.Module):
    """Returns its prediction as a tensor, a ModelOutput, a dict or a tuple."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Linear(5, 8)
        self.score = nn.Linear(8, 3)

    def forward(self, input_ids: Tensor, scale: float = 1.0) -> object:
        logits = self.score(torch.relu(self.body(input_ids)) * scale)
        return {"tensor": logits, "model_output": Output(logits=logits, hidden=input_ids),
                "dict": {"logits": logits}, "tuple": (logits, input_ids)}[self.kind]


@pytest.mark.parametrize("kind", ["tensor", "model_output", "dict", "tuple"])
def test_from_model_reads_the_features_from_any_output(kind: str) -> None:
    torch.manual_seed(0)
    net = Net(kind)
    model = AlraoModel.from_model(net, n_heads=2)
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    features = torch.relu(net.body(x))
    # the classifier 'score' was replaced; the features are its input
    assert model.replaced == "score"
    torch.testing.assert_close(model.features(x), features)
    assert model(x).shape == (4, 3)
    model.training_loss(x, y).loss.backward()
    # a mapping input is passed as keyword arguments (input_ids=..., attention_mask=...)
    torch.testing.assert_close(model.features({"input_ids": x, "scale": 2.0}), 2 * features)


def test_user_output_callable_replaces_the_rule() -> None:
    net = Net("model_output")
    model = AlraoModel.from_model(net, output=lambda out: 2 * out.logits)
    x = torch.randn(2, 5)
    torch.testing.assert_close(model.features(x), 2 * torch.relu(net.body(x)))
    with pytest.raises(TypeError, match="no 'logits'"):
        select_features({"hidden": torch.ones(1)})
    with pytest.raises(TypeError, match="output=lambda"):
        select_features(3.0)


@pytest.mark.parametrize(
    ("net", "expected"),
    [
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4)), "2"),
        (nn.ModuleDict({"head": nn.Linear(3, 4), "trunk": nn.Linear(2, 3)}), "head"),
        (nn.ModuleDict({"classifier": nn.Sequential(nn.Flatten(), nn.Linear(3, 4)),
                        "pooler": nn.Linear(3, 3)}), "classifier.1"),
        (nn.ModuleDict({"fc": nn.Linear(3, 4), "extra": nn.Linear(2, 3)}), "fc"),
    ],
    ids=["last_linear", "head_before_later_linear", "classifier_container", "fc"],
)
def test_classifier_is_found_by_common_names_then_last_linear(net: nn.Module,
                                                              expected: str) -> None:  # fmt: skip
    assert find_classifier(net)[0] == expected


def test_from_model_says_which_module_it_replaced(caplog: pytest.LogCaptureFixture) -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4))
    with caplog.at_level(logging.INFO, logger="alrao_tune.alrao"):
        model = AlraoModel.from_model(net)
    assert "replaced '2' (Linear 3 -> 4)" in caplog.text
    assert "replaced='2'" in repr(model)
    # a dotted path to a container takes its last Linear
    resnet_like = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Flatten(), nn.Linear(3, 4)))
    assert AlraoModel.from_model(resnet_like, classifier="1").replaced == "1.1"
