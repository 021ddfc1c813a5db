"""AeroEyes reader on hand-written folders in the real layout: annotations parse and merge their visible
segments, malformed files fail with one line naming the place, single bad videos are skipped and
counted, the root may be the samples folder, and the by-video split is seeded and exact."""
import json

import numpy as np
import pytest
from PIL import Image

from src.errors import DataError
from src.data.aeroeyes import read_aeroeyes, read_annotations, split_videos
from src.data.loading import DataWarnings

ANN = [
    {"video_id": "ok", "annotations": [
        {"bboxes": [{"frame": 3, "x1": 10, "y1": 20, "x2": 50, "y2": 60},
                    {"frame": 4, "x1": 11, "y1": 21, "x2": 51, "y2": 61}]},
        {"bboxes": [{"frame": 40, "x1": 1.5, "y1": 2, "x2": 30, "y2": 40},
                    {"frame": 4, "x1": 100, "y1": 100, "x2": 120, "y2": 130}]}]},   # two boxes in frame 4
    {"video_id": "two_refs", "annotations": [{"bboxes": [{"frame": 0, "x1": 0, "y1": 0, "x2": 9, "y2": 9}]}]},
    {"video_id": "no_refs", "annotations": []},
    {"video_id": "no_video", "annotations": []},
    {"video_id": "bad_ref", "annotations": []},
    {"video_id": "ghost", "annotations": []},            # annotated, but no samples folder
]


def _write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return path


def _photo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(path)


@pytest.fixture
def dataset(tmp_path):
    samples = tmp_path / "samples"
    layout = {"ok": ["img_1.jpg", "img_2.jpeg", "IMG_3.PNG", "img_4.jpg"],   # img_4 is not a reference name
              "two_refs": ["img_1.jpg", "img_3.jpg"], "no_refs": [], "no_video": ["img_1.jpg"],
              "bad_ref": ["img_1.jpg", "img_2.jpg", "img_3.jpg"], "unannotated": ["img_1.jpg"]}
    for vid, refs in layout.items():
        folder = samples / vid
        (folder / "object_images").mkdir(parents=True)
        if vid != "no_video":
            (folder / "drone_video.mp4").write_bytes(b"not decoded by the reader")
        for name in refs:
            _photo(folder / "object_images" / name)
    (samples / "bad_ref" / "object_images" / "img_2.jpg").write_bytes(b"\xff\xd8 truncated")
    _write_json(tmp_path / "annotations" / "annotations.json", ANN)
    return tmp_path


