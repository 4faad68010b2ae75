"""The ``transformer`` family: a small pre-norm transformer encoder for every input kind.

Inputs become a sequence of D-dimensional tokens, then ``depth`` pre-norm blocks
(``x + attn(LN(x))``, ``x + MLP(LN(x))``; Xiong et al. 2020, as in ViT and GPT-2) and a final
LayerNorm give the features:

* ``image`` ``[N, C, H, W]``: non-overlapping ``patch_size`` patches, projected by a strided
  ``Conv2d`` (ViT, Dosovitskiy et al. 2021); ``vector`` ``[N, L]``: consecutive chunks of
  ``patch_size`` values (zero-padded at the end), projected by a ``Linear``. A learned class
  token is prepended (``pool="cls"``, its final state is the feature vector) or the tokens
  are averaged (``pool="mean"``).
* ``tokens`` ``[N, T]``: an ``nn.Embedding``, causal attention, one feature vector per
  position (next-token prediction, like the recurrent families).

Position embeddings are learned, one vector per position. The class token and the position
table are ``nn.Embedding`` weights (looked up by index), so every parameter of the family sits
in a layer type with an Alrao feature rule: one rate per embedding coordinate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["PreNormBlock", "TransformerFeatures", "build_transformer"]


class PreNormBlock(nn.Module):
    """``x + attn(LN(x))`` then ``x + MLP(LN(x))``, batch-first ``[N, T, D]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float,
                 causal: bool) -> None:  # fmt: skip
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim), nn.Dropout(dropout))  # fmt: skip
        self.causal = causal

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        mask = None
        if self.causal:  # True above the diagonal: position t does not see t' > t
            mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TransformerFeatures(nn.Module):
    """Inputs -> tokens [N, T, D] (+ learned positions) -> pre-norm blocks -> features.

    Args:
        kind: ``image``, ``vector`` or ``tokens``.
        shape: input shape without the batch dim.
        dim: token width D.
        depth: number of blocks.
        heads: attention heads (must divide ``dim``).
        mlp_ratio: hidden width of the MLP, in multiples of D.
        patch_size: pixels per patch side (images) or values per chunk (vectors).
        pool: ``cls`` or ``mean`` (images and vectors).
        dropout: dropout of attention weights and MLP outputs.
        vocab: vocabulary size (tokens).
    """

    def __init__(self, kind: str, shape: tuple[int, ...], *, dim: int, depth: int, heads: int,
                 mlp_ratio: int, patch_size: int, pool: str, dropout: float,
                 vocab: int | None = None) -> None:  # fmt: skip
        super().__init__()
        self.kind, self.pool, self.patch_size = kind, pool, patch_size
        if kind == "image":
            self.embed: nn.Module = nn.Conv2d(shape[0], dim, patch_size, stride=patch_size)
            n_tokens = (shape[1] // patch_size) * (shape[2] // patch_size)
        elif kind == "vector":
            self.embed = nn.Linear(patch_size, dim)
            n_tokens = math.ceil(shape[0] / patch_size)
        else:
            self.embed = nn.Embedding(int(vocab or 1), dim)
            n_tokens = shape[0]
        self.cls = nn.Embedding(1, dim) if kind != "tokens" and pool == "cls" else None
        self.positions = nn.Embedding(n_tokens + (self.cls is not None), dim)
        self.blocks = nn.Sequential(*[PreNormBlock(dim, heads, mlp_ratio, dropout,
                                                   causal=kind == "tokens")
                                      for _ in range(depth)])  # fmt: skip
        self.norm = nn.LayerNorm(dim)

    def tokens(self, x: Tensor) -> Tensor:
        """The input as a token sequence [N, T, D], before positions are added."""
        if self.kind == "image":
            return self.embed(x).flatten(2).transpose(1, 2)
        if self.kind == "vector":
            pad = -x.shape[-1] % self.patch_size
            return self.embed(F.pad(x, (0, pad)).unflatten(-1, (-1, self.patch_size)))
        return self.embed(x)

    def forward(self, x: Tensor) -> Tensor:
        h = self.tokens(x)
        if self.cls is not None:
            h = torch.cat([self.cls.weight.expand(len(h), 1, -1), h], dim=1)
        h = self.norm(self.blocks(h + self.positions.weight[: h.shape[1]]))
        if self.kind == "tokens":
            return h
        return h[:, 0] if self.cls is not None else h.mean(1)


def build_transformer(kind: str, shape: tuple[int, ...], o: dict[str, Any],
                      vocab: int | None) -> tuple[nn.Module, int]:  # fmt: skip
    """The ``transformer`` family's pre-classifier and feature width (zoo builder API).

    Raises:
        ValueError: ``patch_size`` larger than the image.
    """
    if kind == "image" and min(shape[1:]) < o["patch_size"]:
        raise ValueError(f"option 'patch_size' ({o['patch_size']}) must be at most the image "
                         f"side ({min(shape[1:])})")  # fmt: skip
    module = TransformerFeatures(kind, shape, dim=o["dim"], depth=o["depth"], heads=o["heads"],
                                 mlp_ratio=o["mlp_ratio"], patch_size=o["patch_size"],
                                 pool=o["pool"], dropout=o["dropout"], vocab=vocab)  # fmt: skip
    return module, o["dim"]
