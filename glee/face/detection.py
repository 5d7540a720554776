"""Face detection with MTCNN (facenet-pytorch; its weights ship inside the package).

Each face comes back as a box (x0, y0, x1, y1) in image pixels, a score in [0, 1] and
five points in MTCNN's order: left eye, right eye, nose, left and right mouth corner
(left/right as seen in the image). The eye points feed `align_face_from_eyes` when a
dataset has no 68-point landmarks.

`FaceDetector.refine` runs only MTCNN's last stage (O-Net) on boxes the caller already
has, e.g. last frame's faces of a video: it scores each box as a face or not and moves it
onto the face in this frame, for a few milliseconds instead of the whole image pyramid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in pixels
    score: float
    points5: np.ndarray  # (5, 2) left eye, right eye, nose, mouth left, mouth right

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


def largest_face(dets: Sequence[Detection]) -> Detection | None:
    """The detection with the largest box, or None when there is none."""
    if not dets:
        return None
    return max(dets, key=lambda d: d.area)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of `a` (n, 4) with every box of `b` (m, 4),
    boxes as (x0, y0, x1, y1): an (n, m) array in [0, 1]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]).clip(0) * (a[..., 3] - a[..., 1]).clip(0)
    area_b = (b[..., 2] - b[..., 0]).clip(0) * (b[..., 3] - b[..., 1]).clip(0)
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image, got dtype {image.dtype}")
    return image


class FaceDetector:
    """MTCNN with every face kept, sorted by score (highest first)."""

    def __init__(
        self,
        device: str | None = None,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        min_score: float = 0.9,
    ) -> None:
        import torch
        from facenet_pytorch import MTCNN

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.min_score = float(min_score)
        self._mtcnn = MTCNN(
            keep_all=True,
            device=self.device,
            min_face_size=min_face_size,
            thresholds=list(thresholds),
            post_process=False,
        )

    def _to_detections(self, boxes, probs, points) -> list[Detection]:
        if boxes is None or points is None:
            return []
        dets = [
            Detection(
                box=np.asarray(b, np.float32).reshape(4),
                score=float(p),
                points5=np.asarray(q, np.float32).reshape(5, 2),
            )
            for b, p, q in zip(boxes, probs, points)
            if p is not None and float(p) >= self.min_score
        ]
        return sorted(dets, key=lambda d: -d.score)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in one RGB uint8 image (H, W, 3), highest score first."""
        image = _check_image(image)
        boxes, probs, points = self._mtcnn.detect(image, landmarks=True)
        return self._to_detections(boxes, probs, points)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces in each of several images; images of equal size run as one batch."""
        images = [_check_image(im) for im in images]
        out: list[list[Detection]] = [[] for _ in images]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.shape, []).append(i)
        for idx in by_size.values():
            stack = np.stack([images[i] for i in idx])  # (n, H, W, 3)
            boxes, probs, points = self._mtcnn.detect(stack, landmarks=True)
            for j, i in enumerate(idx):
                out[i] = self._to_detections(boxes[j], probs[j], points[j])
        return out

    def refine(self, image: np.ndarray, boxes: Sequence[np.ndarray]) -> list[Detection | None]:
        """MTCNN's third stage alone (O-Net, Zhang et al. 2016, Sec. 2.1) on given boxes of
        one RGB image: each box is squared and cropped as MTCNN crops its candidates, and
        comes back moved onto the face by O-Net's box regression, with O-Net's face score
        and five points; None where the score is under `min_score` (no face there now)."""
        import torch
        from facenet_pytorch.models.utils.detect_face import bbreg, imresample, pad, rerec

        image = _check_image(image)
        if len(boxes) == 0:
            return []
        h, w = image.shape[:2]
        onet = self._mtcnn.onet
        dtype = next(onet.parameters()).dtype
        with torch.no_grad():
            img = torch.as_tensor(image, device=self.device).permute(2, 0, 1)[None].to(dtype)
            b = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4), device=self.device)
            b = rerec(torch.cat([b, torch.ones_like(b[:, :1])], dim=1))
            y, ey, x, ex = pad(b.clone(), w, h)
            valid = [k for k in range(len(b)) if ey[k] > y[k] and ex[k] > x[k]]
            out: list[Detection | None] = [None] * len(b)
            if not valid:
                return out
            crops = torch.cat(
                [imresample(img[:, :, y[k] - 1 : ey[k], x[k] - 1 : ex[k]], (48, 48)) for k in valid]
            )
            reg, pts, probs = onet((crops - 127.5) * 0.0078125)
            b = b[valid]
            bw = (b[:, 2] - b[:, 0] + 1)[:, None]
            bh = (b[:, 3] - b[:, 1] + 1)[:, None]
            px = bw * pts[:, :5] + b[:, :1] - 1
            py = bh * pts[:, 5:] + b[:, 1:2] - 1
            moved = bbreg(b.clone(), reg)[:, :4].cpu().numpy()
            points = torch.stack([px, py], dim=2).cpu().numpy()
            scores = probs[:, 1].cpu().numpy()
        for j, k in enumerate(valid):
            if float(scores[j]) >= self.min_score:
                out[k] = Detection(moved[j].astype(np.float32), float(scores[j]), points[j])
        return out
