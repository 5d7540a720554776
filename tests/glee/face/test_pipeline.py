"""FacePreprocessor's two halves: find_landmarks -> StagedFaces (bytes) -> fit_and_align, with
MTCNN batched over a batch's frames and FAN batched across images."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from glee.face.pipeline import FacePreprocessor, PreprocessConfig, StagedFaces


def _frame(width: int, height: int, x: int, side: int = 300) -> np.ndarray:
    """A grey frame with skimage's astronaut's face (a real photograph) at column `x`."""
    face = cv2.resize(data.astronaut()[:300, 80:380], (side, side))
    out = np.full((height, width, 3), 90, np.uint8)
    out[20 : 20 + side, x : x + side] = face
    return out


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[dict]:
    """Five frames in two sizes (three faces at 640x360, one at 480x320, one blank 640x360)
    and a reference that does not decode."""
    folder = tmp_path_factory.mktemp("frames")
    frames = [
        _frame(640, 360, 20),
        _frame(640, 360, 170),
        np.full((360, 640, 3), 90, np.uint8),
        _frame(480, 320, 100, side=260),
        _frame(640, 360, 320),
    ]
    out = []
    for i, frame in enumerate(frames):
        path = folder / f"{i:04d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        out.append({"image": str(path), "subject": "S1", "task": "T1", "frame": i})
    out.insert(2, {"image": str(folder / "missing.png"), "subject": "S1", "task": "T1", "frame": 9})
    return out


class Recording:
    """dlib's 68 points, remembering the box each call got; returns torch tensors, as a
    backend on a GPU might (the staged faces must still hold NumPy only)."""

    name = "dlib"

    def __init__(self) -> None:
        from glee.face.landmarks import DlibLandmarks

        self.inner = DlibLandmarks()
        self.boxes: list[np.ndarray] = []

    def __call__(self, image, key, box):
        self.boxes.append(np.asarray(box, np.float32).copy())
        pts = self.inner(image, key, box)
        return None if pts is None else torch.from_numpy(pts)


def _preprocessor(batch_detection: bool) -> tuple[FacePreprocessor, Recording, list[int]]:
    backend = Recording()
    pre = FacePreprocessor(
        PreprocessConfig(landmarks="dlib", device="cpu"),
        backend=backend,
        batch_detection=batch_detection,
    )
    calls: list[int] = []  # frames per MTCNN run
    mtcnn = pre._detector_once()._mtcnn
    detect = mtcnn.detect
    mtcnn.detect = lambda ims, **kw: (
        calls.append(len(ims) if ims.ndim == 4 else 1),
        detect(ims, **kw),
    )[1]
    return pre, backend, calls


def test_batched_detection_gives_the_boxes_of_one_frame_at_a_time(items):
    one, one_backend, one_calls = _preprocessor(batch_detection=False)
    many, many_backend, many_calls = _preprocessor(batch_detection=True)
    staged_one = one.find_landmarks(items)
    staged_many = many.find_landmarks(items)
    assert one_calls == [1] * 5  # every decoded frame alone
    assert sorted(many_calls) == [1, 4]  # one run per frame size: four 640x360, one 480x320
    assert len(many_backend.boxes) == len(one_backend.boxes) == 4  # the blank frame: none
    np.testing.assert_allclose(
        np.stack(many_backend.boxes), np.stack(one_backend.boxes), rtol=0, atol=1e-3
    )
    np.testing.assert_allclose(staged_many.landmarks, staged_one.landmarks, atol=1e-3)
    assert staged_many.errors == staged_one.errors
    # errors in item order: the missing file (decode), then the blank frame (no face)
    assert [(e["frame"], e["stage"]) for e in staged_one.errors] == [
        (9, "decode"),
        (2, "landmarks"),
    ]
    assert staged_one.errors[1]["reason"] == "no face detected"


def test_staged_faces_are_numpy_and_cross_as_bytes_to_the_same_rows(items):
    """What a GPU actor hands a CPU actor: NumPy and JSON only (a CUDA tensor would not
    deserialise there), bytes that round-trip, and the rows `process` gives in one go."""
    pre, _, _ = _preprocessor(batch_detection=True)
    staged = pre.find_landmarks(items)
    for field in dataclasses.fields(staged):
        value = getattr(staged, field.name)
        assert not isinstance(value, torch.Tensor), field.name
        if field.name in ("landmarks", "sizes", "aligned", "aligned_landmarks"):
            assert type(value) is np.ndarray, field.name
    assert staged.aligned.shape == (4, 200, 200, 3) and staged.aligned.dtype == np.uint8
    assert staged.sizes.tolist() == [[640, 360], [640, 360], [480, 320], [640, 360]]
    data_bytes = staged.to_bytes()
    assert isinstance(data_bytes, bytes)
    back = StagedFaces.from_bytes(data_bytes)
    np.testing.assert_array_equal(back.aligned, staged.aligned)
    np.testing.assert_array_equal(back.landmarks, staged.landmarks)
    assert back.items == staged.items and back.errors == staged.errors

    fit_only = FacePreprocessor(PreprocessConfig(landmarks="dlib"), fit_only=True)
    assert fit_only.backend is None and fit_only._detector is None
    rows, errors = fit_only.fit_and_align(back)
    want_rows, want_errors = pre.process(items)
    assert errors == want_errors and len(rows) == len(want_rows) == 4
    for got, want in zip(rows, want_rows):
        assert got.keys() == want.keys()
        assert all(got[k] == want[k] for k in got), [k for k in got if got[k] != want[k]]
    with pytest.raises(RuntimeError, match="fit_only"):
        fit_only.find_landmarks(items)


def test_no_face_at_all_stages_nothing_and_fits_nothing(items):
    pre, _, _ = _preprocessor(batch_detection=True)
    staged = pre.find_landmarks([items[2], items[3]])  # the missing file, the blank frame
    assert staged.items == [] and staged.landmarks.shape == (0, 68, 2)
    back = StagedFaces.from_bytes(staged.to_bytes())
    assert back.aligned.shape == (0, 200, 200, 3)
    assert pre.fit_and_align(back) == ([], staged.errors)


# -- FAN, batched across images -------------------------------------------------------------


@pytest.fixture
def fan(monkeypatch):
    """FanLandmarks with face-alignment's own code around a small random network in place
    of the 2DFAN-4 weights (one 4x4 convolution: 256 px crops -> 68 heatmaps of 64 px)."""
    import face_alignment

    from glee import weights_cache
    from glee.face.landmarks import FanLandmarks

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 68, kernel_size=4, stride=4).eval()
    monkeypatch.setattr(weights_cache, "fetch_weights", lambda *a, **k: None)
    monkeypatch.setattr(face_alignment.FaceAlignment, "_load_native", lambda self, *a: net)
    backend = FanLandmarks(device="cpu")
    backend.max_batch = 2  # chunks across images
    return backend


@pytest.mark.slow  # face-alignment's numba kernels compile on first use (~7 s)
def test_fan_batch_gives_what_face_alignment_gives_one_face_at_a_time(fan):
    frames = [_frame(640, 360, 20), _frame(480, 320, 100, side=260), _frame(640, 360, 300)]
    boxes = [
        np.array([60.0, 60.0, 280.0, 320.0]),
        np.array([130.0, 50.0, 330.0, 290.0]),
        None,  # the whole image
        np.array([5.0, 5.0, 5.0, 5.0]),  # empty: no face
        np.array([340.0, 40.0, 600.0, 330.0]),
    ]
    images = [frames[0], frames[1], frames[2], frames[0], frames[2]]
    got = fan.batch(list(zip(images, boxes)))
    for image, box, pts in zip(images, boxes, got):
        want = fan(image, ("S1", "T1", 0), box)
        if want is None:
            assert pts is None
            continue
        assert pts.shape == (68, 2) and pts.dtype == np.float32
        np.testing.assert_allclose(pts, want, atol=1e-4)


def test_the_pipeline_hands_fan_every_face_of_a_batch_at_once(fan, items):
    calls = []
    batch = fan.batch
    fan.batch = lambda faces: (calls.append(len(faces)), batch(faces))[1]
    pre = FacePreprocessor(PreprocessConfig(landmarks="fan", device="cpu"), backend=fan)
    staged = pre.find_landmarks(items)
    assert calls == [4]  # the four faces MTCNN found, in one call
    assert len(staged.items) == 4 and len(staged.errors) == 2
