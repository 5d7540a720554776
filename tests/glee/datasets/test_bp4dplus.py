import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from glee.datasets.bp4dplus import read_bp4dplus
from glee.datasets.errors import DatasetError
from glee.datasets.images import load_image
from glee.datasets.records import BP4D_AUS, UNKNOWN

# 34 AU columns as in the real BP4D+ AU_OCC files
PLUS_AUS = [1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24]
PLUS_AUS += [25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37]
assert len(PLUS_AUS) == 34


def jpeg(value: int) -> bytes:
    img = np.full((16, 20, 3), value, np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()


def write_labels(path: Path, rows: list[tuple[int, dict[int, int]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(["0"] + [str(a) for a in PLUS_AUS])]
    lines += [
        ",".join(str(v) for v in [f] + [vals.get(a, 0) for a in PLUS_AUS]) for f, vals in rows
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def plus(tmp_path: Path) -> Path:
    root = tmp_path / "BP4D+"
    (root / "2D+3D").mkdir(parents=True)
    with zipfile.ZipFile(root / "2D+3D/F001.zip", "w") as zf:
        for task in ("T1", "T2", "T8"):
            for n in (10, 11, 12):
                zf.writestr(f"F001/{task}/{n:04d}.jpg", jpeg(n * 10 + int(task[1])))
        zf.writestr("F001/T1/readme.txt", "not an image")
    write_labels(
        root / "AUCoding/AU_OCC/F001_T1.csv",
        [(10, {1: 1, 37: 1}), (11, {24: 9}), (12, {12: 1})],
    )
    write_labels(root / "AUCoding/AU_OCC/F001_T8.csv", [(10, {17: 1}), (11, {}), (13, {})])
    return root


def lab(values):
    return tuple(values.get(a, 0) for a in BP4D_AUS)


def test_reads_zip_fixture(plus: Path):
    index = read_bp4dplus(plus)
    got = [(r.task, r.frame, r.labels, r.fold) for r in index.records]
    assert got == [
        ("T1", 10, lab({1: 1}), 2),  # F001 tests in BigSmall S2
        ("T1", 11, lab({24: UNKNOWN}), 2),
        ("T1", 12, lab({12: 1}), 2),
        ("T8", 10, lab({17: 1}), 2),
        ("T8", 11, lab({}), 2),
    ]
    assert all("F001.zip!F001/" in r.image for r in index.records)
    img = load_image(index.records[4].image)  # T8 frame 11 -> value 118
    assert abs(float(img.mean()) - 118) < 3
    reasons = [(s.reference.split("BP4D+/")[-1], s.reason) for s in index.skipped]
    assert ("AUCoding/AU_OCC/F001_T8.csv:4", "no image for frame 13") in reasons
    assert any(
        ref.endswith("F001.zip!F001/T8/0012.jpg") and "no label row" in why for ref, why in reasons
    )
    uncoded = [why for ref, why in reasons if ref.endswith("F001/T2/")]
    assert len(uncoded) == 1 and "not AU-coded" in uncoded[0] and "3 images" in uncoded[0]
    assert len(reasons) == 3


def test_missing_archives(tmp_path: Path, plus: Path):
    for z in (plus / "2D+3D").glob("*.zip"):
        z.unlink()
    with pytest.raises(DatasetError, match=r"no 2D\+3D/\*\.zip archives"):
        read_bp4dplus(plus)
    with pytest.raises(DatasetError, match="does not exist"):
        read_bp4dplus(tmp_path / "missing")


def test_broken_zip_is_a_skip(plus: Path):
    (plus / "2D+3D/F002.zip").write_bytes(b"PK not really")
    index = read_bp4dplus(plus)
    assert len(index.records) == 5
    assert any(s.reference.endswith("F002.zip") and "zip" in s.reason for s in index.skipped)
