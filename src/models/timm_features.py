"""timm backbones as feature extractors, with timm's own pretrained-weight loading path."""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from src.errors import DataError


def create_timm_features(timm_name: str, pretrained: bool = False, pretrained_weights: str | None = None,
                         out_index: int = -1, **model_kwargs: Any) -> nn.Module:
    """timm backbone that returns only one feature map (``features_only``, stage ``out_index``), so
    heads and later stages that the model never runs are not built."""
    return create_timm_model(timm_name, pretrained, pretrained_weights, features_only=True,
                             out_indices=(out_index,), **model_kwargs)


def create_timm_model(timm_name: str, pretrained: bool = False, pretrained_weights: str | None = None,
                      **model_kwargs: Any) -> nn.Module:
    """``timm.create_model`` with timm's own pretrained-weight loading path: from the hub, or from a
    local file via ``pretrained_cfg_overlay=dict(file=...)``. Offline without a file: a one-line
    :class:`DataError` that says how to pass one."""
    import timm

    kwargs = model_kwargs
    if pretrained_weights:
        if not os.path.isfile(pretrained_weights):
            raise DataError(f"file not found: {pretrained_weights}", param="pretrained_weights")
        try:
            return timm.create_model(timm_name, pretrained=True,
                                     pretrained_cfg_overlay=dict(file=os.path.abspath(pretrained_weights)), **kwargs)
        except Exception as exc:  # a truncated file, another model's weights, a pickle weights_only refuses
            detail = str(exc).splitlines()[0] if str(exc) else "no detail"
            raise DataError(f"{pretrained_weights}: not usable weights for timm model '{timm_name}' "
                            f"({type(exc).__name__}: {detail[:200]})", param="pretrained_weights") from None
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as exc:  # huggingface_hub raises several unrelated types when offline
        raise DataError(
            f"could not load pretrained weights for timm model '{timm_name}' ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). Without internet, download "
            f"them elsewhere and pass the local file (.safetensors/.pth state dict)", param="pretrained_weights"
        ) from None
