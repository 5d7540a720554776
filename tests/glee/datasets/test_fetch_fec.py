import csv
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from glee.datasets.errors import DatasetError
from glee.datasets.fec import (
    crop_path,
    face_source,
    load_face,
    read_dead_links,
    read_fec,
    resolve_image,
)
from glee.datasets.fetch_fec import fetch_fec
from glee.datasets.records import FaceRef

REPO = Path(__file__).resolve().parents[3]


def encoded(ext: str, h: int, w: int, value: int) -> bytes:
    img = np.full((h, w, 3), value, np.uint8)
    return cv2.imencode(ext, img)[1].tobytes()


@pytest.fixture
def server(serve_files):
    good_jpg = encoded(".jpg", 100, 200, 120)
    flaky = encoded(".jpg", 50, 50, 200)
    return serve_files(
        {
            "/img/a.jpg": good_jpg,
            "/img/b.png": encoded(".png", 60, 80, 40),
            "/img/flaky.jpg": lambda n: (503, b"") if n == 1 else (200, flaky),
            "/img/trunc.jpg": good_jpg[: len(good_jpg) // 2],
        }
    )


def fec_row(urls_boxes, ttype="ONE_CLASS_TRIPLET", votes=(1, 1, 2)):
    out = []
    for url, box in urls_boxes:
        out += [url, *box]
    out.append(ttype)
    for k, v in enumerate(votes):
        out += [f"r{k}", v]
    return out


def test_fetch_download_crop_dead_links_and_resume(server, tmp_path: Path):
    base, hits = server
    box1, box2 = (0.0, 0.5, 0.0, 0.5), (0.25, 0.75, 0.1, 0.9)  # left, right, top, bottom
    csv_path = tmp_path / "faceexp-comparison-data-test-public.csv"
    rows = [
        fec_row(
            [(f"{base}/img/a.jpg", box1), (f"{base}/img/b.png", box1), (f"{base}/img/a.jpg", box2)]
        ),
        fec_row(
            [
                (f"{base}/img/flaky.jpg", box1),
                (f"{base}/img/missing.jpg", box1),
                (f"{base}/img/trunc.jpg", box1),
            ]
        ),
    ]
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "cache"
    summary = fetch_fec(
        csv_path, out, workers=4, retries=2, timeout=5, backoff=0.01, progress=False
    )
    assert (summary.urls, summary.faces) == (5, 6)
    assert (summary.downloaded, summary.dead, summary.crops_written) == (3, 2, 4)
    assert hits["/img/a.jpg"] == 1 and hits["/img/flaky.jpg"] == 2  # 503 retried once
    assert hits["/img/missing.jpg"] == 1  # 404 is permanent: no retry
    # crops: right size and content
    a1, a2 = FaceRef(f"{base}/img/a.jpg", *box1), FaceRef(f"{base}/img/a.jpg", *box2)
    assert cv2.imread(str(crop_path(a1, out))).shape == (50, 100, 3)
    assert cv2.imread(str(crop_path(a2, out))).shape == (80, 100, 3)
    b = cv2.imread(str(crop_path(FaceRef(f"{base}/img/b.png", *box1), out)))
    assert b.shape == (30, 40, 3) and abs(float(b.mean()) - 40) < 3
    assert resolve_image(a1.url, cache_dir=out).is_file()
    assert load_face(a2, cache_dir=out).shape == (80, 100, 3)
    with open(out / "dead_links.csv", newline="") as f:
        dead = {r["url"].rsplit("/", 1)[1]: r for r in csv.DictReader(f)}
    assert set(dead) == {"missing.jpg", "trunc.jpg"}
    assert dead["missing.jpg"]["reason"] == "HTTP 404" and dead["missing.jpg"]["attempts"] == "1"
    assert "truncated" in dead["trunc.jpg"]["reason"]
    assert not list(out.rglob("*.part"))  # temp files renamed or removed

    # the CLI reruns: nothing is requested again
    before = sum(hits.values())
    spec = importlib.util.spec_from_file_location("fetch_fec_job", REPO / "jobs/fetch_fec.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--csv", str(csv_path), "--out", str(out), "--no-progress"]) == 0
    assert sum(hits.values()) == before
    again = fetch_fec(csv_path, out, progress=False)
    assert (again.cached, again.known_dead, again.downloaded) == (3, 2, 0)
    assert sum(hits.values()) == before

    # a lost crop is rebuilt from the stored image, still without a request
    crop_path(a2, out).unlink()
    third = fetch_fec(csv_path, out, progress=False)
    assert (third.reused, third.crops_written) == (1, 1) and sum(hits.values()) == before

    # the fetched cache feeds the reader; with the CSV copied in, it is an FEC root
    index = read_fec(csv_path, cache_dir=out)
    assert len(index.triplets) == 1 and "image not on disk" in index.skipped[0].reason
    assert (out / csv_path.name).read_bytes() == csv_path.read_bytes()
    assert len(read_fec(out, split="test", cache_dir=out).triplets) == 1
    dead_links = read_dead_links(out)
    src = face_source(a2, image_root=out, cache_dir=out, dead=dead_links)
    assert src.whole_image and src.box_norm == box2 and src.path.parent == out / "images"
    resolve_image(a2.url, cache_dir=out).unlink()  # as if fetched with --no-keep-images
    src = face_source(a2, image_root=out, cache_dir=out, dead=dead_links)
    assert not src.whole_image and src.path == crop_path(a2, out)
    assert src.box_norm == (0.0, 1.0, 0.0, 1.0)
    missing = FaceRef(f"{base}/img/missing.jpg", *box1)
    with pytest.raises(DatasetError, match=r"dead link \(HTTP 404; 1 attempt"):
        face_source(missing, image_root=out, cache_dir=out, dead=dead_links)


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        fetch_fec(tmp_path / "none.csv", tmp_path / "out", progress=False)
    with pytest.raises(DatasetError, match="workers"):
        fetch_fec(tmp_path / "none.csv", tmp_path / "out", workers=0, progress=False)
