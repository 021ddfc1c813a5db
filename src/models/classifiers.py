"""Image classifiers: a timm CNN backbone, attention blocks on its last feature map, GAP, a linear head.

The seed project's rice-leaf models (DESIGN section 5):

- ``MobileNetV3_Small_BoT_Linear``: timm ``mobilenetv3_small_100`` features (576 x 7 x 7 at 224 px)
  -> BoT block with linear attention -> GAP -> dropout -> Linear. Howard et al. 2019,
  "Searching for MobileNetV3" (https://arxiv.org/abs/1905.02244). timm's ``conv_head`` is not built:
  ``forward_features`` never runs it, so the seed's count (1,748,980) carried 590,848 dead parameters.
- ``ResNet18_Hybrid``: timm ``resnet18`` features (512 x 7 x 7) -> Coordinate Attention block ->
  BoT linear block -> GAP -> dropout -> Linear (11,647,204 parameters with 4 classes, as the seed).

Sibling variants swap the blocks (softmax BoT, CA, ECA, CA + BoT linear); the bare backbones are
there as baselines for comparison tables.
"""
from __future__ import annotations

import torch
from torch import nn

from src.errors import DataError
from src.models.layers.attention import BoTBlock, CABlock, ECA
from src.models.timm_features import create_timm_features

BACKBONES = {"MobileNetV3_Small": "mobilenetv3_small_100", "ResNet18": "resnet18"}

# model name -> (backbone key, blocks applied in order on the last feature map)
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "MobileNetV3_Small_BoT_Linear": ("MobileNetV3_Small", ("bot_linear",)),
    "MobileNetV3_Small_BoT": ("MobileNetV3_Small", ("bot_softmax",)),
    "MobileNetV3_Small_CA": ("MobileNetV3_Small", ("ca",)),
    "MobileNetV3_Small_ECA": ("MobileNetV3_Small", ("eca",)),
    "MobileNetV3_Small_Hybrid": ("MobileNetV3_Small", ("ca", "bot_linear")),
    "MobileNetV3_Small": ("MobileNetV3_Small", ()),
    "ResNet18_Hybrid": ("ResNet18", ("ca", "bot_linear")),
    "ResNet18_BoTLinear": ("ResNet18", ("bot_linear",)),
    "ResNet18_BoT": ("ResNet18", ("bot_softmax",)),
    "ResNet18_CA": ("ResNet18", ("ca",)),
    "ResNet18_ECA": ("ResNet18", ("eca",)),
    "ResNet18": ("ResNet18", ()),
}


def make_block(kind: str, channels: int, heads: int, reduction: int) -> nn.Module:
    if kind == "bot_linear":
        return BoTBlock(channels, heads, attention="linear")
    if kind == "bot_softmax":
        return BoTBlock(channels, heads, attention="softmax")
    if kind == "ca":
        return CABlock(channels, reduction)
    if kind == "eca":
        return ECA()
    raise ValueError(f"unknown block {kind!r}")


class AttentionClassifier(nn.Module):
    """Backbone features -> attention blocks -> global average pool -> dropout -> Linear.

    Args:
        backbone: module mapping (B, 3, H, W) to a list whose last item is (B, C, h, w).
        channels: C of the backbone's last feature map.
        blocks: attention blocks, each (B, C, h, w) -> (B, C, h, w).
        num_classes: outputs of the classifier.
        dropout: dropout probability before the classifier.
    """

    # parameters under these prefixes count as pretrained (``--base-lr``); the rest as new (``--head-lr``)
    pretrained_prefixes = ("backbone.",)

    def __init__(self, backbone: nn.Module, channels: int, blocks: list[nn.Module],
                 num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # B, 3, H, W -> B, C, h, w
        return self.blocks(self.backbone(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, 3, H, W -> B, num_classes
        feats = self.forward_features(x).mean(dim=(2, 3))           # B, C
        return self.classifier(self.dropout(feats))


def create_classifier(model: str, num_classes: int, heads: int = 4, reduction: int = 32,
                      dropout: float = 0.1, pretrained: bool = False,
                      pretrained_weights: str | None = None) -> AttentionClassifier:
    """Build one of :data:`MODELS` by name."""
    if model not in MODELS:
        raise DataError(f"unknown model {model!r}; choose from: {', '.join(MODELS)}", param="model")
    backbone_key, block_kinds = MODELS[model]
    backbone = create_timm_features(BACKBONES[backbone_key], pretrained, pretrained_weights)
    channels = backbone.feature_info.channels()[-1]
    blocks = [make_block(k, channels, heads, reduction) for k in block_kinds]
    return AttentionClassifier(backbone, channels, blocks, num_classes, dropout)


def build_classifier(args, num_classes: int) -> AttentionClassifier:
    return create_classifier(args.model, num_classes, heads=args.heads, reduction=args.reduction,
                             dropout=args.dropout, pretrained=args.pretrained or bool(args.pretrained_weights),
                             pretrained_weights=args.pretrained_weights)
