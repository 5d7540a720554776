from pathlib import Path

import cv2
import numpy as np
import pytest

from glee.datasets.bp4d import read_bp4d
from glee.datasets.errors import CorruptImageError, DatasetError
from glee.datasets.images import load_image
from glee.datasets.records import BP4D_AUS, UNKNOWN

HEADER_AUS = [1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 17, 23, 24, 27]


def jpeg(value: int) -> bytes:
    img = np.full((16, 20, 3), value, np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def au_row(frame: int, values: dict[int, int]) -> list[int]:
    """A full AU_OCC row: given AU values, 0 elsewhere."""
    return [frame] + [values.get(au, 0) for au in HEADER_AUS]


def make_bp4d(root: Path, frames: dict[tuple[str, str], list[int]], pad: int = 4) -> None:
    for (subject, task), numbers in frames.items():
        d = root / "2D+3D" / subject / task
        d.mkdir(parents=True, exist_ok=True)
        for n in numbers:
            (d / f"{n:0{pad}d}.jpg").write_bytes(jpeg(10 * n % 256))


@pytest.fixture
def bp4d(tmp_path: Path) -> Path:
    root = tmp_path / "BP4D"
    make_bp4d(root, {("F001", "T1"): [1, 2, 3], ("M011", "T2"): [5, 6]})
    header = ["0"] + [str(a) for a in HEADER_AUS]
    write_csv(
        root / "AUCoding/AU_OCC/F001_T1.csv",
        header,
        [au_row(1, {1: 1, 12: 1}), au_row(2, {2: 9, 24: 1}), au_row(3, {})],
    )
    write_csv(
        root / "AUCoding/AU_OCC/M011_T2.csv",
        header,
        [au_row(5, {4: 1, 23: 9}), au_row(6, {6: 1, 7: 1})],
    )
    return root


def labels(values: dict[int, int]) -> tuple[int, ...]:
    return tuple(values.get(au, 0) for au in BP4D_AUS)


def test_reads_fixture_exactly(bp4d: Path):
    index = read_bp4d(bp4d)
    assert index.dataset == "bp4d" and index.skipped == [] and index.warnings == []
    assert index.au_names == [f"AU{a}" for a in BP4D_AUS]
    got = [(r.subject, r.task, r.frame, r.labels, r.fold) for r in index.records]
    assert got == [
        ("F001", "T1", 1, labels({1: 1, 12: 1}), 1),
        ("F001", "T1", 2, labels({2: UNKNOWN, 24: 1}), 1),  # 9 -> -1
        ("F001", "T1", 3, labels({}), 1),
        ("M011", "T2", 5, labels({4: 1, 23: UNKNOWN}), 2),
        ("M011", "T2", 6, labels({6: 1, 7: 1}), 2),
    ]
    rec = index.records[1]
    assert rec.image.endswith("F001/T1/0002.jpg")
    assert abs(float(load_image(rec.image).mean()) - 20) < 3  # the right file


def test_au_subset_order_and_padding(tmp_path: Path):
    root = tmp_path / "B"
    make_bp4d(root, {("F001", "T1"): [7, 12]}, pad=3)  # 007.jpg, 012.jpg
    write_csv(
        root / "AUCoding/AU_OCC/F001_T1.csv",
        ["0", "12", "1", "4"],
        [[7, 1, 0, 9], [12, 0, 1, 1]],
    )
    index = read_bp4d(root, aus=(4, 1))
    assert [(r.frame, r.labels) for r in index.records] == [(7, (UNKNOWN, 0)), (12, (1, 1))]
    assert index.records[0].image.endswith("007.jpg")
    with pytest.raises(DatasetError, match=r"F001_T1\.csv has no column for AU2"):
        read_bp4d(root, aus=(1, 2))


def test_unknown_header_warns_once(bp4d: Path):
    path = bp4d / "AUCoding/AU_OCC/F001_T1.csv"
    lines = path.read_text().splitlines()
    lines = [lines[0] + ",AUxx,999"] + [line + ",1,1" for line in lines[1:]]
    path.write_text("\n".join(lines) + "\n")
    index = read_bp4d(bp4d)
    assert len(index.records) == 5
    assert len(index.warnings) == 1 and "AUxx" in index.warnings[0] and "999" in index.warnings[0]


@pytest.mark.parametrize(
    "row, reason",
    [("2,1,0", "ragged row"), ("2," + ",".join(["x"] * len(HEADER_AUS)), "non-integer")],
)
def test_malformed_csv_skips_file_naming_line(bp4d: Path, row, reason):
    path = bp4d / "AUCoding/AU_OCC/F001_T1.csv"
    lines = path.read_text().splitlines()
    lines[2] = row
    path.write_text("\n".join(lines) + "\n")
    index = read_bp4d(bp4d)
    assert {r.subject for r in index.records} == {"M011"}
    skip = index.skipped[0]
    assert skip.reference == f"{path}:3" and reason in skip.reason
    # the file's images are not labelled now: listed, not dropped
    assert any(s.reference.endswith("F001/T1") for s in index.skipped)


def test_out_of_range_value_and_missing_frame_column(bp4d: Path):
    path = bp4d / "AUCoding/AU_OCC/F001_T1.csv"
    text = path.read_text().splitlines()
    text[1] = ",".join(str(v) for v in au_row(1, {1: 3}))
    path.write_text("\n".join(text) + "\n")
    assert "not 0, 1 or 9" in read_bp4d(bp4d).skipped[0].reason
    text[0] = "frameno," + ",".join(str(a) for a in HEADER_AUS)
    path.write_text("\n".join(text) + "\n")
    skip = read_bp4d(bp4d).skipped[0]
    assert skip.reference == f"{path}:1" and "frame column" in skip.reason


def test_rows_without_images_and_images_without_rows(bp4d: Path):
    (bp4d / "2D+3D/F001/T1/0003.jpg").unlink()
    (bp4d / "2D+3D/M011/T2/0009.jpg").write_bytes(jpeg(90))
    make_bp4d(bp4d, {("F001", "T5"): [1, 2]})  # a task with no label file
    index = read_bp4d(bp4d)
    assert [(r.subject, r.frame) for r in index.records] == [
        ("F001", 1),
        ("F001", 2),
        ("M011", 5),
        ("M011", 6),
    ]
    reasons = {s.reference.split("BP4D/")[-1]: s.reason for s in index.skipped}
    assert reasons["AUCoding/AU_OCC/F001_T1.csv:4"] == "no image for frame 3"
    assert "no label row for frame 9" in reasons["2D+3D/M011/T2/0009.jpg"]
    assert "not AU-coded" in reasons["2D+3D/F001/T5"] and "2 images" in reasons["2D+3D/F001/T5"]
    assert len(index.skipped) == 3


def test_subject_not_in_split_gets_fold_0(bp4d: Path, tmp_path: Path):
    split = tmp_path / "split.csv"
    split.write_text("subject,fold\nF001,3\n")
    index = read_bp4d(bp4d, split=str(split))
    assert {(r.subject, r.fold) for r in index.records} == {("F001", 3), ("M011", 0)}
    assert len(index.warnings) == 1 and "M011" in index.warnings[0]


def test_missing_root_and_folders(tmp_path: Path, bp4d: Path):
    with pytest.raises(DatasetError, match=r"root .*nowhere does not exist"):
        read_bp4d(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no AUCoding/AU_OCC folder: expected"):
        read_bp4d(tmp_path / "empty")
    (bp4d / "2D+3D").rename(bp4d / "images")
    with pytest.raises(DatasetError, match=r"no 2D\+3D folder"):
        read_bp4d(bp4d)


def test_corrupt_jpeg_is_detected_lazily(bp4d: Path):
    bad = bp4d / "2D+3D/F001/T1/0002.jpg"
    bad.write_bytes(jpeg(1)[:50])
    index = read_bp4d(bp4d)
    assert len(index.records) == 5  # indexing does not decode
    with pytest.raises(CorruptImageError) as e:
        load_image(index.records[1].image)
    assert e.value.ref == str(bad)
