"""Train an open-vocabulary phrase-grounding model (Swin-T + text encoder + SDPA fusion + DETR decoder).

    python train_ovd.py --demo                             # synthetic shapes, light encoder, CPU minutes
    python train_ovd.py --data-root data/flickr30k_entities --pretrained --batch-size 32 --epochs 30
    python train_ovd.py --data-root data/flickr30k_entities --pretrained --text-encoder roberta-base  # MDETR's
    python train_ovd.py --predict IMG --phrases "a red circle" "the blue square" --weights RUN/best_model.pt
    python train_ovd.py --export onnx --weights RUN/best_model.pt      # RUN/best_model.onnx, checked with ONNX Runtime

Data: the Flickr30k Entities layout. Recipes: docs/train_ovd.md.
"""
import argparse
import logging
import sys
from typing import Sequence

from src import cli
from src.tasks import ovd
from src.tasks.ovd_export import export_main
from src.tasks.ovd_inference import predict_main
from src.training.loop import build_train_config, fit, seed_everything
from src.training.run import start_run
from src.training.scoring import evaluate_checkpoint

log = logging.getLogger("src")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ovd.add_args(parser)                 # data (Flickr30k Entities), model, optimizer, inference
    cli.add_training_args(parser)
    cli.add_data_args(parser)
    cli.add_output_args(parser, "ovd_swin_tiny")
    parser.set_defaults(**ovd.SCRIPT_DEFAULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = ovd.parse_args(build_parser(), argv)
    if args.predict:
        return predict_main(args)
    if args.export:
        return export_main(args)
    with start_run(args.device, args.threads) as run:
        task = ovd.build_task(args)
        loaders = ovd.build_data(args, run, task.warnings)
        seed_everything(args.seed)  # model initialisation is part of the run's reproducibility
        model = ovd.build_model(args)
        name = task.model_config["model_name"]
        if args.evaluate:       # the checkpoint's weights on one split, into a new run directory
            evaluate_checkpoint(model, task, loaders, args.split, args.weights, run, args.results_dir, name,
                                vars(args), args.amp, args.amp_dtype)
            return 0
        run.open_dir(args.results_dir, name, args.resume, vars(args))
        enc = model.image_encoder
        log.info("run dir %s | %s (%s params; image tokens %d x %d from stride %d; text encoder %s%s) | device %s x %d",
                 run.dir, name, f"{sum(p.numel() for p in model.parameters()):,}",
                 (args.image_size // enc.reduction) ** 2, enc.channels, enc.reduction, args.text_encoder,
                 " (frozen)" if args.freeze_text_encoder else (f" (lr {args.text_lr:g})" if args.text_lr else ""),
                 run.device, run.dist.world_size)
        cfg = build_train_config(args, pct_start=args.pct_start, prefix_lrs=ovd.prefix_lrs(args))
        fit(model, task, loaders.pop("train"), loaders.pop("valid"), cfg, run.dir, run.device, run.dist,
            test_loaders=loaders, resume_from=args.resume, args_record=vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
