import json
from collections import Counter

import pytest
import torch

from src.errors import DataError
from src.data.classification import build_classification_data, limit_indices
from src.data.loading import DataWarnings, EpochSampler, collate_skip_bad, make_loader


def _write(tmp_path, rows, header="path,label,split", labels=("a", "b")):
    csv = tmp_path / "metadata.csv"
    csv.write_text(header + "\n" + "\n".join(rows) + "\n")
    l2i = tmp_path / "label2id.json"
    l2i.write_text(json.dumps({k: i for i, k in enumerate(labels)}))
    return str(csv), str(l2i)


def test_limit_is_stratified_and_seeded():
    labels = [0] * 80 + [1] * 20
    keep = limit_indices(labels, 10, seed=3)
    assert len(keep) == 10 and Counter(labels[i] for i in keep) == {0: 8, 1: 2}
    assert keep == limit_indices(labels, 10, seed=3) and keep != limit_indices(labels, 10, seed=4)


def test_dataset_items_and_paths_relative_to_csv(small_dataset):
    csv, l2i = small_dataset
    data = build_classification_data(csv, l2i, image_size=32, seed=0)
    assert len(data.train) == 64 and len(data.valid) == 32 and len(data.test) == 16
    item = data.train[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert data.class_names == ["bacterial_leaf_blight", "brown_spot", "healthy", "leaf_blast"]


def test_cache_images_gives_same_eval_tensors(small_dataset):
    csv, l2i = small_dataset
    plain = build_classification_data(csv, l2i, 32, 0).valid
    cached = build_classification_data(csv, l2i, 32, 0, cache_images=True).valid
    for i in range(3):
        torch.testing.assert_close(plain[i]["image"], cached[i]["image"])  # first epoch fills the cache
        torch.testing.assert_close(plain[i]["image"], cached[i]["image"])  # later epochs read it
    assert int(cached.cached[:3].sum()) == 3


@pytest.mark.parametrize("rows,header,message", [
    (["x.jpg,c,train"], "path,label,split", "metadata.csv:2: label 'c' is not in"),
    (["x.jpg,a"], "path,label", "metadata.csv:1: missing column(s) split"),
    (["x.jpg,a,train"], "path,label,split", "the 'valid' split is empty"),
    (["x.jpg,a,holdout"], "path,label,split", "metadata.csv:2: split 'holdout'"),
])
def test_whole_file_errors_name_file_and_line(tmp_path, rows, header, message):
    csv, l2i = _write(tmp_path, rows, header)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_classification_data(csv, l2i, 32, 0)


def test_bad_images_are_skipped_by_collate(tmp_path, small_dataset):
    csv, l2i = small_dataset
    data = build_classification_data(csv, l2i, 32, 0)
    data.valid.paths[1] = str(tmp_path / "nope.jpg")
    loader = make_loader(data.valid, batch_size=4, train=False, seed=0)
    batch = next(iter(loader))
    assert batch["image"].shape[0] == 3 and batch["bad"] == [(str(tmp_path / "nope.jpg"), "missing_file")]
    w = DataWarnings()
    w.add_many(batch["bad"])
    w.add_many(batch["bad"])  # the same file seen again (next epoch) counts once
    assert w.counts() == {"missing_file": 1}
    assert collate_skip_bad([{"bad": ("f", "empty_file")}]) == {"bad": [("f", "empty_file")]}


def test_epoch_sampler_seeded_sharded_and_padded():
    s = EpochSampler(10, shuffle=True, seed=1)
    s.set_epoch(1)
    first = list(s)
    s.set_epoch(2)
    assert sorted(first) == list(range(10)) and list(s) != first
    s.set_epoch(1)
    assert list(s) == first
    shards = [EpochSampler(5, shuffle=False, seed=0, rank=r, world_size=2, pad=True) for r in range(2)]
    assert [list(x) for x in shards] == [[0, 2, 4], [1, 3, 0]] and len(shards[1]) == 3
    evals = [EpochSampler(5, shuffle=False, seed=0, rank=r, world_size=2, pad=False) for r in range(2)]
    assert [list(x) for x in evals] == [[0, 2, 4], [1, 3]] and [len(x) for x in evals] == [3, 2]
