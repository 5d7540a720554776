"""Landmark backends: provided tables, face-alignment's FAN on test-served weights, dlib's
predictor on a real photograph, and the `auto` choice between them."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glee import weights_cache
from glee.face import landmarks
from glee.face.landmarks import (
    DLIB_INSTALL,
    DlibLandmarks,
    FanLandmarks,
    LandmarkBackend,
    MissingBackendError,
    MissingWeightsError,
    ProvidedLandmarks,
    choose_landmark_backend,
    face_box_from_hog_box,
    fan_weight_files,
    hog_box_from_face_box,
    make_landmark_backend,
)

MARKS = Path(__file__).parents[3] / "bench" / "astronaut_marks.csv"


def _table(n: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 200, (n, 68, 2)).astype(np.float32)
    cols = {"subject": ["F001", "SN002", "img7"], "task": ["T1", "", ""], "frame": [12, 5, 0]}
    for i in range(68):
        cols[f"x{i}"] = pts[:, i, 0]
    for i in range(68):
        cols[f"y{i}"] = pts[:, i, 1]
    return pd.DataFrame(cols), pts


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_provided_round_trip(tmp_path, fmt):
    df, pts = _table()
    if fmt == "parquet":
        df.to_parquet(tmp_path / "landmarks.parquet")
    else:
        df.to_csv(tmp_path / "landmarks.csv", index=False)
    backend = make_landmark_backend("provided", dataset_root=tmp_path)
    assert isinstance(backend, LandmarkBackend) and backend.name == "provided"
    np.testing.assert_allclose(backend(None, ("F001", "T1", 12), None), pts[0], atol=1e-4)
    np.testing.assert_allclose(backend(None, ("SN002", "", 5), None), pts[1], atol=1e-4)
    np.testing.assert_allclose(backend(None, ("img7", "", 0), None), pts[2], atol=1e-4)
    out = backend(None, ("F001", "T1", 12), None)
    assert out.shape == (68, 2) and out.dtype == np.float32
    assert backend(None, ("F001", "T1", 13), None) is None
    assert backend(None, ("M999", "T1", 12), None) is None


def test_provided_errors(tmp_path):
    df, _ = _table()
    df.drop(columns=["x5", "y67"]).to_csv(tmp_path / "landmarks.csv", index=False)
    with pytest.raises(ValueError, match="missing columns x5, y67"):
        ProvidedLandmarks(tmp_path)
    with pytest.raises(FileNotFoundError, match="landmark file not found"):
        ProvidedLandmarks(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="landmarks.parquet or landmarks.csv"):
        ProvidedLandmarks(tmp_path / "empty")
    with pytest.raises(ValueError, match="choose one of provided, fan, dlib, auto"):
        make_landmark_backend("mtcnn5")


def _fan_at(url: str, body: bytes = b"") -> weights_cache.WeightFile:
    return dataclasses.replace(
        weights_cache.FAN_2D, url=url, sha256=hashlib.sha256(body).hexdigest()
    )


def test_fan_unavailable_weights_name_url_file_and_folder(tmp_path, unreachable_url):
    spec = _fan_at(unreachable_url)
    with pytest.raises(MissingWeightsError) as err:
        FanLandmarks(device="cpu", torch_home=tmp_path, weights=spec)
    msg = str(err.value)
    assert "\n" not in msg and fan_weight_files()[0] in msg and unreachable_url in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg and "dlib" in msg


def _blob_following_fan_weights():
    """A 2DFAN-4 state dict whose 68 heatmaps all peak where the input crop is brightest:
    every convolution branch is zeroed so each ConvBlock passes its residual, the first
    convolution averages RGB, and the head copies channel 0 to all 68 heatmaps."""
    import torch
    from face_alignment.models import FAN

    with torch.device("meta"):  # shapes only: skip 24M random initialisations
        shapes = {k: v.shape for k, v in FAN(4).state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        leaf = name.split(".")[-1]
        if leaf == "num_batches_tracked":
            state[name] = torch.zeros((), dtype=torch.long)
        elif leaf in ("running_var",) or (leaf == "weight" and len(shape) == 1):
            state[name] = torch.ones(shape)  # batch norms are identities
        else:
            state[name] = torch.zeros(shape)
    state["conv1.weight"][0, :, 3, 3] = 1.0 / 3.0
    for name, value in state.items():
        if name.endswith("downsample.2.weight"):
            value[0, 0] = 1.0
        if name.startswith("conv_last") and name.endswith("weight"):
            value[0, 0] = 1.0
        if name[0] == "l" and name[1:].split(".")[0].isdigit() and name.endswith("weight"):
            value[:, 0] = 1.0
    return state, torch


@pytest.mark.slow
def test_fan_downloads_its_weights_then_runs_on_them(tmp_path, file_server):
    state, torch = _blob_following_fan_weights()
    buf = io.BytesIO()
    torch.save(state, buf)
    spec = _fan_at(file_server.add("/2dfan4.pth", buf.getvalue()), buf.getvalue())
    backend = FanLandmarks(device="cpu", torch_home=tmp_path, weights=spec)
    assert (tmp_path / "hub" / "checkpoints" / fan_weight_files()[0]).is_file()
    image = np.zeros((300, 320, 3), np.uint8)
    blob = np.array([170.0, 140.0])  # a bright spot inside the face box, off its centre
    yy, xx = np.mgrid[:300, :320]
    image[...] = (255 * np.exp(-((xx - blob[0]) ** 2 + (yy - blob[1]) ** 2) / 200.0))[..., None]
    box = np.array([90.0, 80.0, 230.0, 230.0])
    pts = backend(image, ("F001", "T1", 1), box)
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    assert (pts[:, 0] > box[0]).all() and (pts[:, 0] < box[2]).all()
    assert (pts[:, 1] > box[1]).all() and (pts[:, 1] < box[3]).all()
    assert np.linalg.norm(pts - blob, axis=1).max() < 10.0
    assert backend(image, ("F001", "T1", 1), np.array([5, 5, 5, 5.0])) is None


# -- dlib ---------------------------------------------------------------------------------


def _astronaut_marks() -> tuple[np.ndarray, np.ndarray]:
    with MARKS.open() as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    idx = np.array([int(r["point"]) for r in rows])
    return idx, np.array([[float(r["x"]), float(r["y"])] for r in rows])


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()


@pytest.fixture(scope="module")
def dlib_backend() -> DlibLandmarks:
    return DlibLandmarks()


def test_dlib_puts_68_points_on_the_astronaut_near_hand_marks(astronaut, dlib_backend):
    idx, marks = _astronaut_marks()
    assert len(idx) >= 12
    iod = (
        np.linalg.norm(marks[idx == 36] + marks[idx == 39] - marks[idx == 42] - marks[idx == 45])
        / 2
    )
    for box in (None, np.array([181.05, 62.16, 267.75, 172.05])):  # own detector; MTCNN's box
        pts = dlib_backend(astronaut, ("astronaut", "", 0), box)
        assert pts.shape == (68, 2) and pts.dtype == np.float32
        err = np.linalg.norm(pts[idx] - marks, axis=1)
        assert err.mean() < 0.08 * iod, (box, err.round(1))  # measured 2.6-2.7 px, IOD 44 px
        assert err.max() < 0.16 * iod, (box, err.round(1))


def test_dlib_detect_boxes_round_trip_and_follow_min_face_size(astronaut, dlib_backend):
    dets = dlib_backend.detect(astronaut)
    assert len(dets) == 1
    face = dets[0]
    assert face.score > 0 and face.points5.shape == (5, 2)
    assert face.points5[0, 0] < face.points5[1, 0]  # left eye is the one on the image left
    pts = dlib_backend(astronaut, ("astronaut", "", 0), face.box)
    lo, hi = face.box[:2], face.box[2:]
    margin = 0.1 * (hi - lo)  # jaw and chin may reach just past an MTCNN-style box
    assert ((pts > lo - margin) & (pts < hi + margin)).all()
    # The box given back maps onto the detector's own box: same points as without a box.
    np.testing.assert_array_equal(pts, dlib_backend(astronaut, ("astronaut", "", 0), None))
    hog = np.array([179.0, 83.0, 266.0, 170.0])
    np.testing.assert_allclose(hog_box_from_face_box(face_box_from_hog_box(hog)), hog, atol=1e-9)
    # The face is about 88 px: too small at min_face_size 200 (image shrunk to 40%)...
    assert DlibLandmarks(min_face_size=200).detect(astronaut) == []
    # ... found again when the image is twice as large, with boxes in its own pixels.
    import cv2

    big = cv2.resize(astronaut, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    (twice,) = DlibLandmarks(min_face_size=160).detect(big)
    np.testing.assert_allclose(twice.box, 2 * face.box, atol=12)
    assert dlib_backend(astronaut, ("x", "", 0), np.array([5.0, 5.0, 5.0, 5.0])) is None
    assert dlib_backend(np.zeros((64, 64, 3), np.uint8), ("x", "", 0), None) is None


# -- auto ---------------------------------------------------------------------------------


def test_auto_picks_fan_when_its_file_is_present(tmp_path, unreachable_url):
    spec = _fan_at(unreachable_url)
    spec.path(tmp_path).parent.mkdir(parents=True)
    spec.path(tmp_path).write_bytes(b"weights")
    name, why = choose_landmark_backend("auto", torch_home=tmp_path, fan_weights=spec)
    assert name == "fan" and str(spec.path(tmp_path)) in why


def test_auto_picks_fan_when_its_url_answers(tmp_path, file_server):
    spec = _fan_at(file_server.add("/2dfan4.pth", b"weights"))
    name, why = choose_landmark_backend("auto", torch_home=tmp_path, fan_weights=spec)
    assert name == "fan" and "on first use" in why
    assert not spec.path(tmp_path).exists()  # choosing downloads nothing


def test_auto_falls_back_to_dlib_offline_and_says_why(tmp_path, unreachable_url, monkeypatch):
    spec = _fan_at(unreachable_url)
    name, why = choose_landmark_backend("auto", torch_home=tmp_path, fan_weights=spec)
    assert name == "dlib"
    assert unreachable_url in why and "commercial" in why
    monkeypatch.setattr(weights_cache, "FAN_2D", spec)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert make_landmark_backend("auto").name == "dlib"


def test_auto_without_any_68_point_backend_says_how_to_get_one(
    tmp_path, unreachable_url, monkeypatch
):
    monkeypatch.setattr(landmarks, "dlib_unavailable", lambda: "dlib is not installed")
    spec = _fan_at(unreachable_url)
    with pytest.raises(MissingBackendError) as err:
        choose_landmark_backend("auto", torch_home=tmp_path, fan_weights=spec)
    msg = str(err.value)
    assert "\n" not in msg and DLIB_INSTALL in msg
    assert spec.name in msg and str(spec.path(tmp_path).parent) in msg
    assert choose_landmark_backend("dlib") == ("dlib", "asked for")
