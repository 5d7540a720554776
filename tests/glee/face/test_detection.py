"""MTCNN face detection on a real photograph, and alignment from its five points."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from glee.face.alignment import align_face_from_eyes, apply_transform, template_eyes
from glee.face.detection import Detection, FaceDetector, largest_face


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(device="cpu")


def test_finds_astronaut_face_and_aligns_it(detector):
    image = data.astronaut()
    dets = detector.detect(image)
    assert dets, "MTCNN found no face in skimage.data.astronaut()"
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    face = largest_face(dets)
    x0, y0, x1, y1 = face.box
    assert 150 < (x0 + x1) / 2 < 300 and 60 < (y0 + y1) / 2 < 175
    assert 170 < x0 + 10 and x1 - 10 < 280 and 50 < y0 + 10 and y1 - 10 < 185
    assert face.points5.shape == (5, 2) and face.points5[0, 0] < face.points5[1, 0]

    aligned = align_face_from_eyes(image, face.points5[0], face.points5[1], size=200)
    eyes = apply_transform(face.points5[:2], aligned.transform)
    np.testing.assert_allclose(eyes, np.stack(template_eyes(200)), atol=2.0)
    # Detect again on the aligned crop: its eyes are where the template says.
    again = largest_face(detector.detect(aligned.image))
    assert again is not None
    np.testing.assert_allclose(again.points5[:2], np.stack(template_eyes(200)), atol=3.0)


def test_batch_matches_single_and_empty_image(detector):
    image = np.ascontiguousarray(data.astronaut()[::2, ::2])  # (256, 256, 3), faster
    blank = np.full_like(image, 127)
    batch = detector.detect_batch([image, blank])
    assert batch[1] == []
    single = detector.detect(image)
    np.testing.assert_allclose(batch[0][0].box, single[0].box, atol=1.0)
    assert largest_face([]) is None
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(image.astype(np.float32))


def test_largest_face_picks_biggest_box():
    small = Detection(np.array([0, 0, 10, 10.0]), 0.99, np.zeros((5, 2)))
    big = Detection(np.array([0, 0, 50, 40.0]), 0.91, np.zeros((5, 2)))
    assert largest_face([small, big]) is big


def test_refine_moves_last_frames_box_onto_the_face_and_drops_a_gone_face(detector):
    """O-Net alone on last frame's box: in a frame where the face moved 12 px right it comes
    back within a few px of a full detection; on a frame without the face it is None."""
    face = data.astronaut()[:300, 80:380]

    def frame(x: int) -> np.ndarray:
        out = np.full((360, 640, 3), 90, np.uint8)
        out[30:330, x : x + 300] = face
        return out

    before = detector.detect(frame(100))[0]
    full = detector.detect(frame(112))[0]
    moved = detector.refine(frame(112), [before.box])[0]
    assert moved is not None and moved.score > 0.9
    assert np.abs(moved.box - full.box).max() < 6.0  # the stale box is 12 px off
    assert np.abs(before.box - full.box)[[0, 2]].min() > 8.0
    np.testing.assert_allclose(moved.points5, full.points5, atol=4.0)
    assert detector.refine(np.full((360, 640, 3), 90, np.uint8), [before.box]) == [None]
    assert detector.refine(frame(112), []) == []
