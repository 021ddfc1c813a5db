"""bench.data_pipeline --quick on tiny inputs: both paths' tables hold today's side and the improved ones
with figures, and the improved outputs agree with today's within JPEG tolerance (no timed assertions)."""
from __future__ import annotations

from bench import data_pipeline


def tables(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """``section number -> side -> column -> cell`` of the printed tables."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    section, header = None, None
    for line in text.splitlines():
        if line.startswith("### "):
            section, header = line[4], None
            out[section] = {}
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            else:
                out[section][cells[0]] = dict(zip(header, cells))
    return out


def test_quick_run_has_both_paths_and_agreeing_outputs(tmp_path, capsys):
    out = tmp_path / "t.md"
    assert data_pipeline.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out and "python -m bench.data_pipeline --quick" in text
    t = tables(text)
    cls, det = t["1"], t["2"]
    assert "today (full decode)" in cls and "fast_decode (decoded at 320x240)" in cls
    assert "today (1080p cache)" in det and "capped cache (640) (640x360 JPEGs)" in det
    assert "full cache + fast_decode (decoded at 960x540)" in det
    for side in (*cls.values(), *det.values()):
        assert float(side["images/s per worker"]) > 0 and side["vs today"].endswith(("x", "%)"))
    for side, (max_bound, mean_bound) in {**{k: (40, 3) for k in cls if k.startswith("fast")},
                                          **{k: (100, 3) for k in det if not k.startswith("today")}}.items():
        row = cls.get(side) or det[side]
        top, mean = (float(v) for v in row["max / mean abs diff vs today (uint8)"].split(" / "))
        assert top < max_bound and mean < mean_bound, (side, top, mean)
    assert "OCR LMDB build" in text and "frame cache, capped (640x360)" in text
