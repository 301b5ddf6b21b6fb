"""PASCAL VOC annotation XML, split files, data set layouts and devkit result files."""
from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from nocdet.data.sample import Detections, Sample
from nocdet.data.voc import (
    VOC_CLASSES,
    VOC_SIMILARITY_GROUPS,
    find_voc_root,
    parse_voc_annotation,
    read_voc,
    read_voc_results,
    read_voc_splits,
    write_voc_annotation,
    write_voc_results,
    write_voc_split,
)
from nocdet.errors import DataError


def _xml(objects: str, size: str = "<size><width>500</width><height>375</height><depth>3</depth></size>",
         declaration: str = "") -> str:
    return f"{declaration}<annotation><folder>VOC2007</folder><filename>000005.jpg</filename>{size}{objects}</annotation>"


def _obj(name="dog", box=("48", "240", "195", "371"), difficult="<difficult>0</difficult>") -> str:
    fields = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box) if v is not None)
    return f"<object><name>{name}</name><pose>Left</pose><truncated>1</truncated>{difficult}<bndbox>{fields}</bndbox></object>"


def _write(tmp_path: Path, text: str | bytes, name: str = "a.xml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


# ------------------------------------------------------------------------ parsing, by hand

def test_hand_written_annotation_converts_one_based_inclusive_boxes(tmp_path):
    path = _write(tmp_path, _xml(_obj("dog", ("48", "240", "195", "371"))
                                 + _obj("person", ("8", "12", "352", "498"), "<difficult>1</difficult>")
                                 + _obj("chair", ("1.5", "2", "10.25", "20"), "")))
    with pytest.warns(UserWarning, match="clipped"):
        ann = parse_voc_annotation(path, VOC_CLASSES)
    assert (ann.width, ann.height, ann.filename) == (500, 375, "000005.jpg")
    assert ann.names == ["dog", "person", "chair"]
    np.testing.assert_array_equal(ann.boxes[0], [47, 239, 195, 371])  # xmin - 1, ymin - 1, xmax, ymax
    np.testing.assert_array_equal(ann.boxes[2], [0.5, 1, 10.25, 20])  # float coordinates allowed
    np.testing.assert_array_equal(ann.difficult, [False, True, False])  # missing <difficult> = 0
    # person ymax 498 > height 375: clipped to the image, and reported
    np.testing.assert_array_equal(ann.boxes[1], [7, 11, 352, 375])
    assert ann.clipped == 1
    sample = ann.to_sample("000005", tmp_path / "000005.jpg", VOC_CLASSES)
    np.testing.assert_array_equal(sample.labels, [12, 15, 9])  # dog, person, chair in devkit order


def test_partly_outside_box_is_clipped_with_a_warning(tmp_path):
    path = _write(tmp_path, _xml(_obj("dog", ("0", "1", "501", "375"))))
    with pytest.warns(UserWarning, match="1 box.*clipped"):
        ann = parse_voc_annotation(path, None)
    np.testing.assert_array_equal(ann.boxes, [[0, 0, 500, 375]])


def test_image_without_objects_is_valid(tmp_path):
    ann = parse_voc_annotation(_write(tmp_path, _xml("")), VOC_CLASSES)
    assert ann.boxes.shape == (0, 4) and ann.difficult.shape == (0,) and ann.names == []
    sample = ann.to_sample("x", "x.jpg", VOC_CLASSES)
    assert sample.labels.shape == (0,)


def test_duplicate_objects_are_kept_and_reported(tmp_path):
    path = _write(tmp_path, _xml(_obj() + _obj()))
    with pytest.warns(UserWarning, match="1 duplicate"):
        ann = parse_voc_annotation(path, VOC_CLASSES)
    assert len(ann.boxes) == 2 and ann.duplicates == 1


def test_missing_size_is_read_from_the_image(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "img.jpg")
    path = _write(tmp_path, _xml(_obj(box=("1", "1", "10", "10")), size=""))
    ann = parse_voc_annotation(path, VOC_CLASSES, image_path=tmp_path / "img.jpg")
    assert (ann.width, ann.height) == (64, 48)
    with pytest.raises(DataError, match="no <size>") as err:
        parse_voc_annotation(path, VOC_CLASSES, image_path=tmp_path / "nothing.jpg")
    assert err.value.path == str(path)
    with pytest.raises(DataError, match="no <size>"):
        parse_voc_annotation(path, VOC_CLASSES)


def test_encoding_follows_the_xml_declaration(tmp_path):
    text = _xml(_obj("café"), declaration='<?xml version="1.0" encoding="ISO-8859-1"?>')
    ann = parse_voc_annotation(_write(tmp_path, text.encode("latin-1")), ["café"])
    assert ann.names == ["café"]
    utf16 = _xml(_obj("café"), declaration='<?xml version="1.0" encoding="UTF-16"?>').encode("utf-16")
    assert parse_voc_annotation(_write(tmp_path, utf16, "b.xml"), ["café"]).names == ["café"]


@pytest.mark.parametrize("text, record, reason", [
    (_xml(_obj(box=("48", None, "195", "371"))), "object 1 (dog)", "missing <ymin>"),
    (_xml(_obj() + _obj(box=("48", "2x", "195", "371"))), "object 2 (dog)", "not a number"),
    (_xml(_obj(box=("48", "nan", "195", "371"))), "object 1 (dog)", "not finite"),
    (_xml(_obj("dragon")), "object 1 (dragon)", "unknown class 'dragon'.*aeroplane, bicycle"),
    (_xml(_obj(box=("200", "240", "195", "371"))), "object 1 (dog)", "inverted box"),
    (_xml(_obj(box=("48", "380", "195", "400"))), "object 1", "wholly outside"),
    (_xml(_obj(difficult="<difficult>yes</difficult>")), "object 1 (dog)", "must be 0 or 1"),
    (_xml("<object><bndbox/></object>"), "object 1", "no <name>"),
    (_xml("<object><name>dog</name></object>"), "object 1 (dog)", "no <bndbox>"),
    (_xml("", size="<size><width>wide</width><height>3</height></size>"), "size", "not a number"),
    ("<annotation>\n<object>\n<name>dog</nam>\n</object></annotation>", "line 3, column", "malformed XML"),
    ("<annotation><filename>\xe9</filename></annotation>".encode("latin-1"), "line 1", "not valid utf-8"),
    ('<?xml version="1.0" encoding="klingon"?><annotation/>', "line 1", "unknown encoding"),
])
def test_bad_annotations_name_file_and_record(tmp_path, text, record, reason):
    path = _write(tmp_path, text)
    with pytest.raises(DataError, match=reason) as err:
        parse_voc_annotation(path, VOC_CLASSES)
    assert err.value.path == str(path)
    assert err.value.record.startswith(record)


def test_to_sample_refuses_a_class_list_without_the_names(tmp_path):
    ann = parse_voc_annotation(_write(tmp_path, _xml(_obj("dog"))), None)
    with pytest.raises(DataError, match="'dog' not in the class list cat") as err:
        ann.to_sample("000005", "000005.jpg", ["cat"])
    assert err.value.record == "image 000005"


def test_wrong_root_element(tmp_path):
    with pytest.raises(DataError, match="expected <annotation>"):
        parse_voc_annotation(_write(tmp_path, "<html/>"), None)


# ------------------------------------------------------------------------------ writing

def test_writer_emits_devkit_xml_with_one_based_integer_boxes(tmp_path):
    sample = Sample("000007", tmp_path / "000007.jpg", 100, 80,
                    [[0, 0, 100, 80], [10.4, 5.6, 20.6, 30.4]], [7, 15], [False, True])
    write_voc_annotation(tmp_path / "w.xml", sample, VOC_CLASSES, folder="VOC2007")
    root = ET.parse(tmp_path / "w.xml").getroot()
    assert root.findtext("folder") == "VOC2007" and root.findtext("filename") == "000007.jpg"
    assert [root.findtext(f"size/{t}") for t in ("width", "height", "depth")] == ["100", "80", "3"]
    assert root.findtext("segmented") == "0"
    objs = root.findall("object")
    assert [o.findtext("name") for o in objs] == ["car", "person"]
    assert [o.findtext("difficult") for o in objs] == ["0", "1"]
    assert all(o.findtext("pose") == "Unspecified" and o.findtext("truncated") == "0" for o in objs)
    boxes = [[o.findtext(f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")] for o in objs]
    # whole image: 1..100 x 1..80; x1 10.4 -> 11, y1 5.6 -> 7, x2 20.6 -> 21, y2 30.4 -> 30
    assert boxes == [["1", "1", "100", "80"], ["11", "7", "21", "30"]]


def test_writer_rejects_bad_labels_and_sub_pixel_boxes(tmp_path):
    bad_label = Sample("a", "a.jpg", 10, 10, [[0, 0, 5, 5]], [21], [False])
    with pytest.raises(DataError, match="outside 1..20"):
        write_voc_annotation(tmp_path / "a.xml", bad_label, VOC_CLASSES)
    tiny = Sample("b", "b.jpg", 10, 10, [[3.4, 3, 3.4, 5]], [1], [False])
    with pytest.raises(DataError, match="less than one pixel"):
        write_voc_annotation(tmp_path / "b.xml", tiny, VOC_CLASSES)
    assert not (tmp_path / "a.xml").exists() and not (tmp_path / "b.xml").exists()


def test_write_then_read_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    x1 = rng.integers(0, 90, 12)
    y1 = rng.integers(0, 60, 12)
    boxes = np.stack([x1, y1, x1 + rng.integers(1, 10, 12), y1 + rng.integers(1, 20, 12)], 1)
    labels = rng.integers(1, 21, 12)
    difficult = rng.random(12) < 0.3
    sample = Sample("000001", tmp_path / "000001.jpg", 100, 80, boxes, labels, difficult)
    write_voc_annotation(tmp_path / "r.xml", sample, VOC_CLASSES)
    back = parse_voc_annotation(tmp_path / "r.xml", VOC_CLASSES).to_sample("000001", sample.path, VOC_CLASSES)
    np.testing.assert_array_equal(back.boxes, sample.boxes)
    np.testing.assert_array_equal(back.labels, sample.labels)
    np.testing.assert_array_equal(back.difficult, sample.difficult)
    assert (back.width, back.height) == (100, 80)


def test_write_voc_split(tmp_path):
    write_voc_split(tmp_path, "val", ["000001", "2008_000002"])
    assert (tmp_path / "ImageSets" / "Main" / "val.txt").read_text() == "000001\n2008_000002\n"
    with pytest.raises(DataError, match="white space"):
        write_voc_split(tmp_path, "bad", ["a b"])


# --------------------------------------------------------------------- layouts and splits

def _make_voc(root: Path, items: dict[str, list[tuple[str, tuple[int, int, int, int]]]], split: str = "trainval",
              ext: str = ".jpg") -> Path:
    """A VOC folder with one 40 x 30 image per id and the given (class, devkit box) objects."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in items.items():
        Image.new("RGB", (40, 30)).save(root / "JPEGImages" / f"{image_id}{ext}")
        objs = "".join(_obj(name, tuple(map(str, box))) for name, box in objects)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            _xml(objs, size="<size><width>40</width><height>30</height><depth>3</depth></size>"))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in items))
    return root


def test_find_voc_root_layouts(tmp_path):
    bare = _make_voc(tmp_path / "bare", {"a": []})
    assert find_voc_root(bare) == bare
    devkit = tmp_path / "VOCdevkit"
    v07 = _make_voc(devkit / "VOC2007", {"a": []})
    assert find_voc_root(devkit) == v07  # the only VOC folder inside
    assert find_voc_root(v07) == v07
    v12 = _make_voc(devkit / "VOC2012", {"b": []})
    assert find_voc_root(devkit, "2012") == v12
    with pytest.raises(DataError, match="several VOC data sets.*VOC2007, VOC2012"):
        find_voc_root(devkit)
    with pytest.raises(DataError, match="no VOC2010 folder"):
        find_voc_root(devkit, "2010")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a VOC folder") as err:
        find_voc_root(tmp_path / "empty")
    assert err.value.path == str(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        find_voc_root(tmp_path / "nowhere")


def test_read_voc_split(tmp_path):
    root = _make_voc(tmp_path / "VOCdevkit" / "VOC2007",
                     {"000001": [("dog", (1, 1, 10, 10))], "000002": [], "000003": [("cat", (5, 6, 40, 30))]},
                     split="test")
    ds = read_voc(tmp_path / "VOCdevkit", "test", year="2007")
    assert ds.name == "VOC2007/test"
    assert ds.classes == list(VOC_CLASSES)
    assert ds.similarity_groups == [list(g) for g in VOC_SIMILARITY_GROUPS]
    assert [s.image_id for s in ds.samples] == ["000001", "000002", "000003"]
    assert ds.samples[0].path == root / "JPEGImages" / "000001.jpg"
    np.testing.assert_array_equal(ds.samples[0].boxes, [[0, 0, 10, 10]])
    np.testing.assert_array_equal(ds.samples[2].labels, [8])  # cat
    assert len(ds.samples[1].boxes) == 0


def test_read_voc_custom_classes_and_similarity_groups(tmp_path):
    root = _make_voc(tmp_path / "shapes", {"s1": [("square", (1, 1, 5, 5)), ("circle", (2, 2, 9, 9))]},
                     ext=".png")
    ds = read_voc(root, "trainval")
    assert ds.classes == ["circle", "square"]  # sorted names found, not VOC
    assert ds.similarity_groups == []
    assert ds.name == "shapes/trainval" and ds.samples[0].path.suffix == ".png"
    np.testing.assert_array_equal(ds.samples[0].labels, [2, 1])
    (root / "similarity_groups.json").write_text(json.dumps([["circle", "square"]]))
    assert read_voc(root, "trainval").similarity_groups == [["circle", "square"]]
    (root / "similarity_groups.json").write_text(json.dumps([["circle", "hexagon"]]))
    with pytest.raises(DataError, match="'hexagon'") as err:
        read_voc(root, "trainval")
    assert err.value.record == "group 0"
    (root / "similarity_groups.json").unlink()
    given = read_voc(root, "trainval", classes=["square", "circle", "triangle"])
    np.testing.assert_array_equal(given.samples[0].labels, [1, 2])
    with pytest.raises(DataError, match="unknown class 'circle'"):
        read_voc(root, "trainval", classes=["square"])


def test_read_voc_split_errors(tmp_path):
    root = _make_voc(tmp_path / "VOC2007", {"000001": [], "000002": []})
    (root / "ImageSets" / "Main" / "dog_trainval.txt").write_text("000001 1\n")
    with pytest.raises(DataError, match="no split 'test'; available splits: trainval$"):
        read_voc(root, "test")
    split_file = root / "ImageSets" / "Main" / "trainval.txt"
    split_file.write_text("000001\n\n000009\n")
    with pytest.raises(DataError, match="'000009' not found") as err:
        read_voc(root, "trainval")
    assert err.value.path == str(split_file) and err.value.record == "line 3"
    (root / "Annotations" / "000002.xml").unlink()
    split_file.write_text("000001\n000002\n")
    with pytest.raises(DataError, match="no annotation") as err:
        read_voc(root, "trainval")
    assert err.value.record == "line 2"
    split_file.write_text("000001\n000001\n")
    with pytest.raises(DataError, match="listed twice") as err:
        read_voc(root, "trainval")
    assert err.value.record == "line 2"


def test_read_voc_reports_repairs_once_per_split(tmp_path):
    root = _make_voc(tmp_path / "v", {"a": [("dog", (0, 1, 10, 10))], "b": [("dog", (1, 1, 41, 10))]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_voc(root, "trainval")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "2 box(es)" in messages[0] and "2 file(s)" in messages[0]


def test_07_plus_12(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    _make_voc(devkit / "VOC2007", {"000001": [("dog", (1, 1, 10, 10))], "000002": []})
    _make_voc(devkit / "VOC2012", {"2008_000001": [("cat", (2, 2, 20, 20))]})
    ds = read_voc_splits([(devkit, "trainval", "2007"), (devkit, "trainval", "2012")])
    assert ds.name == "VOC2007/trainval+VOC2012/trainval"
    assert [s.image_id for s in ds.samples] == ["000001", "000002", "2008_000001"]
    assert ds.classes == list(VOC_CLASSES)
    np.testing.assert_array_equal(ds.samples[2].labels, [8])
    with pytest.raises(DataError, match="in both VOC2007/trainval and VOC2007/trainval"):
        read_voc_splits([(devkit / "VOC2007", "trainval"), (devkit / "VOC2007", "trainval")])


# ----------------------------------------------------------------------------- results

def test_results_files_in_devkit_coordinates(tmp_path):
    dets = [Detections("000001", [[0, 0, 10, 20], [4.5, 5.25, 30.75, 40]], [0.9, 0.123456789], [12, 12]),
            Detections("000002", [[1, 2, 3, 4]], [0.5], [1])]
    paths = write_voc_results(tmp_path, "test", dets, VOC_CLASSES)
    assert [p.name for p in paths][:2] == ["comp4_det_test_aeroplane.txt", "comp4_det_test_bicycle.txt"]
    assert len(paths) == 20 and (tmp_path / "comp4_det_test_bicycle.txt").read_text() == ""
    lines = [line.split() for line in (tmp_path / "comp4_det_test_dog.txt").read_text().splitlines()]
    assert [f[0] for f in lines] == ["000001", "000001"]
    # xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2
    assert [float(v) for v in lines[0][1:]] == pytest.approx([0.9, 1, 1, 10, 20])
    assert [float(v) for v in lines[1][2:]] == [5.5, 6.25, 30.75, 40]
    results = read_voc_results(tmp_path, "test", VOC_CLASSES)
    dog = results["dog"]
    np.testing.assert_array_equal(dog.boxes, [[1, 1, 10, 20], [5.5, 6.25, 30.75, 40]])
    # scores come back as the very same float32 numbers (exact round trip keeps devkit ranking)
    np.testing.assert_array_equal(dog.scores.astype(np.float32), np.float32([0.9, 0.123456789]))
    assert results["aeroplane"].image_ids == ["000002"] and len(results["cat"].image_ids) == 0


def test_results_round_trip_exact_for_float32_boxes(tmp_path):
    rng = np.random.default_rng(0)
    boxes = (rng.random((50, 4)) * 500).astype(np.float32)
    dets = [Detections("img", boxes, rng.random(50), np.full(50, 3))]
    write_voc_results(tmp_path, "val", dets, VOC_CLASSES)
    bird = read_voc_results(tmp_path, "val", VOC_CLASSES)["bird"]
    internal = (bird.boxes - [1, 1, 0, 0]).astype(np.float32)
    np.testing.assert_array_equal(internal, boxes)
    np.testing.assert_array_equal(bird.scores.astype(np.float32), dets[0].scores)


def test_missing_result_file_warns_and_is_empty(tmp_path):
    write_voc_results(tmp_path, "test", [], ["a", "b"])
    (tmp_path / "comp4_det_test_b.txt").unlink()
    with pytest.warns(UserWarning, match="no result file for class 'b'"):
        results = read_voc_results(tmp_path, "test", ["a", "b"])
    assert results["b"].boxes.shape == (0, 4) and results["b"].scores.shape == (0,)


@pytest.mark.parametrize("line, reason", [
    ("000001 0.5 1 2 3", "got 5 fields"),
    ("000001 0.5 1 2 3 4 5", "got 7 fields"),
    ("000001 high 1 2 3 4", "non-numeric"),
    ("000001 nan 1 2 3 4", "NaN or infinite"),
    ("000001 0.5 1 2 inf 4", "NaN or infinite"),
    ("999999 0.5 1 2 3 4", "unknown image id '999999'"),
])
def test_bad_result_lines_name_file_and_line(tmp_path, line, reason):
    path = tmp_path / "comp4_det_test_a.txt"
    path.write_text(f"000001 0.9 1 1 5 5\n{line}\n")
    with pytest.raises(DataError, match=reason) as err:
        read_voc_results(tmp_path, "test", ["a"], known_ids={"000001"})
    assert err.value.path == str(path) and err.value.record == "line 2"


# -------------------------------------------------------------------------------- fuzzing

_VALID = _xml(_obj("dog") + _obj("person", ("8", "12", "352", "498"), "<difficult>1</difficult>")).encode()


@st.composite
def _mutated_xml(draw):
    data = bytearray(_VALID)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace", "delete", "insert"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "replace":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[pos: pos + draw(st.integers(1, 20))]
        else:
            data[pos:pos] = draw(st.sampled_from([b"<", b">", b"-1", b"1e9", b"\xff", b"</object>",
                                                  b"<object>", b"&amp;", b"nan", b"0"]))
        if not data:
            data = bytearray(b"<")
    return bytes(data)


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(_mutated_xml(), st.binary(max_size=200)))
def test_fuzz_parse_gives_annotation_or_data_error(tmp_path, data):
    path = _write(tmp_path, data, "fuzz.xml")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ann = parse_voc_annotation(path, VOC_CLASSES)
    except DataError as err:
        assert err.path == str(path)
        return
    assert ann.boxes.shape == (len(ann.names), 4) and np.isfinite(ann.boxes).all()
    assert np.all(ann.boxes[:, 2:] > ann.boxes[:, :2])
    assert np.all(ann.boxes >= 0) and np.all(ann.boxes[:, 2] <= ann.width) and np.all(ann.boxes[:, 3] <= ann.height)
