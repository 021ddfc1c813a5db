"""Grounding tensors: letterbox geometry round-trips to pixels, the flip mirrors boxes and swaps
left/right, n-gram ids are stable, collate pads phrases; the demo keeps its novel pairs out of training."""
import os
import re

import pytest
import torch
from PIL import Image

from src.data.demo_ovd import NOVEL, ensure_demo_ovd
from src.data.flickr30k import GroundingSample, Phrase, read_grounding_split
from src.data.grounding import GroundingDataset, collate_grounding, to_pixels, word_ngrams
from src.data.loading import DataWarnings


@pytest.fixture
def one_image(tmp_path):
    img = Image.new("RGB", (200, 100), (200, 200, 200))
    img.paste((255, 0, 0), (10, 20, 50, 60))         # the red box: x 10-50, y 20-60
    img.paste((0, 0, 255), (150, 40, 190, 90))
    img.save(tmp_path / "7.jpg", quality=95)
    caption = "a red square left of a blue square"
    sample = GroundingSample("7", caption, [Phrase("a red square", "1", ["other"], 0),
                                            Phrase("a blue square", "2", ["other"], 4)],
                             [[[10, 20, 50, 60]], [[150, 40, 190, 90]]])
    return tmp_path, sample


def test_letterbox_boxes_are_normalized_and_map_back_to_pixels(one_image):
    root, sample = one_image
    item = GroundingDataset([sample], str(root), 64, 512, 16)[0]
    assert item["image"].shape == (3, 64, 64) and item["scale"] == pytest.approx(64 / 200)
    # 200x100 -> 64x32 plus 32 rows of padding below: normalized by the square side
    assert torch.allclose(item["boxes"][0], torch.tensor([30 / 200, 40 / 200, 40 / 200, 40 / 200]), atol=1e-5)
    assert torch.allclose(to_pixels(item["boxes"], 64, item["scale"]),
                          torch.tensor([[10.0, 20, 50, 60], [150, 40, 190, 90]]), atol=1e-3)
    assert item["box_phrase"].tolist() == [0, 1] and item["spans"].tolist() == [[0, 3], [4, 3]]
    # the red pixels really are where the box says (padding is grey, below the image)
    x = item["image"]
    cx, cy = (item["boxes"][0, :2] * 64).long().tolist()
    assert x[0, cy, cx] > 1.5 and x[2, cy, cx] < 0


def test_flip_mirrors_boxes_and_swaps_left_and_right(one_image):
    root, sample = one_image
    ds = GroundingDataset([sample], str(root), 64, 512, 16, augment=True)
    ds.jitter = lambda im: im
    flipped = plain = None
    for seed in range(20):
        torch.manual_seed(seed)
        item = ds[0]
        if "right" in item["caption"]:
            flipped = item
        else:
            plain = item
    assert flipped is not None and plain is not None
    assert flipped["caption"] == "a red square right of a blue square"
    assert torch.allclose(to_pixels(flipped["boxes"], 64, flipped["scale"]),
                          torch.tensor([[150.0, 20, 190, 60], [10, 40, 50, 90]]), atol=1e-3)


def test_ngram_ids_are_stable_and_shared_by_related_words():
    a, b = word_ngrams("circle", 2 ** 15), word_ngrams("circles", 2 ** 15)
    assert a == word_ngrams("circle", 2 ** 15) and all(0 < i < 2 ** 15 for i in a)
    assert len(set(a) & set(b)) >= 5                 # "<ci", "cir", "irc", "rcl", "cle", ...


def test_collate_pads_words_and_phrases(one_image):
    root, sample = one_image
    short = GroundingSample("7", "a red square", [Phrase("a red square", "1", ["other"], 0)], [[[10, 20, 50, 60]]])
    batch = collate_grounding([GroundingDataset([sample, short], str(root), 64, 512, 16)[i] for i in (0, 1)]
                              + [{"bad": ("x.jpg", "unreadable_image")}])
    assert batch["bad"] == [("x.jpg", "unreadable_image")]
    assert batch["words"].shape[:2] == (2, 8) and batch["text_mask"].sum(1).tolist() == [8, 3]
    assert batch["phrase_valid"].tolist() == [[True, True], [True, False]]
    assert batch["phrase_mask"][0, 1].nonzero().flatten().tolist() == [4, 5, 6]
    assert [t["phrase"].tolist() for t in batch["targets"]] == [[0, 1], [0]]


def test_demo_keeps_novel_pairs_out_of_training(tmp_path):
    root = ensure_demo_ovd(str(tmp_path / "ovd"), splits={"train": 60, "val": 10, "test": 10, "test_novel": 20})
    assert ensure_demo_ovd(root, splits={"train": 60, "val": 10, "test": 10, "test_novel": 20}) == root
    pairs = {}
    for split in ("train", "valid", "test", "test_novel"):
        samples = read_grounding_split(root, split, DataWarnings())
        assert samples
        pairs[split] = {tuple(re.findall(r"(red|green|blue|yellow|purple|orange) (\w+)$", p.text)[0])
                        for s in samples for p in s.phrases}
    assert not (pairs["train"] | pairs["valid"] | pairs["test"]) & NOVEL
    assert pairs["test_novel"] <= NOVEL and len(pairs["test_novel"]) >= 3
    # every colour and every shape of the novel pairs is still seen in training
    assert {c for c, _ in NOVEL} <= {c for c, _ in pairs["train"]}
    assert {s for _, s in NOVEL} <= {s for _, s in pairs["train"]}
    assert len(os.listdir(os.path.join(root, "flickr30k_images"))) == 100
