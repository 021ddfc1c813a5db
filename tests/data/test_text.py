"""Text inputs that are not UTF-8: one line naming the file, line and column (a whole-file input), or a
counted skip (one caption file); before, a UnicodeDecodeError traceback ended the run."""
import pytest

from src.data.aeroeyes import read_annotations as read_aeroeyes_annotations
from src.data.classification import read_label2id, read_metadata
from src.data.flickr30k import read_split_ids
from src.data.loading import DataWarnings
from src.data.ocr import Vocab, read_annotations
from src.data.text import NotUTF8, read_text
from src.errors import DataError

LATIN1 = "ảnh/1.png\tđường\nảnh/2.png\tnhà\n".encode("utf-8") + "caf\xe9\n".encode("latin-1")


def test_read_text_names_the_line_and_column_of_the_first_bad_byte(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(LATIN1)
    with pytest.raises(NotUTF8) as info:
        read_text(str(path), "annotation file")
    assert str(info.value) == (f"{path}:3:4: the annotation file is not UTF-8 text (byte 0xe9); save it as UTF-8")
    assert isinstance(info.value, DataError) and info.value.reason == "not_utf8"
    path.write_bytes("xin chào\n".encode("utf-8"))
    assert read_text(str(path), "x") == "xin chào\n"


@pytest.mark.parametrize("reader", ["ocr annotation", "vocab", "refdet annotations", "flickr split", "label2id",
                                    "metadata"])
def test_every_whole_file_text_input_gives_one_line(tmp_path, reader):
    path = tmp_path / "input.txt"
    path.write_bytes(LATIN1)
    call = {"ocr annotation": lambda: read_annotations(str(path)),
            "vocab": lambda: Vocab.from_file(str(path)),
            "refdet annotations": lambda: read_aeroeyes_annotations(str(path)),
            "flickr split": lambda: read_split_ids(str(tmp_path), "input"),
            "label2id": lambda: read_label2id(str(path)),
            "metadata": lambda: read_metadata(str(path), {"a": 0})}[reader]
    with pytest.raises(DataError) as info:
        call()
    assert str(info.value).startswith(f"{path}:3:4: ") and "\n" not in str(info.value)


def test_one_caption_file_that_is_not_utf8_is_a_counted_skip(tmp_path):
    from src.data.demo_ovd import ensure_demo_ovd
    from src.data.flickr30k import read_grounding_split

    root = ensure_demo_ovd(str(tmp_path / "ovd"), splits={"train": 4, "val": 2})
    first = (tmp_path / "ovd" / "train.txt").read_text().split()[0]
    caption = tmp_path / "ovd" / "Sentences" / f"{first}.txt"
    good = read_grounding_split(root, "train", DataWarnings())
    caption.write_bytes(caption.read_bytes() + "caf\xe9".encode("latin-1"))
    warnings = DataWarnings()
    samples = read_grounding_split(root, "train", warnings)
    assert warnings.counts() == {"not_utf8": 1}
    assert {s.image_id for s in samples} == {s.image_id for s in good} - {first}