def test_annotations_parse_and_merge_segments(dataset):
    ann = read_annotations(str(dataset / "annotations" / "annotations.json"))
    assert list(ann) == ["ok", "two_refs", "no_refs", "no_video", "bad_ref", "ghost"]
    assert ann["ok"] == {3: [(10, 20, 50, 60)], 4: [(11, 21, 51, 61), (100, 100, 120, 130)], 40: [(1.5, 2, 30, 40)]}
    assert list(ann["ok"]) == [3, 4, 40] and ann["no_refs"] == {}


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text('[{"video_id": "a",\n  "annotations": [}]\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_annotations(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: malformed JSON at line 2, column 19") and "\n" not in msg


@pytest.mark.parametrize("obj, message", [
    ({"video_id": "a"}, "expected a JSON list of videos"),
    ([{"video_id": "a", "annotations": []}, {"annotations": []}], 'entry 1: no "video_id"'),
    ([{"video_id": 7, "annotations": []}], '"video_id" must be a non-empty string'),
    ([{"video_id": "a", "annotations": {}}], "entry 0 (video_id 'a'): \"annotations\" must be a list"),
    ([{"video_id": "a", "annotations": [{"boxes": []}]}], "entry 0 (video_id 'a'), annotations[0]: \"bboxes\""),
    ([{"video_id": "a", "annotations": [{"bboxes": [{"frame": 1, "x1": 0, "y1": 0, "x2": 5, "y2": 5},
                                                    {"frame": 2, "x1": 0, "y1": 0, "y2": 5}]}]}],
     "entry 0 (video_id 'a'), annotations[0].bboxes[1]: missing key 'x2'"),
    ([{"video_id": "a", "annotations": [{"bboxes": [{"frame": 1, "x1": "10", "y1": 0, "x2": 5, "y2": 5}]}]}],
     'bboxes[0]: x1 is "10", not a number'),
    ([{"video_id": "a", "annotations": [{"bboxes": [{"frame": 1.5, "x1": 1, "y1": 0, "x2": 5, "y2": 5}]}]}],
     "frame must be a non-negative integer"),
    ([{"video_id": "a", "annotations": []}, {"video_id": "a", "annotations": []}],
     "entry 1 (video_id 'a'): duplicate video_id"),
])
def test_structure_errors_name_the_entry(tmp_path, obj, message):
    path = _write_json(tmp_path / "annotations.json", obj)
    with pytest.raises(DataError) as err:
        read_annotations(str(path))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_bad_videos_skipped_and_counted(dataset):
    warnings = DataWarnings()
    records = read_aeroeyes(str(dataset), None, warnings)
    assert [r.video_id for r in records] == ["bad_ref", "ok", "two_refs"]
    by_id = {r.video_id: r for r in records}
    assert [p.rsplit("/", 1)[1] for p in by_id["ok"].reference_paths] == ["IMG_3.PNG", "img_1.jpg", "img_2.jpeg"]
    assert len(by_id["two_refs"].reference_paths) == 2 and len(by_id["bad_ref"].reference_paths) == 2
    assert by_id["ok"].boxes[4] == [(11, 21, 51, 61), (100, 100, 120, 130)] and by_id["ok"].annotated
    assert by_id["ok"].video_path == str(dataset / "samples" / "ok" / "drone_video.mp4")
    assert by_id["ok"].root == str(dataset)
    assert warnings.counts() == {"annotated_video_missing": 1, "fewer_than_3_references": 2, "missing_video": 1,
                                 "no_reference_images": 1, "unreadable_reference": 1, "video_without_annotations": 1}


def test_root_may_be_the_samples_folder(dataset):
    a = read_aeroeyes(str(dataset), None, DataWarnings())
    b = read_aeroeyes(str(dataset / "samples"), None, DataWarnings())
    assert [(r.video_id, r.video_path, r.boxes, r.root) for r in a] == [(r.video_id, r.video_path, r.boxes, r.root)
                                                                         for r in b]


def test_without_annotations(dataset):
    (dataset / "annotations" / "annotations.json").unlink()
    with pytest.raises(DataError, match="annotations.json: annotation file not found"):
        read_aeroeyes(str(dataset), None, DataWarnings())
    records = read_aeroeyes(str(dataset), None, DataWarnings(), require_boxes=False)
    assert [r.video_id for r in records] == ["bad_ref", "ok", "two_refs", "unannotated"]
    assert all(not r.annotated and r.boxes == {} for r in records)
    with pytest.raises(DataError, match="elsewhere.json: annotation file not found"):
        read_aeroeyes(str(dataset), str(dataset / "elsewhere.json"), DataWarnings(), require_boxes=False)


def test_no_usable_video_or_no_dataset_is_an_error(tmp_path, dataset):
    with pytest.raises(DataError, match="folder not found"):
        read_aeroeyes(str(tmp_path / "nowhere"), None, DataWarnings())
    _write_json(dataset / "annotations" / "annotations.json", [{"video_id": "zzz", "annotations": []}])
    with pytest.raises(DataError, match=r"no usable video in 6 folder\(s\)"):
        read_aeroeyes(str(dataset), None, DataWarnings())


def _records(n):
    from src.data.aeroeyes import VideoRecord
    return [VideoRecord(f"v{i:02d}", f"/x/v{i:02d}.mp4", ["/x/r.jpg"]) for i in range(n)]


def test_split_by_video_seeded(tmp_path):
    recs = _records(10)
    ids = lambda rs: [r.video_id for r in rs]  # noqa: E731
    train, valid = split_videos(recs, 0.2, None, seed=1)
    assert len(valid) == 2 and len(train) == 8 and not set(ids(train)) & set(ids(valid))
    assert ids(train) == sorted(ids(train))
    assert split_videos(recs, 0.2, None, seed=1) == (train, valid)                        # same seed, same split
    assert {tuple(ids(split_videos(recs, 0.2, None, seed=s)[1])) for s in range(8)} != {tuple(ids(valid))}
    assert len(split_videos(recs, 3, None, seed=0)[1]) == 3
    assert ids(split_videos(recs, ["v03", "v07"], None, seed=0)[1]) == ["v03", "v07"]
    assert split_videos(recs, None, None, seed=0) == (recs, [])
    with pytest.raises(DataError, match="not found among the 10 usable videos: v99"):
        split_videos(recs, ["v99"], None, seed=0)
    with pytest.raises(DataError, match="would leave none"):
        split_videos(recs, 10, None, seed=0)
    with pytest.raises(DataError, match=r"fraction must be in \(0, 1\)"):
        split_videos(recs, 1.5, None, seed=0)


def test_split_file(tmp_path):
    recs = _records(4)
    path = tmp_path / "splits.txt"
    path.write_text("# comment\nv00\ttrain\nv01 train\n\nv02  valid\nv77 valid\n", encoding="utf-8")
    train, valid = split_videos(recs, None, str(path), seed=0)
    assert [r.video_id for r in train] == ["v00", "v01"] and [r.video_id for r in valid] == ["v02"]  # v03 unlisted
    path.write_text("v00 train\nv01 test\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: expected 'video_id train\|valid'"):
        split_videos(recs, None, str(path), seed=0)
    with pytest.raises(DataError, match="not both"):
        split_videos(recs, 1, str(path), seed=0)
