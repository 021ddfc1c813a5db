"""Every ``python train_...`` command block in the classification docs runs as written, with small-run
flags appended (and ``--pretrained`` pointed at a local weights file: nothing downloads in CI)."""
import re
import shlex

import pytest
import torch

from tests.conftest import REPO, run_script

PAGES = ["docs/train_MobileNetV3_Small_BoT_Linear.md", "docs/train_ResNet18_Hybrid.md"]
APPEND = ["--demo", "--epochs", "1", "--train-limit", "64", "--valid-limit", "32", "--image-size", "64"]
TIMM_NAMES = {"train_MobileNetV3_Small_BoT_Linear.py": "mobilenetv3_small_100", "train_ResNet18_Hybrid.py": "resnet18"}


def commands():
    out = []
    for page in PAGES:
        text = (REPO / page).read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                words = shlex.split(line)
                if words and words[0] == "python" and len(words) > 1 and words[1].startswith("train_"):
                    out.append(pytest.param(words[1:], id=f"{page.split('/')[-1]}:{' '.join(words[2:])[:60]}"))
    return out


def test_docs_have_recipes():
    assert len(commands()) >= 10


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory):
    import timm

    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for script, name in TIMM_NAMES.items():
        paths[script] = folder / f"{name}.pth"
        torch.save(timm.create_model(name).state_dict(), paths[script])
    return paths


@pytest.mark.parametrize("words", commands())
def test_recipe_runs(words, demo_workdir, local_weights, tmp_path):
    script, args = words[0], words[1:]
    if "--predict" in args or "--resume" in args:
        pytest.skip("needs a finished run; covered in tests/tasks/test_classification.py")
    extra = APPEND + ["--results-dir", str(tmp_path)]
    if "--pretrained" in args:
        extra += ["--pretrained-weights", str(local_weights[script])]
    run_script(script, args + extra, demo_workdir)
    assert len(list(tmp_path.glob("*/metrics.json"))) == 1
