import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from glee.datasets.errors import DatasetError
from glee.datasets.fec import (
    CHAIN_TRIPLET,
    crop_face,
    face_key,
    load_face,
    majority_vote,
    mine_chain_triplets,
    read_fec,
    resolve_image,
    url_cache_name,
)
from glee.datasets.records import FaceRef, TripletRecord


def write_image(path: Path, h=100, w=200) -> np.ndarray:
    """An image whose pixel (r, c) encodes its position, so crops can be checked."""
    rows, cols = np.mgrid[0:h, 0:w]
    img = np.stack([rows % 256, cols % 256, np.full_like(rows, 77)], -1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1])  # PNG: lossless
    return img


def row(faces, ttype, annotations):
    out = []
    for url, box in faces:
        out += [url, *box]
    out.append(ttype)
    for k, a in enumerate(annotations):
        out += [f"ann{k}", a]
    return out


BOX = (0.1, 0.6, 0.2, 0.7)  # left, right, top, bottom


@pytest.fixture
def fec(tmp_path: Path) -> Path:
    root = tmp_path / "FEC"
    for name in ("a", "b", "c"):
        write_image(root / "imgs" / f"{name}.png")
    a_url = (root / "imgs/a.png").as_uri()  # file:// URL
    rows = [
        row(
            [(a_url, BOX), ("imgs/b.png", BOX), ("imgs/c.png", BOX)],
            "ONE_CLASS_TRIPLET",
            [1, 1, 1, 2, 3, 1],
        ),
        row(
            [(a_url, BOX), ("imgs/b.png", BOX), ("imgs/c.png", BOX)],
            "TWO_CLASS_TRIPLET",
            [3, 3, 3, 2, 2, 3],
        ),
        row(
            [(a_url, BOX), ("imgs/b.png", BOX), ("imgs/c.png", BOX)],
            "THREE_CLASS_TRIPLET",
            [2, 2, 3, 3, 1, 1],
        ),
        row([(a_url, BOX), ("imgs/b.png", BOX), ("imgs/c.png", BOX)], "FOUR_CLASS", [1, 1]),
        row(
            [(a_url, (0.5, 0.4, 0, 1)), ("imgs/b.png", BOX), ("imgs/c.png", BOX)],
            "ONE_CLASS_TRIPLET",
            [1],
        ),
        row([(a_url, BOX), ("imgs/b.png", BOX), ("imgs/c.png", BOX)], "ONE_CLASS_TRIPLET", [1, 4]),
        row(
            [(a_url, BOX), ("imgs/b.png", BOX), ("imgs/missing.png", BOX)], "TWO_CLASS_TRIPLET", [2]
        ),
    ]
    with open(root / "faceexp-comparison-data-train-public.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows(rows)
        f.write("x,1,2\n")  # too few fields
    return root


def test_parse_vote_margins_and_skips(fec: Path):
    index = read_fec(fec, check_images=False)
    assert [(t.triplet_type, t.most_different, t.margin) for t in index.triplets] == [
        ("ONE_CLASS_TRIPLET", 1, 0.1),
        ("TWO_CLASS_TRIPLET", 3, 0.2),
        ("TWO_CLASS_TRIPLET", 2, 0.2),
    ]
    t = index.triplets[0]
    assert t.annotations == (1, 1, 1, 2, 3, 1)
    assert t.faces[1] == FaceRef("imgs/b.png", *BOX)
    a, p, n = t.anchor_positive_negative
    assert n.url.endswith("a.png") and p.url == "imgs/c.png"
    reasons = {int(s.reference.rsplit(":", 1)[1]): s.reason for s in index.skipped}
    assert "no majority" in reasons[3]  # 2-2-2 tie
    assert "triplet type" in reasons[4]
    assert "not inside [0, 1]" in reasons[5]
    assert "pairs" in reasons[6] or "1, 2 or 3" in reasons[6]
    assert "fields" in reasons[8]
    assert set(reasons) == {3, 4, 5, 6, 8}


def test_ties_first_and_custom_margins(fec: Path):
    index = read_fec(fec, ties="first", margins={"THREE_CLASS_TRIPLET": 0.5}, check_images=False)
    three = [t for t in index.triplets if t.triplet_type == "THREE_CLASS_TRIPLET"]
    assert len(three) == 1 and three[0].most_different == 1 and three[0].margin == 0.5
    assert majority_vote([3, 3, 2, 2]) is None and majority_vote([3, 3, 2, 2], "first") == 2
    with pytest.raises(DatasetError, match="ties"):
        read_fec(fec, ties="random")


def test_check_images_skips_missing(fec: Path):
    index = read_fec(fec, image_root=fec)
    assert [t.triplet_type for t in index.triplets] == ["ONE_CLASS_TRIPLET", "TWO_CLASS_TRIPLET"]
    assert [s.reason for s in index.skipped if "missing.png" in s.reason] == [
        "image not on disk: imgs/missing.png"
    ]


def test_resolve_and_crop(fec: Path, tmp_path: Path):
    index = read_fec(fec, check_images=False)
    a, b, _ = index.triplets[0].faces
    assert resolve_image(a.url) == fec / "imgs/a.png"
    assert resolve_image(b.url, image_root=fec) == fec / "imgs/b.png"
    crop = load_face(b, image_root=fec)
    assert crop.shape == (50, 100, 3)  # rows 20..70, cols 20..120 of 100x200
    assert crop[0, 0].tolist() == [20, 20, 77] and crop[-1, -1].tolist() == [69, 119, 77]
    img = np.zeros((10, 10, 3), np.uint8)
    assert crop_face(img, FaceRef("u", 0.95, 1.0, 0.0, 0.01)).shape == (1, 1, 3)  # >= 1 px
    url = "https://example.org/x/photo.JPG"
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="fetch_fec"):
        resolve_image(url, cache_dir=cache)
    write_image(cache / "images" / url_cache_name(url))
    assert resolve_image(url, cache_dir=cache).name == url_cache_name(url)
    assert url_cache_name(url).endswith(".jpg") and url_cache_name(url) == url_cache_name(url)


