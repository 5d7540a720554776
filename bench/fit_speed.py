"""Batched 3DMM landmark fitting vs scipy's one-face-at-a-time LM (Sec. III-C), one core.

    python bench/fit_speed.py              # speed: 1,000 faces batched vs scipy (--faces N)
    python bench/fit_speed.py --report     # accuracy at 0, 1 and 2 px landmark noise

The scipy baseline is `least_squares(method='lm')` with the same residual and the same
analytic Jacobian (`glee.face.fitting.FaceResidual`), from the same initial pose. scipy's
LM has no bounds, so the batched fit runs both bounded (the default) and unbounded.
scipy is timed on a random subset of the faces (--scipy-faces, default 100, seed 0; some faces
run to its 11,700-evaluation limit) and its faces/s is per face of that subset; energies are
compared on the same subset.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # "per core": set before numpy/torch load their BLAS

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def synthetic_faces(model, n: int, seed: int = 0):
    """Shape ~ N(0,1) clipped to [-3,3], sparse expression in [0,1], |angles| <= 25 deg,
    face ~130 px wide in a 256 x 256 image, noise-free perspective projection."""
    from glee.face.camera import Camera, project

    cam = Camera.for_image(256, 256)
    rng = np.random.default_rng(seed)
    lm = model.landmark_subset()
    shape = np.clip(rng.standard_normal((n, model.num_shape)), -3, 3)
    expr = rng.uniform(0, 1, (n, model.num_expression))
    expr *= rng.uniform(size=expr.shape) < 0.15
    tz = cam.focal * np.ptp(lm.mean[:, 0]) / 130.0
    pose = np.c_[
        np.deg2rad(rng.uniform(-25, 25, (n, 3))),
        rng.normal(0, 5, (n, 2)),
        tz * rng.uniform(0.9, 1.1, n),
    ]
    uv = project(lm.vertices(shape, expr).astype(np.float64), pose, cam)
    return cam, uv, pose, shape, expr


def speed(model, faces: int, scipy_faces: int) -> None:
    from scipy.optimize import least_squares

    from glee.face.fitting import FaceResidual, fit_landmarks

    cam, uv, *_ = synthetic_faces(model, faces)
    results = {}
    for bounded in (True, False):
        t, cpu = time.perf_counter(), time.process_time()
        res = fit_landmarks(model, uv, cam, bounded=bounded)
        dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
        results[bounded] = (faces / dt, res)
        print(
            f"batched {'bounded' if bounded else 'unbounded'}: {faces} faces in {dt:.2f} s "
            f"(CPU {dcpu:.2f} s) = {faces / dt:.0f} faces/s ({faces / dcpu:.0f} per CPU-s); mean RMSE {res.rmse.mean():.4f} px, mean energy "
            f"{res.energy.mean():.5f}, converged {res.converged.mean():.1%}"
        )
    k = min(scipy_faces, faces)
    subset = np.sort(np.random.default_rng(0).choice(faces, k, replace=False))
    rmse, energy = [], []
    t, cpu = time.perf_counter(), time.process_time()
    for i in subset:
        fr = FaceResidual(model, uv[i], cam)
        sol = least_squares(fr.residual, fr.initial(), jac=fr.jacobian, method="lm")
        energy.append(2 * sol.cost)
        rmse.append(_rmse_of(model, uv[i], cam, sol.x))
    dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
    scipy_rate = k / dt
    print(
        f"scipy least_squares(lm), one at a time, random {k} of the {faces} faces: {dt:.2f} s "
        f"(CPU {dcpu:.2f} s) = {scipy_rate:.2f} faces/s ({k / dcpu:.2f} per CPU-s); "
        f"mean RMSE {np.mean(rmse):.4f} px, mean energy {np.mean(energy):.5f}"
    )
    sub_b = results[True][1].energy[subset].mean()
    sub_u = results[False][1].energy[subset].mean()
    print(f"same {k} faces: batched energy bounded {sub_b:.5f}, unbounded {sub_u:.5f}")
    for bounded in (True, False):
        name = "bounded" if bounded else "unbounded"
        print(f"ratio batched {name} / scipy: {results[bounded][0] / scipy_rate:.1f}x")


def _rmse_of(model, target, cam, theta) -> float:
    from glee.face.camera import project

    lm = model.landmark_subset()
    ns = model.num_shape
    pts = lm.vertices(theta[6 : 6 + ns], theta[6 + ns :]).astype(np.float64)
    return float(np.sqrt(np.mean(np.sum((project(pts, theta[:6], cam) - target) ** 2, -1))))


def report(model, faces: int) -> None:
    from glee.face.default_model import landmark_moving_expressions
    from glee.face.fitting import fit_landmarks

    cam, uv, pose, shape, expr = synthetic_faces(model, faces, seed=1)
    moving = landmark_moving_expressions(model)
    rng = np.random.default_rng(2)
    table = {}
    for sigma in (0.0, 1.0, 2.0):
        res = fit_landmarks(model, uv + rng.normal(0, sigma, uv.shape), cam)
        ang = np.rad2deg(np.abs(res.pose[:, :3] - pose[:, :3])).mean()
        print(
            f"noise {sigma:.0f} px: RMSE to the noisy landmarks {res.rmse.mean():.3f} px, "
            f"pose error {ang:.2f} deg, converged {res.converged.mean():.1%}"
        )
        table[sigma] = res.expression
    print(f"{'blendshape':26s}" + "".join(f"  MAE/corr @{s:.0f}px" for s in table))
    for name in moving:
        j = model.expression_index(name)
        cells = []
        for est in table.values():
            corr = np.corrcoef(est[:, j], expr[:, j])[0, 1]
            cells.append(f"  {np.abs(est[:, j] - expr[:, j]).mean():.3f} / {corr:5.3f}   ")
        print(f"{name:26s}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=1000)
    parser.add_argument("--scipy-faces", type=int, default=100)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from glee.face.default_model import default_model

    model = default_model()
    if args.report:
        report(model, args.faces)
    else:
        speed(model, args.faces, args.scipy_faces)


if __name__ == "__main__":
    main()
