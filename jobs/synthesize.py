"""Write the synthetic BP4D, BP4D+, DISFA and FEC datasets in their real on-disk layouts.

    python jobs/synthesize.py --out data/synthetic --preset demo --seed 0
    python jobs/synthesize.py --out /tmp/syn --preset tiny --datasets bp4d,disfa

Finished datasets (a `.complete` marker for the same preset and seed) are skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq

from glee.synthetic.presets import PRESETS
from glee.synthetic.writers import DATASETS, is_complete, synthesize


def _dataset_list(text: str) -> list[str]:
    names = [d.strip().lower() for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in DATASETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown dataset(s) {bad or text!r}: choose among {','.join(DATASETS)}"
        )
    return names


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write into")
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--datasets", default=",".join(DATASETS), type=_dataset_list)
    parser.add_argument(
        "--workers",
        default=min(4, os.cpu_count() or 1),
        type=int,
        help="rendering processes (the files are the same for any number)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    done_before = {d: is_complete(args.out / d, args.preset, args.seed) for d in args.datasets}
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    paths = synthesize(
        args.out,
        args.preset,
        args.seed,
        args.datasets,
        progress=not args.quiet,
        workers=args.workers,
    )
    for name, path in paths.items():
        rows = pq.read_metadata(path / "truth.parquet").num_rows
        note = "already complete, skipped" if done_before[name] else "written"
        print(f"{name:9s} {path}  {rows} images/frames ({note})")
    return paths


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