def test_missing_root_and_csv(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_fec(tmp_path / "nope")
    with pytest.raises(DatasetError, match="faceexp-comparison-data-test-public.csv"):
        read_fec(tmp_path, split="test")


def face(name: str) -> FaceRef:
    return FaceRef(f"http://x/{name}.jpg", 0.1, 0.9, 0.1, 0.9)


def trip(a, p, n, ttype="ONE_CLASS_TRIPLET", margin=0.1, order=(0, 1, 2)):
    faces = [face(a), face(p), face(n)]
    faces = [faces[i] for i in order]
    return TripletRecord(tuple(faces), ttype, (), order.index(2) + 1, margin)


def keyset(t: TripletRecord):
    a, p, n = t.anchor_positive_negative
    return frozenset((face_key(a), face_key(p))), face_key(n)


def test_face_key_is_stable_and_box_sensitive():
    assert face_key(face("a")) == face_key(FaceRef("http://x/a.jpg", 0.1, 0.9, 0.1, 0.9))
    assert face_key(face("a")) != face_key(FaceRef("http://x/a.jpg", 0.1, 0.9, 0.1, 0.8))


def test_chain_mining_two_sided():
    # (A,B;C), (A,C;D), (B,C;D): AB < AC < AD and AB < BC < BD  =>  new (A,B;D)
    base = [
        trip("A", "B", "C", order=(2, 0, 1)),
        trip("A", "C", "D", "TWO_CLASS_TRIPLET", 0.2),
        trip("B", "C", "D"),
    ]
    mined = mine_chain_triplets(base + base[:1])  # a duplicate input changes nothing
    assert len(mined) == 1
    t = mined[0]
    assert keyset(t) == (frozenset((face_key(face("A")), face_key(face("B")))), face_key(face("D")))
    assert t.margin == 0.2 and t.triplet_type == CHAIN_TRIPLET and t.annotations == ()
    assert mine_chain_triplets(base, max_hops=1) == []


def test_chain_mining_needs_both_sides_and_consistency():
    # Only d(A,B) < d(A,C) < d(A,D) is proven; d(A,B) < d(B,D) is not: no triplet.
    assert mine_chain_triplets([trip("A", "B", "C"), trip("A", "C", "D")]) == []
    base = [trip("A", "B", "C"), trip("A", "C", "D"), trip("B", "C", "D")]
    # contradicting chain AD < AE < AB: (A,B;D) is no longer implied
    contra = base + [trip("A", "D", "E"), trip("A", "E", "B")]
    mined = mine_chain_triplets(contra)
    abd = frozenset(face_key(face(x)) for x in "ABD")
    assert all(frozenset(face_key(f) for f in t.faces) != abd for t in mined)
    known = {frozenset(face_key(f) for f in t.faces) for t in contra}
    assert all(frozenset(face_key(f) for f in t.faces) not in known for t in mined)
    assert len({keyset(t) for t in mined}) == len(mined)


def test_chain_mining_is_sound_against_a_known_ordering():
    """Faces on a line, annotations from true distances: every mined triplet must be true."""
    rng = np.random.default_rng(0)
    z = rng.random(30)
    names = [f"f{i}" for i in range(30)]
    triplets = []
    for _ in range(400):
        i, j, k = rng.choice(30, 3, replace=False)
        pair_gap = {k: abs(z[i] - z[j]), j: abs(z[i] - z[k]), i: abs(z[j] - z[k])}
        neg = min(pair_gap, key=pair_gap.get)  # the face left out of the closest pair
        a, p = (x for x in (i, j, k) if x != neg)
        triplets.append(trip(names[a], names[p], names[neg]))
    mined = mine_chain_triplets(triplets)
    assert len(mined) > 0
    where = {face_key(face(n)): i for i, n in enumerate(names)}
    for t in mined:
        a, p, n = (where[face_key(f)] for f in t.anchor_positive_negative)
        assert abs(z[a] - z[p]) < min(abs(z[a] - z[n]), abs(z[p] - z[n]))
