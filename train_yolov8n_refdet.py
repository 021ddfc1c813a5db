"""Train a reference-based drone-video detector (DINOv3 support encoder + YOLOv8n-style detector + fusion).

    python train_yolov8n_refdet.py --demo                                  # synthetic drone videos, CPU minutes
    python train_yolov8n_refdet.py --data-root data/aeroeyes/train --stage 2 --pretrained
    python train_yolov8n_refdet.py --predict --data-root data/aeroeyes/public_test --weights RUN/best_model.pt
    python train_yolov8n_refdet.py --export onnx --weights RUN/best_model.pt   # support encoder + detector

Data: the Zalo AI 2025 AeroEyes layout; scored with ST-IoU. Recipes: docs/train_yolov8n_refdet.md.
"""
import argparse
import logging
import sys
from typing import Sequence

from src import cli
from src.tasks import refdet, refdet_args, refdet_data
from src.tasks.refdet_export import export_main
from src.tasks.refdet_inference import predict_main
from src.tasks.refdet_profile import profile
from src.training.loop import autocast_factory, build_train_config, fit, seed_everything
from src.training.run import start_run
from src.training.scoring import evaluate_checkpoint

log = logging.getLogger("src")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    refdet_args.add_args(parser)         # data (AeroEyes), model, loss, optimizer, inference, profiling
    cli.add_training_args(parser)
    cli.add_data_args(parser)
    cli.add_output_args(parser, "yolov8n_refdet")
    parser.set_defaults(**refdet_args.SCRIPT_DEFAULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = refdet_args.parse_args(parser, argv)
    if args.predict:
        return predict_main(args, threshold_typed="score_threshold" in cli.explicit_args(parser, argv))
    if args.export:
        return export_main(args)
    with start_run(args.device, args.threads) as run:
        task = refdet.build_task(args)
        data = refdet_data.build_data(args, run, task.warnings)
        task.truth = data.pop("truth")
        seed_everything(args.seed)  # model initialisation is part of the run's reproducibility
        model = refdet.build_model(args)
        task.cache = model.support_cache
        task.model_config["param_breakdown"] = breakdown = model.param_breakdown()
        log.info("parameters: %s (total %s; trainable %s)", ", ".join(f"{k} {v:,}" for k, v in breakdown.items()),
                 f"{sum(breakdown.values()):,}", f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
        if args.evaluate:       # the checkpoint's weights on one split, into a new run directory
            task.submission_step = args.frame_stride        # with the split's submission file
            evaluate_checkpoint(model, task, data, args.split, args.weights, run, args.results_dir, task.model_config["model_name"],
                                vars(args), args.amp, args.amp_dtype)
            return 0
        if args.profile:
            profile(model, task.criterion, data["train"], run.device, args.profile,
                    autocast_factory(run.device, args.amp, args.amp_dtype)[0])
            return 0
        run.open_dir(args.results_dir, task.model_config["model_name"], args.resume, vars(args))
        log.info("run dir %s | %s | device %s x %d | episodes of %d videos x (%d + %d frames), %d per epoch", run.dir,
                 task.model_config["model_name"], run.device, run.dist.world_size, args.n_way, args.n_query,
                 args.n_background, args.n_episodes)
        fit(model, task, data.pop("train"), data.pop("valid"), build_train_config(args), run.dir, run.device, run.dist,
            test_loaders=data, resume_from=args.resume, args_record=vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
