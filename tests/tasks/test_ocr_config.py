"""A VietOCR user's data folder and config file work unchanged with train_vietocr.py."""
import math
import re
import shutil

import pytest
import yaml

from src.data.ocr import VIETOCR_VOCAB
from src.errors import DataError
from src.tasks.ocr_config import read_vietocr_config
from tests.conftest import read_json, run_dirs, run_script

OCR = "train_vietocr.py"
POOLS = [[2, 2], [2, 2], [2, 1], [2, 1], [1, 1]]


@pytest.fixture(scope="module")
def vietocr_folder(tmp_path_factory):
    """A data root as VietOCR's loader reads it: images and annotation files inside it, the annotation
    lines' paths relative to it, and the annotation files named relative to it in the config."""
    from src.data.demo_ocr import ensure_demo_ocr

    root = tmp_path_factory.mktemp("vietocr_data")
    files = ensure_demo_ocr(str(root), counts=(32, 16, 4))
    shutil.copy(files["train"], root / "train_annotation.txt")
    shutil.copy(files["valid"], root / "valid_annotation.txt")
    return root


def vietocr_config(root, **changes) -> dict:
    """VietOCR's base.yml merged with vgg-transformer.yml (what ``Cfg.save`` writes), for ``root``."""
    cfg = {
        "vocab": VIETOCR_VOCAB, "device": "cpu", "seq_modeling": "transformer",
        "transformer": {"d_model": 256, "nhead": 8, "num_encoder_layers": 6, "num_decoder_layers": 6,
                        "dim_feedforward": 2048, "max_seq_length": 1024, "pos_dropout": 0.1, "trans_dropout": 0.1},
        "optimizer": {"max_lr": 0.002, "pct_start": 0.2},
        "trainer": {"batch_size": 16, "print_every": 200, "valid_every": 4000, "iters": 10,
                    "export": "./weights/transformerocr.pth", "checkpoint": "./checkpoint/transformerocr_checkpoint.pth",
                    "log": "./train.log", "metrics": 20},
        "dataset": {"name": "data", "data_root": str(root), "train_annotation": "train_annotation.txt",
                    "valid_annotation": "valid_annotation.txt", "image_height": 32, "image_min_width": 32,
                    "image_max_width": 512},
        "dataloader": {"num_workers": 0, "pin_memory": False},
        "aug": {"image_aug": False, "masked_language_model": True},
        "predictor": {"beamsearch": False},
        "quiet": False,
        "pretrain": {"id_or_url": "13327Y1tz1ohsm5YZMyXVMPIOjoOA0OaA", "md5": "9cc606b70460261de374c56548aead5b",
                     "cached": "/nonexistent/tranformerorc.pth"},
        "weights": "https://vocr.vn/data/vietocr/vgg_transformer.pth",
        "backbone": "vgg19_bn",
        "cnn": {"pretrained": False, "ss": POOLS, "ks": POOLS, "hidden": 256},
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def write(tmp_path, cfg, name="config.yml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return str(path)


def test_annotation_names_relative_to_the_data_root_as_vietocr_reads_them(vietocr_folder, tmp_path):
    out = run_script(OCR, ["--data-root", str(vietocr_folder), "--train-annotation", "train_annotation.txt",
                     "--valid-annotation", "valid_annotation.txt", "--model-size", "small", "--epochs", "1",
                           "--batch-size", "16", "--num-workers", "0", "--max-decode-len", "16",
                           "--results-dir", str(tmp_path)], tmp_path)          # cwd is not the data root
    (run,) = run_dirs(tmp_path)
    assert f"train: 32 lines from {vietocr_folder}/train_annotation.txt" in out.stderr
    assert f"valid: 16 lines from {vietocr_folder}/valid_annotation.txt" in out.stderr
    assert read_json(run / "metrics.json")["epochs_run"] == 1
    missing = run_script(OCR, ["--data-root", str(vietocr_folder), "--train-annotation", "nope.txt",
                               "--valid-annotation", "valid_annotation.txt", "--num-workers", "0"], tmp_path, check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: nope.txt: annotation file not found (looked as given and under the data root: "
        f"{vietocr_folder}/nope.txt)")


def test_training_from_a_vietocr_config_file_typed_flags_win(vietocr_folder, tmp_path):
    cfg = vietocr_config(vietocr_folder, **{"transformer.num_decoder_layers": 1, "cnn.hidden": 256})
    cfg["trainer"]["unknown_setting"] = 3
    out = run_script(OCR, ["--config", write(tmp_path, cfg), "--model-size", "small", "--batch-size", "8",
                           "--max-decode-len", "16", "--results-dir", str(tmp_path / "r")], tmp_path)
    (run,) = run_dirs(tmp_path / "r")
    args = read_json(run / "config.json")["args"]
    assert args["lr"] == args["base_lr"] == args["head_lr"] == 0.002 and args["pct_start"] == 0.2
    assert args["batch_size"] == 8                                   # typed: wins over trainer.batch_size
    assert args["model_size"] == "small" and args["model_kwargs"] == {"num_decoder_layers": 1}
    assert args["augment"] is False and args["masked_lm"] == 0.05 and args["beam_size"] == 1
    assert args["limit_val_batches"] == 2                            # metrics: 20 lines / batch_size 16
    assert args["train_annotation"] == "train_annotation.txt" and args["device"] == "cpu"
    assert args["arch"] == "vgg_transformer" and args["iters"] == 10 and args["init_from"] is None
    # trainer.iters 10 -> epochs of the loader's steps
    steps, epochs = map(int, re.search(r"schedule in epochs of (\d+) steps: epochs (\d+)", out.stderr).groups())
    assert epochs == math.ceil(10 / steps) and read_json(run / "metrics.json")["epochs_run"] == epochs
    # one warning line names every setting that means nothing here, unknown ones included
    notes = [ln for ln in out.stderr.splitlines() if "settings not used here" in ln]
    assert len(notes) == 1 and notes[0].startswith("warning: ")
    for key in ("trainer.print_every", "trainer.export", "trainer.checkpoint", "trainer.log", "dataset.name",
                "quiet", "pretrain", "weights", "trainer.unknown_setting (unknown key)"):
        assert key in notes[0], key
    assert "device" not in notes[0].split("settings not used here")[1]


def test_config_values_map_to_flags(tmp_path):
    weights = tmp_path / "tranformerorc.pth"
    weights.write_bytes(b"x")
    values, notes = read_vietocr_config(write(tmp_path, vietocr_config(
        tmp_path, **{"seq_modeling": "seq2seq", "predictor.beamsearch": True, "vocab": "abc",
                     "pretrain": {"id_or_url": "x", "cached": str(weights)}, "trainer.metrics": None},
    ) | {"transformer": {"encoder_hidden": 256, "decoder_hidden": 256, "img_channel": 256, "decoder_embedded": 128,
                         "dropout": 0.1}}))
    assert values["arch"] == "vgg_seq2seq" and values["beam_size"] == 4 and values["vocab_chars"] == "abc"
    assert values["model_kwargs"] == {"decoder_embedded": 128}
    assert values["init_from"] == str(weights) and "limit_val_batches" not in values   # metrics: null = all
    assert "pretrain" not in notes[0] and "weights (" in notes[0]


@pytest.mark.parametrize("changes, message", [
    ({"seq_modeling": "convseq2seq"}, "seq_modeling 'convseq2seq' is not built here"),
    ({"backbone": "resnet50"}, "backbone 'resnet50' is not built here"),
    ({"dataset.image_height": 64}, "dataset.image_height 64: the VGG CNN here reads 32-pixel lines"),
    ({"cnn.ss": [[2, 2], [2, 2], [2, 1], [2, 1], [2, 1]]}, r"cnn.ss .*pools as VietOCR's configs do"),
    ({"cnn.hidden": 512}, "cnn.hidden 512 must equal the sequence model's input width 256"),
    ({"transformer.d_modell": 256}, "transformer.d_modell is not a setting of vgg_transformer"),
])
def test_settings_that_cannot_be_built_here_are_refused(tmp_path, changes, message):
    with pytest.raises(DataError, match=message):
        read_vietocr_config(write(tmp_path, vietocr_config(tmp_path, **changes)))


def test_a_broken_config_file_names_its_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("trainer:\n    batch_size: 32\n  iters: [1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.yml:3: not a valid YAML file"):
        read_vietocr_config(str(path))
    with pytest.raises(DataError, match="missing.yml: config file not found"):
        read_vietocr_config(str(tmp_path / "missing.yml"))
