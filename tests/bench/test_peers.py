"""``python -m bench.peers --quick`` where the peers are not installed (CI): it exits 0 and says, per
row, that the peer is missing and how to install it. Rows whose peer is installed (a bench environment)
are left out here: they run the real models."""
import importlib.util

from bench import peers


def test_missing_peers_give_skipped_rows(capsys):
    missing = [row for row, peer in (("ocr", "vietocr"), ("beam", "vietocr"), ("train", "vietocr"),
                                     ("detector", "ultralytics")) if importlib.util.find_spec(peer) is None]
    assert peers.main(["--quick", "--only", *missing, "classification"]) == 0
    out = capsys.readouterr().out
    assert "| row | input | ours | peer | speed-up (peer / ours) | outputs |" in out
    assert "skipped: timm's train.py not available offline" in out
    for row in missing:
        peer = "ultralytics" if row == "detector" else "vietocr"
        assert f"skipped: {peer} not installed" in out and peers.INSTALL[peer] in out
