"""Preprocess a dataset on Ray Data: detect, landmark, align, fit the 3DMM, write Parquet.

python jobs/preprocess.py --dataset bp4d --root data/synthetic/bp4d --out data/prep/bp4d
ray job submit --working-dir . -- python jobs/preprocess.py --dataset disfa --root /data/DISFA ...
ray job submit --working-dir . -- python jobs/preprocess.py --dataset bp4d ... --num-gpus 0.25
"""

from __future__ import annotations

import sys
from pathlib import Path

from glee.datasets.registry import DATASETS
from glee.face.fitting import DEFAULT_FIT_MODE, FIT_MODES
from glee.face.pipeline import IMAGE_FORMATS, LANDMARK_BACKENDS
from glee_platform import cli


def main(argv: list[str] | None = None) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--root", required=True, type=Path, help="the dataset's root folder")
    ap.add_argument("--out", required=True, type=Path, help="output folder for this dataset")
    ap.add_argument(
        "--landmarks",
        default="auto",
        choices=LANDMARK_BACKENDS,
        help="auto (default): fan when its weights are on disk or downloadable, else dlib; "
        "provided: the dataset's landmarks.parquet",
    )
    ap.add_argument(
        "--fit-mode",
        default=DEFAULT_FIT_MODE,
        choices=FIT_MODES,
        help=f"3DMM fit (default {DEFAULT_FIT_MODE}): subject = one face shape per subject, "
        "frame = each frame alone as in the paper, photo = each image alone with "
        "single-image priors (docs/BENCHMARKS.md, fit accuracy)",
    )
    ap.add_argument("--num-cpus", type=int, default=None, help="actors (default: all CPUs)")
    ap.add_argument(
        "--num-gpus",
        type=float,
        default=0.0,
        help="GPUs per landmark actor (e.g. 0.25: four share a GPU): detection and landmarks "
        "on GPU actors, the fit on CPU actors; 0 (default): CPU actors only",
    )
    ap.add_argument("--split", default=None, help="split name or file (default: the standard)")
    ap.add_argument("--shard-size", type=int, default=32, help="frames per Parquet shard")
    ap.add_argument("--image-format", default="jpeg", choices=IMAGE_FORMATS)
    ap.add_argument("--model", default=None, help="MorphableModel .npz (default: built-in)")
    args = ap.parse_args(argv)

    def body() -> int:
        from glee.face.pipeline import PreprocessConfig
        from glee_platform.preprocess import PreprocessError, preprocess_dataset
        from glee_platform.session import say

        try:
            cfg = PreprocessConfig(
                landmarks=args.landmarks,
                image_format=args.image_format,
                model_path=args.model,
                fit_mode=args.fit_mode,
            )
        except ValueError as err:
            raise PreprocessError(str(err)) from None
        with cli.console(args.out, "preprocess", args.verbose):
            summary = preprocess_dataset(
                args.dataset,
                args.root,
                args.out,
                num_cpus=args.num_cpus,
                num_gpus=args.num_gpus,
                split=args.split,
                shard_size=args.shard_size,
                config=cfg,
            )
            say(f"{args.dataset}: {summary.line()}")
            say(
                f"wrote {summary.out} ({summary.shards_run} of {summary.shards_total} shards "
                f"run, {summary.seconds:.1f} s)"
            )
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
