"""bench.startup --quick on tiny inputs: every section's table holds its cold and cached rows with positive
figures, and the counts are the inputs': the LMDB holds every line built, the Flickr index read finds every
generated image, the frame cache every decoded frame's JPEG (no timed assertions)."""
from __future__ import annotations

import re

from bench import startup
from tests.bench.test_data_pipeline import tables


def number(cell: str, before: str) -> int:
    """The integer just before ``before`` in a table cell: ``number("200 lines in", "lines") == 200``."""
    m = re.search(rf"(\d+) {before}", cell)
    assert m, (cell, before)
    return int(m.group(1))


def test_quick_run_measures_every_start_up_with_the_inputs_counts(tmp_path, capsys):
    out = tmp_path / "t.md"
    assert startup.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out and "python -m bench.startup --quick" in text
    assert "CPU (" in text and "threads)" in text
    t = tables(text)
    ocr, ovd, det = t["1"], t["2"], t["3"]
    assert set(ocr) == {"LMDB build, cold", "open, cold", "open, cached"}
    assert set(ovd) == {"index read, cold", "index read, cached"}
    assert set(det) == {"full size, cold", "full size, warm", "max_side 640, cold", "max_side 640, warm"}
    for row in (*ocr.values(), *ovd.values(), *det.values()):
        assert float(row["seconds"]) > 0
        peak, start = re.fullmatch(r"(\d+) MiB \((\d+)\)", row["peak RSS (at start)"]).groups()
        assert int(peak) >= int(start) > 0

    # --quick: 200 OCR lines, 100 Flickr images (5 captions each), 1 video of 960x540 x 8 frames
    build = ocr["LMDB build, cold"]["output"]
    assert number(build, "lines") == 200 and number(build, r"images\) in the LMDB") == 200
    assert float(re.search(r"([\d.]+) MiB", build).group(1)) > 0
    for name in ("open, cold", "open, cached"):
        assert number(ocr[name]["output"], "lines indexed") == 200
    for row in ovd.values():
        assert number(row["output"], "images") == 100 and number(row["output"], "captions") == 500
        assert float(row["rate"].split()[0]) > 0
    for cap, size in (("full size", "960x540"), ("max_side 640", "640x360")):
        cold, warm = det[f"{cap}, cold"]["output"], det[f"{cap}, warm"]["output"]
        written = number(cold, "JPEGs written")
        assert number(cold, "frames decoded") == 8 and size in cold
        # every annotated frame + min(background_frames, the others): all 8 frames of so short a video
        assert written == number(cold, "annotated") + number(cold, "background") == number(cold, "on disk") == 8
        assert number(warm, "frames decoded") == 0 and number(warm, "JPEGs written") == 0
        assert det[f"{cap}, warm"]["rate"] == "1 of 1 videos cached"
