"""Train ResNet18 + Coordinate Attention + linear-attention BoT block on rice-leaf disease images.

    python train_ResNet18_Hybrid.py --demo                           # synthetic data, a few CPU minutes
    python train_ResNet18_Hybrid.py --metadata data/metadata.csv --label2id data/label2id.json --pretrained

Sibling variants: ``--model ResNet18_{BoTLinear,BoT,CA,ECA}``. Recipes: docs/train_ResNet18_Hybrid.md.
"""
import sys

from src.cli import run_main
from src.tasks.classification import main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, "ResNet18_Hybrid", __doc__.splitlines()[0])))
