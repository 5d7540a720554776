"""68-point landmarks (iBUG order, 0-based, image pixels) behind one interface.

Backends:
    provided  landmarks.parquet / landmarks.csv beside the dataset (DESIGN.md, "Landmarks a
              user provides"): columns subject, task, frame, x0..x67, y0..y67.
    fan       face-alignment's 2D FAN (Bulat & Tzimiropoulos), run on a given face box.

Every backend is called as `backend(image, key, box)` with the RGB uint8 image, the
(subject, task, frame) key of the frame and the face box (x0, y0, x1, y1), and returns a
(68, 2) float32 array or None when it has no face.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

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


class MissingWeightsError(FileNotFoundError):
    """A network's weight files are not on disk (nothing downloads at run time)."""


def _fan_url() -> str:
    from face_alignment.api import models_urls

    return models_urls["2DFAN-4"]


def fan_weight_files() -> list[str]:
    """File names the 2D FAN needs in $TORCH_HOME/hub/checkpoints (the 'folder' detector
    used here needs none, so S3FD's s3fd-*.pth is not required)."""
    return [os.path.basename(_fan_url())]


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


class FanLandmarks:
    """face-alignment's 2D FAN on a given box (its own face detector is bypassed).

    Weights load from $TORCH_HOME/hub/checkpoints (or `torch_home`/hub/checkpoints); when
    they are absent, MissingWeightsError names the files and the folder instead of letting
    face-alignment try a download.
    """

    name = "fan"

    def __init__(
        self, device: str | None = None, torch_home: str | os.PathLike | None = None
    ) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        with _torch_home(torch_home):
            folder = Path(torch.hub.get_dir()) / "checkpoints"
            missing = [f for f in fan_weight_files() if not (folder / f).is_file()]
            if missing:
                raise MissingWeightsError(
                    f"FAN landmark weights {', '.join(missing)} not found: download them "
                    f"(from {_fan_url()}) into {folder}, or use the 'provided' landmark backend"
                )
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
            return None
        out = self._fa.get_landmarks_from_image(image, detected_faces=[box])
        if not out:
            return None
        return np.asarray(out[0], np.float32)[:, :2].reshape(68, 2)


BACKENDS = ("provided", "fan")


def make_landmark_backend(
    name: str,
    dataset_root: str | os.PathLike | None = None,
    device: str | None = None,
) -> LandmarkBackend:
    """Build a landmark backend by name ('provided' needs the dataset root)."""
    if name == "provided":
        if dataset_root is None:
            raise ValueError("the 'provided' landmark backend needs dataset_root")
        return ProvidedLandmarks(dataset_root)
    if name == "fan":
        return FanLandmarks(device=device)
    raise ValueError(f"unknown landmark backend {name!r}; choose one of {', '.join(BACKENDS)}")
