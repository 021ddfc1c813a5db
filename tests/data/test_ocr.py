"""OCR data: vocabulary, annotation parsing, LMDB cache (never stale, keeps every line), resize rule,
width buckets (partial batches kept, true length), unknown characters and unreadable images."""
import os

import pytest
from PIL import Image

from src.errors import DataError
from src.data.loading import DataWarnings
from src.data.ocr import (EOS, PAD, SOS, VIETOCR_VOCAB, OCRDataset, Vocab, WidthBucketBatchSampler, build_lmdb,
                          collate_lines, read_annotations, resized_width)


def make_set(root, lines, sizes=None):
    """Write images + an annotation file; ``lines`` = [(name, label)]; returns the annotation path."""
    os.makedirs(root / "img", exist_ok=True)
    with open(root / "ann.txt", "w", encoding="utf-8") as f:
        for k, (name, label) in enumerate(lines):
            w, h = (sizes or {}).get(name, (60 + 20 * k, 20))
            Image.new("RGB", (w, h), (255, 255, 255)).save(root / "img" / name)
            f.write(f"img/{name}\t{label}\n")
    return str(root / "ann.txt")


def test_vocab_matches_vietocr_and_round_trips():
    v = Vocab(VIETOCR_VOCAB)
    assert len(VIETOCR_VOCAB) == 229 and len(v) == 233
    ids = v.encode("Xin chào, Việt Nam 2024!")
    assert min(ids) >= 4 and v.decode(ids + [EOS, 7, 8]) == "Xin chào, Việt Nam 2024!"
    assert v.decode([SOS, *v.encode("ab"), PAD]) == "ab"
    assert v.unknown("ab€c€π") == "€π"
    with pytest.raises(ValueError, match="repeated"):
        Vocab("abca")


def test_vietocr_resize_rule():
    assert resized_width(100, 32) == 100            # already at height 32
    assert resized_width(101, 32) == 110            # rounded up to a multiple of 10
    assert resized_width(45, 64) == 32              # 22 -> 30 -> clamped up to 32
    assert resized_width(10000, 32) == 512          # clamped down
    assert resized_width(300, 60, min_width=32, max_width=128) == 128


