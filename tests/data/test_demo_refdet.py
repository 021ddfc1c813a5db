"""Demo drone-video set (small: 2 train + 1 valid videos, 30 frames, 128x96): the exact AeroEyes layout,
boxes inside the frame and on the target, the target visible in 40-70% of the frames in 1-3
segments, look-alike distractors, validation videos and targets unlike the training ones, and a
generation that runs once and never leaves half a dataset."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from src.data import demo_refdet as D
from src.data.aeroeyes import read_aeroeyes, split_videos
from src.data.loading import DataWarnings
from src.data.frames import iter_video_frames

SMALL = dict(train_videos=2, valid_videos=1, frames=(30, 30), size=(128, 96))


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("refdet_demo") / "demo")
    D.ensure_demo_refdet(root, **SMALL)
    return root


def _facts(root):
    with open(os.path.join(root, "demo.json"), encoding="utf-8") as f:
        return json.load(f)


def test_layout_and_reader(demo):
    ids = ["train_00", "train_01", "valid_00"]
    assert sorted(os.listdir(os.path.join(demo, "samples"))) == ids
    for vid in ids:
        refs = sorted(os.listdir(os.path.join(demo, "samples", vid, "object_images")))
        assert refs == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
        for name in refs:
            w, h = Image.open(os.path.join(demo, "samples", vid, "object_images", name)).size
            assert 96 <= w <= 160 and 96 <= h <= 160
    for name in ("README.txt", "splits.txt", "annotations/annotations.json"):
        assert os.path.isfile(os.path.join(demo, name))
    warnings = DataWarnings()
    records = read_aeroeyes(demo, None, warnings)
    assert warnings.counts() == {} and [r.video_id for r in records] == ids
    train, valid = split_videos(records, None, os.path.join(demo, "splits.txt"), seed=0)
    assert [r.video_id for r in train] == ids[:2] and [r.video_id for r in valid] == ids[2:]
    assert "novel shape-colour" in open(os.path.join(demo, "README.txt"), encoding="utf-8").read()


def test_boxes_are_on_the_target(demo):
    with open(os.path.join(demo, "annotations", "annotations.json"), encoding="utf-8") as f:
        entries = json.load(f)
    facts = {v["video_id"]: v for v in _facts(demo)["videos"]}
    for entry in entries:
        vid = entry["video_id"]
        frames = {i: np.asarray(img, np.float32) for i, img in
                  iter_video_frames(os.path.join(demo, "samples", vid, "drone_video.mp4"))}
        n = len(frames)
        groups = [[b["frame"] for b in g["bboxes"]] for g in entry["annotations"]]
        annotated = [f for g in groups for f in g]
        assert 1 <= len(groups) <= 3 and 0.4 <= len(annotated) / n <= 0.7
        for g in groups:                          # a group is one run of consecutive frames
            assert g == list(range(g[0], g[-1] + 1))
        body = np.asarray(facts[vid]["target_rgb"], np.float32)
        shares = []
        for b in (b for g in entry["annotations"] for b in g["bboxes"]):
            assert 0 <= b["x1"] < b["x2"] <= 128 and 0 <= b["y1"] < b["y2"] <= 96
            crop = frames[b["frame"]][b["y1"]:b["y2"], b["x1"]:b["x2"]]
            shares.append((np.abs(crop - body).max(-1) < 80).mean())
        # the target's body colour fills much of its box (less at 12-24 px: yuv420p halves the colour
        # resolution, and the marking and the corners of a triangle or an ellipse take the rest)
        assert min(shares) > 0.08 and np.median(shares) > 0.15, (vid, min(shares), np.median(shares))
        # and the box is specific: the same box moved well away holds much less of that colour
        b = entry["annotations"][0]["bboxes"][len(entry["annotations"][0]["bboxes"]) // 2]
        frame = frames[b["frame"]]
        w, h = b["x2"] - b["x1"], b["y2"] - b["y1"]
        shares = [(np.abs(frame[y:y + h, x:x + w] - body).max(-1) < 80).mean()
                  for x in range(0, 128 - w, 8) for y in range(0, 96 - h, 8)
                  if abs(x - b["x1"]) > w and abs(y - b["y1"]) > h]
        inside = (np.abs(frame[b["y1"]:b["y2"], b["x1"]:b["x2"]] - body).max(-1) < 80).mean()
        assert np.median(shares) < inside / 3


def test_targets_distractors_and_novel_validation(demo):
    facts = _facts(demo)["videos"]
    train = [D.Attrs(**v["target"]) for v in facts if v["split"] == "train"]
    valid = [D.Attrs(**v["target"]) for v in facts if v["split"] == "valid"]
    assert len(set(train)) == len(train) and not set(valid) & set(train)
    assert any(v["novel_shape_colour"] for v in facts)
    for v in facts:
        target = D.Attrs(**v["target"])
        assert 2 <= len(v["distractors"]) <= 4
        for d in map(lambda x: D.Attrs(**x), v["distractors"]):
            same = [target.shape == d.shape, target.colour == d.colour,
                    (target.marking, target.mark_colour) == (d.marking, d.mark_colour)]
            assert d != target and 1 <= sum(same) <= 2


def test_videos_differ(demo):
    digests = {hashlib.sha256(open(os.path.join(demo, "samples", v, "drone_video.mp4"), "rb").read()).hexdigest()
               for v in ("train_00", "train_01", "valid_00")}
    assert len(digests) == 3
    first = {v: np.asarray(next(iter_video_frames(os.path.join(demo, "samples", v, "drone_video.mp4")))[1], np.float32)
             for v in ("train_00", "valid_00")}
    assert np.abs(first["train_00"] - first["valid_00"]).mean() > 10    # another ground, not another crop


def test_generated_once_and_never_half_written(demo, tmp_path, monkeypatch):
    video = os.path.join(demo, "samples", "train_00", "drone_video.mp4")
    before = os.stat(video).st_mtime_ns
    assert D.ensure_demo_refdet(demo, **SMALL) == demo
    assert os.stat(video).st_mtime_ns == before

    root = str(tmp_path / "demo")
    calls = []
    real = D._make_video

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(D, "_make_video", failing)
    with pytest.raises(KeyboardInterrupt):
        D.ensure_demo_refdet(root, **SMALL)
    assert os.listdir(tmp_path) == []              # neither the root nor its temporary folder
    monkeypatch.setattr(D, "_make_video", real)
    D.ensure_demo_refdet(root, **{**SMALL, "train_videos": 1})
    assert sorted(os.listdir(os.path.join(root, "samples"))) == ["train_00", "valid_00"]
    D.ensure_demo_refdet(root, **SMALL)            # other parameters: replaced, not mixed
    assert sorted(os.listdir(os.path.join(root, "samples"))) == ["train_00", "train_01", "valid_00"]
    assert sorted(os.listdir(tmp_path)) == ["demo"]
