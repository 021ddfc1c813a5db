"""Every ``python train_...`` command block in the docs runs as written, with small-run flags appended
(and ``--pretrained`` pointed at a local weights file: nothing downloads in CI)."""
import re
import shlex

import pytest
import torch

from tests.conftest import REPO, run_script

SMALL_RUN = ["--demo", "--epochs", "1", "--train-limit", "64", "--valid-limit", "32"]
# page -> flags appended to each of its commands (--demo replaces the recipe's data paths)
PAGES = {
    "docs/train_MobileNetV3_Small_BoT_Linear.md": SMALL_RUN + ["--image-size", "64"],
    "docs/train_ResNet18_Hybrid.md": SMALL_RUN + ["--image-size", "64"],
    "docs/train_vietocr.md": SMALL_RUN + ["--max-decode-len", "24", "--num-workers", "0"],
    # a resnet18 encoder at 64 px instead of the recipes' Swin-T / ConvNeXt at 224-320 (the Swin-T
    # token layout is tested in tests/models/test_ovd.py); everything else as written
    "docs/train_ovd.md": SMALL_RUN + ["--image-encoder", "resnet18", "--feature-index", "2", "--image-size", "64",
                                      "--out-dim", "32", "--buckets", "1024", "--num-workers", "0"],
    # the demo's videos at 64 px with 32 px references, 3 episodes, 6 training and 2 validation videos,
    # every 8th validation frame
    "docs/train_yolov8n_refdet.md": SMALL_RUN + ["--image-size", "64", "--support-size", "32", "--embed-dim", "16",
                                                 "--n-episodes", "3", "--frame-stride", "8", "--num-workers", "0",
                                                 "--train-limit", "6", "--valid-limit", "2"],
}
TIMM_NAMES = {"train_MobileNetV3_Small_BoT_Linear.py": "mobilenetv3_small_100", "train_ResNet18_Hybrid.py": "resnet18",
              "train_ovd.py": "resnet18", "train_yolov8n_refdet.py": "vit_small_patch16_dinov3"}


def commands():
    out = []
    for page in PAGES:
        text = (REPO / page).read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                words = shlex.split(line)
                if words and words[0] == "python" and len(words) > 1 and words[1].startswith("train_"):
                    out.append(pytest.param(page, words[1:], id=f"{page.split('/')[-1]}:{' '.join(words[2:])[:60]}"))
    return out


def test_docs_have_recipes():
    pages = [p.values[0] for p in commands()]
    assert all(pages.count(page) >= 5 for page in PAGES), pages


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory):
    import timm

    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for script, name in TIMM_NAMES.items():
        paths[script] = folder / f"{name}.pth"
        torch.save(timm.create_model(name).state_dict(), paths[script])
    return paths


@pytest.fixture(scope="module")
def vgg19_bn_features(tmp_path_factory):
    """torchvision's vgg19_bn ``features`` state dict (random weights; the layout --pretrained-weights
    takes), without allocating the 123M-parameter classifier."""
    from torchvision.models import vgg

    path = tmp_path_factory.mktemp("weights") / "vgg19_bn_features.pth"
    torch.save(vgg.make_layers(vgg.cfgs["E"], batch_norm=True).state_dict(), path)
    return path


@pytest.mark.parametrize("page,words", commands())
def test_recipe_runs(page, words, demo_workdir, request, tmp_path):
    script, args = words[0], words[1:]
    if "--predict" in args or "--resume" in args or "--init-from" in args:
        pytest.skip("needs a finished run; covered in tests/tasks")
    extra = PAGES[page] + ["--results-dir", str(tmp_path)]
    if "--pretrained" in args:
        if script == "train_vietocr.py":  # VGG19-bn weights exist for VietOCR's full size only
            extra += ["--pretrained-weights", str(request.getfixturevalue("vgg19_bn_features")), "--model-size", "full"]
        else:
            extra += ["--pretrained-weights", str(request.getfixturevalue("local_weights")[script])]
    proc = run_script(script, args + extra, demo_workdir)
    if "--profile" in args:     # a time breakdown, then exit: no run directory
        assert "profile:" in proc.stdout and not list(tmp_path.iterdir())
        return
    assert len(list(tmp_path.glob("*/metrics.json"))) == 1
