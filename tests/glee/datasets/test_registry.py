import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from glee.datasets.errors import DatasetError
from glee.datasets.records import DatasetIndex, FecIndex
from glee.datasets.registry import DATASETS, read_dataset


def test_unknown_name_lists_allowed():
    with pytest.raises(DatasetError, match="bp4d, bp4dplus, disfa, fec"):
        read_dataset("ckplus", "/tmp")
    assert DATASETS == ("bp4d", "bp4dplus", "disfa", "fec")


def test_dispatch_and_keywords(tmp_path: Path):
    root = tmp_path / "bp4d"
    (root / "2D+3D/F001/T1").mkdir(parents=True)
    img = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    (root / "2D+3D/F001/T1/1.jpg").write_bytes(img)
    (root / "AUCoding/AU_OCC").mkdir(parents=True)
    (root / "AUCoding/AU_OCC/F001_T1.csv").write_text("0,1,2\n1,1,9\n")
    index = read_dataset("bp4d", root, aus=(2, 1))
    assert isinstance(index, DatasetIndex) and index.records[0].labels == (-1, 1)
    # the other names reach their own reader (each names its dataset in the error)
    with pytest.raises(DatasetError, match="BP4D\\+ root"):
        read_dataset("BP4D+", tmp_path / "none")
    with pytest.raises(DatasetError, match="DISFA root"):
        read_dataset("disfa", tmp_path / "none")
    fec = tmp_path / "fec.csv"
    with open(fec, "w", newline="") as f:
        csv.writer(f).writerow(
            ["u1", 0, 1, 0, 1, "u2", 0, 1, 0, 1, "u3", 0, 1, 0, 1, "ONE_CLASS_TRIPLET", "r", 3]
        )
    got = read_dataset("fec", fec)
    assert isinstance(got, FecIndex) and got.triplets[0].most_different == 3
