"""FEC end to end: what jobs/fetch_fec.py writes is what `preprocess_dataset("fec")` reads.

The tiny synthetic FEC renders are served over http (a server on 127.0.0.1, with a 404 and
a truncated file among them); the fetcher downloads them into a folder, and that folder,
untouched, is the root preprocessing reads, on the default landmark path (offline: dlib's
68 points in the CSVs' face boxes), whole images or, with --no-keep-images, the crops.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from glee.datasets.fec import DEFAULT_MARGINS, crop_box, face_key, read_fec
from glee.datasets.records import FaceRef

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
SPLITS = ("train", "test")


def _fetch_job():
    spec = importlib.util.spec_from_file_location("fetch_fec_job", REPO / "jobs/fetch_fec.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def _served(fec_root: Path, serve_files, tmp_path: Path):
    """The synthetic FEC CSVs with their file:// URLs moved to an http server that serves
    every render but one (404) and another cut in half (truncated)."""
    tables = {}
    for split in SPLITS:
        with open(fec_root / f"faceexp-comparison-data-{split}-public.csv", newline="") as f:
            tables[split] = list(csv.reader(f))
    names = sorted(
        {Path(r[5 * k]).name for rows in tables.values() for r in rows for k in range(3)}
    )
    lost, cut = names[0], names[1]
    routes = {f"/fec/{n}": (fec_root / "images" / n).read_bytes() for n in names if n != lost}
    routes[f"/fec/{cut}"] = routes[f"/fec/{cut}"][: len(routes[f"/fec/{cut}"]) // 2]
    base, hits = serve_files(routes)
    download = tmp_path / "download"
    download.mkdir()
    for split, rows in tables.items():
        for row in rows:
            for k in range(3):
                row[5 * k] = f"{base}/fec/{Path(row[5 * k]).name}"
        with open(download / f"faceexp-comparison-data-{split}-public.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return download, routes, hits, {f"{base}/fec/{lost}", f"{base}/fec/{cut}"}


def _expected_triplets(root: Path, dead: set[str]) -> tuple[list[dict], list[dict]]:
    """(alive, dead): the majority-vote triplets of the fetched CSVs by face id, split by
    whether a face's URL is dead."""
    alive, gone = [], []
    for split in SPLITS:
        for t in read_fec(root, split=split).triplets:
            a, p, n = t.anchor_positive_negative
            row = {
                "anchor": face_key(a),
                "positive": face_key(p),
                "negative": face_key(n),
                "triplet_type": t.triplet_type,
                "split": split,
            }
            (gone if {a.url, p.url, n.url} & dead else alive).append(row)
    return alive, gone


def _faces_by_id(root: Path) -> dict[str, FaceRef]:
    """The faces of the triplets the majority vote keeps (a tied row has no triplet)."""
    out = {}
    for split in SPLITS:
        for t in read_fec(root, split=split).triplets:
            out.update((face_key(f), f) for f in t.faces)
    return out


def _truth_px(fec_root: Path) -> dict[str, np.ndarray]:
    """Render file name -> its exact 68 landmarks (image pixels)."""
    truth = pd.read_parquet(fec_root / "truth.parquet")
    return {Path(r.image).name: np.asarray(r.landmarks).reshape(68, 2) for r in truth.itertuples()}


