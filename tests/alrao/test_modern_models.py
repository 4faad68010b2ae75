"""Alrao on modern architectures: Hugging Face models from tiny configs, torch's
TransformerEncoder and the zoo's transformer family.

For each model: ``from_model`` finds and replaces its classifier, one AlraoSGD step moves every
parameter by exactly ``-rate_f * grad`` with one rate per (inferred) feature, and 30 steps on
generated data lower the averaged model's loss. Nothing is downloaded (``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from alrao_tune.alrao import AlraoModel, AlraoSGD, describe_features
from alrao_tune.data import DataInfo
from alrao_tune.zoo import build_model
from tests.alrao.helpers import (
    LR_MAX,
    LR_MIN,
    assert_one_exact_step,
    averaged_nll,
    one_thread,
    train,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T = pytest.importorskip("transformers")

N, N_CLASSES, VOCAB, SEQ = 8, 3, 50, 8
pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def text() -> Tensor:
    return torch.randint(1, VOCAB, (N, SEQ), generator=torch.Generator().manual_seed(1))


def image(size: int, n: int = N) -> Callable[[], Tensor]:
    def make() -> Tensor:
        gen = torch.Generator().manual_seed(1)
        return torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64)

    return make


class TorchTransformer(nn.Module):
    """Token classifier on ``nn.TransformerEncoder``: embedding, 1 layer, mean pool, ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc = nn.Linear(16, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.encoder(self.embed(x)).mean(1))


_TEXT = {"vocab_size": VOCAB, "num_labels": N_CLASSES}
# name -> (model factory, input factory, the classifier from_model must replace)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Any], str]] = {
    "bert": (lambda: T.BertForSequenceClassification(T.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, **_TEXT)), text, "classifier"),
    "gpt2": (lambda: T.GPT2ForSequenceClassification(T.GPT2Config(
        n_embd=16, n_layer=1, n_head=2, n_positions=16, pad_token_id=0, bos_token_id=1,
        eos_token_id=1, **_TEXT)), text, "score"),
    "llama": (lambda: T.LlamaForSequenceClassification(T.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=16, pad_token_id=0, **_TEXT)),
        text, "score"),
    "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        image_size=8, patch_size=4, num_labels=N_CLASSES)), image(8), "classifier"),
    "convnext": (lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=N_CLASSES)),
        image(16), "classifier"),
    "resnet": (lambda: T.ResNetForImageClassification(T.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=N_CLASSES)),
        image(16), "classifier.1"),
    "mobilevit": (lambda: T.MobileViTForImageClassification(T.MobileViTConfig(
        image_size=32, patch_size=2, hidden_sizes=[16, 16, 16],
        neck_hidden_sizes=[8, 8, 16, 16, 16, 32, 32], num_attention_heads=2,
        num_labels=N_CLASSES)), image(32, n=4), "classifier"),
    "torch_transformer_encoder": (TorchTransformer, text, "fc"),
    "zoo_transformer_vector": (lambda: build_model(
        {"family": "transformer", "dim": 16, "depth": 1, "heads": 2},
        DataInfo("vector", (40,), N_CLASSES)), lambda: torch.randn(N, 40, dtype=torch.float64),
        "classifier"),
    "zoo_transformer_image": (lambda: build_model(
        {"family": "transformer", "dim": 16, "depth": 1, "heads": 2, "pool": "mean"},
        DataInfo("image", (3, 8, 8), N_CLASSES)), image(8), "classifier"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MODELS))
def test_from_model_one_exact_step_and_training(name: str) -> None:
    torch.manual_seed(0)
    factory, make_input, classifier = MODELS[name]
    net = factory().double()
    x = make_input()
    y = torch.randint(0, N_CLASSES, (len(x),), generator=torch.Generator().manual_seed(2))
    model = AlraoModel.from_model(net, n_heads=3)
    # from_model found the model's classifier and says so
    assert model.replaced == classifier
    before = averaged_nll(model, x, y)
    opt = assert_one_exact_step(model, x, y)
    train(model, opt, x, y, steps=29)
    # 30 steps on one generated batch lower the averaged model's loss
    assert averaged_nll(model, x, y) < 0.9 * before


def test_inferred_layouts_of_modern_layers() -> None:
    torch.manual_seed(0)
    rows = {(r.module, r.parameter): r for r in describe_features(MODELS["gpt2"][0]())}
    # GPT-2's Conv1D keeps its weight as [in, out]: the features are its columns (dim 1),
    # for the square attention projection too (decided by probing the module)
    attn = rows[("transformer.h.0.attn.c_proj", "weight")]
    assert (attn.dim, attn.n_features, attn.rule) == (1, 16, "inferred: square, probed (dim 1)")
    assert rows[("transformer.h.0.mlp.c_fc", "weight")][5:] == (1, 64)
    vit = {(r.module, r.parameter): r for r in describe_features(MODELS["vit"][0]())}
    # ViT's class token and position embeddings: one feature per hidden channel (dim 2)
    assert vit[("vit.embeddings", "cls_token")][4:] == ("inferred: vector (dim 2)", 2, 16)
    assert vit[("vit.embeddings", "position_embeddings")][5:] == (2, 16)
    llama = {r.type: r for r in describe_features(MODELS["llama"][0]())}
    assert llama["LlamaRMSNorm"][4:] == ("inferred: vector (dim 0)", 0, 16)
    convnext = {r.parameter: r for r in describe_features(MODELS["convnext"][0]())}
    assert convnext["layer_scale_parameter"].rule == "inferred: vector (dim 0)"


def test_tied_embedding_keeps_one_layout() -> None:
    torch.manual_seed(0)
    lm = T.GPT2LMHeadModel(T.GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                        vocab_size=VOCAB, bos_token_id=1, eos_token_id=1))
    # the LM head is tied to the token embedding: one parameter, one layout (the embedding's)
    assert lm.lm_head.weight is lm.transformer.wte.weight
    rows = [r for r in describe_features(lm) if r.parameter == "weight" and r.shape == (VOCAB, 16)]
    assert [(r.module, r.rule, r.dim, r.n_features) for r in rows] == [
        ("transformer.wte", "Embedding rule", 1, 16)
    ]
    opt = AlraoSGD(lm, LR_MIN, LR_MAX, seed=0)
    assert opt.state[lm.lm_head.weight]["feature_lr"].shape == (16,)
