"""Sec. IV-B augmentation of aligned faces, vectorised per batch (NumPy, no Python loop).

Training takes a random 176x176 crop of the 200x200 aligned face and a horizontal flip with
probability 0.5; evaluation takes the centre crop. A flip also mirrors what depends on left
and right: landmark x and the iBUG point order, and the left/right blendshapes of f_exp.

Crops stay uint8 (B, size, size, 3), a quarter of the bytes of float32, so a data pipeline
can hand them to the training process cheaply; `to_model_input` turns them into the
network's (B, 3, size, size) float input on the training device, where a channels-last
tensor is a free view of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from glee.face.ibug import MIRROR

FACE_SIZE = 200  # aligned face (JAA-Net alignment, Sec. IV-A)
CROP_SIZE = 176  # training and evaluation crop (Sec. IV-B)
_MIRROR = np.asarray(MIRROR, np.int64)


def expression_mirror(names: Sequence[str] | None, dim: int) -> np.ndarray:
    """Index map of f_exp under a horizontal flip: `*_l` <-> `*_r` blendshapes swap."""
    perm = np.arange(dim)
    if not names or len(names) != dim:
        return perm
    where = {n: i for i, n in enumerate(names)}
    for i, n in enumerate(names):
        for a, b in (("_l", "_r"), ("_left", "_right")):
            if n.endswith(a) and n[: -len(a)] + b in where:
                j = where[n[: -len(a)] + b]
                perm[i], perm[j] = j, i
    return perm


def _gather(images: np.ndarray, oy: np.ndarray, ox: np.ndarray, flip: np.ndarray, size: int):
    """(B, H, W, 3) -> (B, size, size, 3): each image's crop at (oy, ox), mirrored if flip."""
    steps = np.arange(size)
    rows = oy[:, None] + steps  # (B, size)
    cols = np.where(flip[:, None], ox[:, None] + size - 1 - steps, ox[:, None] + steps)
    b = np.arange(len(images))[:, None, None]
    return images[b, rows[:, :, None], cols[:, None, :]]  # (B, size, size, 3)


def _check(images: np.ndarray, size: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"faces must be (B, H, W, 3) uint8 RGB, got {images.shape} {images.dtype}")
    if images.shape[1] < size or images.shape[2] < size:
        raise ValueError(
            f"faces of {images.shape[1]}x{images.shape[2]} pixels are smaller than the "
            f"{size}x{size} crop"
        )
    return images


def random_crop_flip(
    images: np.ndarray,
    landmarks: np.ndarray,
    expression: np.ndarray,
    *,
    rng: np.random.Generator,
    size: int = CROP_SIZE,
    expr_mirror: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sec. IV-B training augmentation: a random `size` crop and a horizontal flip (p=0.5).

    images (B, H, W, 3) uint8, landmarks (B, 136) interleaved x, y in pixels, expression
    (B, E). Returns the crops (B, size, size, 3) uint8, landmarks in crop pixels with the
    iBUG order mirrored on flipped faces, and f_exp with left/right blendshapes swapped
    there (`expr_mirror`, see `expression_mirror`).
    """
    images = _check(images, size)
    b, h, w = images.shape[:3]
    lms = np.array(landmarks, np.float32).reshape(b, 68, 2)
    expr = np.array(expression, np.float32).reshape(b, -1)
    oy = rng.integers(0, h - size + 1, b)
    ox = rng.integers(0, w - size + 1, b)
    flip = rng.random(b) < 0.5
    crops = _gather(images, oy, ox, flip, size)
    lms[..., 0] -= ox[:, None]
    lms[..., 1] -= oy[:, None]
    if flip.any():
        mirrored = lms[flip][:, _MIRROR]  # (F, 68, 2): point k <- its mirror twin
        mirrored[..., 0] = (size - 1) - mirrored[..., 0]
        lms[flip] = mirrored
        if expr_mirror is not None:
            expr[flip] = expr[flip][:, np.asarray(expr_mirror, np.int64)]
    return crops, lms.reshape(b, 136), expr


def center_crop(
    images: np.ndarray, landmarks: np.ndarray | None = None, size: int = CROP_SIZE
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sec. IV-B evaluation: the centre `size` crop (B, size, size, 3) uint8; landmarks
    (B, 136), if given, shift with it."""
    images = _check(images, size)
    h, w = images.shape[1:3]
    oy, ox = (h - size) // 2, (w - size) // 2
    crops = images[:, oy : oy + size, ox : ox + size]
    if landmarks is None:
        return crops, None
    lms = np.array(landmarks, np.float32).reshape(-1, 68, 2)
    lms[..., 0] -= ox
    lms[..., 1] -= oy
    return crops, lms.reshape(-1, 136)


def to_model_input(
    crops: np.ndarray | torch.Tensor,
    device: torch.device | str | None = None,
    *,
    channels_last: bool = False,
    non_blocking: bool = False,
) -> torch.Tensor:
    """uint8 crops (B, S, S, 3) -> float (B, 3, S, S) in [0, 1] on `device` (None: where
    the crops are).

    The uint8 batch crosses to the device (4x fewer bytes than float) and is converted
    there. With `channels_last` the (B, S, S, 3) memory is kept: the permute is a view.
    """
    x = torch.as_tensor(crops)
    if x.dim() != 4 or x.shape[3] != 3:
        raise ValueError(f"crops must be (B, S, S, 3) uint8, got {tuple(x.shape)}")
    if device is not None:
        x = x.to(device, non_blocking=non_blocking)
    x = x.permute(0, 3, 1, 2)  # (B, 3, S, S)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    return x.float().div_(255.0).contiguous(memory_format=memory)
