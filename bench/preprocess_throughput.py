"""Ray Data preprocessing throughput with 1 vs 2 CPUs (`glee_platform.preprocess`).

    python bench/preprocess_throughput.py               # 480 synthetic BP4D frames
    python bench/preprocess_throughput.py --frames 16   # smoke size (3 x 2 x 2 x 16 frames)

Synthesizes one BP4D-layout dataset (256 x 256 frames, provided landmarks) into a temporary
folder, then preprocesses it (landmarks, 3DMM fit, alignment, Parquet shards) twice, each
time in a fresh Python process with its own `ray.init(num_cpus=N)`, N = 1 then 2, into a
fresh output folder. The clock starts after `ray.init` and covers `preprocess_dataset`
(actor start-up included). Prints frames/s for both, the ratio, and the load average
before and after: on a shared machine the other work takes cores from the second actor.
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


def child(root: str, out: str, num_cpus: int) -> None:
    """One measurement in this process: ray.init, preprocess, print one JSON line."""
    import ray

    from glee_platform.preprocess import preprocess_dataset

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        t = time.perf_counter()
        summary = preprocess_dataset("bp4d", root, out, num_cpus=num_cpus, progress=False)
        seconds = time.perf_counter() - t
    finally:
        ray.shutdown()
    print(json.dumps({"frames": summary.rows_ok, "failed": summary.rows_failed, "s": seconds}))


def measure(root: Path, out: Path, num_cpus: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--child", str(root), str(out), str(num_cpus)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"num_cpus={num_cpus} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="frames per subject and task")
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "OUT", "NUM_CPUS"))
    args = parser.parse_args()
    if args.child:
        root, out, num_cpus = args.child
        child(root, out, int(num_cpus))
        return

    from glee.synthetic.presets import PRESETS
    from glee.synthetic.writers import synthesize

    # BP4D layout: 3 folds x 2 subjects x 2 tasks x --frames frames.
    preset = dataclasses.replace(
        PRESETS["demo"], name="bench", bp4d_per_fold=2, bp4d_tasks=("T1", "T6"),
        bp4d_frames=args.frames,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="glee-prep-bench-") as tmp:
        t = time.perf_counter()
        root = synthesize(Path(tmp) / "data", preset, datasets=["bp4d"], progress=False)["bp4d"]
        print(f"synthesized {root} in {time.perf_counter() - t:.0f} s")
        print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, load average before {os.getloadavg()}")
        rates = {}
        for num_cpus in (1, 2):
            r = measure(root, Path(tmp) / f"out{num_cpus}", num_cpus)
            rates[num_cpus] = r["frames"] / r["s"]
            print(
                f"num_cpus={num_cpus}: {r['frames']} frames ({r['failed']} failed) in "
                f"{r['s']:.1f} s = {rates[num_cpus]:.1f} frames/s"
            )
        print(f"load average after {os.getloadavg()}")
        print(f"ratio 2 CPUs / 1 CPU: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
