"""Similarity alignment of a face on its eye centres, as JAA-Net aligns faces (DESIGN.md).

The face is rotated so the line through the eye centres is horizontal, scaled by the
inter-ocular distance and cropped to size x size (200 by default; training then takes a
random 176 x 176 crop). The eye centres land on a fixed template:

    left eye  (image left, iBUG 36-41)  at (0.5 - 0.0925, 0.425) * size
    right eye (image right, iBUG 42-47) at (0.5 + 0.0925, 0.425) * size

i.e. an inter-ocular distance of 0.185 * size (37 px in a 200 crop) with the eyes 0.075 *
size above the centre. JAA-Net crops 2.9x the extent of its 49 inner landmarks around their
bounding-box centre; for an average face those extents are about 1.85x the inter-ocular
distance, centred about 0.4x the inter-ocular distance below the eyes, which gives the
template above. All coordinates are pixels with pixel centres at integers (OpenCV's
convention), so `apply_transform(landmarks, transform)` lands on the warped image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from glee.face.ibug import LEFT_EYE, RIGHT_EYE

TEMPLATE_EYE_DISTANCE = 0.185  # inter-ocular distance as a fraction of the crop side
TEMPLATE_EYE_HEIGHT = 0.425  # eye line height as a fraction of the crop side


@dataclass
class Aligned:
    image: np.ndarray  # (size, size, 3) uint8
    transform: np.ndarray  # (2, 3) float64, source pixels -> aligned pixels
    landmarks: np.ndarray | None  # (68, 2) in aligned pixels (None when aligned from eyes)


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the image-left (iBUG 36-41) and image-right (42-47) eyes, each (2,)."""
    pts = np.asarray(landmarks, np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected 68 iBUG landmarks of shape (68, 2), got {pts.shape}")
    return pts[list(LEFT_EYE)].mean(0), pts[list(RIGHT_EYE)].mean(0)


def template_eyes(size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Where the left and right eye centres land in a size x size aligned crop."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    half = 0.5 * TEMPLATE_EYE_DISTANCE * size
    y = TEMPLATE_EYE_HEIGHT * size
    return np.array([0.5 * size - half, y]), np.array([0.5 * size + half, y])


def similarity_from_eyes(
    left_eye: np.ndarray, right_eye: np.ndarray, size: int = 200
) -> np.ndarray:
    """The (2, 3) similarity taking the two eye centres onto the template."""
    src_l = np.asarray(left_eye, np.float64).reshape(2)
    src_r = np.asarray(right_eye, np.float64).reshape(2)
    dst_l, dst_r = template_eyes(size)
    # As complex numbers z' = a z + b: a rotates and scales, b translates.
    src = complex(*(src_r - src_l))
    if not np.isfinite(src) or abs(src) < 1e-6:
        raise ValueError("eye centres coincide or are not finite; cannot align this face")
    a = complex(*(dst_r - dst_l)) / src
    b = complex(*dst_l) - a * complex(*src_l)
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def apply_transform(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Map points (..., 2) through a (2, 3) affine transform."""
    pts = np.asarray(points, np.float64)
    m = np.asarray(transform, np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """The (2, 3) inverse of a (2, 3) affine transform."""
    return cv2.invertAffineTransform(np.asarray(transform, np.float64))


def _warp(image: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    return cv2.warpAffine(
        image,
        transform,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def align_face(image: np.ndarray, landmarks68: np.ndarray, size: int = 200) -> Aligned:
    """Rotate, scale and crop a face so its eye centres sit on the template."""
    pts = np.asarray(landmarks68, np.float64)
    left, right = eye_centres(pts)
    m = similarity_from_eyes(left, right, size)
    return Aligned(_warp(image, m, size), m, apply_transform(pts, m))


def align_face_from_eyes(
    image: np.ndarray, left_eye: np.ndarray, right_eye: np.ndarray, size: int = 200
) -> Aligned:
    """The same alignment from two eye points (MTCNN's five points) when there are no 68."""
    m = similarity_from_eyes(left_eye, right_eye, size)
    return Aligned(_warp(image, m, size), m, None)
