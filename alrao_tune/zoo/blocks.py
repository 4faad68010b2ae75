"""Building blocks of the architecture zoo (:mod:`alrao_tune.zoo`).

Every module that owns parameters is a ``Linear``, ``Conv1d``/``Conv2d``,
``BatchNorm1d``/``BatchNorm2d``, ``LayerNorm``, ``Embedding``, ``GRU``, ``LSTM`` or
``MultiheadAttention``: the Alrao optimizer has a feature rule for each (no inference). The
container modules here own no parameters themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from alrao_tune.zoo.transformer import build_transformer

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class Reshape(nn.Module):
    """Reshape every example to ``shape`` (the batch dimension is kept)."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Transpose(nn.Module):
    """Swap two dimensions (e.g. ``[N, C, L] -> [N, L, C]``)."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(self.dim0, self.dim1)


class ImageRows(nn.Module):
    """Images ``[N, C, H, W]`` as sequences of rows ``[N, H, C * W]``."""

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.permute(0, 2, 1, 3).reshape(n, h, c * w)


class GlobalPool(nn.Module):
    """Pool all positions of ``[N, C, *spatial]`` into ``[N, C]`` (``avg`` or ``max``), or
    flatten them into ``[N, C * prod(spatial)]`` (``flatten``)."""

    def __init__(self, mode: str = "avg") -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "flatten":
            return x.flatten(1)
        x = x.flatten(2)
        return x.mean(dim=2) if self.mode == "avg" else x.amax(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def conv_norm_act(
    dim: int, c_in: int, c_out: int, kernel_size: int, *, stride: int = 1, groups: int = 1,
    norm: bool = True, activation: str | None = "relu",
) -> list[nn.Module]:
    """``Conv{dim}d`` ("same" padding) + optional ``BatchNorm{dim}d`` + optional activation.

    The convolution has a bias only when there is no normalisation after it.
    """
    conv_cls = nn.Conv1d if dim == 1 else nn.Conv2d
    bn_cls = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    layers: list[nn.Module] = [conv_cls(c_in, c_out, kernel_size, stride=stride,
                                        padding=kernel_size // 2, groups=groups, bias=not norm)]
    if norm:
        layers.append(bn_cls(c_out))
    if activation is not None:
        layers.append(ACTIVATIONS[activation]())
    return layers


class ResidualBlock(nn.Module):
    """Basic ResNet block (He et al., 2016): ``relu(f(x) + shortcut(x))`` with two 3x3 convs.

    The shortcut is the identity, or a strided 1x1 conv (+ BN) when the shape changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_norm_act(2, c_in, c_out, 3, stride=stride, norm=norm),
            *conv_norm_act(2, c_out, c_out, 3, norm=norm, activation=None),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                *conv_norm_act(2, c_in, c_out, 1, stride=stride, norm=norm, activation=None))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class InceptionBlock(nn.Module):
    """Inception-like block (Szegedy et al., 2015) with four parallel branches, concatenated.

    Branches: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3 (a 5x5 receptive field); 3x3 max-pool -> 1x1.
    ``c_out`` is split as evenly as possible between them (the first branches get the rest).
    """

    def __init__(self, c_in: int, c_out: int, norm: bool = True) -> None:
        super().__init__()
        widths = [c_out // 4 + (1 if i < c_out % 4 else 0) for i in range(4)]
        b1, b3, b5, bp = widths
        self.branches = nn.ModuleList([
            nn.Sequential(*conv_norm_act(2, c_in, b1, 1, norm=norm)),
            nn.Sequential(*conv_norm_act(2, c_in, b3, 1, norm=norm),
                          *conv_norm_act(2, b3, b3, 3, norm=norm)),
            nn.Sequential(*conv_norm_act(2, c_in, b5, 1, norm=norm),
                          *conv_norm_act(2, b5, b5, 3, norm=norm),
                          *conv_norm_act(2, b5, b5, 3, norm=norm)),
            nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                          *conv_norm_act(2, c_in, bp, 1, norm=norm)),
        ])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def depthwise_separable(c_in: int, c_out: int, stride: int, norm: bool = True) -> list[nn.Module]:
    """MobileNet block (Howard et al., 2017): depthwise 3x3 conv (groups = ``c_in``) + BN +
    ReLU, then pointwise 1x1 conv + BN + ReLU."""
    return [*conv_norm_act(2, c_in, c_in, 3, stride=stride, groups=c_in, norm=norm),
            *conv_norm_act(2, c_in, c_out, 1, norm=norm)]


