"""The renderer draws what the model says: landmarks are the projected model landmarks, each AU
changes the pixels where it should, and the same seed gives the same bytes."""

from __future__ import annotations

import numpy as np
import pytest

from glee.datasets.records import ALL_AUS
from glee.face.action_units import expression_from_aus
from glee.face.camera import Camera, project
from glee.face.default_model import default_model
from glee.synthetic.contact_sheet import contact_sheet
from glee.synthetic.render import (
    default_pose_and_camera,
    render_face,
    rendered_expression,
    sample_identity,
)

SIZE = (160, 160)


@pytest.fixture(scope="module")
def model():
    return default_model()


@pytest.fixture(scope="module")
def identity(model):
    ident = sample_identity(np.random.default_rng(5), model)
    ident.resting[:] = 0.0  # a neutral resting face, so an AU alone makes the difference
    ident.wrinkle = 0.0
    return ident


def _au(**levels: float) -> np.ndarray:
    au = np.zeros(len(ALL_AUS), np.float32)
    for key, value in levels.items():
        au[ALL_AUS.index(int(key[2:]))] = value
    return au


def _render(model, identity, au, pose=None, seed=0, **kw):
    camera = Camera.for_image(SIZE[1], SIZE[0])
    if pose is None:
        pose = np.array([0.1, -0.05, 0.03, 0.0, -8.0, 2 * SIZE[1] * 140 / (0.55 * SIZE[1])])
    expression = rendered_expression(expression_from_aus(au, model), identity)
    rng = np.random.default_rng(seed)
    return render_face(model, identity, expression, au, pose, camera, SIZE, rng, **kw), camera, pose


def _region_diff(a: np.ndarray, b: np.ndarray, centre: np.ndarray, half: float) -> float:
    """Mean absolute pixel difference in a square around `centre`."""
    x0, y0 = np.maximum(np.floor(centre - half).astype(int), 0)
    x1, y1 = np.ceil(centre + half).astype(int)
    return float(np.abs(a[y0:y1, x0:x1].astype(int) - b[y0:y1, x0:x1].astype(int)).mean())


@pytest.fixture(scope="module")
def neutral(model, identity):
    return _render(model, identity, _au())[0]


def test_landmarks_are_projected_model_landmarks(model, identity):
    au = _au(AU12=4, AU25=2)
    res, camera, pose = _render(model, identity, au)
    expression = rendered_expression(expression_from_aus(au, model), identity)
    expected = project(model.landmarks3d(identity.shape, expression), pose, camera)
    np.testing.assert_allclose(res.landmarks, expected, atol=1e-3)
    assert res.image.shape == (*SIZE, 3) and res.image.dtype == np.uint8
    assert res.landmarks.dtype == np.float32 and res.landmarks.shape == (68, 2)
    x0, y0, x1, y1 = res.box
    assert x0 <= res.landmarks[:, 0].min() and res.landmarks[:, 0].max() <= x1
    assert y0 < res.landmarks[:, 1].min() and res.landmarks[:, 1].max() <= y1  # forehead above


def test_same_seed_same_bytes(model, identity):
    au = _au(AU6=3, AU17=2)
    a = _render(model, identity, au, seed=3, noise=3.0, blur=0.7, jpeg_quality=85)[0]
    b = _render(model, identity, au, seed=3, noise=3.0, blur=0.7, jpeg_quality=85)[0]
    c = _render(model, identity, au, seed=4, noise=3.0, blur=0.7, jpeg_quality=85)[0]
    assert a.image.tobytes() == b.image.tobytes()
    assert a.image.tobytes() != c.image.tobytes()


def _brow_and_mouth(res):
    lm = res.landmarks
    return lm[17:27].mean(0), lm[48:60].mean(0)


@pytest.mark.parametrize(
    ("levels", "where"),
    [
        ({"AU12": 5}, "mouth"),
        ({"AU1": 5, "AU2": 5}, "brow"),
        ({"AU4": 5}, "brow"),
        ({"AU26": 5}, "mouth"),
        ({"AU15": 5}, "mouth"),
    ],
)
def test_au_changes_the_right_region(model, identity, neutral, levels, where):
    res = _render(model, identity, _au(**levels))[0]
    brow, mouth = _brow_and_mouth(neutral)
    half = 0.09 * SIZE[1]
    d_brow = _region_diff(res.image, neutral.image, brow, half)
    d_mouth = _region_diff(res.image, neutral.image, mouth, half)
    near, far = (d_mouth, d_brow) if where == "mouth" else (d_brow, d_mouth)
    assert near > 2.0 * far + 0.5, (levels, d_brow, d_mouth)


