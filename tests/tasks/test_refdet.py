"""train_yolov8n_refdet.py end to end, as a user runs it (subprocesses on a small demo set in the
AeroEyes layout): run directory, metrics, support cache, predict, profile, stages, resume, bad input, the
seed's command lines, ultralytics detector weights."""
import json
import shutil
from pathlib import Path

import av
import pytest
import torch

from tests.conftest import assert_same_results, kill_during_epoch_2, read_json, run_dirs, run_script

REFDET = "train_yolov8n_refdet.py"
RUN_FILES = {"config.json", "history.json", "results.csv", "metrics.json", "training_plot.png", "train.log", "best_model.pt",
             "last.pt", "sample_predictions.png"}
# tiny sizes: the tests check behaviour, not accuracy. DINO fully frozen and one support view, so the
# cache's keys are the videos and every lookup after the first epoch's first sight is a hit
QUICK = ["--image-size", "64", "--support-size", "32", "--embed-dim", "16", "--n-way", "2", "--n-query", "2",
         "--n-background", "1", "--n-episodes", "6", "--support-views", "1", "--freeze-dino-layers", "12",
         "--background-frames", "3", "--batch-size", "8", "--num-workers", "0", "--lr", "2e-3"]


@pytest.fixture(scope="session")
def refdet_root(tmp_path_factory):
    from src.data.demo_refdet import ensure_demo_refdet

    return ensure_demo_refdet(str(tmp_path_factory.mktemp("refdet") / "data"), train_videos=3, valid_videos=2,
                              frames=(30, 40), size=(128, 96))


def _data(root: str) -> list[str]:
    return ["--data-root", root, "--split-file", f"{root}/splits.txt"]


