"""The built-in sparse face: deterministic, valid, plausible; the AU table maps onto it."""

from __future__ import annotations

import numpy as np
import pytest

from glee.datasets.records import ALL_AUS
from glee.face.action_units import AU_BLENDSHAPES, AU_NAMES, au_matrix, expression_from_aus
from glee.face.default_model import (
    IBUG_MIRROR,
    build_default_model,
    default_model,
    landmark_moving_expressions,
)
from glee.face.morphable_model import MorphableModel


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return default_model()


def test_build_is_deterministic(model):
    other = build_default_model()
    np.testing.assert_array_equal(other.mean, model.mean)
    np.testing.assert_array_equal(other.shape_basis, model.shape_basis)
    np.testing.assert_array_equal(other.expression_basis, model.expression_basis)
    assert other.expression_names == model.expression_names
    assert other.point_names == model.point_names


def test_sizes_and_names(model):
    assert model.num_shape == 60
    assert model.num_expression == 51
    assert len(set(model.expression_names)) == 51
    assert len(set(model.point_names)) == model.num_vertices
    np.testing.assert_array_equal(model.landmark_index, np.arange(68))
    for name in ("cheek_l", "cheek_r", "forehead_c", "hairline_c", "chin_boss", "nasolabial_l1"):
        model.point_index(name)


def test_mean_face_proportions(model):
    lm = model.mean[:68]
    width = lm[16, 0] - lm[0, 0]
    assert 130 <= width <= 150  # bizygomatic width, mm
    assert lm[30, 2] == lm[:, 2].min()  # nose tip nearest the camera
    assert lm[8, 1] == lm[:, 1].max()  # chin lowest
    # mirror symmetry of the mean face
    mirrored = lm[list(IBUG_MIRROR)] * [-1, 1, 1]
    np.testing.assert_allclose(mirrored, lm, atol=1e-5)


def test_shape_bases_are_orthogonal_and_rigid_free(model):
    s = model.shape_basis.reshape(60, -1).astype(np.float64)
    gram = s @ s.T
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-3 * np.diag(gram).min()
    # no translation component: the mean displacement of every basis is ~0
    assert np.abs(model.shape_basis.mean(1)).max() < 1e-3
    # PCA-like spectrum: descending RMS displacement
    rms = np.sqrt((model.shape_basis**2).sum(-1).mean(-1))
    assert (np.diff(rms) <= 1e-4).all()


def _plausible(lm: np.ndarray) -> bool:
    """Ordering invariants a face keeps: brows above eyes above nose tip above mouth above
    chin, upper lids above lower lids, eyes apart, mouth inside the jaw."""
    y = lm[:, 1]
    x = lm[:, 0]
    ok = y[[19, 24]].max() < y[[37, 38, 43, 44]].min()
    ok &= y[[40, 41, 46, 47]].max() < y[33]
    ok &= y[33] < y[[50, 51, 52]].min()
    ok &= y[[56, 57, 58]].max() < y[8]
    ok &= (y[[37, 38, 43, 44]] < y[[41, 40, 47, 46]]).all()
    ok &= x[39] < x[42] and x[0] < x[48] < x[54] < x[16]
    width = x[16] - x[0]
    return bool(ok and 100 < width < 180)


def test_coefficients_in_range_give_plausible_faces(model):
    rng = np.random.default_rng(0)
    lms = model.landmarks3d(rng.uniform(-3, 3, (200, 60)), np.zeros((200, 51)))
    assert all(_plausible(lm) for lm in lms)
    extremes = np.concatenate([3 * np.eye(60), -3 * np.eye(60)])
    assert all(_plausible(lm) for lm in model.landmarks3d(extremes, np.zeros((120, 51))))
    # with an expression on top (AUs at apex, one at a time)
    for k in range(len(ALL_AUS)):
        au = np.zeros(len(ALL_AUS))
        au[k] = 5
        shape = rng.uniform(-2, 2, 60)
        assert _plausible(model.landmarks3d(shape, expression_from_aus(au, model))), ALL_AUS[k]


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "default.npz"
    model.save(path)
    loaded = MorphableModel.load(path)
    np.testing.assert_array_equal(loaded.mean, model.mean)
    np.testing.assert_array_equal(loaded.shape_basis, model.shape_basis)
    np.testing.assert_array_equal(loaded.expression_basis, model.expression_basis)
    np.testing.assert_array_equal(loaded.triangles, model.triangles)
    assert loaded.expression_names == model.expression_names
    assert loaded.point_names == model.point_names
    rng = np.random.default_rng(1)
    s, e = rng.normal(size=60), rng.uniform(0, 1, 51)
    np.testing.assert_allclose(loaded.vertices(s, e), model.vertices(s, e), atol=1e-4)