def _iod_error(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean point distance over the inter-ocular distance of the truth (68 points)."""
    iod = np.linalg.norm(exact[36:42].mean(0) - exact[42:48].mean(0))
    return float(np.linalg.norm(found - exact, axis=-1).mean() / iod)


def _key(df: pd.DataFrame) -> set[tuple]:
    cols = ["anchor", "positive", "negative", "triplet_type", "split"]
    return set(df[cols].itertuples(index=False, name=None))


def test_fetched_folder_is_the_fec_root_preprocessing_reads(
    tiny_world, serve_files, ray_session, tmp_path, monkeypatch, capsys
):
    from glee_platform.preprocess import preprocess_dataset

    monkeypatch.setenv("GLEE_OFFLINE", "1")  # the default path without FAN weights: dlib
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    fec_root = tiny_world["fec"]
    download, routes, hits, dead = _served(fec_root, serve_files, tmp_path)
    csvs = [str(download / f"faceexp-comparison-data-{s}-public.csv") for s in SPLITS]
    root = tmp_path / "fec"
    job = _fetch_job()
    args = ["--csv", *csvs, "--out", str(root), "--retries", "0", "--no-progress"]
    assert job.main(args) == 0
    report = capsys.readouterr().out

    # fetch: every live render downloaded once, the two dead ones listed with their reason
    assert f"downloaded {len(routes) - 1}" in report and "dead 2 this run" in report
    assert f"--root {root}" in report
    with open(root / "dead_links.csv", newline="") as f:
        listed = {r["url"]: r["reason"] for r in csv.DictReader(f)}
    assert set(listed) == dead
    lost, cut = sorted(dead)
    assert listed[lost] == "HTTP 404" and "truncated" in listed[cut]
    assert hits[f"/fec/{Path(lost).name}"] == 1

    # preprocess reads that folder as it is, on the default landmarks
    out = tmp_path / "prep"
    summary = preprocess_dataset("fec", root, out, num_cpus=2, progress=False)
    assert summary.landmarks == "dlib"
    images = pq.read_table(out / "images").to_pandas()
    triplets = pq.read_table(out / "triplets.parquet").to_pandas()
    errors = pq.read_table(out / "errors.parquet").to_pandas()
    manifest = json.loads((out / "manifest.json").read_text())

    # the dead links again, one read error per face, with the fetcher's reason
    by_id = _faces_by_id(root)
    dead_faces = {k for k, f in by_id.items() if f.url in dead}
    read = errors[errors.stage == "read"]
    ties = sum(len(read_fec(root, split=s).skipped) for s in SPLITS)  # rows without a majority
    assert (~read.input.str.startswith("http")).sum() == ties
    read = read[read.input.str.startswith("http")]
    assert sorted(read.input) == sorted(by_id[k].url for k in dead_faces)
    for r in read.itertuples():
        assert "dead link" in r.reason and listed[r.input] in r.reason

    # every live face is a row or a landmarks/fit error; the real detector finds most
    live = set(by_id) - dead_faces
    failed = errors[~errors.stage.isin(["read", "triplet"])]
    assert set(images.image_id).isdisjoint(dead_faces)
    assert len(images) + len(failed) == len(live) and len(images) >= 0.9 * len(live)
    # found in the whole image, near the render's truth: MTCNN runs inside the CSV's box
    # (dlib in the CSV's box itself was 0.19 IOD from it, in MTCNN's 0.08); a crop read as
    # the whole image would be >1
    truth = _truth_px(fec_root)
    err = [
        _iod_error(np.asarray(lms).reshape(68, 2), truth[Path(by_id[k].url).name])
        for k, lms in zip(images.image_id, images.image_landmarks)
    ]
    assert np.median(err) < 0.12, np.median(err)

    # the triplets table: the vote's triplets whose faces all made it, typed margins
    alive, gone = _expected_triplets(root, dead)
    ok = set(images.image_id)
    whole = [t for t in alive if {t["anchor"], t["positive"], t["negative"]} <= ok]
    assert gone and len(whole) >= 0.8 * len(alive)
    assert _key(triplets) == _key(pd.DataFrame(whole)) and len(triplets) == len(whole)
    for ttype, margin in zip(triplets.triplet_type, triplets.margin):
        assert margin == np.float32(DEFAULT_MARGINS[ttype])
    assert triplets.margin.dtype == np.float32 and triplets.triplet_type.nunique() >= 2
    assert (errors.stage == "triplet").sum() == len(alive) + len(gone) - len(whole)
    assert manifest["rows_ok"] == len(images) and manifest["triplets_kept"] == len(triplets)
    assert manifest["rows_failed"] == ties + len(read) + len(failed)
    assert manifest["triplets"] == len(alive) + len(gone)
    assert manifest["config"]["landmarks"] == "dlib"

    # --no-keep-images: only the crops are on disk, and preprocessing reads those
    crops_only = tmp_path / "fec_crops"
    args = ["--csv", *csvs, "--out", str(crops_only), "--no-keep-images", "--no-progress"]
    assert job.main([*args, "--retries", "0"]) == 0
    assert not list(crops_only.glob("images/*"))
    out2 = tmp_path / "prep_crops"
    preprocess_dataset("fec", crops_only, out2, num_cpus=2, progress=False)
    images2 = pq.read_table(out2 / "images").to_pandas()
    assert len(images2) >= 0.9 * len(live) and set(images2.image_id).isdisjoint(dead_faces)
    import cv2

    errs = []
    for fid, lms in zip(images2.image_id, images2.image_landmarks):
        name = Path(by_id[fid].url).name
        h, w = cv2.imread(str(fec_root / "images" / name)).shape[:2]
        r0, _, c0, _ = crop_box(by_id[fid], h, w)
        crop_px = np.asarray(lms).reshape(68, 2) + (c0, r0)  # crop -> whole-image pixels
        errs.append(_iod_error(crop_px, truth[name]))
    assert np.median(errs) < 0.25, np.median(errs)
    triplets2 = pq.read_table(out2 / "triplets.parquet").to_pandas()
    assert _key(triplets2) <= _key(pd.DataFrame(alive)) and len(triplets2) >= 0.8 * len(whole)
