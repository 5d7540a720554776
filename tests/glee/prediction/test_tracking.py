"""Face ids across frames: the Hungarian match on box overlap and landmark distance."""

from __future__ import annotations

import numpy as np

from glee.face.detection import box_iou
from glee.prediction.tracking import Face, assign_face_ids


def _face(cx: float, cy: float, size: float, with_landmarks: bool = True) -> Face:
    """A face box of side `size` centred at (cx, cy); landmarks a fixed pattern in it."""
    box = np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
    pattern = np.random.default_rng(0).uniform(-0.4, 0.4, (68, 2))
    return Face(box, pattern * size + [cx, cy] if with_landmarks else None)


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    np.testing.assert_allclose(box_iou(a, b)[0], [50 / 150, 0.0, 1.0])


def test_ids_follow_each_face_whatever_order_the_frame_lists_them():
    """Two faces walk towards each other and swap sizes; each frame lists them in a random
    order. The ids stay with the faces (the larger is 0 at the start only)."""
    rng = np.random.default_rng(1)
    frames, truth = [], []
    for t in range(20):
        left = _face(100 + 6 * t, 200, 120 - 3 * t)  # shrinks
        right = _face(500 - 6 * t, 200, 60 + 3 * t)  # grows past the left one
        order = rng.permutation(2)
        frames.append((t + 1, [(left, right)[k] for k in order]))
        truth.append([("left", "right")[k] for k in order])
    ids = assign_face_ids(frames)
    for names, got in zip(truth, ids):
        assert dict(zip(names, got)) == {"left": 0, "right": 1}


def test_a_face_that_appears_gets_a_new_id_and_a_gap_keeps_or_closes_a_track():
    a, b = _face(100, 100, 80), _face(400, 100, 80)
    frames = [
        (1, [a]),
        (2, [a, b]),  # b appears: a new id
        (3, [b]),  # a leaves ...
        (10, [a, b]),  # ... and is back 8 frames later: its id again (gap <= max_gap)
        (60, [_face(103, 101, 80, with_landmarks=False)]),  # 50 frames on: a new face
    ]
    assert assign_face_ids(frames, max_gap=30) == [[0], [0, 1], [1], [0, 1], [2]]


def test_a_photo_numbers_its_faces_largest_first_and_far_faces_never_match():
    small, big, mid = _face(50, 50, 30), _face(300, 300, 200), _face(600, 80, 90)
    assert assign_face_ids([(1, [small, big, mid])]) == [[2, 0, 1]]
    # a face that jumps across the frame between two frames is a new face, not a match
    assert assign_face_ids([(1, [small]), (2, [_face(600, 600, 30)])]) == [[0], [1]]
