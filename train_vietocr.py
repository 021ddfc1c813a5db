"""Train a VietOCR-compatible Vietnamese text-line recognizer (VGG + Transformer or Seq2Seq).

    python train_vietocr.py --demo                        # synthetic lines, small model, CPU minutes
    python train_vietocr.py --data-root data/ocr --train-annotation data/ocr/train_annotation.txt \\
        --valid-annotation data/ocr/test_annotation.txt --pretrained

Architectures: ``--arch vgg_transformer`` (default) or ``vgg_seq2seq``. Recipes: docs/train_vietocr.md.
"""
import argparse
import logging
import sys
from typing import Sequence

from src import cli
from src.models.vietocr import build_vietocr
from src.tasks import ocr
from src.tasks.ocr_config import schedule
from src.tasks.ocr_export import export_main
from src.tasks.ocr_inference import init_from, load_any_weights, load_recognizer, predict_main
from src.training.loop import build_train_config, fit, seed_everything
from src.training.run import start_run
from src.training.scoring import evaluate_checkpoint

log = logging.getLogger("src")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ocr.add_args(parser)                 # data (VietOCR format), model, optimizer, inference
    cli.add_training_args(parser)
    cli.add_data_args(parser)
    cli.add_output_args(parser, "vgg_transformer")
    parser.set_defaults(**ocr.SCRIPT_DEFAULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = ocr.parse_args(build_parser(), argv)
    vocab = ocr.build_vocab(args)
    if args.predict:
        return predict_main(args, vocab)
    if args.export:
        return export_main(args, vocab)
    with start_run(args.device, args.threads) as run:
        task = ocr.build_task(args, vocab)
        loaders = ocr.build_data(args, run, vocab, task.warnings)
        seed_everything(args.seed)  # model initialisation is part of the run's reproducibility
        model = build_vietocr(args.arch, len(vocab), args.model_size, args.pretrained or bool(args.pretrained_weights),
                              args.pretrained_weights, grad_checkpointing=args.grad_checkpointing,
                              ctc_head=args.ctc_weight > 0, model_kwargs=args.model_kwargs)
        if args.init_from:      # e.g. VietOCR's published vgg_transformer.pth
            init_from(model, args.init_from, vocab)
        if args.evaluate:       # the checkpoint's weights on one split, into a new run directory
            if args.backend == "onnxruntime":
                task.recognizer = load_recognizer(args.weights)
            evaluate_checkpoint(model, task, loaders, args.split, args.weights, run, args.results_dir, ocr.model_name(args),
                                vars(args), args.amp, args.amp_dtype,
                                loader=lambda m, _task, path: load_any_weights(m, vocab, path))  # VietOCR's too
            return 0
        run.open_dir(args.results_dir, ocr.model_name(args), args.resume, vars(args), {"vocab_size": len(vocab)})
        log.info("run dir %s | %s (%s params) | device %s x %d", run.dir, ocr.model_name(args),
                 f"{sum(p.numel() for p in model.parameters()):,}", run.device, run.dist.world_size)
        # VietOCR's optimizer: AdamW(0.9, 0.98, eps 1e-9) with OneCycle
        cfg = build_train_config(args, betas=(0.9, 0.98), eps=1e-9, pct_start=args.pct_start,
                                 **schedule(args, len(loaders["train"])))
        fit(model, task, loaders.pop("train"), loaders.pop("valid"), cfg, run.dir, run.device, run.dist,
            test_loaders=loaders, resume_from=args.resume, args_record=vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
