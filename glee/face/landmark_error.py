"""How far detected 68-point landmarks lie from the truth: the mean point-to-point distance
in pixels and as a share of the inter-ocular distance (the distance between the eye
centres, iBUG points 36-41 and 42-47), the normalisation 300-W and FAN report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)


def inter_ocular(landmarks: np.ndarray) -> np.ndarray:
    """(N,) distance between the eye centres of (N, 68, 2) landmarks."""
    lms = np.asarray(landmarks, np.float64)
    return np.linalg.norm(lms[:, LEFT_EYE].mean(1) - lms[:, RIGHT_EYE].mean(1), axis=1)


@dataclass(frozen=True)
class LandmarkError:
    mean_px: float  # mean over faces of the mean point-to-point distance
    mean_iod: float  # the same per face over its inter-ocular distance, as a fraction


def landmark_error(found: np.ndarray, truth: np.ndarray) -> LandmarkError:
    """Error of (N, 68, 2) `found` landmarks against the (N, 68, 2) `truth`."""
    found, truth = np.asarray(found, np.float64), np.asarray(truth, np.float64)
    if found.shape != truth.shape or found.shape[1:] != (68, 2):
        raise ValueError(f"need two (N, 68, 2) arrays, got {found.shape} and {truth.shape}")
    if len(found) == 0:
        return LandmarkError(float("nan"), float("nan"))
    per_face = np.linalg.norm(found - truth, axis=2).mean(1)
    return LandmarkError(float(per_face.mean()), float((per_face / inter_ocular(truth)).mean()))
