"""The synthetic writers: exact layouts, ground truth that matches the labels, determinism,
and the dataset readers loading what the writers wrote."""

import csv
import dataclasses
import hashlib
import importlib.util
import zipfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from glee.datasets.records import ALL_AUS, BP4D_AUS, DISFA_AUS, UNKNOWN
from glee.synthetic.presets import get_preset
from glee.synthetic.world import AU_COLUMN, TRIPLET_TYPES, intensity_level, odd_one_out
from glee.synthetic.writers import (
    BP4D_OCC_AUS,
    BP4DPLUS_OCC_AUS,
    DISFA_LABEL_AUS,
    synthesize,
    write_disfa,
)

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    synthesize(root, "tiny", seed=0, progress=False)
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _digest(files: dict[str, bytes], root: Path) -> dict[str, str]:
    uri = root.resolve().as_uri()
    return {
        name: hashlib.sha256(data.replace(uri.encode(), b"<ROOT>")).hexdigest()
        for name, data in files.items()
    }


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_same_seed_gives_identical_files(out, tmp_path):
    again = tmp_path / "again"
    synthesize(again, "tiny", seed=0, progress=False)
    a, b = _tree(out), _tree(again)
    assert sorted(a) == sorted(b)
    assert _digest(a, out) == _digest(b, again)  # FEC URLs differ only by the root
    assert not any(".tmp" in name or ".partial" in name for name in a)


def test_bp4d_layout_and_uncoded_nines(out):
    root = out / "bp4d"
    assert (root / ".complete").read_text() == "preset=tiny\nseed=0\n"
    subjects = sorted(p.name for p in (root / "2D+3D").iterdir())
    assert subjects == sorted(["F001", "M007", "M011", "F003", "F007", "F015"])
    csvs = sorted((root / "AUCoding" / "AU_OCC").glob("*.csv"))
    assert len(csvs) == 6 * len(TINY.bp4d_tasks)
    all_nine_rows = single_nines = 0
    for path in csvs:
        subject, task = path.stem.split("_")
        rows = _read_csv(path)
        assert rows[0] == ["0", *map(str, BP4D_OCC_AUS)]
        assert len(rows) == 1 + TINY.bp4d_frames
        for row in rows[1:]:
            assert len(row) == len(rows[0]) and {*row[1:]} <= {"0", "1", "9"}
            image = root / "2D+3D" / subject / task / f"{int(row[0]):04d}.jpg"
            assert image.is_file()
            nines = row[1:].count("9")
            all_nine_rows += nines == len(row) - 1
            single_nines += 0 < nines < len(row) - 1
        images = sorted((root / "2D+3D" / subject / task).iterdir())
        assert len(images) == TINY.bp4d_frames
    assert all_nine_rows >= 1 and single_nines >= 1
    img = cv2.imread(str(next((root / "2D+3D").rglob("*.jpg"))))
    assert img.shape == (*TINY.image_size, 3)


def test_bp4dplus_only_coded_tasks_are_labelled(out):
    root = out / "bp4dplus"
    zips = sorted((root / "2D+3D").glob("*.zip"))
    assert [z.stem for z in zips] == sorted(["F003", "F001", "F007"])
    for z in zips:
        with zipfile.ZipFile(z) as zf:
            names = zf.namelist()
            assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
        tasks = {n.split("/")[1] for n in names}
        assert tasks == set(TINY.bp4dplus_tasks)
        assert all(n.startswith(f"{z.stem}/") and n.endswith(".jpg") for n in names)
        assert len(names) == len(TINY.bp4dplus_tasks) * TINY.bp4dplus_frames
    labelled = {p.stem.split("_")[1] for p in (root / "AUCoding" / "AU_OCC").glob("*.csv")}
    assert labelled == set(TINY.bp4dplus_tasks) & {"T1", "T6", "T7", "T8"}
    for path in (root / "AUCoding" / "AU_OCC").glob("*.csv"):
        header = _read_csv(path)[0]
        assert len(header) == 35 and header[0] == "0"
        assert header[1:] == [str(a) for a in BP4DPLUS_OCC_AUS]


