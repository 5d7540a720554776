"""Ray Data preprocessing throughput with 1 vs 2 CPUs (`glee_platform.preprocess`).

    python bench/preprocess_throughput.py               # 19,200 synthetic BP4D frames
    python bench/preprocess_throughput.py --frames 10   # smoke size (480 frames)

Each call pays a few seconds before its first frame (actor processes start, the manifest
is written at the end), which a 2-CPU run pays as much as a 1-CPU one; the default size
(~3 minutes to synthesize) keeps that from dominating the end-to-end ratio.

Synthesizes a BP4D-layout dataset (256 x 256 frames, provided landmarks; 3 folds x 4
subjects x 4 tasks x --frames frames) and a small one (3 subjects x 2 tasks x --frames / 4
frames) into a temporary folder, then, for
N = 1 and then 2, in a fresh Python process with its own `ray.init(num_cpus=N)`:
preprocesses the small set, then the large one, each into a fresh output folder (landmarks,
3DMM fit, alignment, Parquet shards). The clock starts after `ray.init` and covers each
`preprocess_dataset` call, actor start-up included.

Printed per N: frames/s end to end on the large set, and the steady rate
(frames_large - frames_small) / (seconds_large - seconds_small), which cancels the fixed
cost both calls pay (actors importing torch and building the model, the final manifest).
Then the 2-vs-1 ratios, and the load average before and after: on a shared machine other
work takes cores from the second actor.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(small: str, large: str, out: str, num_cpus: int) -> None:
    """One setting in this process: ray.init, preprocess both sets, print one JSON line."""
    import ray

    from glee_platform.preprocess import preprocess_dataset

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    runs = {}
    try:
        for name, root in (("small", small), ("large", large)):
            t, cpu = time.perf_counter(), time.process_time()
            s = preprocess_dataset(
                "bp4d", root, Path(out) / name, num_cpus=num_cpus, progress=False
            )
            runs[name] = {"frames": s.rows_ok, "failed": s.rows_failed}
            runs[name]["s"] = time.perf_counter() - t
            runs[name]["driver_cpu"] = time.process_time() - cpu
    finally:
        ray.shutdown()
    print(json.dumps(runs))


def measure(small: Path, large: Path, out: Path, num_cpus: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--child", str(small), str(large), str(out), str(num_cpus)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"num_cpus={num_cpus} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400, help="frames per subject and task")
    parser.add_argument("--child", nargs=4, metavar=("SMALL", "LARGE", "OUT", "NUM_CPUS"))
    args = parser.parse_args()
    if args.child:
        small, large, out, num_cpus = args.child
        child(small, large, out, int(num_cpus))
        return

    from glee.synthetic.presets import PRESETS
    from glee.synthetic.writers import synthesize

    base = PRESETS["demo"]
    large_preset = dataclasses.replace(
        base, name="bench", bp4d_per_fold=4, bp4d_tasks=("T1", "T2", "T6", "T8"),
        bp4d_frames=args.frames,
    )  # fmt: skip
    # the small set: 3 subjects x 2 tasks x frames/4 (a quarter of the subjects, half the
    # tasks, a quarter of the frames: 1/32 of the large set), big enough to steady the quotient
    small_preset = dataclasses.replace(
        base, name="bench-small", bp4d_per_fold=1, bp4d_tasks=("T1", "T2"),
        bp4d_frames=max(2, args.frames // 4),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="glee-prep-bench-") as tmp:
        t = time.perf_counter()
        roots = {
            name: synthesize(Path(tmp) / name, preset, datasets=["bp4d"], progress=False, workers=2)
            for name, preset in (("small", small_preset), ("large", large_preset))
        }
        print(f"synthesized the data sets in {time.perf_counter() - t:.0f} s")
        print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, load average before {os.getloadavg()}")
        end_to_end, steady = {}, {}
        for num_cpus in (1, 2):
            out = Path(tmp) / f"out{num_cpus}"
            r = measure(roots["small"]["bp4d"], roots["large"]["bp4d"], out, num_cpus)
            small, large = r["small"], r["large"]
            end_to_end[num_cpus] = large["frames"] / large["s"]
            steady[num_cpus] = (large["frames"] - small["frames"]) / (large["s"] - small["s"])
            print(
                f"num_cpus={num_cpus}: {large['frames']} frames ({large['failed']} failed) in "
                f"{large['s']:.1f} s = {end_to_end[num_cpus]:.1f} frames/s end to end; "
                f"{small['frames']} frames in {small['s']:.1f} s; steady "
                f"{steady[num_cpus]:.1f} frames/s; driver CPU {large['driver_cpu']:.1f} s"
            )
        print(f"load average after {os.getloadavg()}")
        print(
            f"ratio 2 CPUs / 1 CPU: {end_to_end[2] / end_to_end[1]:.2f}x end to end, "
            f"{steady[2] / steady[1]:.2f}x steady"
        )


if __name__ == "__main__":
    main()