class RecurrentFeatures(nn.Module):
    """A GRU/LSTM over the sequence produced by ``front``.

    Args:
        front: maps inputs to a ``[N, T, input_size]`` sequence (an ``Embedding`` for tokens,
            :class:`Transpose`/:class:`ImageRows`/:class:`Reshape` otherwise).
        cell: ``gru`` or ``lstm``.
        input_size: features per time step after ``front``.
        hidden: hidden units per direction.
        layers: stacked recurrent layers.
        bidirectional: also run right-to-left (never for next-token prediction).
        dropout: dropout between stacked layers.
        per_position: return ``[N, T, D]`` (one feature vector per position) instead of the
            final state ``[N, D]``.

    The final state of a bidirectional layer concatenates the forward direction's last
    output and the backward direction's first output; ``D = hidden * directions``.
    """

    def __init__(
        self, front: nn.Module, cell: str, input_size: int, hidden: int, *, layers: int = 1,
        bidirectional: bool = False, dropout: float = 0.0, per_position: bool = False,
    ) -> None:
        super().__init__()
        rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        self.front = front
        self.rnn = rnn_cls(input_size, hidden, num_layers=layers, batch_first=True,
                           bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.hidden, self.bidirectional, self.per_position = hidden, bidirectional, per_position
        self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(self.front(x))
        if self.per_position:
            return out
        if not self.bidirectional:
            return out[:, -1]
        return torch.cat([out[:, -1, : self.hidden], out[:, 0, self.hidden :]], dim=1)


# --------------------------------------------------------------------------- families
# Each builder gets the input description and validated options (see alrao_tune.zoo) and
# returns (pre-classifier, feature dimension).
Built = tuple[nn.Module, int]


def build_mlp(kind: str, shape: tuple[int, ...], o: dict[str, Any], vocab: int | None) -> Built:
    """Flatten, then ``Linear -> [BatchNorm|LayerNorm] -> activation -> [Dropout]`` blocks."""
    d = math.prod(shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for width in o["widths"]:
        layers.append(nn.Linear(d, width))
        if o["norm"] != "none":
            layers.append(nn.BatchNorm1d(width) if o["norm"] == "batch" else nn.LayerNorm(width))
        layers.append(ACTIVATIONS[o["activation"]]())
        if o["dropout"] > 0:
            layers.append(nn.Dropout(o["dropout"]))
        d = width
    return nn.Sequential(*layers), d


def _conv1d_stack(o: dict[str, Any], length: int) -> tuple[list[nn.Module], int, int]:
    """``[N, L] -> [N, C, L']``: conv blocks, each followed by a max-pool while L allows."""
    layers: list[nn.Module] = [Reshape(1, length)]
    c = 1
    for width in o["channels"]:
        layers += conv_norm_act(1, c, width, o["kernel_size"], norm=o["norm"] == "batch",
                                activation=o["activation"])
        c = width
        if o["pool"] > 1 and length >= o["pool"]:
            layers.append(nn.MaxPool1d(o["pool"]))
            length //= o["pool"]
    return layers, c, length


def _pool_and_fc(layers: list[nn.Module], o: dict[str, Any], c: int, positions: int) -> Built:
    layers.append(GlobalPool(o["global_pool"]))
    d = c * positions if o["global_pool"] == "flatten" else c
    if o["fc_width"] > 0:
        layers += [nn.Linear(d, o["fc_width"]), ACTIVATIONS[o["activation"]]()]
        d = o["fc_width"]
    return nn.Sequential(*layers), d


def build_cnn1d(kind: str, shape: tuple[int, ...], o: dict[str, Any], vocab: int | None) -> Built:
    """1-D conv blocks (+ max-pool), global pool (or flatten), optional hidden fc layer."""
    layers, c, length = _conv1d_stack(o, shape[0])
    return _pool_and_fc(layers, o, c, length)


def build_cnn2d(kind: str, shape: tuple[int, ...], o: dict[str, Any], vocab: int | None) -> Built:
    """VGG-style stages of ``convs_per_stage`` convs + 2x2 max-pool, then a global pool."""
    c, h, w = shape
    layers: list[nn.Module] = []
    for width in o["channels"]:
        for _ in range(o["convs_per_stage"]):
            layers += conv_norm_act(2, c, width, o["kernel_size"], norm=o["norm"] == "batch",
                                    activation=o["activation"])
            c = width
        if min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    return _pool_and_fc(layers, o, c, h * w)


def build_mobilenet(kind: str, shape: tuple[int, ...], o: dict[str, Any],
                    vocab: int | None) -> Built:
    """3x3 stem conv, one depthwise-separable block per width, global average pool."""
    norm = o["norm"] == "batch"
    layers = conv_norm_act(2, shape[0], o["stem_channels"], 3, norm=norm)
    c = o["stem_channels"]
    for width, stride in zip(o["widths"], o["strides"], strict=True):
        layers += depthwise_separable(c, width, stride, norm=norm)
        c = width
    return nn.Sequential(*layers, GlobalPool("avg")), c


def build_inception(kind: str, shape: tuple[int, ...], o: dict[str, Any],
                    vocab: int | None) -> Built:
    """3x3 stem conv, inception blocks (2x2 max-pool between them if ``pool``), avg pool."""
    norm = o["norm"] == "batch"
    _, h, w = shape
    layers = conv_norm_act(2, shape[0], o["stem_channels"], 3, norm=norm)
    c = o["stem_channels"]
    for i, width in enumerate(o["widths"]):
        layers.append(InceptionBlock(c, width, norm=norm))
        c = width
        if o["pool"] and i < len(o["widths"]) - 1 and min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    return nn.Sequential(*layers, GlobalPool("avg")), c


def build_resnet(kind: str, shape: tuple[int, ...], o: dict[str, Any],
                 vocab: int | None) -> Built:
    """3x3 stem conv, stages of basic residual blocks (stride 2 entering each later stage)."""
    norm = o["norm"] == "batch"
    layers = conv_norm_act(2, shape[0], o["stem_channels"], 3, norm=norm)
    c = o["stem_channels"]
    for stage, width in enumerate(o["widths"]):
        for block in range(o["blocks_per_stage"]):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(ResidualBlock(c, width, stride, norm=norm))
            c = width
    return nn.Sequential(*layers, GlobalPool("avg")), c


def build_recurrent(cell: str) -> Callable[..., Built]:
    """Builder of a ``gru``/``lstm`` family: embedding (tokens) or reshape, then the RNN."""

    def build(kind: str, shape: tuple[int, ...], o: dict[str, Any], vocab: int | None) -> Built:
        front: nn.Module
        if kind == "tokens":
            front, size = nn.Embedding(int(vocab or 0), o["embedding_dim"]), o["embedding_dim"]
        elif kind == "image":
            front, size = ImageRows(), shape[0] * shape[2]
        else:
            front, size = Reshape(shape[0], 1), 1
        rnn = RecurrentFeatures(front, cell, size, o["hidden"], layers=o["layers"],
                                bidirectional=o["bidirectional"], dropout=o["dropout"],
                                per_position=kind == "tokens")
        return rnn, rnn.out_dim

    build.__doc__ = f"{cell.upper()} over the input sequence (see :class:`RecurrentFeatures`)."
    return build


def build_cnn_gru(kind: str, shape: tuple[int, ...], o: dict[str, Any],
                  vocab: int | None) -> Built:
    """The ``cnn1d`` conv stack as a front end, then a GRU over its output positions."""
    layers, c, _ = _conv1d_stack(o, shape[0])
    front = nn.Sequential(*layers, Transpose(1, 2))
    rnn = RecurrentFeatures(front, "gru", c, o["hidden"], layers=o["layers"],
                            bidirectional=o["bidirectional"])
    return rnn, rnn.out_dim


PRECLASSIFIERS: dict[str, Callable[..., Built]] = {
    "mlp": build_mlp, "cnn1d": build_cnn1d, "cnn2d": build_cnn2d,
    "mobilenet": build_mobilenet, "inception": build_inception, "resnet": build_resnet,
    "gru": build_recurrent("gru"), "lstm": build_recurrent("lstm"), "cnn_gru": build_cnn_gru,
    "transformer": build_transformer,
}
