"""RefDet samples on small demo videos and a hand-made frame: items and boxes in letterboxed pixels,
augmentation that moves boxes with the pixels (and drops a target pushed out of view), deterministic
support views, the episode sampler's contract (n_way videos, query/background counts, seeded by
epoch, rank shards), the episode collate, and whole-video chunks for evaluation."""
import os
import shutil

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader

from src.data.aeroeyes import VideoRecord, read_aeroeyes
from src.data.demo_refdet import ensure_demo_refdet
from src.data.images import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, letterbox, load_rgb
from src.data.loading import DataWarnings
from src.data.refdet import (COLOUR_PERMUTATIONS, EpisodeItem, EpisodeSampler, RefDetFrames, VideoClips,
                             collate_episode, load_support, video_truth)
from src.data.frames import ensure_frame_cache

S, SUP = 64, 32


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("refdet_ds")
    root = ensure_demo_refdet(str(base / "demo"), train_videos=2, valid_videos=1, frames=(30, 30), size=(128, 96))
    records = read_aeroeyes(root, None, DataWarnings())
    indexes = ensure_frame_cache(records, str(base / "cache"), background_frames=4, seed=0, log_progress=False)
    return records, indexes


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Normalized (3, H, W) -> [0, 1] RGB."""
    return x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def _pixels(image: torch.Tensor) -> torch.Tensor:
    """Normalized (3, H, W) -> [0, 1] grey (H, W)."""
    return _unnormalize(image).mean(0)


def test_items_in_letterboxed_pixels(demo):
    records, indexes = demo
    ds = RefDetFrames(records, indexes, S, SUP)
    n_ann = [len(indexes[r.video_id]["frames"]) for r in records]
    assert len(ds) == sum(n_ann) + 3 * 4
    assert [len(a) for a, _ in ds.video_items] == n_ann and all(len(b) == 4 for _, b in ds.video_items)
    i = ds.video_items[1][0][0]
    item = ds[i]
    frame = int(sorted(indexes[records[1].video_id]["frames"], key=int)[0])
    assert item["key"] == f"{records[1].video_id}/{frame}" and (item["video"], item["frame"]) == (1, frame)
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32 and item["scale"] == 0.5
    expected = torch.tensor(indexes[records[1].video_id]["frames"][str(frame)]) * 0.5
    assert torch.allclose(item["boxes"], expected)
    background = ds[ds.video_items[1][1][0]]
    assert background["boxes"].shape == (0, 4)
    # rows below the 128x96 frame (letterboxed into 64x48) are padding
    assert torch.allclose(_pixels(item["image"])[50:], torch.tensor(114 / 255), atol=0.02)


def test_unreadable_jpeg_is_a_bad_item(demo, tmp_path):
    records, indexes = demo
    vid = records[0].video_id
    shutil.copytree(indexes[vid]["dir"], tmp_path / vid)
    ds = RefDetFrames(records[:1], {vid: {**indexes[vid], "dir": str(tmp_path / vid)}}, S, SUP)
    frame = ds.items[0][1]
    (tmp_path / vid / f"{frame:06d}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert ds[0] == {"bad": (f"{vid}/{frame}", "unreadable_image")}
    item = ds[EpisodeItem(0, 0, 0, True)]               # its video's support still travels with it
    assert item["bad"][1] == "unreadable_image" and item["support"].shape == (3, 3, SUP, SUP)


@pytest.fixture
def square(tmp_path, demo):
    """A 160x120 black frame with a white square at [20, 30, 50, 60], as a one-frame cache."""
    records, _ = demo
    folder = tmp_path / "syn"
    folder.mkdir()
    img = np.zeros((120, 160, 3), np.uint8)
    img[30:60, 20:50] = 255
    Image.fromarray(img).save(folder / "000000.jpg", quality=95)
    rec = VideoRecord("syn", "/unused.mp4", records[0].reference_paths)
    index = {"frames": {"0": [[20.0, 30.0, 50.0, 60.0]]}, "background": [], "dir": str(folder)}
    ds = RefDetFrames([rec], {"syn": index}, 160, SUP, augment=True)
    ds.jitter = lambda x: x                              # geometry only in these checks
    return ds


def test_flips_move_the_box_with_the_pixels(square):
    square.geometric = v2.RandomHorizontalFlip(p=1.0)
    item = square[0]
    assert item["boxes"].tolist() == [[110.0, 30.0, 140.0, 60.0]]
    grey = _pixels(item["image"])
    assert grey[32:58, 112:138].mean() > 0.95 and grey[32:58, 22:48].mean() < 0.05
    square.geometric = v2.RandomVerticalFlip(p=1.0)    # about the 160x160 letterboxed canvas
    item = square[0]
    assert item["boxes"].tolist() == [[20.0, 100.0, 50.0, 130.0]]
    assert _pixels(item["image"])[102:128, 22:48].mean() > 0.95


def test_random_augmentation_keeps_boxes_on_the_square(square):
    torch.manual_seed(0)
    for _ in range(20):
        item = square[0]
        assert item["boxes"].shape == (1, 4)
        x1, y1, x2, y2 = item["boxes"][0].round().int().tolist()
        grey = _pixels(item["image"])
        assert grey[y1 + 2:y2 - 2, x1 + 2:x2 - 2].mean() > 0.9       # white inside the box
        ring = torch.cat([grey[max(0, y1 - 4):y1 - 1, x1:x2].flatten(), grey[y2 + 1:y2 + 4, x1:x2].flatten()])
        assert ring.numel() == 0 or ring.mean() < 0.5                 # not white just outside it


def test_target_pushed_out_of_view_becomes_negative(square):
    def shift(dx):
        return lambda img, boxes: (TF.affine(img, angle=0.0, translate=[dx, 0], scale=1.0, shear=[0.0, 0.0], fill=114),
                                   TF.affine(boxes, angle=0.0, translate=[dx, 0], scale=1.0, shear=[0.0, 0.0]))
    square.geometric = shift(-25)                      # 25 of 30 px still in view: clipped, kept
    assert square[0]["boxes"].tolist() == [[0.0, 30.0, 25.0, 60.0]]
    square.geometric = shift(-40)                      # 10 of 30 px left: a negative, not a sliver
    assert square[0]["boxes"].shape == (0, 4)


def test_support_views(demo):
    rec = demo[0][0]
    state = torch.get_rng_state()
    plain = load_support(rec, SUP)
    assert plain.shape == (3, 3, SUP, SUP)
    expected = image_to_tensor(letterbox(load_rgb(rec.reference_paths[1]), None, SUP)[0])
    assert torch.equal(plain[1], expected)
    v1, v1_again, v2_ = load_support(rec, SUP, 1, 3), load_support(rec, SUP, 1, 3), load_support(rec, SUP, 2, 3)
    assert torch.equal(v1, v1_again) and not torch.equal(v1, v2_) and not torch.equal(v1, plain)
    assert torch.equal(torch.get_rng_state(), state)     # training randomness untouched
    two = VideoRecord(rec.video_id, rec.video_path, rec.reference_paths[:2])
    repeated = load_support(two, SUP)
    assert torch.equal(repeated[2], repeated[0]) and torch.equal(repeated[1], plain[1])
    with pytest.raises(ValueError, match="outside"):
        load_support(rec, SUP, 3, 3)


def _sampler(ds, **kw):
    args = dict(n_way=2, n_query=3, n_background=2, n_episodes=6, augment_views=3, seed=5)
    return EpisodeSampler(ds, **{**args, **kw})


def test_episode_sampler_contract(demo):
    records, indexes = demo
    ds = RefDetFrames(records, indexes, S, SUP)
    sampler = _sampler(ds)
    episodes = list(sampler)
    assert len(episodes) == len(sampler) == 6
    uses = np.zeros(3, int)
    for ep in episodes:
        assert sorted({it.slot for it in ep}) == [0, 1]
        videos = {}
        for it in ep:
            videos.setdefault(it.slot, set()).add(ds.items[it.index][0])
        assert all(len(v) == 1 for v in videos.values()) and len({min(v) for v in videos.values()}) == 2
        for slot, (v,) in videos.items():
            uses[v] += 1
            mine = [it for it in ep if it.slot == slot]
            ann, bg = ds.video_items[v]
            assert sum(it.index in ann for it in mine) == 3 and sum(it.index in bg for it in mine) == 2
            assert len({it.index for it in mine}) == 5
            assert [it.support for it in mine] == [True] + [False] * 4
            assert len({it.view for it in mine}) == 1 and 0 <= mine[0].view < 3
    assert uses.max() - uses.min() <= 1                 # videos dealt from permutations: equal use
    assert list(_sampler(ds)) == episodes                # same seed and epoch: same episodes
    later = _sampler(ds)
    later.set_epoch(1)
    assert list(later) != episodes
    ranks = [list(_sampler(ds, world_size=2, rank=r)) for r in (0, 1)]
    assert [len(r) for r in ranks] == [3, 3] and ranks[0] + ranks[1] != episodes
    assert [ep for pair in zip(*ranks) for ep in pair] == episodes    # disjoint shards of the same epoch
    few = list(_sampler(ds, n_query=1000, n_background=0, n_way=5))[0]
    assert len({it.slot for it in few}) == 3                          # n_way capped at the 3 videos
    assert len(few) == len(ds) - 3 * 4                                # every annotated frame, no background


def test_permute_colours_swaps_frame_and_references_alike(demo):
    records, indexes = demo
    ds = RefDetFrames(records, indexes, S, SUP, augment_views=3)
    assert all(it.colour == 0 for ep in _sampler(ds) for it in ep)      # off by default
    episodes = list(_sampler(ds, permute_colours=True, n_episodes=12))
    for ep in episodes:                                                 # one colour per video per episode
        assert all(len({it.colour for it in ep if it.slot == s}) == 1 for s in {it.slot for it in ep})
    assert len({it.colour for ep in episodes for it in ep}) >= 4
    # the same item under order (2, 0, 1): frame and references are the plain ones with channels reordered
    c = COLOUR_PERMUTATIONS.index((2, 0, 1))
    plain, swapped = ds[EpisodeItem(0, 0, 1, True)], ds[EpisodeItem(0, 0, 1, True, c)]
    for a, b in ((plain["image"], swapped["image"]), (plain["support"][0], swapped["support"][0])):
        assert torch.allclose(_unnormalize(b), _unnormalize(a)[[2, 0, 1]], atol=1e-5)
        assert not torch.allclose(a, b, atol=0.05)
    assert torch.equal(plain["boxes"], swapped["boxes"])
    assert (plain["support_key"], swapped["support_key"]) == (f"{records[0].video_id}@1",
                                                              f"{records[0].video_id}@1c{c}")


def test_collate_episode(demo):
    records, indexes = demo
    ds = RefDetFrames(records, indexes, S, SUP, augment_views=3)
    ep = list(_sampler(ds, n_background=1))[0]
    items = [ds[it] for it in ep]
    batch = collate_episode(items)
    B = len(ep)
    assert batch["images"].shape == (B, 3, S, S) and batch["boxes"].shape == (B, 1, 4)
    assert batch["box_mask"].tolist() == [[it["boxes"].shape[0] == 1] for it in items]
    assert batch["box_mask"].sum() == 6 and torch.equal(batch["boxes"][~batch["box_mask"]], torch.zeros(2, 4))
    assert batch["query_video"].tolist() == [it.slot for it in ep]
    assert batch["support"].shape == (2, 3, 3, SUP, SUP)
    firsts = [it for it in ep if it.support]
    names = [records[ds.items[it.index][0]].video_id for it in firsts]
    assert batch["videos"] == names and batch["support_keys"] == [f"{n}@{it.view}" for n, it in zip(names, firsts)]
    assert torch.equal(batch["support"][1], load_support(records[ds.items[firsts[1].index][0]], SUP, firsts[1].view, 3))
    assert batch["keys"] == [it["key"] for it in items] and batch["bad"] == []

    items[1] = {"bad": ("x/1", "unreadable_image"), "slot": items[1]["slot"]}
    assert collate_episode(items)["images"].shape[0] == B - 1 and collate_episode(items)["bad"] == [("x/1", "unreadable_image")]
    # a video whose reference photos fail loses its queries; the other video's rows are renumbered
    broken = [dict(it) for it in items]
    first = broken[0]
    del first["support"], first["support_key"]
    first["support_bad"] = ("img_1.jpg", "unreadable_image")
    out = collate_episode(broken)
    assert out["query_video"].tolist() == [0] * 4 and out["videos"] == names[1:]
    assert ("img_1.jpg", "unreadable_image") in out["bad"]
    assert collate_episode([{"bad": ("a/1", "r"), "slot": 0}]) == {"bad": [("a/1", "r")]}
    # several boxes in a frame: padded to the largest
    many = dict(items[0], boxes=torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8], [1, 1, 9, 9]]))
    out = collate_episode([many] + items[2:])
    assert out["boxes"].shape[1:] == (3, 4) and out["box_mask"].sum(1).tolist()[:2] == [3, 1]


def test_episode_loader(demo):
    records, indexes = demo
    ds = RefDetFrames(records, indexes, S, SUP, augment_views=2, augment=True)
    sampler = _sampler(ds, augment_views=2)
    batches = list(DataLoader(ds, batch_sampler=sampler, collate_fn=collate_episode, num_workers=0))
    assert len(batches) == 6 and all(b["images"].shape[0] == 10 and b["support"].shape[0] == 2 for b in batches)


def _chunks(records, **kw):
    clips = VideoClips(records, S, SUP, **kw)
    return [c for c in clips]


def test_video_clips(demo, tmp_path):
    records, _ = demo
    chunks = _chunks(records, chunk=8)
    assert [c["video_id"] for c in chunks] == [r.video_id for r in records for _ in range(4)]
    for k, r in enumerate(records):
        mine = chunks[4 * k:4 * k + 4]
        assert [f for c in mine for f in c["frames"]] == list(range(30))
        assert [c["images"].shape[0] for c in mine] == [8, 8, 8, 6] and mine[0]["images"].shape[1:] == (3, S, S)
        assert [c["first"] for c in mine] == [True, False, False, False]
        assert [c["last"] for c in mine] == [False, False, False, True]
        assert torch.equal(mine[0]["support"], load_support(r, SUP)) and mine[1]["support"] is None
        assert [c["num_frames_total"] for c in mine] == [None, None, None, 30]
        assert mine[0]["scale"] == 0.5 and mine[0]["orig_size"] == (96, 128)
    strided = _chunks(records[:1], chunk=16, stride=4)
    assert len(strided) == 1 and strided[0]["frames"] == [0, 4, 8, 12, 16, 20, 24, 28] and strided[0]["last"]
    shards = [[c["video_id"] for c in _chunks(records, chunk=30, rank=r, world_size=2)] for r in (0, 1)]
    assert shards == [[records[0].video_id, records[2].video_id], [records[1].video_id]]
    loaded = list(DataLoader(VideoClips(records, S, SUP, chunk=8), batch_size=None, num_workers=2))
    assert sorted((c["video_id"], c["frames"][0]) for c in loaded) == sorted((c["video_id"], c["frames"][0]) for c in chunks)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(3000))
    bad = VideoRecord("broken", str(broken), records[0].reference_paths)
    assert _chunks([bad]) == [{"bad": [("broken", "unreadable_video")]}]   # a batch with no usable sample


def test_video_truth(demo):
    rec = demo[0][0]
    truth = video_truth(rec)
    assert sorted(truth) == sorted(rec.boxes) and all(truth[f] == [list(b) for b in rec.boxes[f]] for f in truth)


def test_no_annotated_frame_to_train_on_is_one_data_error():
    """Before: a ValueError traceback from the sampler."""
    from types import SimpleNamespace

    from src.errors import DataError

    frames = SimpleNamespace(video_items=[([], [0, 1]), ([], [2])])     # only background frames cached
    with pytest.raises(DataError, match="nothing to train on"):
        EpisodeSampler(frames, n_way=2, n_query=2, n_background=1, n_episodes=4)


def test_a_huge_reference_photo_is_decoded_near_the_size_it_is_used_at(tmp_path, monkeypatch):
    """An 8000 px phone photo as a reference: decoded at reduced scale (before: in full, every
    episode, most of an epoch's time); small photos decode exactly as before."""
    import src.data.refdet as R
    from src.data import images

    big = tmp_path / "big.jpg"
    Image.new("RGB", (4096, 3072), (120, 80, 40)).save(big, quality=80)
    small = tmp_path / "small.jpg"
    Image.new("RGB", (160, 120), (10, 200, 30)).save(small)
    decoded = []
    real = images.load_rgb

    def spy(path, *args, **kwargs):
        out = real(path, *args, **kwargs)
        decoded.append((os.path.basename(path), out.size))
        return out

    monkeypatch.setattr(R, "load_rgb", spy)
    record = VideoRecord("v", str(tmp_path / "none.mp4"), [str(big), str(small), str(small)])
    support = R.load_support(record, 64)
    assert support.shape == (3, 3, 64, 64)
    sizes = dict(decoded)
    assert sizes["big.jpg"] == (2048, 1536)                  # 1/2 scale: still >= 1024 on both sides
    assert sizes["small.jpg"] == (160, 120)
    assert torch.allclose(support[1], R.load_support(VideoRecord("v", "", [str(small)] * 3), 64)[0])


@pytest.mark.parametrize("how", ["capped_cache", "fast_decode"])
def test_smaller_stored_or_decoded_frames_give_the_same_items(demo, tmp_path, how):
    """A cache capped at the model's size, or 1/2-scale decoding of the full one: same boxes and scale,
    the same letterboxed pixels within JPEG tolerance (at 64x48 the demo's sharp edges differ by up to
    62 in a pixel or two: a q90 JPEG of the small frame against a resize of the big one)."""
    records, indexes = demo
    full = RefDetFrames(records, indexes, S, SUP)
    if how == "capped_cache":
        small = ensure_frame_cache(records, str(tmp_path / "cache64"), background_frames=4, seed=0,
                                   log_progress=False, max_side=S)
        ds = RefDetFrames(records, small, S, SUP)
    else:
        ds = RefDetFrames(records, indexes, S, SUP, fast_decode=True)
        assert load_rgb(ds.frame_path(0), longer_side=ds.decode_longer_side).size == (64, 48)
    for i in (0, ds.video_items[1][0][0], ds.video_items[1][1][0]):
        a, b = full[i], ds[i]
        assert a["key"] == b["key"] and a["scale"] == b["scale"] == 0.5
        torch.testing.assert_close(a["boxes"], b["boxes"])
        diff = (_unnormalize(a["image"]) - _unnormalize(b["image"])).abs() * 255
        assert diff.mean() < 3 and diff.max() < 100
