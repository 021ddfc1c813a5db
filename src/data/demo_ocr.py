"""Synthetic Vietnamese text lines in VietOCR's annotation format, for ``train_vietocr.py --demo``.

Each line is 1-4 words drawn from a word list written for this project (common Vietnamese words
covering most tone marks and vowel forms, plus numbers and punctuation), rendered with one of the
DejaVu fonts that matplotlib ships (sans, serif, mono; regular, bold, italic), at a random size,
ink and paper colour (sometimes light on dark), with slight rotation, blur and sensor noise.
Written once under ``root`` as ``images/<split>/NNNNN.png`` with ``train.txt``, ``valid.txt`` and
``test.txt`` (``relative/path<TAB>label``), and reused while its parameters match.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

VERSION = 1
WORDS = (
    "anh em chị bạn người nhà cửa sông núi biển trời đất nước lửa cây lá hoa quả trái gạo cơm "
    "lúa ruộng đồng làng phố chợ đường xe đạp máy bay tàu thuyền học sinh thầy cô giáo trường lớp "
    "sách vở bút mực giấy bảng chữ số đọc viết nói nghe nhìn thấy đi về đến ở ăn uống ngủ làm "
    "việc chơi yêu thương nhớ quên vui buồn mừng giận sợ hãi khỏe mạnh yếu đau ốm thuốc bệnh viện "
    "bác sĩ công nhân nông dân kỹ sư gia đình cha mẹ ông bà con cháu mùa xuân hạ thu đông sáng "
    "trưa chiều tối đêm ngày tháng năm tuần giờ phút hôm nay mai qua rất lắm quá nhiều ít lớn "
    "nhỏ cao thấp dài ngắn mới cũ đẹp xấu tốt trắng đen đỏ vàng xanh tím nâu hồng Việt Nam Hà Nội "
    "Huế Đà Nẵng Sài Gòn Cần Thơ tiếng văn hóa lịch sử địa lý toán khoa tự nhiên xã hội kinh tế "
    "chính trị pháp luật quốc gia thế giới hòa bình độc lập hạnh phúc được những các của và với "
    "cho trong ngoài trên dưới giữa trước sau không có là đã đang sẽ vẫn còn cũng chỉ mỗi"
).split()
NUMBERS = ("0", "1", "2", "3", "5", "7", "9", "10", "12", "24", "30", "100", "2024", "15/8", "3,5", "1.000")
PUNCT = (",", ".", ":", "!", "?", ";", "-")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")


def font_dir() -> str:
    import matplotlib
    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


def random_text(rng: np.random.Generator) -> str:
    words = []
    for _ in range(int(rng.integers(1, 5))):
        r = rng.random()
        words.append(str(rng.choice(NUMBERS)) if r < 0.08 else str(rng.choice(WORDS)))
    if rng.random() < 0.15:
        words[0] = words[0][0].upper() + words[0][1:]
    text = " ".join(words)
    if rng.random() < 0.2:
        text += str(rng.choice(PUNCT))
    return text


def render_line(rng: np.random.Generator, text: str, fonts: list[ImageFont.FreeTypeFont]) -> Image.Image:
    font = fonts[int(rng.integers(len(fonts)))]
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 10)), int(rng.integers(3, 9))
    w, h = right - left + 2 * pad_x, bottom - top + 2 * pad_y
    light = rng.random() > 0.15  # mostly dark ink on light paper, sometimes inverted
    paper = rng.uniform(190, 255, 3) if light else rng.uniform(0, 70, 3)
    ink = rng.uniform(0, 80, 3) if light else rng.uniform(180, 255, 3)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in paper))
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=font, fill=tuple(int(c) for c in ink))
    img = img.rotate(float(rng.uniform(-2, 2)), resample=Image.BICUBIC, expand=False, fillcolor=tuple(int(c) for c in paper))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9))))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(2, 10), (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def ensure_demo_ocr(root: str, counts: tuple[int, int, int] = (4000, 400, 400), seed: int = 0) -> dict[str, str]:
    """Write (once) the demo lines; returns ``{"train": txt, "valid": txt, "test": txt}`` paths."""
    files = {split: os.path.join(root, f"{split}.txt") for split in ("train", "valid", "test")}
    stamp = os.path.join(root, ".complete")
    key = json.dumps({"version": VERSION, "counts": list(counts), "seed": seed})
    if os.path.isfile(stamp) and open(stamp, encoding="utf-8").read() == key:
        return files
    rng = np.random.default_rng(seed)
    fonts = [ImageFont.truetype(os.path.join(font_dir(), name), size)
             for name in FONTS for size in (18, 22, 26, 30)]
    for (split, path), count in zip(files.items(), counts):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        lines = []
        for i in range(count):
            text = random_text(rng)
            rel = f"images/{split}/{i:05d}.png"
            render_line(rng, text, fonts).save(os.path.join(root, rel))
            lines.append(f"{rel}\t{text}\n")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    with open(stamp, "w", encoding="utf-8") as f:
        f.write(key)
    return files
