"""Inference-time Conv+BatchNorm folding: in eval mode a BatchNorm after a convolution is an affine map
per channel, so it folds into the convolution's weight and bias (``w' = w * g / sqrt(var + eps)``,
``b' = (b - mean) * g / sqrt(var + eps) + beta``; PyTorch's ``fuse_conv_bn_eval``). One convolution
instead of a convolution plus a normalization pass over the feature map; what ultralytics does at
predict time (``model.fuse()``).

Pairs are found where the code says one feeds the other, never guessed from names alone: consecutive
children of containers that run their children in order (``nn.Sequential``, timm's feature wrappers),
and the ``(conv, bn)`` attributes of the block classes listed in ``PAIRS``, whose forward is
``bn(conv(x))`` (checked in timm 1.0's source). timm's ``BatchNormAct2d`` keeps its activation (and
dropout) after folding.
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# "module.qualname" -> (conv attribute, BatchNorm attribute) pairs where forward applies bn right after conv
PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "src.models.layers.yolo.ConvBNSiLU": (("conv", "bn"),),
    "src.models.layers.attention.CABlock": (("conv", "bn"),),
    "src.models.layers.attention.CoordAttention": (("conv1", "bn1"),),
    "timm.models.mobilenetv3.MobileNetV3Features": (("conv_stem", "bn1"),),
    "timm.models.mobilenetv3.MobileNetV3": (("conv_stem", "bn1"),),
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": (("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"),
                                                                ("conv_pw", "bn2")),
    "timm.models._efficientnet_blocks.InvertedResidual": (("conv_s2d", "bn_s2d"), ("conv_pw", "bn1"),
                                                          ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "timm.models._efficientnet_blocks.ConvBnAct": (("conv", "bn1"),),
    "timm.models.resnet.BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "timm.models.resnet.Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}
# containers whose forward runs their children one after the other, in order
ORDERED = {"torch.nn.modules.container.Sequential", "timm.models._features.FeatureListNet",
           "timm.models._features.FeatureDictNet"}


def _key(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    if _key(module) in ORDERED:
        names = list(module._modules)
        return list(zip(names, names[1:]))
    return list(PAIRS.get(_key(module), ()))


def _is_bn(module: nn.Module | None) -> bool:
    # exactly BatchNorm2d or timm's BatchNormAct2d: other subclasses may compute something else
    return module is not None and (type(module) is nn.BatchNorm2d or _key(module) == "timm.layers.norm_act.BatchNormAct2d") \
        and module.track_running_stats and module.running_mean is not None


def _after(bn: nn.Module) -> nn.Module:
    """What is left of ``bn`` once folded: nothing, or timm's dropout + activation."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    return nn.Sequential(bn.drop, bn.act)


def fold_conv_bn(model: nn.Module) -> int:
    """Fold every Conv2d+BatchNorm2d pair of ``model`` in place and put it in eval mode (folded BNs no
    longer normalize with batch statistics: for inference only). Returns the number of pairs folded."""
    model.eval()
    folded = 0
    for module in list(model.modules()):
        for conv_name, bn_name in _pairs(module):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if type(conv) is not nn.Conv2d or not _is_bn(bn):
                continue
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, _after(bn))
            folded += 1
    return folded
