"""A labelled grid of rendered faces, and the sample sheet kept in docs/synthetic_samples.png.

Regenerate the sheet with `python -m glee.synthetic.contact_sheet [path]`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

from glee.datasets.records import ALL_AUS
from glee.face.action_units import expression_from_aus
from glee.face.default_model import default_model
from glee.files import write_bytes_atomic
from glee.synthetic.render import (
    RenderResult,
    default_pose_and_camera,
    render_face,
    rendered_expression,
    sample_identity,
)

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "synthetic_samples.png"

# AU combinations shown at apex (intensity 5); () is the neutral face
SHEET_AUS: tuple[tuple[int, ...], ...] = (
    (),
    (1, 2),
    (4,),
    (6, 12),
    (9,),
    (14,),
    (15, 17),
    (23, 24),
    (25, 26),
)


def contact_sheet(results: list[RenderResult], labels: list[str], cols: int = 6) -> np.ndarray:
    """Tile the images (resized to the first one's size) with a caption strip under each.

    Returns an (rows * (H + strip), cols * W, 3) uint8 RGB image."""
    if not results:
        raise ValueError("contact_sheet needs at least one RenderResult")
    if len(labels) != len(results):
        raise ValueError(f"got {len(results)} results but {len(labels)} labels")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    h, w = results[0].image.shape[:2]
    strip = max(16, h // 9)
    rows = -(-len(results) // cols)
    sheet = np.full((rows * (h + strip), cols * w, 3), 255, np.uint8)
    scale = strip / 30.0
    thickness = max(1, int(round(scale * 1.5)))
    (_, text_h), below = cv2.getTextSize("Ay", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    for k, (res, label) in enumerate(zip(results, labels)):
        r, c = divmod(k, cols)
        y, x = r * (h + strip), c * w
        img = res.image
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        sheet[y : y + h, x : x + w] = img
        (text_w, _), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        fit = min(scale, scale * (w - 8) / max(text_w, 1))  # shrink long captions to fit
        cv2.putText(
            sheet,
            label,
            (x + 4, y + h + (strip + text_h - below) // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            fit,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    return sheet


def sample_results(seed: int = 0, size: int = 256) -> tuple[list[RenderResult], list[str]]:
    """18 faces: 6 identities x 3 AU combinations of SHEET_AUS, varied pose and light."""
    model = default_model()
    rng = np.random.default_rng(seed)
    identities = [sample_identity(rng, model) for _ in range(6)]
    results, labels = [], []
    for k in range(18):
        ident = k % 6
        combo = SHEET_AUS[k % len(SHEET_AUS)]
        au = np.zeros(len(ALL_AUS), np.float32)
        for a in combo:
            au[ALL_AUS.index(a)] = 5.0
        pose, camera = default_pose_and_camera(rng, (size, size))
        expression = rendered_expression(expression_from_aus(au, model), identities[ident])
        results.append(
            render_face(model, identities[ident], expression, au, pose, camera, (size, size), rng)
        )
        name = "neutral" if not combo else "AU" + "+".join(str(a) for a in combo)
        labels.append(f"id{ident} {name} yaw{np.degrees(pose[0]):+.0f}")
    return results, labels


def write_samples_sheet(path: str | os.PathLike = DEFAULT_PATH, seed: int = 0) -> Path:
    """Render the sample sheet and write it as PNG (atomically)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it first")
    results, labels = sample_results(seed)
    sheet = contact_sheet(results, labels, cols=6)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return write_bytes_atomic(path, buf.tobytes())


if __name__ == "__main__":
    print(write_samples_sheet(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH))