def test_disfa_video_frames_match_label_lines(out):
    root = out / "disfa"
    for subject in ("SN002", "SN013", "SN003"):
        cap = cv2.VideoCapture(str(root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi"))
        frames = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            assert frame.shape == (*TINY.image_size, 3)
            frames += 1
        cap.release()
        assert frames == TINY.disfa_frames
        files = sorted((root / "ActionUnit_Labels" / subject).iterdir())
        assert sorted(f.name for f in files) == sorted(
            f"{subject}_au{au}.txt" for au in DISFA_LABEL_AUS
        )
        for f in files:
            lines = f.read_text().splitlines()
            assert [int(line.split(",")[0]) for line in lines] == list(
                range(1, TINY.disfa_frames + 1)
            )
            assert all(0 <= int(line.split(",")[1]) <= 5 for line in lines)


def test_fec_layout(out):
    root = out / "fec"
    counts = {}
    for split, expected in (("train", TINY.fec_train_triplets), ("test", TINY.fec_test_triplets)):
        rows = _read_csv(root / f"faceexp-comparison-data-{split}-public.csv")
        counts[split] = len(rows)
        assert len(rows) == expected
        for row in rows:
            assert len(row) == 15 + 1 + 12
            for k in range(3):
                url, *box = row[5 * k : 5 * k + 5]
                assert url.startswith("file:///")
                assert Path(url[len("file://") :]).is_file()
                left, right, top, bottom = map(float, box)
                assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
            assert row[15] in TRIPLET_TYPES
            assert {int(a) for a in row[17::2]} <= {1, 2, 3}
            assert len({row[i] for i in range(16, 28, 2)}) == 6  # six distinct annotators
    images = list((root / "images").glob("*.jpg"))
    assert len(images) == TINY.fec_identities * TINY.fec_images_per_identity


def test_truth_matches_the_label_files(out):
    root = out / "bp4d"
    truth = pd.read_parquet(root / "truth.parquet")
    assert len(truth) == 6 * len(TINY.bp4d_tasks) * TINY.bp4d_frames
    checked_nine = 0
    for r in truth.itertuples():
        rows = {
            int(row[0]): row
            for row in _read_csv(root / f"AUCoding/AU_OCC/{r.subject}_{r.task}.csv")[1:]
        }
        row = rows[r.frame]
        header = [int(a) for a in BP4D_OCC_AUS]
        au, coded = np.asarray(r.au), np.asarray(r.coded)
        for au_num in ALL_AUS:
            col = AU_COLUMN[au_num]
            if au_num not in header:
                assert not coded[col]
                continue
            value = int(row[1 + header.index(au_num)])
            if coded[col]:
                assert value == int(intensity_level(au[col]) >= 1)
            else:
                assert value == 9
                checked_nine += 1
        assert (root / r.image).is_file()
    assert checked_nine > 0
    lms = pd.read_parquet(root / "landmarks.parquet")
    assert list(lms.columns[:3]) == ["subject", "task", "frame"]
    assert len(lms.columns) == 3 + 136
    xy = np.stack(truth.landmarks.to_numpy()).reshape(-1, 68, 2)
    assert np.allclose(lms[[f"x{i}" for i in range(68)]].to_numpy(), xy[:, :, 0])
    assert np.allclose(lms[[f"y{i}" for i in range(68)]].to_numpy(), xy[:, :, 1])
    box = np.stack(truth.box.to_numpy())
    inside = (xy[..., 0] >= box[:, None, 0] - 2) & (xy[..., 0] <= box[:, None, 2] + 2)
    assert inside.mean() > 0.95  # the box holds the face

    disfa = out / "disfa"
    truth = pd.read_parquet(disfa / "truth.parquet")
    for subject, group in truth.groupby("subject"):
        au = np.stack(group.sort_values("frame").au.to_numpy())
        for au_num in DISFA_LABEL_AUS:
            lines = (disfa / f"ActionUnit_Labels/{subject}/{subject}_au{au_num}.txt").read_text()
            levels = [int(line.split(",")[1]) for line in lines.splitlines()]
            assert levels == intensity_level(au[:, AU_COLUMN[au_num]]).tolist()


def test_fec_majority_names_the_expression_odd_one_out(out):
    root = out / "fec"
    truth = pd.read_parquet(root / "truth.parquet").set_index("subject")
    agree = []
    for split in ("train", "test"):
        for row in _read_csv(root / f"faceexp-comparison-data-{split}-public.csv"):
            ids = [Path(row[5 * k]).stem for k in range(3)]
            exprs = np.stack([np.asarray(truth.loc[i, "expression"]) for i in ids])
            (top, n), *rest = Counter(int(a) for a in row[17::2]).most_common()
            agree.append(top == odd_one_out(exprs) and (not rest or rest[0][1] < n))
            clusters = {int(truth.loc[i, "cluster"]) for i in ids}
            assert TRIPLET_TYPES.index(row[15]) + 1 == len(clusters)
    assert np.mean(agree) >= 0.6


def test_complete_datasets_are_skipped_and_partial_ones_rewritten(out, tmp_path):
    marker = out / "bp4d" / ".complete"
    before = marker.stat().st_mtime_ns
    synthesize(out, "tiny", seed=0, datasets=["bp4d"], progress=False)
    assert marker.stat().st_mtime_ns == before  # skipped

    small = dataclasses.replace(TINY, name="tiny", disfa_per_fold=1, disfa_frames=3)
    root = tmp_path / "disfa"
    write_disfa(root, small, seed=1, progress=False)
    first = _tree(root)
    (root / ".complete").unlink()
    (root / "stray.txt").write_text("left by a crash")
    write_disfa(root, small, seed=1, progress=False)
    assert _tree(root) == first  # rewritten from scratch, same bytes
    write_disfa(root, small, seed=2, progress=False)
    assert _tree(root) != first  # another seed replaces it
    write_disfa(tmp_path / "parallel", small, seed=1, progress=False, workers=2)
    assert _tree(tmp_path / "parallel") == first  # worker processes change nothing

    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="refusing"):
        write_disfa(foreign, small, seed=1, progress=False)
    assert (foreign / "keep.txt").is_file()


def test_bad_names_are_reported():
    with pytest.raises(ValueError, match="tiny, demo, large"):
        get_preset("huge")
    with pytest.raises(ValueError, match="bp4d, bp4dplus, disfa, fec"):
        synthesize("/nonexistent-never-created", "tiny", datasets=["ck+"], progress=False)


def test_readers_recover_the_ground_truth(out):
    from glee.datasets.registry import read_dataset

    for name in ("bp4d", "bp4dplus"):
        index = read_dataset(name, out / name)
        truth = pd.read_parquet(out / name / "truth.parquet")
        truth = truth.set_index(["subject", "task", "frame"])
        coded_tasks = {"T1", "T6", "T7", "T8"} if name == "bp4dplus" else set(TINY.bp4d_tasks)
        expected_n = sum(t in coded_tasks for t in truth.index.get_level_values("task"))
        assert len(index.records) == expected_n
        for rec in index.records:
            r = truth.loc[(rec.subject, rec.task, rec.frame)]
            cols = [AU_COLUMN[a] for a in BP4D_AUS]
            level = intensity_level(np.asarray(r.au)[cols])
            coded = np.asarray(r.coded)[cols]
            expect = tuple(int(v >= 1) if c else UNKNOWN for v, c in zip(level, coded))
            assert rec.labels == expect
            assert rec.fold in (1, 2, 3)
        assert UNKNOWN in {v for rec in index.records for v in rec.labels}

    index = read_dataset("disfa", out / "disfa")
    truth = pd.read_parquet(out / "disfa" / "truth.parquet").set_index(["subject", "frame"])
    assert len(index.records) == len(truth)
    for rec in index.records:
        r = truth.loc[(rec.subject, rec.frame)]
        level = intensity_level(np.asarray(r.au)[[AU_COLUMN[a] for a in DISFA_AUS]])
        assert rec.labels == tuple(int(v >= 2) for v in level)
        assert rec.intensities == tuple(float(v) for v in level)
        assert rec.image.endswith(f"#{rec.frame - 1}")

    fec = read_dataset("fec", out / "fec", split="train", ties="first")
    assert len(fec.triplets) == TINY.fec_train_triplets and not fec.skipped


def test_job_reports_what_it_wrote(out, capsys):
    spec = importlib.util.spec_from_file_location(
        "synthesize_job", Path(__file__).parents[3] / "jobs" / "synthesize.py"
    )
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    args = ["--out", str(out), "--preset", "tiny", "--datasets", "bp4d,disfa", "--quiet"]
    paths = job.main([*args, "--workers", "1"])
    assert set(paths) == {"bp4d", "disfa"}
    printed = capsys.readouterr().out
    assert "already complete, skipped" in printed and f"{6 * 2 * 6} images" in printed
    with pytest.raises(SystemExit):
        job.main(["--out", str(out), "--preset", "huge"])
    with pytest.raises(SystemExit):
        job.main(["--out", str(out), "--datasets", "bp4d,ck"])