def test_annotation_without_tab_names_file_and_line(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("img/1.png\tmột\n\nimg/2.png hai\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.txt:3: .*no tab"):
        read_annotations(str(p))
    p.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no samples"):
        read_annotations(str(p))


def test_lmdb_keeps_every_line_and_is_rebuilt_when_the_file_changes(tmp_path):
    ann = make_set(tmp_path, [(f"{i}.png", f"dòng {i}") for i in range(5)])
    cache = str(tmp_path / "cache")
    first = build_lmdb(ann, str(tmp_path), cache)
    ds = OCRDataset(first, Vocab(VIETOCR_VOCAB), ann, DataWarnings())
    assert ds.texts == [f"dòng {i}" for i in range(5)]       # the last line is there (VietOCR drops it)
    assert build_lmdb(ann, str(tmp_path), cache) == first     # unchanged file: cache reused
    with open(ann, "a", encoding="utf-8") as f:
        f.write("img/0.png\tdòng mới\n")
    second = build_lmdb(ann, str(tmp_path), cache)
    assert second != first
    assert OCRDataset(second, Vocab(VIETOCR_VOCAB), ann, DataWarnings()).texts[-1] == "dòng mới"
    assert not [d for d in os.listdir(cache) if ".tmp" in d]  # no half-built cache left behind


def test_bad_images_and_unknown_characters_are_counted_or_fail_with_line(tmp_path):
    ann = make_set(tmp_path, [("ok.png", "tốt"), ("bad.png", "xấu"), ("odd.png", "π≈3")])
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    with open(ann, "a", encoding="utf-8") as f:
        f.write("img/missing.png\tmất\n")
    lmdb_path = build_lmdb(ann, str(tmp_path), str(tmp_path / "cache"))
    warnings = DataWarnings()
    ds = OCRDataset(lmdb_path, Vocab(VIETOCR_VOCAB), ann, warnings)
    assert ds.texts == ["tốt"]
    assert warnings.counts() == {"missing_file": 1, "unknown_char": 1, "unreadable_image": 1}
    with pytest.raises(DataError, match=r"ann\.txt:3: .*outside the vocabulary"):
        OCRDataset(lmdb_path, Vocab(VIETOCR_VOCAB), ann, DataWarnings(), unknown_char="error")


def test_items_and_collate(tmp_path):
    ann = make_set(tmp_path, [("a.png", "ab"), ("b.png", "c")], sizes={"a.png": (64, 32), "b.png": (64, 32)})
    v = Vocab(VIETOCR_VOCAB)
    ds = OCRDataset(build_lmdb(ann, str(tmp_path), str(tmp_path / "c")), v, ann, DataWarnings())
    item = ds[0]
    assert item["image"].shape == (3, 32, 70) and 0 <= item["image"].min() and item["image"].max() <= 1
    batch = collate_lines([ds[0], ds[1]])
    a, b, c = v.encode("abc")
    assert batch["tgt_input"].tolist() == [[SOS, a, b], [SOS, c, PAD]]
    assert batch["tgt_output"].tolist() == [[a, b, EOS], [c, EOS, PAD]]
    assert batch["tgt_padding_mask"].tolist() == [[False, False, False], [False, False, True]]


def test_width_buckets_keep_partial_batches_and_report_true_length():
    widths = [100] * 5 + [200] * 3 + [300]
    s = WidthBucketBatchSampler(widths, batch_size=2, shuffle=True, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 3 + 2 + 1
    assert sorted(i for b in batches for i in b) == list(range(9))          # nothing dropped
    assert all(len({widths[i] for i in b}) == 1 for b in batches)           # one width per batch
    s.set_epoch(1)
    assert list(s) != batches and sorted(map(sorted, s)) != []              # reshuffled per epoch
    # dynamic batch size: 400 positions = 8 lines of width 100 (T=50), 4 of 200, 2 of 300 (T=150)
    d = WidthBucketBatchSampler(widths, batch_size=2, shuffle=False, max_tokens=400)
    assert [len(b) for b in d] == [5, 3, 1] and len(d) == 3
    # two ranks: each gets the same number of training batches, together all of them
    ranks = [list(WidthBucketBatchSampler(widths, 2, True, 0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert set(i for r in ranks for b in r for i in b) == set(range(9))


def test_train_and_valid_may_share_one_annotation_file(tmp_path):
    """Two datasets on the same LMDB in one process (num_workers=0) both read their lines."""
    ann = make_set(tmp_path, [("a.png", "một"), ("b.png", "hai")])
    path = build_lmdb(ann, str(tmp_path), str(tmp_path / "c"))
    v = Vocab(VIETOCR_VOCAB)
    train = OCRDataset(path, v, ann, DataWarnings(), augment=True)
    valid = OCRDataset(path, v, ann, DataWarnings())
    assert [train[i]["text"] for i in range(2)] == [valid[i]["text"] for i in range(2)] == ["một", "hai"]


def test_dataloader_workers_read_after_the_parent_has_read(tmp_path):
    """DataLoader workers are forked from a process that has read the cache (building the datasets,
    or items read in the main process): each worker still opens and reads it (LMDB refuses a second
    handle on a folder in one process, and an inherited one)."""
    from torch.utils.data import DataLoader

    ann = make_set(tmp_path, [(f"{i}.png", f"dòng {i}") for i in range(6)])
    path = build_lmdb(ann, str(tmp_path), str(tmp_path / "c"))
    ds = OCRDataset(path, Vocab(VIETOCR_VOCAB), ann, DataWarnings())
    assert ds[0]["text"] == "dòng 0"  # the parent now holds a handle that the workers inherit
    for _ in range(2):  # a new set of workers per epoch
        loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_lines,
                            multiprocessing_context="fork")
        assert [t for b in loader for t in b["text"]] == [f"dòng {i}" for i in range(6)]


def test_an_unwritable_cache_folder_is_one_line_naming_the_cache_flag(tmp_path, monkeypatch):
    """A read-only data root (simulated: the tests run as root) — before, an lmdb/OSError traceback."""
    from src.data.demo_ocr import ensure_demo_ocr
    from src.data.ocr import build_lmdb

    files = ensure_demo_ocr(str(tmp_path / "ocr"), counts=(4, 2, 2))
    real_makedirs = os.makedirs

    def refuse(path, *args, **kwargs):
        if ".lmdb_cache" in str(path):
            raise PermissionError(13, "Permission denied", path)
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", refuse)
    cache = str(tmp_path / "ocr" / ".lmdb_cache")
    with pytest.raises(DataError) as info:
        build_lmdb(files["train"], str(tmp_path / "ocr"), cache)
    assert info.value.param == "lmdb_dir"
    assert str(info.value) == f"{cache}: cannot write the LMDB cache there (Permission denied); give a writable folder"


def test_the_cache_follows_the_images_and_a_missing_root_is_refused(tmp_path):
    """An image that was missing at the first build and added later is read (before: the stale cache
    kept it 'missing' forever); a data root that does not exist is an error, not an empty cache."""
    from src.data.demo_ocr import ensure_demo_ocr
    from src.data.ocr import build_lmdb

    root = tmp_path / "ocr"
    files = ensure_demo_ocr(str(root), counts=(4, 2, 2))
    first = read_annotations(files["train"])[0].path
    kept = (root / first).read_bytes()
    (root / first).unlink()
    cache = str(tmp_path / "cache")
    before = build_lmdb(files["train"], str(root), cache)
    warnings = DataWarnings()
    assert len(OCRDataset(before, Vocab(VIETOCR_VOCAB), files["train"], warnings)) == 3
    assert warnings.counts() == {"missing_file": 1}
    (root / first).write_bytes(kept)                              # the user adds the image
    after = build_lmdb(files["train"], str(root), cache)
    assert after != before and len(OCRDataset(after, Vocab(VIETOCR_VOCAB), files["train"], DataWarnings())) == 4
    assert build_lmdb(files["train"], str(root), cache) == after          # nothing changed: the same cache
    with pytest.raises(DataError) as info:
        build_lmdb(files["train"], str(tmp_path / "nowhere"), cache)
    assert info.value.param == "data_root" and not (tmp_path / "nowhere").exists()
