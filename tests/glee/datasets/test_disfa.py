from pathlib import Path

import cv2
import numpy as np
import pytest

from glee.datasets.disfa import read_disfa
from glee.datasets.errors import DatasetError
from glee.datasets.images import load_image
from glee.datasets.records import DISFA_AUS

ALL_DISFA = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)


def colour(i: int) -> tuple[int, int, int]:
    return ((40 * i) % 256, (255 - 30 * i) % 256, (90 + 70 * i) % 256)


def write_video(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for i in range(n):
        writer.write(np.full((24, 32, 3), colour(i)[::-1], np.uint8))
    writer.release()


def write_labels(root: Path, subject: str, intensity, n: int) -> None:
    """intensity(au, line) -> 0..5 for lines 1..n."""
    d = root / "ActionUnit_Labels" / subject
    d.mkdir(parents=True, exist_ok=True)
    for au in ALL_DISFA:
        lines = [f"{i},{intensity(au, i)}" for i in range(1, n + 1)]
        (d / f"{subject}_au{au}.txt").write_text("\n".join(lines) + "\n")


def pattern(au: int, line: int) -> int:
    return (au + line) % 6


@pytest.fixture
def disfa(tmp_path: Path) -> Path:
    root = tmp_path / "DISFA"
    write_video(root / "Videos_LeftCamera/LeftVideoSN001_comp.avi", 5)
    write_labels(root, "SN001", pattern, 5)
    write_video(root / "Videos_LeftCamera/LeftVideoSN013_comp.avi", 4)
    write_labels(root, "SN013", lambda au, i: 5 if au == 26 else 0, 4)
    return root


def test_reads_fixture_exactly(disfa: Path):
    index = read_disfa(disfa)
    assert index.skipped == [] and index.warnings == [] and len(index.records) == 9
    sn1 = [r for r in index.records if r.subject == "SN001"]
    assert [r.frame for r in sn1] == [1, 2, 3, 4, 5]
    for r in sn1:
        want = tuple(pattern(au, r.frame) for au in DISFA_AUS)
        assert r.intensities == tuple(float(v) for v in want)
        assert r.labels == tuple(1 if v >= 2 else 0 for v in want)
        assert r.fold == 1 and r.task == "" and r.image.endswith(f"#{r.frame - 1}")
    # line i <-> 0-based video frame i-1: check content (MJPG is lossy)
    for r in (sn1[3], sn1[0], sn1[4]):
        img = load_image(r.image)
        assert np.abs(img.reshape(-1, 3).mean(0) - colour(r.frame - 1)).max() < 10
    sn13 = [r for r in index.records if r.subject == "SN013"]
    assert all(r.labels == (0,) * 7 + (1,) and r.fold == 2 for r in sn13)


def test_au_subset(disfa: Path):
    index = read_disfa(disfa, aus=(26, 5))
    assert index.au_names == ["AU26", "AU5"]
    r = index.records[1]
    assert r.intensities == (float(pattern(26, 2)), float(pattern(5, 2)))
    with pytest.raises(DatasetError, match=r"SN001_au7\.txt for AU7 does not exist"):
        read_disfa(disfa, aus=(1, 7))


def test_label_rows_beyond_video_and_frames_without_labels(disfa: Path):
    write_labels(disfa, "SN001", pattern, 7)  # 2 lines more than the 5 frames
    write_labels(disfa, "SN013", pattern, 2)  # 2 frames fewer than the 4 frames
    index = read_disfa(disfa)
    assert len(index.records) == 5 + 2
    beyond = [s for s in index.skipped if "beyond" in s.reason]
    assert [s.reference.rsplit(":", 1)[1] for s in beyond] == ["6", "7"]
    unlabelled = [s.reference.rsplit("#", 1)[1] for s in index.skipped if "without" in s.reason]
    assert unlabelled == ["2", "3"]
    assert len(index.skipped) == 4


@pytest.mark.parametrize(
    "line, reason",
    [("3,x", "non-integer"), ("3,1,1", "expected 'frame,intensity'"), ("3,7", "outside 0..5")],
)
def test_malformed_label_file_skips_subject(disfa: Path, line, reason):
    path = disfa / "ActionUnit_Labels/SN013/SN013_au4.txt"
    lines = path.read_text().splitlines()
    lines[2] = line
    path.write_text("\n".join(lines) + "\n")
    index = read_disfa(disfa)
    assert {r.subject for r in index.records} == {"SN001"}
    assert index.skipped[0].reference == f"{path}:3" and reason in index.skipped[0].reason


def test_missing_video_and_unknown_subject(disfa: Path):
    (disfa / "Videos_LeftCamera/LeftVideoSN013_comp.avi").unlink()
    write_video(disfa / "Videos_LeftCamera/LeftVideoSN099_comp.avi", 2)
    write_labels(disfa, "SN099", pattern, 2)
    index = read_disfa(disfa)
    assert {(r.subject, r.fold) for r in index.records} == {("SN001", 1), ("SN099", 0)}
    assert "SN099" in index.warnings[0]
    assert any("no video" in s.reason and s.reference.endswith("SN013") for s in index.skipped)


def test_missing_folders(tmp_path: Path, disfa: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_disfa(tmp_path / "nope")
    (disfa / "Videos_LeftCamera").rename(disfa / "videos")
    with pytest.raises(DatasetError, match="no Videos_LeftCamera folder"):
        read_disfa(disfa)
