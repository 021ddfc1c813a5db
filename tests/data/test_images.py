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
