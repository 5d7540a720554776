"""Landmark backends: provided tables and face-alignment's FAN on test-written weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from glee.face.landmarks import (
    FanLandmarks,
    LandmarkBackend,
    MissingWeightsError,
    ProvidedLandmarks,
    fan_weight_files,
    make_landmark_backend,
)


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
    with pytest.raises(ValueError, match="choose one of provided, fan"):
        make_landmark_backend("dlib")


def test_fan_missing_weights_names_files_and_folder(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        FanLandmarks(device="cpu", torch_home=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and fan_weight_files()[0] in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg


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
def test_fan_real_loading_and_inference_path(tmp_path):
    state, torch = _blob_following_fan_weights()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / fan_weight_files()[0])
    backend = FanLandmarks(device="cpu", torch_home=tmp_path)
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
