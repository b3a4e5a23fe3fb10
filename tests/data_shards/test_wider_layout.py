"""Reader of the official WIDER FACE annotation files, quirks included."""

from pathlib import Path

import pytest

from data_shards.wider_layout import Face, WiderFormatError, format_bbx_gt, parse_bbx_gt, read_test_filelist

GT = """\
0--Parade/0_Parade_marchingband_1_5.jpg
2
10 20 30 40 2 1 0 0 1 0 
5 6 7 8 0 0 1 1 2 1 
1--Handshaking/1_Handshaking_1_9.jpg
0
0 0 0 0 0 0 0 0 0 0 
1--Handshaking/1_Handshaking_1_10.jpg
1
100 50 0 12 2 0 0 1 0 0 
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wider_face_train_bbx_gt.txt"
    path.write_text(text)
    return path


def test_records_faces_and_all_six_attributes(tmp_path):
    records = parse_bbx_gt(write(tmp_path, GT))
    assert [r.path for r in records] == [
        "0--Parade/0_Parade_marchingband_1_5.jpg", "1--Handshaking/1_Handshaking_1_9.jpg",
        "1--Handshaking/1_Handshaking_1_10.jpg",
    ]
    first = records[0]
    assert first.event == "0--Parade" and first.name == "0_Parade_marchingband_1_5"
    assert first.faces == (Face(10, 20, 30, 40, 2, 1, 0, 0, 1, 0), Face(5, 6, 7, 8, 0, 0, 1, 1, 2, 1))
    assert first.faces[1].attributes() == {
        "blur": 0, "expression": 0, "illumination": 1, "invalid": 1, "occlusion": 2, "pose": 1}


def test_zero_face_record_consumes_its_all_zero_line(tmp_path):
    records = parse_bbx_gt(write(tmp_path, GT))
    assert records[1].faces == ()  # the all-zero line is not a face
    assert len(records[2].faces) == 1  # ... and the next record still parses


def test_degenerate_box_is_kept_and_flagged(tmp_path):
    face = parse_bbx_gt(write(tmp_path, GT))[2].faces[0]
    assert face.w == 0 and face.is_degenerate and face.invalid == 1


def test_format_is_the_inverse_of_parse(tmp_path):
    records = parse_bbx_gt(write(tmp_path, GT))
    assert parse_bbx_gt(write(tmp_path, format_bbx_gt(records))) == records


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("0--Parade/a.jpg\nx\n", 2, "face count"),
        ("0--Parade/a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", 4, "file ended"),
        ("0--Parade/a.jpg\n1\n1 2 3 4 0 0 0\n", 3, "expected 10 integers"),
        ("0--Parade/a.jpg\n1\n1 2 3 four 0 0 0 0 0 0\n", 3, "not integers"),
        ("0--Parade/a.png\n1\n1 2 3 4 0 0 0 0 0 0\n", 1, "image path"),
        ("0--Parade/a.jpg\n0\n1 2 3 4 0 0 0 0 0 0\n", 3, "count 0"),
    ],
)
def test_malformed_record_names_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path, text)
    with pytest.raises(WiderFormatError, match=fragment) as info:
        parse_bbx_gt(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}:")


def test_test_filelist(tmp_path):
    path = tmp_path / "wider_face_test_filelist.txt"
    path.write_text("0--Parade/a.jpg\n\n1--Handshaking/b.jpg\n")
    assert read_test_filelist(path) == ["0--Parade/a.jpg", "1--Handshaking/b.jpg"]
