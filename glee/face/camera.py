"""Head pose and perspective projection shared by the renderer and the 3DMM fitter.

Conventions (OpenCV camera frame): x to the image right, y down, z away from the
camera. Model coordinates use the same axes, in millimetres, origin near the centre of
the head, the nose tip at negative z. A pose is 6 numbers
(yaw, pitch, roll, tx, ty, tz): angles in radians, translation in mm, tz > 0.
X_cam = R(yaw, pitch, roll) @ X + t;  u = f * X_cam / Z_cam + cx,  v = f * Y_cam / Z_cam + cy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POSE_NAMES = ("yaw", "pitch", "roll", "tx", "ty", "tz")


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in pixels."""

    focal: float
    cx: float
    cy: float

    @classmethod
    def for_image(cls, width: int, height: int, focal_factor: float = 2.0) -> Camera:
        """A camera with focal length `focal_factor * width`, principal point at the centre."""
        return cls(focal=focal_factor * width, cx=width / 2.0, cy=height / 2.0)


def rotation_matrix(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch); inputs broadcast, output (..., 3, 3)."""
    yaw, pitch, roll = np.broadcast_arrays(
        np.asarray(yaw, float), np.asarray(pitch, float), np.asarray(roll, float)
    )
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(*yaw.shape, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*yaw.shape, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(*yaw.shape, 3, 3)
    return rz @ ry @ rx


def to_camera(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Model points (..., N, 3) and poses (..., 6) -> camera-frame points (..., N, 3)."""
    pose = np.asarray(pose, float)
    rot = rotation_matrix(pose[..., 0], pose[..., 1], pose[..., 2])  # (..., 3, 3)
    return points @ np.swapaxes(rot, -1, -2) + pose[..., None, 3:6]


def project(points: np.ndarray, pose: np.ndarray, camera: Camera) -> np.ndarray:
    """Perspective projection of model points (..., N, 3) -> pixels (..., N, 2)."""
    cam = to_camera(points, pose)
    z = cam[..., 2:3]
    return np.concatenate(
        [
            camera.focal * cam[..., 0:1] / z + camera.cx,
            camera.focal * cam[..., 1:2] / z + camera.cy,
        ],
        axis=-1,
    )
