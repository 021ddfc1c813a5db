import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import capture_warnings
from PIL import Image

from src.errors import DataError
from src.data.classification import build_classification_data
from src.tools.prepare_metadata import main, prepare_metadata

REPO = Path(__file__).resolve().parents[2]
COUNTS = {"normal": 20, "blast": 50, "brown_spot": 30}  # deliberately not in sorted order
# every accepted extension, in several cases: the scan must be case-insensitive
EXTENSIONS = [".jpg", ".JPG", ".jpeg", ".png", ".PNG", ".bmp", ".webp", ".tif", ".TIFF"]


def _make_tree(root: Path, counts: dict[str, int]) -> Path:
    for c, (label, n) in enumerate(counts.items()):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(n):
            name = f"img_{i:03d}{EXTENSIONS[i % len(EXTENSIONS)]}"
            Image.new("RGB", (8, 8), (40 * c, 5 * i % 256, 90)).save(folder / name)
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    root = _make_tree(tmp_path / "train_images", COUNTS)
    (root / "blast" / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(root / "blast" / ".hidden.jpg")
    return root


@pytest.fixture
def warnings_log():
    yield from capture_warnings("src.tools.prepare_metadata")


def _read(csv_path) -> pd.DataFrame:
    return pd.read_csv(csv_path, dtype=str, keep_default_na=False)


def test_exact_counts_stratified_and_relative_paths(tree, tmp_path):
    csv_path, json_path = prepare_metadata(str(tree), str(tmp_path / "data"), valid=0.2, test=0.1, seed=0)
    assert (csv_path, json_path) == (str(tmp_path / "data" / "metadata.csv"), str(tmp_path / "data" / "label2id.json"))
    df = _read(csv_path)
    assert list(df.columns) == ["path", "label", "split"]
    assert len(df) == 100 and df["split"].value_counts().to_dict() == {"train": 70, "valid": 20, "test": 10}
    # each class keeps its share in every split (70/20/10 of 50, 30 and 20 images)
    table = pd.crosstab(df["label"], df["split"])
    assert table.loc["blast"].to_dict() == {"train": 35, "valid": 10, "test": 5}
    assert table.loc["brown_spot"].to_dict() == {"train": 21, "valid": 6, "test": 3}
    assert table.loc["normal"].to_dict() == {"train": 14, "valid": 4, "test": 2}
    assert json.loads(Path(json_path).read_text()) == {"blast": 0, "brown_spot": 1, "normal": 2}
    for path, label in zip(df["path"], df["label"]):
        assert not os.path.isabs(path) and "\\" not in path and path.startswith("../train_images/")
        assert (tmp_path / "data" / path).is_file() and Path(path).parent.name == label
    names = {Path(p).name for p in df["path"]}
    assert "img_001.JPG" in names and "img_008.TIFF" in names and "img_006.webp" in names
    assert "notes.txt" not in names and ".hidden.jpg" not in names


def test_output_loads_with_build_classification_data(tree, tmp_path):
    csv_path, json_path = prepare_metadata(str(tree), str(tmp_path / "data"), valid=0.2, test=0.1, seed=0)
    data = build_classification_data(csv_path, json_path, image_size=16, seed=0)
    assert (len(data.train), len(data.valid), len(data.test)) == (70, 20, 10)
    assert data.class_names == ["blast", "brown_spot", "normal"]
    for i in range(len(data.valid)):
        item = data.valid[i]
        assert "bad" not in item and item["image"].shape == (3, 16, 16)
    folders = [Path(p).parent.name for p in data.train.paths]
    assert [data.label2id[f] for f in folders] == data.train.labels


def test_split_is_deterministic_for_a_seed(tree, tmp_path):
    a = Path(prepare_metadata(str(tree), str(tmp_path / "a"), seed=7)[0]).read_text()
    b = Path(prepare_metadata(str(tree), str(tmp_path / "b"), seed=7)[0]).read_text()
    c = Path(prepare_metadata(str(tree), str(tmp_path / "c"), seed=8)[0]).read_text()
    assert a == b  # same depth below tmp_path, so even the relative paths match
    assert a != c
    counts = _read(tmp_path / "c" / "metadata.csv")["split"].value_counts().to_dict()
    assert counts == {"train": 80, "valid": 10, "test": 10}


def test_no_test_split(tree, tmp_path):
    csv_path, json_path = prepare_metadata(str(tree), str(tmp_path / "data"), valid=0.1, test=0.0, seed=0)
    assert _read(csv_path)["split"].value_counts().to_dict() == {"train": 90, "valid": 10}
    assert build_classification_data(csv_path, json_path, 16, 0).test is None


def test_refuses_to_overwrite_unless_asked(tree, tmp_path):
    out = tmp_path / "data"
    csv_path, _ = prepare_metadata(str(tree), str(out), seed=0)
    before = Path(csv_path).read_text()
    with pytest.raises(DataError, match="metadata.csv: already exists .*--overwrite"):
        prepare_metadata(str(tree), str(out), seed=1)
    assert Path(csv_path).read_text() == before
    (out / "metadata.csv").unlink()  # label2id.json alone also blocks: never leave a mixed pair
    with pytest.raises(DataError, match="label2id.json: already exists"):
        prepare_metadata(str(tree), str(out), seed=1)
    assert not (out / "metadata.csv").exists()
    prepare_metadata(str(tree), str(out), seed=1, overwrite=True)
    assert Path(csv_path).read_text() != before
    assert sorted(p.name for p in out.iterdir()) == ["label2id.json", "metadata.csv"]  # no temp files left


def test_class_too_small_to_stratify_falls_back_with_warning(tmp_path, warnings_log):
    tree = _make_tree(tmp_path / "imgs", {"common": 19, "rare": 1})
    csv_path, json_path = prepare_metadata(str(tree), str(tmp_path / "data"), valid=0.1, test=0.1, seed=0)
    df = _read(csv_path)
    assert df["split"].value_counts().to_dict() == {"train": 16, "valid": 2, "test": 2}
    messages = [r.getMessage() for r in warnings_log]
    assert any("cannot stratify" in m and "rare=1" in m for m in messages), messages
    assert json.loads(Path(json_path).read_text()) == {"common": 0, "rare": 1}


@pytest.mark.parametrize("layout,message", [
    ("empty", "no class subfolders"),
    ("loose", "no class subfolders .*holds 2 image file"),
    ("no_images", "no images in its 2 class subfolder"),
])
def test_whole_input_errors(tmp_path, layout, message):
    root = tmp_path / "imgs"
    root.mkdir()
    if layout == "loose":
        for i in range(2):
            Image.new("RGB", (4, 4)).save(root / f"{i}.jpg")
    if layout == "no_images":
        for label in ("a", "b"):
            (root / label).mkdir()
            (root / label / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=message):
        prepare_metadata(str(root), str(tmp_path / "data"))
    assert not (tmp_path / "data" / "metadata.csv").exists()


@pytest.mark.parametrize("valid,test,message", [
    (0.0, 0.1, "--valid must be"), (0.1, -0.1, "--test must be"), (0.6, 0.4, "must leave images for training"),
])
def test_bad_fractions(tree, tmp_path, valid, test, message):
    with pytest.raises(DataError, match=message):
        prepare_metadata(str(tree), str(tmp_path / "data"), valid=valid, test=test)


def test_cli_prints_count_table(tree, tmp_path, capsys):
    assert main(["--images-dir", str(tree), "--out_dir", str(tmp_path / "data"), "--valid", "0.2",
                 "--test", "0.1", "--seed", "3"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["class"] == ["train", "valid", "test", "total"]
    assert rows["blast"] == ["35", "10", "5", "50"]
    assert rows["normal"] == ["14", "4", "2", "20"]
    assert rows["total"] == ["70", "20", "10", "100"]


def test_missing_folder_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "nope" / "train_images"
    proc = subprocess.run([sys.executable, "-m", "src.tools.prepare_metadata", "--images-dir", str(missing),
                           "--out-dir", str(tmp_path / "data")], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0], proc.stderr
    assert "not found" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()
