"""Batched 3DMM landmark fitting vs scipy's one-face-at-a-time LM (Sec. III-C), one core.

    python bench/fit_speed.py              # speed: 1,000 faces batched vs scipy (--faces N)
    python bench/fit_speed.py --report     # accuracy at 0, 1 and 2 px landmark noise

Speed is per core: BLAS runs single-threaded and faces/s divide by process CPU time, so the
numbers hold on a shared machine (wall-clock is printed beside them). The fit's numba kernels
are loaded before the timing (`compile_kernels`: from numba's on-disk cache, or compiled by the
first process on the machine); that time is printed on its own line.

The scipy baseline is `least_squares(method='lm')` (MINPACK) with the same residual and the
same analytic Jacobian (`glee.face.fitting.FaceResidual`), from the same start (the
scaled-orthographic pose of the mean shape, zero coefficients), one face at a time, on a
random subset of the faces (--scipy-faces, seed 0; its faces/s is per face of that subset,
every comparison is on that subset). scipy's LM has no bounds, so the like-for-like
comparison is with the batched fit run unbounded; the bounded fit (f_exp in [0, 1], the
default) is shown beside it. scipy is measured twice:

  * to its own convergence, capped at --max-nfev residual evaluations: its converged rate,
    mean energy and RMSE next to ours on the same faces;
  * to equal residual: stopped at the first evaluation whose energy is at or below the
    batched fit's energy for that face (time to reach our residual). A face it does not
    reach within --max-nfev is reported, not counted as a success.

The speed ratio is quoted at equal residual (the second run), over the faces scipy reached.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # "per core": set before numpy/torch load their BLAS

import argparse  # noqa: E402
import datetime  # noqa: E402
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


class _Reached(Exception):
    """Raised inside scipy's residual call once the energy reaches the target."""


def _scipy_fit(model, target, cam, max_nfev: int, stop_at: float | None = None):
    """One face with scipy's LM; returns (CPU s, energy, RMSE, nfev, converged/reached)."""
    from scipy.optimize import least_squares

    from glee.face.fitting import FaceResidual

    fr = FaceResidual(model, target, cam)
    best = {"e": np.inf, "x": None, "nfev": 0}

    def residual(theta):
        r = fr.residual(theta)
        best["nfev"] += 1
        e = float(r @ r)
        if e < best["e"]:
            best["e"], best["x"] = e, theta.copy()
        if stop_at is not None and e <= stop_at:
            raise _Reached
        return r

    cpu = time.process_time()
    try:
        sol = least_squares(residual, fr.initial(), jac=fr.jacobian, method="lm", max_nfev=max_nfev)
        ok = stop_at is None and sol.status > 0  # 0: stopped by max_nfev
        x, energy = sol.x, 2.0 * sol.cost
    except _Reached:
        ok, x, energy = True, best["x"], best["e"]
    cpu = time.process_time() - cpu
    return cpu, energy, _rmse_of(model, target, cam, x), best["nfev"], ok


def _rmse_of(model, target, cam, theta) -> float:
    from glee.face.camera import project

    lm = model.landmark_subset()
    ns = model.num_shape
    pts = lm.vertices(theta[6 : 6 + ns], theta[6 + ns :]).astype(np.float64)
    return float(np.sqrt(np.mean(np.sum((project(pts, theta[:6], cam) - target) ** 2, -1))))