def test_lateral_blendshapes_mirror_each_other(model):
    for name in model.expression_names:
        if not name.endswith("_l"):
            continue
        left = model.expression_basis[model.expression_index(name)][:68]
        right = model.expression_basis[model.expression_index(name[:-2] + "_r")][:68]
        np.testing.assert_allclose(right[list(IBUG_MIRROR)] * [-1, 1, 1], left, atol=1e-5)
        # the left variant moves the subject's left side (x > 0) of the face more
        moved = np.linalg.norm(left, axis=1)
        assert moved[model.mean[:68, 0] > 0].sum() > moved[model.mean[:68, 0] < 0].sum(), name


def test_blendshapes_are_local_and_distinct(model):
    moving = landmark_moving_expressions(model)
    assert 25 <= len(moving) <= 45
    for quiet in ("cheek_raise_l", "dimple_r", "chin_raise", "lip_tighten", "lip_press"):
        assert quiet not in moving  # appearance-cue AUs barely move landmarks
    for loud in ("jaw_drop", "lip_corner_pull_l", "brow_inner_raise_r", "eye_blink_l"):
        assert loud in moving
    # no two landmark-moving blendshapes share a direction in the image plane
    idx = [model.expression_index(n) for n in moving]
    e = model.expression_basis[idx][:, :68, :2].reshape(len(idx), -1).astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    cos = e @ e.T - np.eye(len(idx))
    assert cos.max() < 0.95
    # locality: each expression moves fewer than half of the points
    counts = (np.linalg.norm(model.expression_basis, axis=-1) > 1e-6).sum(1)
    assert counts.max() < model.num_vertices / 2
    with pytest.raises(ValueError):
        landmark_moving_expressions(model, tol=-1)


def test_au_table_covers_all_aus(model):
    assert set(AU_BLENDSHAPES) == set(ALL_AUS) == set(AU_NAMES)
    for au, drives in AU_BLENDSHAPES.items():
        for name, weight in drives:
            model.expression_index(name)  # raises for an unknown blendshape
            assert 0 < weight <= 1, au
    m = au_matrix(model)
    assert m.shape == (17, 51)
    assert (m.sum(1) > 0).all()


def test_expression_from_aus(model):
    au = np.zeros((2, 17))
    au[0, ALL_AUS.index(12)] = 5.0
    au[1, ALL_AUS.index(12)] = 2.5
    f = expression_from_aus(au, model)
    assert f.shape == (2, 51)
    i = model.expression_index("lip_corner_pull_l")
    assert f[0, i] == pytest.approx(1.0) and f[1, i] == pytest.approx(0.5)
    assert f[0].sum() == pytest.approx(2.0)  # AU12 drives exactly the l and r pulls
    np.testing.assert_array_equal(expression_from_aus(np.full(17, 50.0), model).max(), 1.0)
    assert expression_from_aus(np.zeros(17), model).sum() == 0
    with pytest.raises(ValueError, match="ALL_AUS"):
        expression_from_aus(np.zeros(12), model)


def test_the_default_model_is_the_same_whatever_the_blas_threads():
    """A one-thread Ray worker must fit the face a multi-thread process rendered: the
    shape bases' near-degenerate eigenvectors turn with the BLAS thread count (3.6 mm
    between 1 and 2 threads) unless the model is built on one thread."""
    import hashlib
    import os
    import subprocess
    import sys

    code = (
        "import hashlib, sys; from glee.face.default_model import default_model; "
        "sys.stdout.write(hashlib.sha256(default_model().shape_basis.tobytes()).hexdigest())"
    )
    out = {}
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        out[threads] = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
    assert out["1"] == out["2"], out
    assert len(out["1"]) == len(hashlib.sha256().hexdigest())
