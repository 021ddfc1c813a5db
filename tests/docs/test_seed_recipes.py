"""Every ``python ...`` command line of the five seed documents (``shared/seeds/*.md``, held here as
they are written there) parses with all of its flags, pointed at the script that does its job: the
refdet seed's ``train.py`` is ``train_yolov8n_refdet.py``, its ``profile_training_bottlenecks.py`` is
``train_yolov8n_refdet.py --profile``; the OVD seed's ``scripts/train*.py`` are ``train_ovd.py``, its
``scripts/benchmark.py`` is ``python -m bench.ovd`` and ``run.py test`` (score the test split) is
``train_ovd.py --test-splits test``."""
import importlib
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO

SEED_COMMANDS = [
    # ovd_optimization_guide.md
    'scripts/train_optimized.py',
    'scripts/train.py',
    'scripts/benchmark.py',
    'run.py test',
    # train_MobileNetV3_Small_BoT_Linear.md
    'train_MobileNetV3_Small_BoT_Linear.py',
    'train_MobileNetV3_Small_BoT_Linear.py --epochs 30 --batch-size 32 --base-lr 5e-5 --head-lr 5e-4 --pretrained',
    'train_MobileNetV3_Small_BoT_Linear.py --epochs 2 --batch-size 16 --train-limit 100 --valid-limit 50 --pretrained',
    'train_MobileNetV3_Small_BoT_Linear.py --epochs 30 --batch-size 80 --base-lr 5e-5 --head-lr 5e-4 --weight-decay 1e-2 --patience 10 --pretrained --num-workers 8 --pin-memory --image-size 224 --plot --save-history',
    'train_MobileNetV3_Small_BoT_Linear.py --epochs 30 --batch-size 96 --base-lr 7e-5 --head-lr 7e-4 --weight-decay 1e-2 --patience 10 --pretrained --num-workers 8 --pin-memory',
    'train_MobileNetV3_Small_BoT_Linear.py --epochs 30 --batch-size 48 --image-size 320 --base-lr 5e-5 --head-lr 5e-4 --pretrained',
    'train_MobileNetV3_Small_BoT_Linear.py --epochs 50 --batch-size 64 --base-lr 1e-3 --head-lr 1e-2 --weight-decay 1e-2 --patience 15 --num-workers 4',
    'train_MobileNetV3_Small_BoT_Linear.py --epochs 30 --batch-size 80 --pretrained --device cuda',
    'train_MobileNetV3_Small_BoT_Linear.py --epochs 5 --batch-size 8 --device cpu --num-workers 2 --train-limit 1000',
    'train_MobileNetV3_Small_BoT_Linear.py --epochs 30 --batch-size 80 --pretrained --plot --save-history',
    'train_MobileNetV3_Small_BoT_Linear.py --epochs 30 --batch-size 32 --image-size 192 --pretrained --num-workers 2',
    'train_MobileNetV3_Small_BoT_Linear.py --metadata path/to/your/metadata.csv --label2id path/to/your/label2id.json',
    'train_MobileNetV3_Small_BoT_Linear.py --batch-size 48',
    'train_MobileNetV3_Small_BoT_Linear.py --image-size 192',
    'train_MobileNetV3_Small_BoT_Linear.py --num-workers 8 --pin-memory',
    'train_MobileNetV3_Small_BoT_Linear.py --batch-size 96',
    'train_MobileNetV3_Small_BoT_Linear.py --heads 8',
    'train_MobileNetV3_Small_BoT_Linear.py --dropout 0.2',
    'train_MobileNetV3_Small_BoT_Linear.py --base-lr 3e-5 --head-lr 3e-4',
    # train_ResNet18_Hybrid.md
    'train_ResNet18_Hybrid.py --pretrained --epochs 10 --batch-size 32 --save-history',
    'train_ResNet18_Hybrid.py --pretrained --epochs 20 --batch-size 16 --image-size 224 --base-lr 5e-5 --head-lr 5e-4 --weight-decay 1e-2 --heads 4 --reduction 32 --dropout 0.2 --patience 7 --num-workers 8 --pin-memory --save-history --plot',
    'train_ResNet18_Hybrid.py --pretrained --epochs 3 --batch-size 16 --train-limit 500 --valid-limit 200 --save-history',
    'train_ResNet18_Hybrid.py --epochs 30 --batch-size 32 --base-lr 1e-3 --head-lr 1e-3 --save-history',
    'train_ResNet18_Hybrid.py --batch-size 16',
    'train_ResNet18_Hybrid.py --pretrained --epochs 15 --batch-size 32 --base-lr 5e-5 --head-lr 5e-4 --heads 4 --reduction 32 --dropout 0.15 --patience 7 --save-history',
    'train_ResNet18_Hybrid.py --device cpu --batch-size 8 --epochs 5',
    'train_ResNet18_Hybrid.py --batch-size 8',
    'train_ResNet18_Hybrid.py --image-size 192 --batch-size 16',
    'train_ResNet18_Hybrid.py --num-workers 8 --pin-memory',
    'train_ResNet18_Hybrid.py --dropout 0.3 --weight-decay 5e-2',
    'train_ResNet18_Hybrid.py --dropout 0.05 --epochs 30 --head-lr 1e-3',
    # vietocr_optimization_analysis.md (its commands are Python snippets, no command lines)
    # yolov8n_refdet_speed_guide.md
    'profile_training_bottlenecks.py --data_root ./datasets/train/samples --annotations ./datasets/train/annotations/annotations.json --profile_episodes 10',
    'train.py --stage 2 --frame_cache_size 1000 --support_cache_size_mb 400',
    'train.py --stage 2 --num_workers 4',
    'train.py --stage 2 --num_aug 1',
    'profile_training_bottlenecks.py --data_root ./datasets/train/samples --annotations ./datasets/train/annotations/annotations.json --profile_episodes 10 --stage 2 --n_way 2 --n_query 4',
    'train.py --stage 2 --epochs 100',
]
# the seed's script -> (this project's module, flags put in front)
SCRIPTS = {
    "train.py": ("train_yolov8n_refdet", []),
    "profile_training_bottlenecks.py": ("train_yolov8n_refdet", ["--profile"]),
    "scripts/train.py": ("train_ovd", []),
    "scripts/train_optimized.py": ("train_ovd", []),
    "run.py": ("train_ovd", ["--test-splits"]),
}


def parse(command: str):
    script, *argv = shlex.split(command)
    module, front = SCRIPTS.get(script, (script.removesuffix(".py"), []))
    return importlib.import_module(module).build_parser().parse_args(front + argv)


@pytest.mark.parametrize("command", [c for c in SEED_COMMANDS if not c.startswith("scripts/benchmark")])
def test_seed_command_line_parses(command):
    parse(command)


def test_seed_flags_keep_their_meaning():
    args = parse("profile_training_bottlenecks.py --data_root ./datasets/train/samples --annotations "
                 "./datasets/train/annotations/annotations.json --profile_episodes 10 --stage 2 --n_way 2 --n_query 4")
    assert args.profile and args.profile_episodes == 10 and args.stage == 2 and (args.n_way, args.n_query) == (2, 4)
    assert args.data_root == "./datasets/train/samples"
    assert parse("train.py --stage 2 --num_aug 1").support_views == 1
    assert parse("train.py --stage 2 --num_workers 4").num_workers == 4
    assert parse("run.py test").test_splits == ["test"]


def test_seed_benchmark_command_runs_as_our_bench():
    out = subprocess.run([sys.executable, "-m", "bench.ovd", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "usage" in out.stdout
