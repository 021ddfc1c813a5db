"""Conv+BN folding (src/models/layers/fold.py): every BatchNorm of the project's CNNs folds into its
convolution, the outputs stay those of the unfolded model, and nothing that is not a conv -> BN pair moves."""
import argparse
import copy

import pytest
import torch
from torch import nn

from src.models.classifiers import build_classifier
from src.models.layers.fold import fold_conv_bn
from src.models.layers.yolo import YOLOv8Backbone, YOLOv8PAN
from src.models.vietocr import build_vietocr


def _trained_looking(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def _classifier(name):
    return build_classifier(argparse.Namespace(model=name, heads=4, reduction=32, dropout=0.1, pretrained=False,
                                               pretrained_weights=None), 4)


class _Detector(nn.Module):          # the refdet detector's backbone + neck, as it runs them
    def __init__(self):
        super().__init__()
        self.backbone = YOLOv8Backbone()
        self.neck = YOLOv8PAN(self.backbone.channels)

    def forward(self, x):
        return torch.cat([f.flatten(1) for f in self.neck(*self.backbone(x))], 1)


CASES = {
    "MobileNetV3_Small_BoT_Linear": (lambda: _classifier("MobileNetV3_Small_BoT_Linear"), (2, 3, 96, 96)),
    "ResNet18_Hybrid": (lambda: _classifier("ResNet18_Hybrid"), (2, 3, 96, 96)),
    "VGG CNN": (lambda: build_vietocr("vgg_transformer", 40, "small").cnn, (2, 3, 32, 96)),
    "YOLOv8n detector": (_Detector, (1, 3, 128, 128)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_batchnorm_folds_and_the_outputs_stay(case):
    make, shape = CASES[case]
    torch.manual_seed(0)
    model = _trained_looking(make())
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = copy.deepcopy(model)
    assert fold_conv_bn(folded) == bns > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(x), folded(x)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_only_a_conv_followed_by_its_batchnorm_folds():
    lone = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    assert fold_conv_bn(lone) == 0 and sum(isinstance(m, nn.BatchNorm2d) for m in lone) == 2
    pair = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))   # batch statistics
    assert fold_conv_bn(pair) == 0
