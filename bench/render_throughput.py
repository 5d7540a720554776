"""Frames per second per core of the synthetic face renderer at 256x256 (single thread).

python bench/render_throughput.py [num_frames]
"""

from __future__ import annotations

import sys
import time

import cv2
import numpy as np

from glee.datasets.records import ALL_AUS
from glee.face.action_units import expression_from_aus
from glee.face.default_model import default_model
from glee.synthetic.render import (
    default_pose_and_camera,
    render_face,
    rendered_expression,
    sample_identity,
)


def main(num_frames: int = 200, size: tuple[int, int] = (256, 256)) -> float:
    cv2.setNumThreads(1)
    model = default_model()
    rng = np.random.default_rng(0)
    identities = [sample_identity(rng, model) for _ in range(8)]
    jobs = []
    for k in range(num_frames):
        au = np.where(rng.uniform(size=len(ALL_AUS)) < 0.3, rng.uniform(0, 5, len(ALL_AUS)), 0)
        ident = identities[k % len(identities)]
        pose, camera = default_pose_and_camera(rng, size)
        jobs.append(
            (ident, rendered_expression(expression_from_aus(au, model), ident), au, pose, camera)
        )
    render_face(model, *jobs[0][:2], jobs[0][2], jobs[0][3], jobs[0][4], size, rng)  # warm-up
    start, start_cpu = time.perf_counter(), time.process_time()
    for ident, expression, au, pose, camera in jobs:
        render_face(model, ident, expression, au, pose, camera, size, rng, noise=2.0, blur=0.5)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    fps = num_frames / cpu  # CPU time: per core, whatever else shares the machine
    print(
        f"render_face {size[1]}x{size[0]}: {num_frames} frames, {elapsed:.2f} s wall, {cpu:.2f} s CPU"
    )
    print(f"frames/s per core: {fps:.1f} (wall-clock {num_frames / elapsed:.1f})")
    return fps


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
