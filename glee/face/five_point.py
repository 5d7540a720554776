"""68 landmarks estimated from MTCNN's five points, for machines without the FAN weights.

The neutral landmarks of the morphable model, seen from the front, are moved onto the five
detected points (eye centres, nose tip, mouth corners) by the least-squares similarity
transform. Eyes land where MTCNN put them, so the JAA-Net alignment is as good as MTCNN's
eyes; the mouth and brows are a neutral face's, so the 3DMM fit of these points recovers
head pose but no expression (f_exp near zero). Use the `fan` landmarks for real
expression coefficients; this is the fallback that keeps inference running offline.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from glee.face.ibug import LEFT_EYE, RIGHT_EYE

NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT = 30, 48, 54  # iBUG points MTCNN's last three match


@lru_cache(maxsize=1)
def neutral_template() -> np.ndarray:
    """(68, 2) frontal neutral landmarks of the built-in morphable model (x right, y down)."""
    from glee.face.default_model import default_model

    model = default_model()
    pts = model.landmarks3d(np.zeros(model.num_shape), np.zeros(model.num_expression))
    return np.asarray(pts, np.float64)[:, :2]


def five_of(landmarks68: np.ndarray) -> np.ndarray:
    """The five MTCNN points of 68 iBUG landmarks: eye centres, nose tip, mouth corners."""
    pts = np.asarray(landmarks68, np.float64)
    return np.stack(
        [
            pts[list(LEFT_EYE)].mean(0),
            pts[list(RIGHT_EYE)].mean(0),
            pts[NOSE_TIP],
            pts[MOUTH_LEFT],
            pts[MOUTH_RIGHT],
        ]
    )


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity (scale, rotation, translation) taking src to dst."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    # Closed form for 2D: dst ~ [[p, -q], [q, p]] @ src + t
    denom = (a**2).sum()
    if denom <= 0:
        raise ValueError("the source points coincide: no similarity transform")
    p = (a * b).sum() / denom
    q = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum() / denom
    rot = np.array([[p, -q], [q, p]])
    return np.concatenate([rot, (mu_d - rot @ mu_s)[:, None]], axis=1)


def landmarks_from_five(points5: np.ndarray) -> np.ndarray:
    """(5, 2) MTCNN points (left eye, right eye, nose, mouth left, mouth right; left as
    seen in the image) -> (68, 2) float32 iBUG landmarks of a neutral face."""
    pts = np.asarray(points5, np.float64)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise ValueError(f"expected five finite (x, y) points, got shape {pts.shape}")
    template = neutral_template()
    m = similarity_fit(five_of(template), pts)
    return (template @ m[:, :2].T + m[:, 2]).astype(np.float32)


class FivePointLandmarks:
    """A landmark backend (glee.face.landmarks interface) serving the 68 points estimated
    from five points that the caller's detector found and `remember`ed under a frame key."""

    name = "mtcnn5"

    def __init__(self) -> None:
        self._points: dict[tuple[str, str, int], np.ndarray] = {}

    def remember(self, key: tuple[str, str, int], points5: np.ndarray) -> None:
        self._points[(str(key[0]), str(key[1]), int(key[2]))] = np.asarray(points5, np.float64)

    def __call__(
        self,
        image: np.ndarray | None,
        key: tuple[str, str, int],
        box: np.ndarray | None = None,
    ) -> np.ndarray | None:
        points5 = self._points.pop((str(key[0]), str(key[1]), int(key[2])), None)
        return None if points5 is None else landmarks_from_five(points5)


__all__ = ["FivePointLandmarks", "five_of", "landmarks_from_five", "neutral_template"]
