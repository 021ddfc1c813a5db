import json
import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from src.errors import DataError
from src.data.classification import Augment, OnPIL, augment_transform, build_classification_data, limit_indices
from src.data.images import load_rgb_tensor
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


# --- training augmentation (timm's flags) -----------------------------------------------------------

def _leaf(size=32):
    """An asymmetric uint8 image (3, S, S): every flip or rotation of it differs from it."""
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
    img[:, : size // 4, : size // 2] = 255     # a bright block in the top-left corner
    return img


NO_RANDOM = Augment(hflip=0, vflip=0, rotation=0, color_jitter=(0,))


def test_default_augmentation_is_the_pipeline_from_before_the_flags_draw_for_draw():
    from torchvision.transforms import v2

    from src.data.images import IMAGENET_MEAN, IMAGENET_STD

    before = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.RandomRotation(15),
                         v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    now = augment_transform(train=True)
    for seed in range(6):
        torch.manual_seed(seed)
        a = before(_leaf())
        torch.manual_seed(seed)
        torch.testing.assert_close(now(_leaf()), a, rtol=0, atol=0)


def test_without_flips_rotation_and_jitter_training_equals_validation(small_dataset):
    csv, l2i = small_dataset
    data = build_classification_data(csv, l2i, 32, 0, augment=NO_RANDOM)
    plain = build_classification_data(csv, l2i, 32, 0)
    valid_style = augment_transform(train=False)
    for i in range(3):
        expected = valid_style(data.train.base(load_rgb_tensor(data.train.paths[i], data.train.decode_longer_side, fit=True)))
        torch.testing.assert_close(data.train[i]["image"], expected, rtol=0, atol=0)
        torch.testing.assert_close(data.train[i]["image"], expected, rtol=0, atol=0)   # deterministic
    torch.manual_seed(0)
    assert any(not torch.equal(plain.train[i]["image"], data.train[i]["image"]) for i in range(3))


@pytest.mark.parametrize("flag,flip", [("vflip", TF.vertical_flip), ("hflip", TF.horizontal_flip)])
def test_flip_probability_one_always_flips_that_way(flag, flip):
    img = _leaf()
    out = augment_transform(True, replace(NO_RANDOM, **{flag: 1.0}))(img)
    torch.testing.assert_close(out, flip(augment_transform(False)(img)), rtol=0, atol=0)
    assert not torch.equal(out, augment_transform(False)(img))


def test_aa_builds_timm_randaugment_and_changes_pixels():
    from timm.data.auto_augment import AutoAugment, RandAugment

    t = augment_transform(True, replace(NO_RANDOM, auto_augment="rand-m9-mstd0.5-inc1"), image_size=32)
    ops = [op.op for op in t.transforms if isinstance(op, OnPIL)]
    assert len(ops) == 1 and isinstance(ops[0], RandAugment)
    assert isinstance([op.op for op in augment_transform(True, replace(NO_RANDOM, auto_augment="original"))
                       .transforms if isinstance(op, OnPIL)][0], AutoAugment)
    img, plain = _leaf(), augment_transform(False)(_leaf())
    outs = []
    for seed in range(8):
        random.seed(seed)
        np.random.seed(seed)
        outs.append(t(img))
    assert all(o.shape == plain.shape and o.dtype == torch.float32 for o in outs)
    assert sum(not torch.equal(o, plain) for o in outs) >= 4   # two ops of strength 9 rarely leave it alone


def test_reprob_one_erases_one_box_of_timm_area():
    size = 32
    out = augment_transform(True, replace(NO_RANDOM, reprob=1.0, remode="const"))(_leaf(size))
    erased = (out == 0).all(0)        # const mode fills zeros after normalisation
    ys, xs = torch.nonzero(erased, as_tuple=True)
    assert 0.02 * size * size <= int(erased.sum()) <= size * size / 3 + 2 * size   # timm's area range, rounded
    # one filled rectangle
    assert int(erased.sum()) == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert not (augment_transform(False)(_leaf(size)) == 0).all(0).any()


@pytest.mark.parametrize("kwargs,param", [(dict(auto_augment="rand-x9"), "aa"), (dict(auto_augment="bogus"), "aa"),
                                          (dict(hflip=1.5), "hflip"), (dict(reprob=-0.1), "reprob"),
                                          (dict(color_jitter=(0.2, 0.2)), "color_jitter"),
                                          (dict(rotation=-5), "rotation"), (dict(remode="zeros"), "remode")])
def test_bad_augmentation_values_name_their_flag(kwargs, param):
    with pytest.raises(DataError) as info:
        Augment(**kwargs)
    assert info.value.param == param
