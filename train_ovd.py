"""Train an open-vocabulary phrase-grounding model (Swin-T + text encoder + SDPA fusion + DETR decoder).

    python train_ovd.py --demo                             # synthetic shapes, light encoder, CPU minutes
    python train_ovd.py --data-root data/flickr30k_entities --pretrained --batch-size 32 --epochs 30
    python train_ovd.py --predict IMG --phrases "a red circle" "the blue square" --weights RUN/best_model.pt

Data: the Flickr30k Entities layout. Recipes: docs/train_ovd.md.
"""
import sys

from src.cli import run_main
from src.tasks.ovd import main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, __doc__.splitlines()[0])))
