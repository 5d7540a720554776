"""JAA-Net-style similarity alignment on the eye centres."""

from __future__ import annotations

import numpy as np
import pytest

from glee.face.alignment import (
    align_face,
    align_face_from_eyes,
    apply_transform,
    eye_centres,
    invert_transform,
    template_eyes,
)
from glee.face.camera import Camera, project
from glee.face.default_model import default_model


def _landmark_set(angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    lm = default_model().landmark_subset()
    uv = project(lm.mean.astype(np.float64), np.array([0, 0, 0, 0, 0, 1000.0]), Camera(512, 0, 0))
    c, s = np.cos(angle), np.sin(angle)
    return scale * uv @ np.array([[c, s], [-s, c]]) + np.array(shift)


@pytest.mark.parametrize(
    "angle,scale,shift,size",
    [(0.0, 1.0, (160, 150), 200), (0.4, 1.7, (220, 180), 200), (-0.7, 0.6, (90, 120), 128)],
)
def test_eyes_land_on_template(angle, scale, shift, size):
    pts = _landmark_set(angle, scale, shift)
    image = np.zeros((360, 400, 3), np.uint8)
    out = align_face(image, pts, size=size)
    assert out.image.shape == (size, size, 3) and out.image.dtype == np.uint8
    left, right = eye_centres(out.landmarks)
    t_left, t_right = template_eyes(size)
    assert np.abs(left - t_left).max() < 0.5 and np.abs(right - t_right).max() < 0.5
    np.testing.assert_allclose(apply_transform(pts, out.transform), out.landmarks)
    back = apply_transform(out.landmarks, invert_transform(out.transform))
    np.testing.assert_allclose(back, pts, atol=1e-9)


def test_transform_agrees_with_warped_image():
    pts = _landmark_set(0.3, 1.4, (200, 170))
    image = np.zeros((360, 400, 3), np.uint8)
    yy, xx = np.mgrid[:360, :400]
    nose = pts[30]
    image[..., 1] = (255 * np.exp(-((xx - nose[0]) ** 2 + (yy - nose[1]) ** 2) / 18.0)).astype(
        np.uint8
    )
    out = align_face(image, pts)
    g = out.image[..., 1].astype(np.float64)
    ay, ax = np.mgrid[:200, :200]
    centroid = np.array([(g * ax).sum(), (g * ay).sum()]) / g.sum()
    assert np.linalg.norm(centroid - out.landmarks[30]) < 0.5


def test_from_eyes_and_errors():
    left, right = np.array([100.0, 120.0]), np.array([150.0, 110.0])
    out = align_face_from_eyes(np.zeros((240, 240, 3), np.uint8), left, right, size=200)
    np.testing.assert_allclose(
        apply_transform(np.stack([left, right]), out.transform),
        np.stack(template_eyes(200)),
        atol=1e-9,
    )
    with pytest.raises(ValueError, match="coincide"):
        align_face_from_eyes(np.zeros((10, 10, 3), np.uint8), left, left)
    with pytest.raises(ValueError, match="68"):
        align_face(np.zeros((10, 10, 3), np.uint8), np.zeros((5, 2)))
