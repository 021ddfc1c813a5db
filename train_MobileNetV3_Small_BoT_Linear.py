"""Train MobileNetV3-Small + linear-attention BoT block on rice-leaf disease images.

    python train_MobileNetV3_Small_BoT_Linear.py --demo              # synthetic data, a few CPU minutes
    python train_MobileNetV3_Small_BoT_Linear.py --metadata data/metadata.csv --label2id data/label2id.json --pretrained

Sibling variants: ``--model MobileNetV3_Small_{BoT,CA,ECA,Hybrid}``. Recipes: docs/train_MobileNetV3_Small_BoT_Linear.md.
"""
import argparse
import logging
import sys
from typing import Sequence

from src import cli
from src.models.classifiers import build_classifier
from src.tasks import classification
from src.tasks.classification_export import export_main
from src.tasks.classification_inference import predict_main
from src.training.loop import build_train_config, fit, seed_everything
from src.training.run import start_run
from src.training.scoring import evaluate_checkpoint

log = logging.getLogger("src")
DEFAULT_MODEL = "MobileNetV3_Small_BoT_Linear"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    classification.add_args(parser, DEFAULT_MODEL)       # data, model, inference
    cli.add_training_args(parser)
    cli.add_data_args(parser)
    cli.add_output_args(parser, DEFAULT_MODEL)
    parser.set_defaults(**classification.SCRIPT_DEFAULTS[DEFAULT_MODEL])    # the seed document's
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = classification.parse_args(build_parser(), argv)
    if args.predict:
        return predict_main(args)
    if args.export:
        return export_main(args)
    with start_run(args.device, args.threads) as run:
        data, loaders = classification.build_data(args, run)
        seed_everything(args.seed)  # model initialisation is part of the run's reproducibility
        model = build_classifier(args, len(data.class_names))
        task = classification.build_task(args, data.class_names)
        if args.evaluate:       # the checkpoint's weights on one split, into a new run directory
            evaluate_checkpoint(model, task, loaders, args.split, args.weights, run, args.results_dir, args.model_name or args.model,
                                vars(args), args.amp, args.amp_dtype)
            return 0
        run.open_dir(args.results_dir, args.model_name or args.model, args.resume, vars(args),
                     {"num_classes": len(data.class_names)})
        log.info("run dir %s | model %s (%s params) | device %s x %d", run.dir, args.model,
                 f"{sum(p.numel() for p in model.parameters()):,}", run.device, run.dist.world_size)
        fit(model, task, loaders.pop("train"), loaders.pop("valid"), build_train_config(args), run.dir, run.device,
            run.dist, test_loaders=loaders, resume_from=args.resume, args_record=vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
