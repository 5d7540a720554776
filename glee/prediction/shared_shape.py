"""One face shape per tracked face of a video, as preprocessing fits one per subject.

The workers fit each face of each frame alone (the single-image priors of fit mode
`photo`: a worker sees a chunk of frames, and face ids are given on the driver after). Once
the driver has tracked the faces (`glee.prediction.tracking`), `share_track_shapes` fits
each track of a video as one person (`glee.face.fitting.fit_subject`, the default fit mode
of the datasets' preprocessing; a departure from Sec. III-C's per-frame fit): one f_s from
the track's landmarks, then pose and f_exp per frame with it. The AU head then runs again
on each face's E_exp (which does not depend on the fit) and its new f_exp, so the AU
columns, `exp_` columns and pose in a row come from the same fit (Sec. III-D head).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from glee.face.fitting import FIT_PRIORS, fit_subject
from glee.face.morphable_model import MorphableModel
from glee.model.glee_net import GLEENet
from glee.model.inference import THRESHOLD

# A track shorter than this keeps its single-image fits: a shape from a handful of frames
# is no better determined than one photo's.
MIN_TRACK_FRAMES = 8
PRIVATE = ("_e_exp", "_camera")  # the workers' per-row extras this module reads


def share_track_shapes(
    rows: list[dict[str, Any]],
    net: GLEENet,
    model: MorphableModel,
    au_columns: Sequence[str],
    exp_columns: Sequence[str],
) -> int:
    """Refits, in place, every track of one video's rows (success 1, same face_id, at least
    MIN_TRACK_FRAMES frames) with one shape, and redoes their pose, `exp_`, `fit_rmse` and
    AU columns (`au_columns`: the OpenFace AU names, e.g. "AU01"). A frame whose refit does
    not converge keeps its own fit. Drops the private columns of every row. Returns the
    number of tracks refitted."""
    from glee.prediction.predictor import openface_pose

    tracks: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("success") == 1 and r.get("_camera") is not None:
            tracks[int(r["face_id"])].append(r)
    done = 0
    reg_shape, reg_expression = FIT_PRIORS["subject"]
    for track in tracks.values():
        if len(track) < MIN_TRACK_FRAMES:
            continue
        lms = np.array([[[r[f"x_{k}"], r[f"y_{k}"]] for k in range(68)] for r in track], np.float64)
        cams = np.array([r["_camera"] for r in track], np.float64)
        fit = fit_subject(model, lms, cams, reg_shape=reg_shape, reg_expression=reg_expression)
        ok = np.flatnonzero(fit.converged)
        if len(ok) == 0:
            continue
        for j in ok:
            r = track[j]
            r.update(openface_pose(fit.pose[j]))
            r.update({c: round(float(v), 6) for c, v in zip(exp_columns, fit.expression[j])})
            r["fit_rmse"] = round(float(fit.rmse[j]), 4)
        _rescore([track[j] for j in ok], net, fit.expression[ok], au_columns)
        done += 1
    for r in rows:
        for key in PRIVATE:
            r.pop(key, None)
    return done


def _rescore(
    rows: list[dict[str, Any]], net: GLEENet, f_exp: np.ndarray, au_columns: Sequence[str]
) -> None:
    """The AU head (Sec. III-D) on the rows' E_exp and the new f_exp."""
    cfg = net.cfg
    e = None
    if cfg.has_embedding:
        e = torch.tensor([r["_e_exp"] for r in rows], dtype=torch.float32)
    f = torch.as_tensor(np.asarray(f_exp, np.float32)) if cfg.use_3d else None
    net.eval()
    device = next(net.parameters()).device
    with torch.no_grad():
        _, final = net.forward_head(
            None if e is None else e.to(device), None if f is None else f.to(device)
        )
    probs = torch.sigmoid(final.double()).cpu().numpy()
    for r, p in zip(rows, probs):
        r.update({f"{a}_p": float(v) for a, v in zip(au_columns, p)})
        r.update({f"{a}_c": int(v > THRESHOLD) for a, v in zip(au_columns, p)})
