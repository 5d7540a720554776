"""68-point landmarks (iBUG order, 0-based, image pixels) behind one interface.

Backends:
    provided  landmarks.parquet / landmarks.csv beside the dataset (DESIGN.md, "Landmarks a
              user provides"): columns subject, task, frame, x0..x67, y0..y67.
    fan       face-alignment's 2D FAN (Bulat & Tzimiropoulos), run on a given face box; its
              weights download on first use (glee.weights_cache.FAN_2D).
    dlib      dlib's 68-point shape predictor (Kazemi & Sullivan), from the dlib-bin and
              face-recognition-models packages: works offline, no download.
    auto      `choose_landmark_backend`: fan when its weights are on disk or downloadable,
              else dlib. MTCNN's five points are never a stand-in for 68.

Every backend is called as `backend(image, key, box)` with the RGB uint8 image, the
(subject, task, frame) key of the frame and the face box (x0, y0, x1, y1), and returns a
(68, 2) float32 array or None when it has no face. A backend whose network gains from
batches also has `batch(faces)`: the same for a list of (image, box) pairs in one call
(FAN: one forward pass over the crops of faces of several images; dlib and the provided
table have none, a face costs them the same alone).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from glee import weights_cache
from glee.face.detection import Detection
from glee.weights_cache import MissingWeightsError, WeightFile, probe_url

LANDMARK_FILES = ("landmarks.parquet", "landmarks.csv")
KEY_COLUMNS = ("subject", "task", "frame")
X_COLUMNS = tuple(f"x{i}" for i in range(68))
Y_COLUMNS = tuple(f"y{i}" for i in range(68))


@runtime_checkable
class LandmarkBackend(Protocol):
    name: str

    def __call__(
        self, image: np.ndarray | None, key: tuple[str, str, int], box: np.ndarray | None
    ) -> np.ndarray | None: ...


class ProvidedLandmarks:
    """Landmarks read from landmarks.parquet or landmarks.csv; lookup by (subject, task, frame)."""

    name = "provided"

    def __init__(self, root_or_file: str | os.PathLike) -> None:
        path = Path(root_or_file)
        if path.is_dir():
            found = [path / f for f in LANDMARK_FILES if (path / f).is_file()]
            if not found:
                raise FileNotFoundError(
                    f"no {' or '.join(LANDMARK_FILES)} in {path}; put the landmark table "
                    "there or choose another landmark backend (e.g. fan)"
                )
            path = found[0]
        elif not path.is_file():
            raise FileNotFoundError(f"landmark file not found: {path}")
        self.path = path
        table = self._read(path)
        missing = [c for c in (*KEY_COLUMNS, *X_COLUMNS, *Y_COLUMNS) if c not in table.columns]
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise ValueError(
                f"{path} is not a landmark table: missing columns {shown} "
                "(need subject, task, frame, x0..x67, y0..y67)"
            )
        xs = table[list(X_COLUMNS)].to_numpy(np.float32)
        ys = table[list(Y_COLUMNS)].to_numpy(np.float32)
        self._points = np.stack([xs, ys], axis=-1)  # (N, 68, 2)
        subjects = table["subject"].fillna("").astype(str).tolist()
        tasks = table["task"].fillna("").astype(str).tolist()
        try:
            frames = table["frame"].astype(np.int64).tolist()
        except (TypeError, ValueError):
            raise ValueError(f"{path}: column 'frame' must hold integers") from None
        self._index = {(s, t, f): i for i, (s, t, f) in enumerate(zip(subjects, tasks, frames))}

    @staticmethod
    def _read(path: Path):
        import pandas as pd

        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path, dtype={"subject": str, "task": str}, keep_default_na=False)
        raise ValueError(f"{path}: landmark tables must be .parquet or .csv")

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> list[tuple[str, str, int]]:
        return list(self._index)

    def __call__(
        self,
        image: np.ndarray | None,
        key: tuple[str, str, int],
        box: np.ndarray | None = None,
    ) -> np.ndarray | None:
        subject, task, frame = key
        i = self._index.get((str(subject), str(task or ""), int(frame)))
        if i is None:
            return None
        pts = self._points[i]
        return pts.copy() if np.isfinite(pts).all() else None


class MissingBackendError(FileNotFoundError):
    """The package or model file a landmark backend needs is not installed."""


def fan_weight_files() -> list[str]:
    """File names the 2D FAN needs in <torch home>/hub/checkpoints (the 'folder' detector
    used here needs none, so S3FD's s3fd-*.pth is not required)."""
    return [weights_cache.FAN_2D.name]


@contextlib.contextmanager
def _torch_home(torch_home: str | os.PathLike | None) -> Iterator[None]:
    if torch_home is None:
        yield
        return
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(torch_home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = old


def _fan_input(image: np.ndarray | None, box: np.ndarray | None):
    """(RGB image, face box as 4 floats) for FAN; the box None where it is not a box (not
    finite, or empty), and the whole image where none is given. A missing or non-RGB image
    is a ValueError."""
    if image is None:
        raise ValueError("the fan landmark backend needs the image")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    if box is None:
        h, w = image.shape[:2]
        box = np.array([0.0, 0.0, w - 1.0, h - 1.0])
    box = np.asarray(box, np.float64).reshape(4)
    if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        return image, None
    return image, box


class FanLandmarks:
    """face-alignment's 2D FAN on a given box (its own face detector is bypassed).

    Weights load from <torch home>/hub/checkpoints (`torch_home`, else $TORCH_HOME, ...),
    downloaded there on first use with the SHA-256 pinned in glee.weights_cache (face-
    alignment's own download checks no hash); when they cannot be had, MissingWeightsError
    names the URL, the file and the folder.
    """

    name = "fan"
    max_batch = 16  # crops per forward pass in `batch` (256 x 256 each); not tuned on a GPU

    def __init__(
        self,
        device: str | None = None,
        torch_home: str | os.PathLike | None = None,
        weights: WeightFile | None = None,
    ) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            weights_cache.fetch_weights(weights or weights_cache.FAN_2D, torch_home)
        except MissingWeightsError as exc:
            raise MissingWeightsError(f"{exc}, or use the dlib landmark backend") from None
        with _torch_home(torch_home):
            import face_alignment

            # 'folder' is face-alignment's detector that loads no network; we pass boxes.
            self._fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D,
                device=self.device,
                flip_input=False,
                face_detector="folder",
                compile=False,
            )

    def __call__(
        self,
        image: np.ndarray | None,
        key: tuple[str, str, int],
        box: np.ndarray | None,
    ) -> np.ndarray | None:
        image, box = _fan_input(image, box)
        if box is None:
            return None
        out = self._fa.get_landmarks_from_image(image, detected_faces=[box])
        if not out:
            return None
        return np.asarray(out[0], np.float32)[:, :2].reshape(68, 2)

    def batch(
        self, faces: Sequence[tuple[np.ndarray, np.ndarray | None]]
    ) -> list[np.ndarray | None]:
        """`self(image, key, box)` for every (image, box) of `faces`, the network run once per
        `max_batch` crops across images. face-alignment batches only the faces of one image
        (`get_landmarks_from_image`; its `get_landmarks_from_batch` loops over the images),
        so this is that method's 2D path (face-alignment 1.5.0, api.py) over all the faces:
        its crop, its network, its heatmap decoding, nothing of its own."""
        import torch
        from face_alignment.utils import CENTER_Y_OFFSET, crop, get_preds_fromhm

        fa = self._fa
        out: list[np.ndarray | None] = [None] * len(faces)
        todo, centers, scales, crops = [], [], [], []
        for i, (image, box) in enumerate(faces):
            image, d = _fan_input(image, box)
            if d is None:
                continue
            center = np.array([d[2] - (d[2] - d[0]) / 2.0, d[3] - (d[3] - d[1]) / 2.0])
            center[1] = center[1] - (d[3] - d[1]) * CENTER_Y_OFFSET
            scale = (d[2] - d[0] + d[3] - d[1]) / fa.face_detector.reference_scale
            todo.append(i)
            centers.append(center)
            scales.append(scale)
            crops.append(crop(image, center, scale).transpose((2, 0, 1)).astype(np.float32) / 255.0)
        if not todo:
            return out
        heatmaps = []
        with torch.no_grad():
            for start in range(0, len(crops), self.max_batch):
                chunk = torch.from_numpy(np.stack(crops[start : start + self.max_batch]))
                hm = fa.face_alignment_net(chunk.to(fa.device, dtype=fa.dtype))  # (b, 68, 64, 64)
                if isinstance(hm, list):
                    hm = hm[-1]
                heatmaps.append(hm.detach().to(device="cpu", dtype=torch.float32).numpy())
        hms = np.concatenate(heatmaps)  # (n, 68, 64, 64)
        for j, i in enumerate(todo):
            _, pts_img, _ = get_preds_fromhm(hms[j : j + 1], centers[j], scales[j])
            out[i] = np.asarray(pts_img, np.float32).reshape(68, 2)
        return out


DLIB_INSTALL = "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"
DLIB_68_FILE = "shape_predictor_68_face_landmarks.dat"
HOG_WINDOW = 80  # px: the side of the smallest face dlib's frontal HOG detector finds

# MTCNN box (x0, y0, x1, y1) -> the box dlib's HOG frontal detector draws around the same
# face, the box the 68-point predictor was trained on: a square of side
# HOG_SIDE * sqrt(w * h), centred HOG_DX * w right of and HOG_DY * h below MTCNN's centre;
# MTCNN's boxes are FACE_ASPECT times taller than wide. Medians over the ~360 faces both
# detectors find in 1 frame in 4 of the synthetic demo BP4D (seed 0); bench/
# landmark_accuracy.py refits them on its data (they moved < 0.01) and measures the
# predictor there at 4.6 px from the truth on the mapped box, 6.9 px on MTCNN's box as it
# is, 5.2 px on the HOG detector's own box.
HOG_SIDE, HOG_DX, HOG_DY, FACE_ASPECT = 0.88, 0.003, 0.063, 1.35


def hog_box_from_face_box(box: np.ndarray) -> np.ndarray:
    """(4,) MTCNN-convention face box -> (4,) box in dlib's HOG convention."""
    x0, y0, x1, y1 = np.asarray(box, np.float64).reshape(4)
    w, h = x1 - x0, y1 - y0
    half = 0.5 * HOG_SIDE * np.sqrt(max(w * h, 0.0))
    cx, cy = 0.5 * (x0 + x1) + HOG_DX * w, 0.5 * (y0 + y1) + HOG_DY * h
    return np.array([cx - half, cy - half, cx + half, cy + half])


def face_box_from_hog_box(box: np.ndarray) -> np.ndarray:
    """Inverse of `hog_box_from_face_box` for a square HOG box (MTCNN's aspect assumed)."""
    x0, y0, x1, y1 = np.asarray(box, np.float64).reshape(4)
    side = np.sqrt(max((x1 - x0) * (y1 - y0), 0.0)) / HOG_SIDE
    w, h = side / np.sqrt(FACE_ASPECT), side * np.sqrt(FACE_ASPECT)
    cx, cy = 0.5 * (x0 + x1) - HOG_DX * w, 0.5 * (y0 + y1) - HOG_DY * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def dlib_unavailable() -> str | None:
    """None when the dlib backend can run, else why not (one phrase)."""
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed"
    try:
        dlib_model_file()
    except MissingBackendError as exc:
        return str(exc).split(":")[0]
    return None


def dlib_model_file(name: str = DLIB_68_FILE) -> Path:
    """A model file of the face-recognition-models package, found without importing it
    (its __init__ imports pkg_resources, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingBackendError(f"face-recognition-models is not installed: {DLIB_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise MissingBackendError(
            f"{path} is missing from face-recognition-models: reinstall it ({DLIB_INSTALL})"
        )
    return path


@lru_cache(maxsize=1)
def _dlib_models():
    """(HOG frontal detector, 68-point predictor), loaded once per process (100 MB)."""
    try:
        import dlib
    except ImportError:
        raise MissingBackendError(f"dlib is not installed: {DLIB_INSTALL}") from None
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(dlib_model_file()))


def _check_rgb(image: np.ndarray | None, backend: str) -> np.ndarray:
    if image is None:
        raise ValueError(f"the {backend} landmark backend needs the image")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 RGB image of shape (H, W, 3), got {image.dtype} {image.shape}"
        )
    return image


class DlibLandmarks:
    """dlib's 68-point shape predictor, and dlib's HOG frontal face detector to find faces.

    The predictor's model (shape_predictor_68_face_landmarks.dat, from the
    face-recognition-models package) was trained on iBUG 300-W, whose terms exclude
    commercial use: check them before using this backend in a product.

    `backend(image, key, box)`: `box` is a face box in MTCNN's convention (what
    glee.face.detection.FaceDetector and `detect` give); it is mapped to the HOG box the
    predictor was trained on (`hog_box_from_face_box`). Without a box the HOG detector's
    largest face is used. `detect(image)` finds faces with the HOG detector on the image
    resized by HOG_WINDOW / `min_face_size` (a larger minimum is faster: 160 halves the
    image), and returns their boxes in MTCNN's convention with the five points of the
    predicted 68; its score is the detector's margin (> 0 above its threshold), not a
    probability.
    """

    name = "dlib"

    def __init__(self, min_face_size: int = HOG_WINDOW, adjust_threshold: float = 0.0) -> None:
        if min_face_size < 20:
            raise ValueError(f"min_face_size must be at least 20 px, got {min_face_size}")
        self.scale = HOG_WINDOW / float(min_face_size)
        self.adjust_threshold = float(adjust_threshold)
        self._detector, self._predictor = _dlib_models()

    def predict(self, image: np.ndarray, hog_box: np.ndarray) -> np.ndarray | None:
        """(68, 2) float32 points in a box of dlib's own HOG convention (x0, y0, x1, y1)."""
        import dlib

        image = _check_rgb(image, self.name)
        box = np.asarray(hog_box, np.float64).reshape(4)
        if not np.isfinite(box).all() or box[2] - box[0] < 2 or box[3] - box[1] < 2:
            return None
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = self._predictor(image, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)  # (68, 2)

    def _hog_boxes(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        import cv2

        small = image
        if self.scale != 1.0:
            interp = cv2.INTER_AREA if self.scale < 1.0 else cv2.INTER_LINEAR
            small = cv2.resize(image, None, fx=self.scale, fy=self.scale, interpolation=interp)
        rects, scores, _ = self._detector.run(small, 0, self.adjust_threshold)
        out = [
            (np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64) / self.scale, s)
            for r, s in zip(rects, scores)
        ]
        return sorted(out, key=lambda b: -b[1])

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in one RGB uint8 image (H, W, 3), highest score first."""
        from glee.face.five_point import five_of

        image = _check_rgb(image, self.name)
        dets = []
        for hog, score in self._hog_boxes(image):
            pts = self.predict(image, hog)
            if pts is None:
                continue
            dets.append(
                Detection(
                    box=face_box_from_hog_box(hog).astype(np.float32),
                    score=float(score),
                    points5=five_of(pts).astype(np.float32),
                )
            )
        return dets

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """`detect` on each image (dlib's HOG detector has no batch mode)."""
        return [self.detect(im) for im in images]

    def __call__(
        self,
        image: np.ndarray | None,
        key: tuple[str, str, int],
        box: np.ndarray | None = None,
    ) -> np.ndarray | None:
        image = _check_rgb(image, self.name)
        if box is None:
            boxes = self._hog_boxes(image)
            if not boxes:
                return None
            hog = max(boxes, key=lambda b: (b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))[0]
        else:
            hog = hog_box_from_face_box(box)
        return self.predict(image, hog)


def choose_landmark_backend(
    name: str = "auto",
    torch_home: str | os.PathLike | None = None,
    fan_weights: WeightFile | None = None,
    probe_timeout_s: float = 3.0,
) -> tuple[str, str]:
    """(backend name, why) for `name`; "auto" picks the best 68-point backend available.

    auto: fan when its weights are on disk or their URL answers within `probe_timeout_s`
    (the first use then downloads them); else dlib, the offline backend that measured best
    (bench/landmark_accuracy.py); else MissingBackendError, one line saying how to get one.
    """
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(
                f"unknown landmark backend {name!r}; choose one of {', '.join(BACKENDS)}"
            )
        return name, "asked for"
    spec = fan_weights or weights_cache.FAN_2D
    path = spec.path(torch_home)
    if importlib.util.find_spec("face_alignment") is None:
        no_fan = "face-alignment is not installed"
    elif path.is_file():
        return "fan", f"FAN weights found at {path}"
    else:
        unreachable = probe_url(spec.url, probe_timeout_s)
        if unreachable is None:
            return "fan", f"FAN weights download from {spec.url} into {path.parent} on first use"
        no_fan = f"FAN weights not in {path.parent} and {spec.url} unreachable ({unreachable})"
    no_dlib = dlib_unavailable()
    if no_dlib is None:
        return "dlib", (
            f"{no_fan}; dlib is the most accurate offline backend measured "
            "(its model was trained on iBUG 300-W, whose terms exclude commercial use)"
        )
    raise MissingBackendError(
        f"no 68-point landmark backend: {no_fan}, and {no_dlib}; install dlib "
        f"({DLIB_INSTALL}), or put {spec.name} in {path.parent}, or provide landmarks "
        "(backend 'provided')"
    )


BACKENDS = ("provided", "fan", "dlib", "auto")


def make_landmark_backend(
    name: str,
    dataset_root: str | os.PathLike | None = None,
    device: str | None = None,
) -> LandmarkBackend:
    """Build a landmark backend by name ('provided' needs the dataset root; 'auto' builds
    what `choose_landmark_backend` picks, and the backend's `name` says which)."""
    if name == "auto":
        name, _ = choose_landmark_backend("auto")
    if name == "provided":
        if dataset_root is None:
            raise ValueError("the 'provided' landmark backend needs dataset_root")
        return ProvidedLandmarks(dataset_root)
    if name == "fan":
        return FanLandmarks(device=device)
    if name == "dlib":
        return DlibLandmarks()
    raise ValueError(f"unknown landmark backend {name!r}; choose one of {', '.join(BACKENDS)}")
