"""Train a reference-based drone-video detector (DINOv3 support encoder + YOLOv8n-style detector + fusion).

    python train_yolov8n_refdet.py --demo                                  # synthetic drone videos, CPU minutes
    python train_yolov8n_refdet.py --data-root data/aeroeyes/train --stage 2 --pretrained
    python train_yolov8n_refdet.py --predict --data-root data/aeroeyes/public_test --weights RUN/best_model.pt

Data: the Zalo AI 2025 AeroEyes layout; scored with ST-IoU. Recipes: docs/train_yolov8n_refdet.md.
"""
import sys

from src.cli import run_main
from src.tasks.refdet import main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, __doc__.splitlines()[0])))
