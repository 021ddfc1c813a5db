"""Train MobileNetV3-Small + linear-attention BoT block on rice-leaf disease images.

    python train_MobileNetV3_Small_BoT_Linear.py --demo              # synthetic data, a few CPU minutes
    python train_MobileNetV3_Small_BoT_Linear.py --metadata data/metadata.csv --label2id data/label2id.json --pretrained

Sibling variants: ``--model MobileNetV3_Small_{BoT,CA,ECA,Hybrid}``. Recipes: docs/train_MobileNetV3_Small_BoT_Linear.md.
"""
import sys

from src.cli import run_main
from src.tasks.classification import main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, "MobileNetV3_Small_BoT_Linear", __doc__.splitlines()[0])))