def test_run_directory_metrics_cache_predict_and_profile(refdet_root, tmp_path):
    run_script(REFDET, _data(refdet_root) + ["--epochs", "2", *QUICK, "--results-dir", str(tmp_path / "res")],
               tmp_path)
    (run,) = run_dirs(tmp_path / "res")
    assert run.name.startswith("yolov8n_refdet_")
    assert {p.name for p in run.iterdir()} == RUN_FILES
    metrics, history = read_json(run / "metrics.json"), read_json(run / "history.json")
    assert metrics["task"] == "refdet" and metrics["epochs_run"] == 2 and metrics["fps_image_size"] == [64, 64]
    for split in ("valid",):
        assert 0.0 <= metrics[f"{split}_st_iou"] <= 1.0
        assert metrics[f"{split}_map50"] == -1.0 or 0.0 <= metrics[f"{split}_map50"] <= 1.0
    breakdown = metrics["param_breakdown"]
    assert breakdown["detector"] == 2_259_536 and breakdown["dino"] == 21_586_944
    assert sum(breakdown.values()) == metrics["num_params"]
    # acceptance: with the support encoder frozen the second epoch's hit rate is >= 90%
    rates = metrics["support_cache_hit_rate"]
    assert len(rates) == 2 and rates == history["support_cache_hit_rate"] and rates[1] >= 0.9
    assert metrics["data_warnings"] == {}
    best = metrics["best_epoch"]
    assert metrics["valid_st_iou"] == pytest.approx(history["valid_st_iou"][best - 1], abs=1e-9)
    ckpt = torch.load(run / "best_model.pt", weights_only=True)
    assert ckpt["model_config"]["support_size"] == 32 and ckpt["task"] == "refdet"
    cache = sorted(p.name for p in (Path(refdet_root) / "frame_cache").iterdir())
    assert cache == ["train_00", "train_01", "train_02"]      # only training videos are extracted

    # predict: every video of the folder, in the challenge's submission format, with previews
    out, preview = tmp_path / "pred.json", tmp_path / "preview"
    proc = run_script(REFDET, ["--predict", "--data-root", refdet_root, "--weights", str(run / "best_model.pt"),
                               "--out", str(out), "--preview", str(preview), "--score-threshold", "0"], tmp_path)
    sub = json.loads(out.read_text())
    ids = sorted(p.name for p in (Path(refdet_root) / "samples").iterdir())
    assert [s["video_id"] for s in sub] == ids and f"wrote {out} (5 videos)" in proc.stdout
    # threshold 0: every frame has its top box, so each video is one segment covering all frames
    first = sub[0]["detections"]
    assert len(first) == 1 and [b["frame"] for b in first[0]["bboxes"]] == list(range(len(first[0]["bboxes"])))
    for b in first[0]["bboxes"]:
        assert 0 <= b["x1"] <= b["x2"] <= 128 and 0 <= b["y1"] <= b["y2"] <= 96
    with av.open(str(preview / f"{ids[0]}_preview.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(first[0]["bboxes"])

    # the seed profiler's spelling: a bare --profile and its episode count
    proc = run_script(REFDET, _data(refdet_root) + [*QUICK, "--profile", "--profile_episodes", "4"], tmp_path)
    for part in ("data", "support encoder", "detector (backbone+neck)", "fusion", "head", "loss", "backward"):
        assert part in proc.stdout, part
    assert "profile: 4 steps" in proc.stdout and "hit rate" in proc.stdout


def test_stage_3_init_from_stage_2_really_trains(refdet_root, tmp_path):
    res2, res3 = tmp_path / "s2", tmp_path / "s3"
    run_script(REFDET, _data(refdet_root) + [*QUICK, "--stage", "2", "--epochs", "1", "--results-dir", str(res2)],
               tmp_path)
    (run2,) = run_dirs(res2)
    best2 = run2 / "best_model.pt"
    run_script(REFDET, _data(refdet_root) + [*QUICK, "--stage", "3", "--init-from", str(best2), "--epochs", "1",
                                             "--results-dir", str(res3)], tmp_path)
    (run3,) = run_dirs(res3)
    assert run3 != run2
    config = read_json(run3 / "config.json")
    assert config["args"]["bbox_loss"] == "wiou" and config["args"]["stage"] == 3     # the preset applied
    assert config["args"]["init_from"] == str(best2)
    history = read_json(run3 / "history.json")
    assert len(history["train_loss"]) == 1 and history["train_loss"][0] == history["train_loss"][0]
    start, end = torch.load(best2, weights_only=True)["model"], torch.load(run3 / "last.pt", weights_only=True)["model"]
    changed = [k for k in start if start[k].dtype.is_floating_point and not torch.equal(start[k], end[k])]
    assert len(changed) > 50          # one epoch of optimizer steps moved the weights
    frozen = "support_encoder.vit.blocks.0.attn.qkv.weight"
    assert torch.equal(start[frozen], end[frozen])          # --freeze-dino-layers 12: DINO untouched
    assert read_json(run3 / "metrics.json")["epochs_run"] == 1


def test_resume_after_sigkill_matches_uninterrupted_run(refdet_root, tmp_path):
    args = _data(refdet_root) + ["--epochs", "3", "--seed", "3", *QUICK, "--bbox-loss", "wiou"]
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    run_script(REFDET, args + ["--results-dir", str(ref_dir)], tmp_path)
    run = kill_during_epoch_2(REFDET, args, tmp_path, kill_dir, delay=0.3)
    assert len(read_json(run / "history.json")["train_loss"]) == 1 and not (run / "metrics.json").exists()
    run_script(REFDET, ["--resume", str(run)], tmp_path)
    (ref,) = run_dirs(ref_dir)
    assert_same_results(ref, run)


def test_bad_input_is_counted_or_one_error_line(refdet_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(refdet_root, root, ignore=shutil.ignore_patterns("frame_cache"))
    ann_path = root / "annotations" / "annotations.json"
    ann = json.loads(ann_path.read_text())
    entry = {e["video_id"]: e for e in ann}
    boxes = entry["train_00"]["annotations"][0]["bboxes"]
    boxes.append({"frame": 999, "x1": 10, "y1": 10, "x2": 30, "y2": 30})              # past the video's end
    valid_boxes = entry["valid_00"]["annotations"][0]["bboxes"]
    valid_boxes.append({"frame": 998, "x1": 10, "y1": 10, "x2": 30, "y2": 30})        # same, in a validation video
    boxes[0].update(x1=-500, x2=-400)                                                  # wholly outside the frame
    ann_path.write_text(json.dumps(ann))
    (root / "samples" / "train_01" / "object_images" / "img_3.jpg").unlink()           # 2 references left
    (root / "samples" / "train_02" / "drone_video.mp4").write_bytes(b"not a video")   # unreadable
    shutil.copytree(root / "samples" / "train_00", root / "samples" / "extra")         # no annotations
    run_script(REFDET, _data(str(root)) + ["--epochs", "1", *QUICK, "--results-dir", str(tmp_path / "res")],
               tmp_path)
    (run,) = run_dirs(tmp_path / "res")
    warnings = read_json(run / "metrics.json")["data_warnings"]
    assert warnings["frame_past_end"] == 2 and warnings["box_outside_frame"] == 1     # training + validation
    assert warnings["fewer_than_3_references"] == 1 and warnings["unreadable_video"] == 1
    assert warnings["video_without_annotations"] == 1

    ann_path.write_text(ann_path.read_text()[:-2] + ",,]")
    proc = run_script(REFDET, _data(str(root)) + QUICK, tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {ann_path}: malformed JSON at line 1")
    ann_path.write_text(json.dumps([{"video_id": "train_00", "annotations": [{"bboxes": [{"frame": 1, "x1": 1}]}]}]))
    proc = run_script(REFDET, _data(str(root)) + QUICK, tmp_path, check=False)
    assert proc.returncode == 2 and "missing key" in proc.stderr.strip().splitlines()[-1]


def test_predict_reports_and_skips_an_unreadable_video(refdet_root, tmp_path):
    """One broken mp4 in the folder: it is reported and gets an empty entry; every other video is
    still detected and written (before, the first bad video ended --predict with no file)."""
    from src.models.refdet import build_refdet_model
    from src.tasks.refdet_inference import MODEL_KEYS

    root = tmp_path / "data"
    shutil.copytree(refdet_root, root, ignore=shutil.ignore_patterns("frame_cache"))
    (root / "samples" / "train_01" / "drone_video.mp4").write_bytes(b"\x00" * 3000)
    cfg = dict(dino_model="vit_small_patch16_dinov3", support_size=32, freeze_dino_layers=12, fusion="psalm",
               embed_dim=16, siamese=True, image_size=64, score_threshold=0.0)
    torch.manual_seed(0)
    model = build_refdet_model(**{k: cfg[k] for k in MODEL_KEYS if k != "image_size"})
    torch.save({"model": model.state_dict(), "task": "refdet", "model_config": cfg}, tmp_path / "w.pt")
    out = tmp_path / "pred.json"
    proc = run_script(REFDET, ["--predict", "--data-root", str(root), "--weights", str(tmp_path / "w.pt"),
                               "--out", str(out), "--num-workers", "0"], tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "train_01: skipped (unreadable_video)" in proc.stderr
    sub = {s["video_id"]: s["detections"] for s in json.loads(out.read_text())}
    assert sorted(sub) == sorted(p.name for p in (root / "samples").iterdir())
    assert sub["train_01"] == [] and all(sub[v] for v in sub if v != "train_01")     # threshold 0: every frame
    assert f"wrote {out} (5 videos, 1 unreadable)" in proc.stdout


def test_valid_loss_does_not_depend_on_how_videos_are_chunked(refdet_root):
    """The evaluation chunk is --batch-size frames; the criterion normalizes by the targets it is
    given, so the loss is taken frame by frame (before: 3- and 8-frame chunks gave different losses)."""
    from src.data.aeroeyes import read_aeroeyes, split_videos
    from src.data.loading import DataWarnings
    from src.data.refdet import VideoClips, video_truth
    from src.losses.refdet import RefDetCriterion
    from src.models.refdet import build_refdet_model
    from src.tasks.refdet import RefDetTask
    from src.training.evaluate import evaluate

    records = read_aeroeyes(refdet_root, None, DataWarnings())
    _, valid = split_videos(records, None, f"{refdet_root}/splits.txt", 0)
    torch.manual_seed(0)
    model = build_refdet_model(support_size=32, freeze_dino_layers=12, embed_dim=16)
    cfg = {"image_size": 64, "support_size": 32, "model_name": "t"}
    losses = []
    for chunk in (3, 8):
        task = RefDetTask(cfg, RefDetCriterion(), score_threshold=0.1)
        task.truth = {"valid": {r.video_id: video_truth(r) for r in valid}}
        out = evaluate(model, task, VideoClips(valid, 64, 32, chunk=chunk, stride=2), torch.device("cpu"), "valid")
        losses.append(out["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 0


# the seed's command lines (shared/seeds/yolov8n_refdet_speed_guide.md; its train.py and
# profile_training_bottlenecks.py are this script) -> what they resolve to
SEED_RECIPES = [
    ("--profile --data_root ./datasets/train/samples --annotations ./datasets/train/annotations/annotations.json "
     "--profile_episodes 10 --stage 2 --n_way 2 --n_query 4",
     dict(profile=10, data_root="./datasets/train/samples", n_way=2, n_query=4, stage=2, freeze_dino_layers=6)),
    ("--stage 2 --frame_cache_size 1000 --support_cache_size_mb 400",
     dict(frame_cache_size=1000, support_cache_size_mb=400.0, profile=0)),
    ("--stage 2 --num_workers 4", dict(num_workers=4)),
    ("--stage 2 --num_aug 1", dict(support_views=1)),         # --num-aug is --support-views
    ("--stage 2 --epochs 100", dict(epochs=100)),
]


def _parse(argv):
    import train_yolov8n_refdet
    from src.tasks import refdet_args

    return refdet_args.parse_args(train_yolov8n_refdet.build_parser(), argv)


@pytest.mark.parametrize("line,expected", SEED_RECIPES, ids=[r[0][:30] for r in SEED_RECIPES])
def test_the_seed_command_lines_parse(line, expected):
    args = vars(_parse(line.split()))
    assert {k: args[k] for k in expected} == expected


@pytest.mark.parametrize("argv,steps", [([], 0), (["--profile"], 10), (["--profile", "4"], 4),
                                        (["--profile-episodes", "3"], 3), (["--profile", "--profile_episodes", "5"], 5),
                                        (["--profile", "6", "--profile-episodes", "6"], 6)])
def test_profile_episodes(argv, steps):
    assert _parse(argv).profile == steps


@pytest.mark.parametrize("argv", [["--profile", "4", "--profile-episodes", "5"], ["--profile-episodes", "0"],
                                  ["--profile", "-3"]])
def test_profile_episodes_that_disagree_or_are_not_positive_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(argv)
    assert info.value.code == 2 and "--profile" in capsys.readouterr().err


def test_frame_cache_cap_and_reduced_decoding_flags(capsys):
    args = _parse([])
    assert (args.frame_cache_max_side, args.fast_decode) == ("auto", True)
    args = _parse(["--frame-cache-max-side", "0", "--no-fast-decode"])
    assert (args.frame_cache_max_side, args.fast_decode) == ("0", False)
    with pytest.raises(SystemExit) as info:
        _parse(["--frame-cache-max-side", "16"])
    assert info.value.code == 2 and "--frame-cache-max-side: expected auto, 0 (full size) or a side >= 32 px, got '16'" \
        in capsys.readouterr().err


def test_only_seed_flags_that_do_nothing_get_a_notice(capsys):
    _parse(["--num-aug", "2", "--support-cache-size-mb", "400", "--stage", "2", "--profile-episodes", "3"])
    assert capsys.readouterr().err == ""
    _parse(["--frame_cache_size", "1000"])
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("notice: --frame-cache-size is accepted for the seed's recipes and does nothing here: ")
    assert "on-disk JPEG frame cache" in line


def test_training_starts_from_ultralytics_detector_weights_with_the_seeds_flags(refdet_root, tmp_path):
    """An ultralytics-layout yolov8n state dict (built without ultralytics) converted on loading; the
    seed's --frame_cache_size gets its one notice line, --num_aug works as --support-views."""
    from tests.tools.test_convert_ultralytics import _detector_state, _ultralytics_layout

    weights = tmp_path / "yolov8n_sd.pt"
    torch.save(_ultralytics_layout(_detector_state(0)), weights)
    proc = run_script(REFDET, _data(refdet_root) + [*QUICK, "--epochs", "1", "--detector_weights", str(weights),
                                                     "--frame_cache_size", "1000", "--num_aug", "1",
                                                     "--results-dir", str(tmp_path / "res")], tmp_path)
    assert f"{weights}: 270 tensors of yolov8n layers 0-21 loaded into the detector (backbone + neck); 3 " \
           f"Detect-head tensors (model.22.*) skipped" in proc.stderr
    notices = [line for line in proc.stderr.splitlines() if "accepted for the seed's recipes" in line]
    assert len(notices) == 1 and notices[0].startswith("notice: --frame-cache-size is accepted for the seed's "
                                                       "recipes and does nothing here: ")
    (run,) = run_dirs(tmp_path / "res")
    config = read_json(run / "config.json")["args"]
    assert config["detector_weights"] == str(weights) and config["support_views"] == 1
    assert config["base_lr"] == pytest.approx(config["head_lr"] / 10)      # the pretrained detector: lr/10
    assert read_json(run / "metrics.json")["epochs_run"] == 1
