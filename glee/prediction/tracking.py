"""Face ids that stay with a face across the frames of a video (or a folder of frames).

`assign_face_ids` walks the faces of an input frame by frame, in order, and matches the
faces of each frame to the tracks seen so far: one-to-one, by the Hungarian method
(scipy's `linear_sum_assignment`) on a cost that adds the boxes' non-overlap (1 - IoU) to
the mean distance of the 68 landmarks in face sizes (the square root of the box area).
A face that matches no track starts a new one with the next free id; a track unseen for
more than `max_gap` frames is closed, so an id is never handed to a different face that
turns up later where the first one was. New tracks of one frame are numbered by
descending box size, so a photo (one frame) gets its faces numbered largest first.

Pure NumPy / SciPy: `glee_platform.predict` runs it on the driver once the Ray workers
have returned every frame's boxes and landmarks, which keeps the ids the same whatever
way the frames were cut into chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from glee.face.detection import box_iou

MIN_IOU = 0.3  # a match needs this much box overlap ...
MAX_LANDMARK_SHIFT = 0.5  # ... or landmarks within half a face size of the track's
MAX_GAP = 30  # frames a track may go unseen (1 s at 30 frames/s) and keep its id
_FORBIDDEN = 1e6


@dataclass(frozen=True)
class Face:
    """One face of a frame: its box (x0, y0, x1, y1) and, when it has them, its 68
    landmarks (68, 2), both in image pixels."""

    box: np.ndarray
    landmarks: np.ndarray | None = None

    @property
    def size(self) -> float:
        """The square root of the box area, in pixels (1 at least)."""
        x0, y0, x1, y1 = np.asarray(self.box, np.float64)
        return float(max(np.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0)), 1.0))


@dataclass
class _Track:
    id: int
    face: Face
    frame: int  # the last frame the track was seen in


def _shift(track: Face, face: Face) -> float:
    """How far `face` is from `track` in the track's face sizes: the mean distance of the
    68 landmarks where both have them, else the distance of the box centres."""
    if track.landmarks is not None and face.landmarks is not None:
        d = np.linalg.norm(np.asarray(track.landmarks) - np.asarray(face.landmarks), axis=1)
        return float(d.mean()) / track.size
    a, b = np.asarray(track.box, np.float64), np.asarray(face.box, np.float64)
    centre = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
    return float(centre) / track.size


def match_cost(tracks: Sequence[Face], faces: Sequence[Face]) -> np.ndarray:
    """(tracks, faces) costs 1 - IoU + landmark shift; pairs that neither overlap by
    MIN_IOU nor lie within MAX_LANDMARK_SHIFT cost _FORBIDDEN (never matched)."""
    cost = np.full((len(tracks), len(faces)), _FORBIDDEN)
    if not tracks or not faces:
        return cost
    iou = box_iou(np.stack([t.box for t in tracks]), np.stack([f.box for f in faces]))
    for i, t in enumerate(tracks):
        for j, f in enumerate(faces):
            shift = _shift(t, f)
            if iou[i, j] >= MIN_IOU or shift <= MAX_LANDMARK_SHIFT:
                cost[i, j] = 1.0 - iou[i, j] + shift
    return cost


def assign_face_ids(
    frames: Sequence[tuple[int, Sequence[Face]]], max_gap: int = MAX_GAP
) -> list[list[int]]:
    """The face id of every face: `frames` is (frame number, that frame's faces) in frame
    order; the result has one list per frame, an id per face, in the faces' order."""
    from scipy.optimize import linear_sum_assignment

    tracks: list[_Track] = []
    next_id = 0
    out: list[list[int]] = []
    for number, faces in frames:
        tracks = [t for t in tracks if number - t.frame <= max_gap]
        ids = [-1] * len(faces)
        cost = match_cost([t.face for t in tracks], list(faces))
        if cost.size:
            for i, j in zip(*linear_sum_assignment(cost)):
                if cost[i, j] < _FORBIDDEN:
                    ids[j] = tracks[i].id
                    tracks[i].face, tracks[i].frame = faces[j], number
        new = sorted((j for j in range(len(faces)) if ids[j] < 0), key=lambda j: -faces[j].size)
        for j in new:
            ids[j] = next_id
            tracks.append(_Track(next_id, faces[j], number))
            next_id += 1
        out.append(ids)
    return out


__all__ = ["MAX_GAP", "Face", "assign_face_ids", "match_cost"]
