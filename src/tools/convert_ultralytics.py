"""Convert ultralytics YOLOv8n weights into the detector state dict ``train_yolov8n_refdet.py`` loads.

    python -m src.tools.convert_ultralytics yolov8n_sd.pt yolov8n_detector.pt
    python train_yolov8n_refdet.py --data-root ... --detector-weights yolov8n_detector.pt

IN is ``DetectionModel.state_dict()`` of a yolov8n saved with ``torch.save`` (keys ``model.N.*``, or
``N.*``), or, where ultralytics is installed, the ``.pt`` as ultralytics saves it (a pickled model).
Layers 0-21 (backbone + PAN neck) are mapped onto ours, every shape checked and every tensor used
(:mod:`src.models.ultralytics_keys`); the Detect head (``model.22.*``) is skipped and counted. OUT is
a plain state dict (``backbone.*``, ``neck.*``, fp32) that ``torch.load(weights_only=True)`` reads.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from src import cli
from src.models.ultralytics_keys import convert_state_dict, detector_target, read_state_dict, yolov8n_detector
from src.training.checkpoint import atomic_torch_save


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.tools.convert_ultralytics", description=__doc__.splitlines()[0])
    p.add_argument("source", metavar="IN.pt",
                   help="ultralytics yolov8n state dict (or its .pt, with ultralytics installed)")
    p.add_argument("out", metavar="OUT.pt", help="where to write the detector state dict (--detector-weights)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    done = convert_state_dict(read_state_dict(args.source, allow_pickle=True), detector_target(yolov8n_detector()), args.source)
    atomic_torch_save(done.state_dict, args.out)
    print(done.describe(args.source, "mapped onto"))
    print(f"wrote {args.out}; train from it with --detector-weights {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
