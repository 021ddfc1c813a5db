"""Flickr30k Entities reader on hand-written files in the real format: exact phrases and boxes, several
boxes per entity, one box shared by two entities, nobndbox and scene entities, nested brackets and odd
spacing, and bad input counted (or a clear error for a missing split file or folder)."""
import pytest

from src.errors import DataError
from src.data.flickr30k import parse_caption, read_grounding_split
from src.data.loading import DataWarnings

XML = """<annotation>
  <filename>{id}.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object><name>1</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>110</xmax><ymax>220</ymax></bndbox></object>
  <object><name>1</name><bndbox><xmin>200</xmin><ymin>30</ymin><xmax>260</xmax><ymax>200</ymax></bndbox></object>
  <object><name>2</name><name>5</name><bndbox><xmin>300</xmin><ymin>100</ymin><xmax>520</xmax><ymax>300</ymax></bndbox></object>
  <object><name>3</name><nobndbox>1</nobndbox></object>
  <object><name>4</name><scene>1</scene></object>
  <object><name>6</name><bndbox><xmin>50</xmin><ymin>50</ymin><xmax>50</xmax><ymax>90</ymax></bndbox></object>
</annotation>
"""
CAPTIONS = [
    "[/EN#1/people Two  men] in [/EN#2/clothing/other blue [striped] shirts] stand near [/EN#3/other a wall] .",
    "[/EN#4/scene A street] with [/EN#3/other nothing boxed]",        # no boxed phrase: skipped
    "[/EN#1/people Men [without a closing bracket",                   # bad markup: skipped
    "  [/EN#5/clothing a shirt]   and [/EN#6/other a pole]  ",        # entity 6's box has zero area
]


@pytest.fixture
def dataset(tmp_path):
    for folder in ("flickr30k_images", "Annotations", "Sentences"):
        (tmp_path / folder).mkdir()
    (tmp_path / "Annotations" / "100.xml").write_text(XML.format(id=100))
    (tmp_path / "Sentences" / "100.txt").write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    (tmp_path / "Annotations" / "200.xml").write_text("<annotation><size><width>x</width>")  # broken
    (tmp_path / "Sentences" / "200.txt").write_text("[/EN#1/people A man]\n")
    (tmp_path / "train.txt").write_text("100\n200\n")
    return tmp_path


def test_parse_caption_exact_phrases():
    caption, phrases = parse_caption(CAPTIONS[0])
    assert caption == "Two men in blue [striped] shirts stand near a wall ."
    assert [(p.text, p.entity_id, p.types, p.first_word) for p in phrases] == [
        ("Two men", "1", ["people"], 0), ("blue [striped] shirts", "2", ["clothing", "other"], 3),
        ("a wall", "3", ["other"], 8)]
    for bad in ("[/EN#1/people a man", "a man] walks", "[/EN#/people a man]", "[/EN#7/people ]"):
        with pytest.raises(ValueError, match="column"):
            parse_caption(bad)


def test_reader_exact_samples_and_counted_skips(dataset):
    warnings = DataWarnings()
    samples = read_grounding_split(str(dataset), "train", warnings)
    assert [(s.image_id, s.caption) for s in samples] == [
        ("100", "Two men in blue [striped] shirts stand near a wall ."), ("100", "a shirt and a pole")]
    first, second = samples
    assert [p.text for p in first.phrases] == ["Two men", "blue [striped] shirts"]  # "a wall" has no box
    assert first.boxes == [[[10, 20, 110, 220], [200, 30, 260, 200]],             # two boxes, one entity
                           [[300, 100, 500, 300]]]                                # clipped to width 500
    assert [p.text for p in second.phrases] == ["a shirt"] and second.boxes == [[[300, 100, 500, 300]]]
    assert warnings.counts() == {"bad_annotation": 1, "bad_markup": 1, "box_outside": 2, "no_box": 4,
                                 "no_boxed_phrase": 1, "zero_area_box": 1}


def test_missing_split_file_or_folder_is_a_clear_error(dataset):
    with pytest.raises(DataError, match="val.txt: split file not found"):
        read_grounding_split(str(dataset), "valid", DataWarnings())
    (dataset / "Sentences" / "100.txt").unlink()
    (dataset / "Sentences" / "200.txt").unlink()
    (dataset / "Sentences").rmdir()
    with pytest.raises(DataError, match="Sentences: folder not found"):
        read_grounding_split(str(dataset), "train", DataWarnings())


def test_a_nan_coordinate_and_a_resized_image_are_counted(dataset):
    """A ``nan`` box is dropped as ``bad_box`` (before: kept, then whole batches were skipped as
    non-finite losses); an image resized after annotation gets its boxes rescaled, as
    ``size_mismatch`` (before: wrong boxes, no warning)."""
    from PIL import Image

    xml = dataset / "Annotations" / "100.xml"
    xml.write_text(XML.format(id=100).replace("<xmin>200</xmin>", "<xmin>nan</xmin>"))
    Image.new("RGB", (250, 187)).save(dataset / "flickr30k_images" / "100.jpg")   # half of the XML's 500x375
    warnings = DataWarnings()
    first, second = read_grounding_split(str(dataset), "train", warnings)
    sx, sy = 250 / 500, 187 / 375
    assert first.boxes == [[[10 * sx, 20 * sy, 110 * sx, 220 * sy]],              # the nan box is gone
                           [[300 * sx, 100 * sy, 250, 300 * sy]]]                 # clipped to the real width
    counts = warnings.counts()
    assert counts["bad_box"] == 1 and counts["size_mismatch"] == 1
