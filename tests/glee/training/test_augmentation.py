"""Sec. IV-B augmentation: crops move the landmarks with the pixels, flips mirror the iBUG
order and the left/right blendshapes, evaluation takes the centre, and the model input
is the same tensor in either memory format."""

from __future__ import annotations

import numpy as np
import torch

from glee.face.ibug import MIRROR
from glee.training.augmentation import (
    center_crop,
    expression_mirror,
    random_crop_flip,
    to_model_input,
)


def test_random_crop_flip_moves_landmarks_with_the_pixels():
    b = 16
    images = np.zeros((b, 200, 200, 3), np.uint8)
    pts = np.zeros((b, 68, 2), np.float32)
    rng = np.random.default_rng(0)
    for i in range(b):
        flat = rng.choice(160 * 160, size=68, replace=False)  # 68 distinct pixels
        xy = np.stack([flat % 160 + 20, flat // 160 + 20], 1)
        pts[i] = xy
        images[i, xy[:, 1], xy[:, 0], 0] = np.arange(68) + 1  # pixel value names the landmark
    crops, out, _ = random_crop_flip(
        images, pts.reshape(b, 136), np.zeros((b, 1)), rng=np.random.default_rng(1)
    )
    assert crops.shape == (b, 176, 176, 3) and crops.dtype == np.uint8
    out = out.reshape(b, 68, 2)
    flipped = 0
    for i in range(b):
        seen = set()
        for k in range(68):
            u, v = np.round(out[i, k]).astype(int)
            if not (0 <= u < 176 and 0 <= v < 176) or MIRROR[k] == k:
                continue
            value = int(crops[i, v, u, 0])
            # unflipped: point k is where the pixel of point k went; flipped: point k is
            # the mirror of the original point MIRROR[k], whose pixel lands there
            seen.add("plain" if value == k + 1 else "flip" if value == MIRROR[k] + 1 else "bad")
        assert len(seen) == 1 and "bad" not in seen, seen
        flipped += seen == {"flip"}
    assert 0 < flipped < b  # some images flipped, some not


def test_flip_swaps_left_and_right_landmarks_and_blendshapes():
    images = np.zeros((64, 200, 200, 3), np.uint8)
    pts = np.zeros((64, 68, 2), np.float32)
    pts[:, 36] = (60.0, 90.0)  # a left-eye corner (image left)
    pts[:, 45] = (140.0, 90.0)  # its mirror point
    expr = np.tile(np.array([[1.0, 0.0, 0.5]], np.float32), (64, 1))
    mirror = expression_mirror(["brow_raise_l", "brow_raise_r", "jaw_drop"], 3)
    assert mirror.tolist() == [1, 0, 2]
    _, out, e = random_crop_flip(
        images, pts.reshape(64, 136), expr, rng=np.random.default_rng(0), expr_mirror=mirror
    )
    out = out.reshape(64, 68, 2)
    swapped = e[:, 0] == 0.0
    assert 0 < int(swapped.sum()) < 64
    assert np.all(e[swapped] == [0.0, 1.0, 0.5]) and np.all(e[~swapped] == [1.0, 0.0, 0.5])
    # on every image, point 36 stays left of point 45 (the iBUG order is mirrored too)
    assert np.all(out[:, 36, 0] < out[:, 45, 0])
    assert np.allclose(out[:, 45, 0] - out[:, 36, 0], 80.0)


def test_center_crop_is_the_deterministic_centre():
    images = np.random.default_rng(0).integers(0, 255, (3, 200, 200, 3), dtype=np.uint8)
    crops, out = center_crop(images, np.full((3, 136), 100.0))
    assert np.array_equal(crops, images[:, 12:188, 12:188])
    assert np.all(out == 88.0)
    assert center_crop(images)[1] is None


def test_model_input_is_the_same_in_both_memory_formats():
    crops = np.random.default_rng(0).integers(0, 255, (2, 176, 176, 3), dtype=np.uint8)
    plain = to_model_input(crops)
    nhwc = to_model_input(crops, channels_last=True)
    assert plain.shape == (2, 3, 176, 176) and plain.is_contiguous()
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, nhwc)
    assert torch.equal(plain[1, 2], torch.from_numpy(crops[1, :, :, 2]).float() / 255)