def speed(model, faces: int, scipy_faces: int, max_nfev: int, repeats: int) -> None:
    from glee.face.fitting import compile_kernels, fit_landmarks

    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, load average {os.getloadavg()}")
    cpu = time.process_time()
    wall = compile_kernels()
    print(
        f"numba kernels loaded or compiled in {time.process_time() - cpu:.1f} CPU-s (wall "
        f"{wall:.1f} s), outside the timings below"
    )
    cam, uv, *_ = synthetic_faces(model, faces)
    fit_landmarks(model, uv[:8], cam)  # imports and first-call set-up out of the timing
    ours = {}
    for bounded in (True, False):
        cpus, walls = [], []
        for _ in range(repeats):  # the same fit each time: one pass is ~1 s, so take a median
            t, cpu = time.perf_counter(), time.process_time()
            res = fit_landmarks(model, uv, cam, bounded=bounded)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - cpu)
        dt, dcpu = float(np.median(walls)), float(np.median(cpus))
        ours[bounded] = (faces / dcpu, res)
        name = "f_exp in [0, 1]" if bounded else "unbounded"
        print(
            f"batched, {name}: {faces} faces, median of {repeats} passes CPU {dcpu:.2f} s = "
            f"{faces / dcpu:.0f} faces per CPU-s (best {faces / min(cpus):.0f}, worst "
            f"{faces / max(cpus):.0f}; wall {dt:.2f} s = {faces / dt:.0f} faces/s); mean RMSE "
            f"{res.rmse.mean():.4f} px, mean energy {res.energy.mean():.5f}, converged "
            f"{res.converged.mean():.1%}, {res.iterations.mean():.1f} LM iterations"
        )

    k = min(scipy_faces, faces)
    subset = np.sort(np.random.default_rng(0).choice(faces, k, replace=False))
    own = np.array([_scipy_fit(model, uv[i], cam, max_nfev) for i in subset])
    cpu, energy, rmse, nfev, ok = own.T
    ok = ok.astype(bool)
    print(
        f"scipy least_squares(method='lm'), one face at a time, random {k} of the {faces} "
        f"faces, to its own convergence (max_nfev={max_nfev}): CPU {cpu.sum():.2f} s = "
        f"{k / cpu.sum():.2f} faces per CPU-s; converged {ok.mean():.0%} (the rest stopped "
        f"at max_nfev); mean energy {energy.mean():.5f}, mean RMSE {rmse.mean():.4f} px, "
        f"mean {nfev.mean():.0f} residual evaluations"
    )
    for bounded in (True, False):
        e = ours[bounded][1].energy[subset]
        name = "f_exp in [0, 1]" if bounded else "unbounded"
        print(
            f"  same {k} faces, batched {name}: mean energy {e.mean():.5f} (scipy "
            f"{energy.mean():.5f}), RMSE {ours[bounded][1].rmse[subset].mean():.4f} px; "
            f"energy <= scipy's on {np.mean(e <= energy * (1 + 1e-6)):.0%} of the faces, "
            f"<= scipy's converged ones on {np.mean((e <= energy * (1 + 1e-6))[ok]):.0%}"
        )

    # Time to equal residual: scipy stops once it reaches the batched fit's energy.
    for bounded in (False, True):
        rate, res = ours[bounded]
        target = res.energy[subset]
        runs = np.array(
            [_scipy_fit(model, uv[i], cam, max_nfev, stop_at=t) for i, t in zip(subset, target)]
        )
        cpu, _, _, nfev, reached = runs.T
        reached = reached.astype(bool)
        name = "f_exp in [0, 1]" if bounded else "unbounded"
        if reached.any():
            scipy_rate = reached.sum() / cpu[reached].sum()
            print(
                f"scipy to the batched {name} fit's energy: reached on {reached.sum()} of {k} "
                f"faces ({nfev[reached].mean():.0f} evaluations, {scipy_rate:.2f} faces per "
                f"CPU-s over those); not reached within max_nfev: {(~reached).sum()}"
            )
            print(
                f"  ratio at equal residual, batched {name} / scipy: "
                f"{rate / scipy_rate:.0f}x faces per CPU-s"
            )
        else:
            print(f"scipy never reached the batched {name} fit's energy within max_nfev")


def report(model, faces: int) -> None:
    from glee.face.default_model import landmark_moving_expressions
    from glee.face.fitting import compile_kernels, fit_landmarks

    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, load average {os.getloadavg()}")
    compile_kernels()  # out of the faces per CPU-s below
    cam, uv, pose, shape, expr = synthetic_faces(model, faces, seed=1)
    moving = landmark_moving_expressions(model)
    rng = np.random.default_rng(2)
    table = {}
    for sigma in (0.0, 1.0, 2.0):
        noisy = uv + rng.normal(0, sigma, uv.shape)
        cpu = time.process_time()
        res = fit_landmarks(model, noisy, cam)
        cpu = time.process_time() - cpu
        ang = np.rad2deg(np.abs(res.pose[:, :3] - pose[:, :3])).mean()
        print(
            f"noise {sigma:.0f} px: RMSE to the noisy landmarks {res.rmse.mean():.3f} px, "
            f"mean energy {res.energy.mean():.4f}, pose error {ang:.2f} deg, converged "
            f"{res.converged.mean():.1%}, {res.iterations.mean():.1f} LM iterations, "
            f"{faces / cpu:.0f} faces per CPU-s"
        )
        table[sigma] = res.expression
    print(f"{len(moving)} landmark-moving blendshapes, MAE / correlation with the truth:")
    print(f"{'blendshape':26s}" + "".join(f"  MAE/corr @{s:.0f}px" for s in table))
    corr = {s: [] for s in table}
    for name in moving:
        j = model.expression_index(name)
        cells = []
        for sigma, est in table.items():
            corr[sigma].append(np.corrcoef(est[:, j], expr[:, j])[0, 1])
            mae = np.abs(est[:, j] - expr[:, j]).mean()
            cells.append(f"  {mae:.3f} / {corr[sigma][-1]:5.3f}   ")
        print(f"{name:26s}" + "".join(cells))
    for sigma, c in corr.items():
        print(
            f"noise {sigma:.0f} px: correlation {min(c):.3f}-{max(c):.3f} "
            f"(median {np.median(c):.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=1000)
    parser.add_argument("--scipy-faces", type=int, default=100)
    parser.add_argument("--max-nfev", type=int, default=200, help="scipy's evaluation cap")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes of our fit")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    import torch

    torch.set_num_threads(1)
    from glee.face.default_model import default_model

    model = default_model()
    if args.report:
        report(model, args.faces)
    else:
        speed(model, args.faces, args.scipy_faces, args.max_nfev, args.repeats)


if __name__ == "__main__":
    main()
