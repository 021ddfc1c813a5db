"""Train a VietOCR-compatible Vietnamese text-line recognizer (VGG + Transformer or Seq2Seq).

    python train_vietocr.py --demo                        # synthetic lines, small model, CPU minutes
    python train_vietocr.py --data-root data/ocr --train-annotation data/ocr/train_annotation.txt \\
        --valid-annotation data/ocr/test_annotation.txt --pretrained

Architectures: ``--arch vgg_transformer`` (default) or ``vgg_seq2seq``. Recipes: docs/train_vietocr.md.
"""
import sys

from src.cli import run_main
from src.tasks.ocr import main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, __doc__.splitlines()[0])))
