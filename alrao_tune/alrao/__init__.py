"""Alrao (All Learning Rates At Once; Blier, Wolinski & Ollivier, arXiv:1810.01322).

Torch only. Every feature of the network body gets its own learning rate, sampled
log-uniformly in ``(lr_min, lr_max)``; the output layer is cloned ``K`` times with rates
spread log-uniformly over the same interval, and the clones are averaged by the switch
(van Erven, Grünwald & de Rooij, NeurIPS 2007).
"""

from alrao_tune.alrao.heads import AlraoHeads
from alrao_tune.alrao.lr import (
    FeatureLR,
    FeatureRow,
    FeatureSet,
    UnsupportedLayerError,
    describe_features,
    feature_lrs,
    format_features,
    log_uniform,
    register_feature_rule,
)
from alrao_tune.alrao.model import AlraoModel
from alrao_tune.alrao.optim import AlraoAdam, AlraoSGD
from alrao_tune.alrao.switch import Switch

__all__ = [
    "AlraoAdam",
    "AlraoHeads",
    "AlraoModel",
    "AlraoSGD",
    "FeatureLR",
    "FeatureRow",
    "FeatureSet",
    "Switch",
    "UnsupportedLayerError",
    "describe_features",
    "feature_lrs",
    "format_features",
    "log_uniform",
    "register_feature_rule",
]
