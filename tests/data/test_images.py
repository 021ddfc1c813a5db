import numpy as np
import pytest
from PIL import Image

from src.data.images import BadImage, load_rgb, load_rgb_tensor


def test_modes_become_rgb(tmp_path):
    cases = {
        "gray.png": Image.fromarray(np.full((5, 6), 200, np.uint8), "L"),
        "rgba.png": Image.fromarray(np.zeros((5, 6, 4), np.uint8), "RGBA"),  # fully transparent -> white
        "pal.png": Image.fromarray(np.full((5, 6, 3), 30, np.uint8)).convert("P", palette=Image.ADAPTIVE),
        "deep.png": Image.fromarray(np.full((5, 6), 65535, np.uint16)),  # 16-bit white
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
    assert load_rgb(str(tmp_path / "gray.png")).getpixel((0, 0)) == (200, 200, 200)
    assert load_rgb(str(tmp_path / "rgba.png")).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(str(tmp_path / "pal.png")).getpixel((0, 0)) == (30, 30, 30)
    assert load_rgb(str(tmp_path / "deep.png")).getpixel((0, 0)) == (255, 255, 255)
    t = load_rgb_tensor(str(tmp_path / "gray.png"))
    assert t.shape == (3, 5, 6) and t.dtype.is_floating_point is False


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(str(tmp_path / "rot.jpg")).size == (10, 20)


@pytest.mark.parametrize("kind", ["missing_file", "empty_file", "unreadable_image"])
def test_bad_images_raise_with_reason(tmp_path, kind):
    path = tmp_path / "x.jpg"
    if kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "unreadable_image":
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(BadImage) as err:
        load_rgb(str(path))
    assert err.value.reason == kind


def _jpeg(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
    return str(path)


@pytest.mark.parametrize("w,h,side,decoded", [
    (640, 480, 224, (320, 240)), (1920, 1080, 640, (960, 540)), (1000, 300, 224, (250, 75)),
    (300, 1000, 100, (38, 125)), (1281, 100, 640, (641, 50)), (640, 480, 64, (80, 60)),
    (447, 300, 224, (447, 300)), (128, 96, 64, (64, 48))])
def test_longer_side_decodes_jpegs_smaller_never_below_the_target(tmp_path, w, h, side, decoded):
    img = load_rgb(_jpeg(tmp_path / "x.jpg", w, h), longer_side=side)
    assert img.size == decoded and max(img.size) >= side and img.mode == "RGB"
    assert tuple(load_rgb_tensor(str(tmp_path / "x.jpg"), side).shape) == (3, decoded[1], decoded[0])
    assert load_rgb(str(tmp_path / "x.jpg")).size == (w, h)                    # off by default


@pytest.mark.parametrize("w,h,side,fitted", [
    (640, 480, 224, (224, 168)), (1920, 1080, 640, (640, 360)), (300, 1000, 100, (30, 100)),
    (447, 300, 224, (447, 300)), (128, 96, 64, (64, 48))])
def test_fit_resizes_a_reduced_image_to_the_longer_side_and_leaves_others(tmp_path, w, h, side, fitted):
    """fit: an image big enough for reduced decoding arrives with its longer side exactly ``side``; one
    under twice ``side`` (447x300 for 224) comes back as decoded, pixel for pixel."""
    path = _jpeg(tmp_path / "x.jpg", w, h)
    img = load_rgb(path, longer_side=side, fit=True)
    assert img.size == fitted and img.mode == "RGB"
    if max(w, h) < 2 * side:
        assert np.array_equal(np.asarray(img), np.asarray(load_rgb(path)))


def test_longer_side_leaves_other_formats_alone(tmp_path):
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(tmp_path / "x.png")
    assert load_rgb(str(tmp_path / "x.png"), longer_side=64).size == (640, 480)


def test_reduced_decoding_gives_the_same_224_input_within_jpeg_tolerance(tmp_path):
    """A 640x480 leaf photo through the classification base transform: full decode vs 1/2-scale decode.
    Measured on these photos: max 6-10, mean 0.4-0.5 (uint8 scale)."""
    from src.data.classification import base_transform
    from src.data.demo_classification import CLASSES, render_leaf_image

    rng = np.random.default_rng(0)
    base = base_transform(224)
    for k, cls in enumerate(CLASSES[:2]):
        path = str(tmp_path / f"{k}.jpg")
        render_leaf_image(rng, cls, 640).crop((0, 80, 640, 560)).save(path, quality=90)
        full = base(load_rgb_tensor(path)).int()
        for fit in (False, True):     # fit: resized in PIL to 224x168, then only padded
            fast = base(load_rgb_tensor(path, longer_side=224, fit=fit)).int()
            assert fast.shape == full.shape == (3, 224, 224)
            diff = (full - fast).abs()
            assert diff.float().mean() < 2 and diff.max() < 40