@pytest.mark.parametrize(
    ("au", "region"),
    [
        (6, "eyes_cheeks"),
        (9, "nose"),
        (14, "mouth_wide"),
        (17, "chin"),
        (23, "mouth"),
        (24, "mouth"),
    ],
)
def test_appearance_aus_change_pixels_not_landmarks(model, identity, neutral, au, region):
    res = _render(model, identity, _au(**{f"AU{au}": 5}))[0]
    moved = np.linalg.norm(res.landmarks - neutral.landmarks, axis=1).max()
    assert moved < 1.5  # pixels: the geometry barely changes ...
    lm = neutral.landmarks
    centre = {
        "eyes_cheeks": 0.5 * (lm[36] + lm[45]) + 0.25 * (lm[30] - lm[27]),
        "nose": lm[28:31].mean(0),
        "mouth": lm[48:60].mean(0),
        "mouth_wide": lm[48:60].mean(0),
        "chin": 0.5 * (lm[57] + lm[8]),
    }[region]
    half = {"eyes_cheeks": 0.22, "nose": 0.08, "mouth": 0.1, "mouth_wide": 0.16, "chin": 0.08}[
        region
    ] * SIZE[1]
    changed = _region_diff(res.image, neutral.image, centre, half)
    elsewhere = _region_diff(res.image, neutral.image, lm[17:27].mean(0), 0.06 * SIZE[1])
    assert changed > 0.4 and changed > 2 * elsewhere, (au, changed, elsewhere)  # ... the look does


def test_poses_keep_landmarks_inside(model):
    rng = np.random.default_rng(11)
    for size in ((128, 128), (120, 160)):
        for _ in range(40):
            pose, camera = default_pose_and_camera(rng, size, max_angle_deg=25)
            assert camera == Camera.for_image(size[1], size[0])
            assert np.abs(pose[:3]).max() <= np.radians(25) + 1e-9
            shape = np.clip(rng.normal(size=60), -3, 3)
            lm = project(model.landmarks3d(shape, np.zeros(51)), pose, camera)
            assert (lm >= 0).all() and (lm[:, 0] < size[1]).all() and (lm[:, 1] < size[0]).all()
            width = lm[:, 0].max() - lm[:, 0].min()
            assert 0.3 * min(size) < width < 0.75 * min(size)


def test_extreme_pose_renders_with_face_inside(model):
    rng = np.random.default_rng(2)
    ident = sample_identity(rng, model)
    for yaw, pitch, roll in ((25, 0, 0), (-25, 20, -25), (0, -25, 25)):
        pose, camera = default_pose_and_camera(rng, SIZE, max_angle_deg=0)
        pose[:3] = np.radians([yaw, pitch, roll])
        res = render_face(model, ident, ident.resting, np.zeros(17), pose, camera, SIZE, rng)
        assert (res.landmarks >= 0).all() and (res.landmarks < SIZE[1]).all()
        # the face (skin) is drawn where the landmarks say: the nose tip differs from the corners
        nose = res.image[int(res.landmarks[30, 1]), int(res.landmarks[30, 0])].astype(int)
        assert (
            np.abs(nose - res.image[0, 0]).sum() > 0 or np.abs(nose - res.image[-1, -1]).sum() > 0
        )


def test_bad_inputs_get_clear_errors(model, identity):
    camera = Camera.for_image(64, 64)
    pose = np.array([0, 0, 0, 0, 0, 500.0])
    with pytest.raises(ValueError, match="expression"):
        render_face(model, identity, np.zeros(50), np.zeros(17), pose, camera, (64, 64))
    with pytest.raises(ValueError, match="au"):
        render_face(model, identity, np.zeros(51), np.zeros(12), pose, camera, (64, 64))
    with pytest.raises(ValueError, match="tz"):
        render_face(model, identity, np.zeros(51), np.zeros(17), pose * 0, camera, (64, 64))


def test_contact_sheet_layout(neutral):
    sheet = contact_sheet([neutral] * 7, [f"face {i}" for i in range(7)], cols=3)
    h, w = SIZE
    strip = max(16, h // 9)
    assert sheet.shape == (3 * (h + strip), 3 * w, 3)
    np.testing.assert_array_equal(sheet[:h, w : 2 * w], neutral.image)
    assert (sheet[h : h + strip, :w] < 128).any()  # a caption is written
    with pytest.raises(ValueError):
        contact_sheet([neutral], ["a", "b"])
