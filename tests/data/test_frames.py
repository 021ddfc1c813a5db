"""Frame cache on small demo videos (3 videos x 30 frames, 128x96): exactly the annotated + N background
frames are written and match sequential decoding, a second run does no work, a lost index redoes only
its video, bad input (frames past the end, boxes outside, unreadable videos) is counted, the seed's
seek-per-frame reader returns the same pixels."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from src.data.aeroeyes import VideoRecord, read_aeroeyes
from src.data.demo_refdet import ensure_demo_refdet
from src.data.loading import DataWarnings
from src.data import frames as X


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("refdet_x") / "demo")
    ensure_demo_refdet(root, train_videos=2, valid_videos=1, frames=(30, 30), size=(128, 96))
    return root


@pytest.fixture(scope="session")
def records(demo):
    return read_aeroeyes(demo, None, DataWarnings())


def _mtimes(folder):
    return {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in sorted(os.listdir(folder))}


def test_extraction_writes_annotated_and_background_frames(records, tmp_path):
    rec = records[0]
    index = X.extract_video(rec, str(tmp_path), background_frames=4, seed=0)
    folder = tmp_path / rec.video_id
    assert index["dir"] == str(folder)
    annotated = sorted(int(f) for f in index["frames"])
    assert annotated == sorted(rec.boxes) and len(index["background"]) == 4
    assert not set(index["background"]) & set(rec.boxes)
    assert sorted(os.listdir(folder)) == sorted([f"{f:06d}.jpg" for f in annotated + index["background"]]
                                                + ["index.json", ".lock"])
    assert (index["num_frames"], index["width"], index["height"], index["fps"]) == (30, 128, 96, 25.0)
    stored = json.loads((folder / "index.json").read_text())
    assert stored == {k: v for k, v in index.items() if k != "dir"}
    decoded = {i: np.asarray(img, np.float32) for i, img in X.iter_video_frames(rec.video_path)}
    assert len(decoded) == 30
    from PIL import Image
    for f in annotated[:3] + index["background"]:
        cached = np.asarray(Image.open(folder / f"{f:06d}.jpg"), np.float32)
        assert np.abs(cached - decoded[f]).mean() < 3.0          # JPEG q90 of the same frame
    assert np.abs(np.asarray(Image.open(folder / f"{annotated[0]:06d}.jpg"), np.float32)
                  - decoded[(annotated[0] + 15) % 30]).mean() > 3.0   # ... and not of another one
    first = annotated[0]
    assert index["frames"][str(first)] == [list(b) for b in rec.boxes[first]]   # demo boxes lie inside


def test_second_run_does_no_work_and_lost_index_redoes_one_video(records, tmp_path):
    stats = {}
    indexes = X.ensure_frame_cache(records, str(tmp_path), background_frames=3, seed=0, stats=stats)
    assert sorted(indexes) == [r.video_id for r in records]
    assert stats["extracted"] == 3 and stats["frames_written"] == sum(len(r.boxes) + 3 for r in records)
    before = {r.video_id: _mtimes(tmp_path / r.video_id) for r in records}
    again = {}
    assert X.ensure_frame_cache(records, str(tmp_path), 3, 0, stats=again) == indexes
    assert again["extracted"] == 0 and again["cached"] == 3 and again["frames_written"] == 0
    assert {r.video_id: _mtimes(tmp_path / r.video_id) for r in records} == before
    lost = records[1].video_id
    os.remove(tmp_path / lost / "index.json")
    X.ensure_frame_cache(records, str(tmp_path), 3, 0, stats=again)
    assert again["extracted"] == 1
    for r in records:
        if r.video_id != lost:
            assert _mtimes(tmp_path / r.video_id) == before[r.video_id]
    # other settings are another cache key: redone, and no stale background frame is left behind
    redone = X.extract_video(records[0], str(tmp_path), background_frames=5, seed=1)
    assert len(redone["background"]) == 5 and redone["key"] != indexes[records[0].video_id]["key"]
    assert len(os.listdir(tmp_path / records[0].video_id)) == len(records[0].boxes) + 5 + 2   # + index, .lock


def test_bad_input_is_counted(records, tmp_path):
    src = records[0]
    video = tmp_path / "in" / "v.mp4"
    video.parent.mkdir()
    shutil.copy(src.video_path, video)
    boxes = {0: [(-10.0, 5.0, 20.0, 40.0)],            # partly outside: clipped, kept
             1: [(200.0, 5.0, 260.0, 40.0)],           # fully outside (frame is 128 wide): dropped
             2: [(120.0, 10.0, 140.0, 50.0), (10.0, 10.0, 30.0, 30.0)],   # one of two boxes is a 1-px sliver
             29: [(10.0, 10.0, 30.0, 30.0)],
             30: [(10.0, 10.0, 30.0, 30.0)], 45: [(1.0, 1.0, 9.0, 9.0)]}  # past the 30-frame end
    rec = VideoRecord("v", str(video), src.reference_paths, boxes)
    warnings = DataWarnings()
    index = X.extract_video(rec, str(tmp_path / "cache"), background_frames=2, warnings=warnings)
    assert index["frames"] == {"0": [[0.0, 5.0, 20.0, 40.0]], "2": [[120.0, 10.0, 128.0, 50.0], [10.0, 10.0, 30.0, 30.0]],
                               "29": [[10.0, 10.0, 30.0, 30.0]]}
    assert index["skipped"] == {"frame_past_end": [30, 45], "box_outside_frame": [1], "box_clipped": [0, 2]}
    assert 1 not in index["background"]            # an annotated frame is never a background frame
    assert warnings.counts() == {"box_clipped": 2, "box_outside_frame": 1, "frame_past_end": 2}
    replay = DataWarnings()                        # a cached run reports the same counts
    X.extract_video(rec, str(tmp_path / "cache"), background_frames=2, warnings=replay)
    assert replay.counts() == warnings.counts()

    broken = tmp_path / "in" / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    bad = VideoRecord("b", str(broken), src.reference_paths, {0: [(1.0, 1.0, 9.0, 9.0)]})
    w = DataWarnings()
    assert X.extract_video(bad, str(tmp_path / "cache"), warnings=w) is None
    assert w.counts() == {"unreadable_video": 1}
    stats = {}
    got = X.ensure_frame_cache([rec, bad], str(tmp_path / "cache"), 2, 0, DataWarnings(), stats=stats)
    assert list(got) == ["v"] and stats["failed"] == 1
    with pytest.raises(X.BadVideo, match="unreadable_video"):
        next(X.iter_video_frames(str(broken)))


def test_seek_reader_returns_the_same_frames(records):
    path = records[2].video_path
    sequential = {i: np.asarray(img) for i, img in X.iter_video_frames(path)}
    wanted = [0, 17, 3, 29, 28, 12, 40]
    got = X.seek_read_frames(path, wanted)
    assert sorted(got) == [0, 3, 12, 17, 28, 29]   # 40 is past the end
    for f, img in got.items():
        assert np.array_equal(np.asarray(img), sequential[f])
    assert [i for i, _ in X.iter_video_frames(path, stride=7)] == [0, 7, 14, 21, 28]


def test_two_extractions_of_one_video_at_once_take_turns(records, tmp_path, monkeypatch):
    """Two processes (here threads) bring the same stale cache up to date at the same moment: before the
    lock, both listed the folder and both deleted the same JPEGs, and one died with FileNotFoundError."""
    import threading

    cache = str(tmp_path / "fc")
    X.extract_video(records[0], cache, background_frames=2)            # a cache that is about to go stale
    folder = os.path.join(cache, records[0].video_id)
    real_listdir, meet = os.listdir, threading.Barrier(2, timeout=3)

    def listdir_then_meet(path):
        names = real_listdir(path)
        if os.path.abspath(path) == os.path.abspath(folder):
            try:
                meet.wait()          # both threads have listed the folder: they delete the same files next
            except threading.BrokenBarrierError:
                pass                 # with the lock, the other thread is still waiting for it
        return names

    monkeypatch.setattr(os, "listdir", listdir_then_meet)
    results, errors = [], []

    def extract():
        try:
            results.append(X.extract_video_counted(records[0], cache, 4, 0, 90, DataWarnings()))
        except Exception as exc:       # noqa: BLE001 - what a concurrent writer used to raise
            errors.append(exc)

    threads = [threading.Thread(target=extract) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(fresh for _, _, fresh in results) == [False, True]      # one decoded, the other found it done
    (first, _, _), (second, _, _) = results
    assert first == second and len(first["background"]) == 4
    jpgs = sorted(n for n in real_listdir(folder) if n.endswith(".jpg"))
    assert jpgs == sorted(f"{int(f):06d}.jpg" for f in [*first["frames"], *first["background"]])


def test_capped_cache_stores_smaller_frames_under_its_own_key(records, tmp_path):
    from PIL import Image

    rec = records[0]
    full = X.extract_video(rec, str(tmp_path / "full"), background_frames=2, seed=0)
    assert "max_side" not in full and "frame_width" not in full and X.frame_scale(full) == 1.0
    capped = X.extract_video(rec, str(tmp_path / "full"), background_frames=2, seed=0, max_side=64)
    assert capped["key"] != full["key"]                               # another cap: redone, not misread
    assert (capped["width"], capped["height"], capped["frame_width"], capped["frame_height"]) == (128, 96, 64, 48)
    assert capped["max_side"] == 64 and X.frame_scale(capped) == 0.5
    assert capped["frames"] == full["frames"]                          # boxes stay in original pixels
    again = X.extract_video(rec, str(tmp_path / "full"), background_frames=2, seed=0, max_side=64)
    assert again["key"] == capped["key"]
    assert X.extract_video(rec, str(tmp_path / "other"), background_frames=2, seed=0)["key"] == full["key"]
    f = sorted(capped["frames"], key=int)[0]
    small = Image.open(os.path.join(capped["dir"], f"{int(f):06d}.jpg"))
    assert small.size == (64, 48)
    ref = Image.open(os.path.join(str(tmp_path / "other" / rec.video_id), f"{int(f):06d}.jpg")).resize((64, 48),
                                                                                                    Image.BILINEAR)
    assert np.abs(np.asarray(small, np.float32) - np.asarray(ref, np.float32)).mean() < 3.0


def test_capped_size():
    assert X.capped_size(1920, 1080, 640) == (640, 360) and X.capped_size(1080, 1920, 640) == (360, 640)
    assert X.capped_size(320, 200, 640) == (320, 200) and X.capped_size(1920, 1080, None) == (1920, 1080)


def test_auto_cap_caps_only_videos_twice_the_input_and_keeps_a_full_size_cache(records, tmp_path):
    """--frame-cache-max-side auto: a video at least twice the model's input is stored capped at the input;
    a smaller one full size under the plain full-size key (so a cache extracted without a cap, or by the
    tool at another --image-size, is the same cache); a full-size cache already there is used, not redone."""
    rec, warnings = records[0], DataWarnings()                                   # 128x96 videos
    full = X.extract_video(rec, str(tmp_path / "a"), background_frames=2, seed=0)
    small, _, fresh = X.extract_video_counted(rec, str(tmp_path / "b"), 2, 0, 90, warnings, *X.resolve_cap("auto", 96))
    assert fresh and small["key"] == full["key"] and "max_side" not in small          # 128 < 2 * 96: full size
    capped, _, fresh = X.extract_video_counted(rec, str(tmp_path / "c"), 2, 0, 90, warnings, *X.resolve_cap("auto", 64))
    assert fresh and capped["max_side"] == 64 and (capped["frame_width"], capped["frame_height"]) == (64, 48)
    explicit = X.extract_video(rec, str(tmp_path / "d"), background_frames=2, seed=0, max_side=64)
    assert explicit["key"] == capped["key"]                            # the same stored pixels, the same key
    kept, written, fresh = X.extract_video_counted(rec, str(tmp_path / "a"), 2, 0, 90, warnings,
                                                   *X.resolve_cap("auto", 64))
    assert not fresh and written == 0 and kept["key"] == full["key"]   # the full-size cache, not decoded again
    again, _, fresh = X.extract_video_counted(rec, str(tmp_path / "c"), 2, 0, 90, warnings, *X.resolve_cap("auto", 64))
    assert not fresh and again["key"] == capped["key"]


@pytest.mark.parametrize("value,expected", [("auto", (640, 1280)), ("0", (None, None)), ("none", (None, None)),
                                            (None, (None, None)), ("512", (512, None)), (320, (320, None))])
def test_resolve_cap(value, expected):
    assert X.resolve_cap(value, 640) == expected


@pytest.mark.parametrize("value", ["big", "16", "-5", "1.5"])
def test_resolve_cap_rejects_nonsense_naming_the_flag(value):
    with pytest.raises(ValueError, match="--frame-cache-max-side.*" + re.escape(repr(value))):
        X.resolve_cap(value, 640)
