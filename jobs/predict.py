"""Predict AUs per frame for images, folders of images and videos (OpenFace-style CSVs).

python jobs/predict.py photo.jpg clips/ interview.mp4 --run runs/demo --out predictions/
python jobs/predict.py LeftVideoSN001_comp.avi --run runs/paper-disfa --fold 2 --landmarks fan
ray job submit --working-dir . -- python jobs/predict.py /mnt/shared/videos --run ...
"""

from __future__ import annotations

import sys

from glee_platform import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("inputs", nargs="+", help="image files, folders of images, videos")
    parser.add_argument("--run", required=True, help="finetune run folder (runs/<name>)")
    parser.add_argument("--fold", type=int, default=1, help="whose fold's model (default 1)")
    parser.add_argument("--checkpoint", default="", help="a checkpoint folder of that run")
    parser.add_argument("--out", default="predictions", help="output folder")
    parser.add_argument(
        "--landmarks",
        default="auto",
        choices=["auto", "fan", "dlib", "mtcnn5", "provided"],
        help="auto (default): fan when its weights are on disk or downloadable, else dlib",
    )
    parser.add_argument(
        "--landmarks-file",
        default="",
        help="for --landmarks provided: subject (input stem), task (empty), frame (1-based), "
        "x0..x67, y0..y67",
    )
    parser.add_argument(
        "--max-faces",
        type=int,
        default=None,
        help="keep the N largest faces of each frame (default: every face)",
    )
    parser.add_argument(
        "--detect-every",
        type=int,
        default=None,
        help="video frames per full MTCNN detection, the faces followed by MTCNN's O-Net "
        "between (default 10; 1: detect every frame)",
    )
    parser.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "local", "ray"],
        help="where frames run: local (this process), ray (an actor pool); auto (default): "
        "ray on a cluster, else whichever the measured start-up and rates say is faster",
    )
    parser.add_argument("--chunk-frames", type=int, default=32, help="frames per Ray task")
    parser.add_argument(
        "--num-actors", type=int, default=None, help="Ray actors (default: one per CPU)"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    def body() -> int:
        from glee_platform.predict import predict_files
        from glee_platform.session import say

        with cli.console(args.out, "predict", args.verbose):
            summary = predict_files(
                args.inputs,
                args.run,
                args.out,
                fold=args.fold,
                checkpoint=args.checkpoint or None,
                landmarks=args.landmarks,
                landmarks_file=args.landmarks_file or None,
                chunk_frames=args.chunk_frames,
                num_actors=args.num_actors,
                progress=not args.no_progress,
                max_faces=args.max_faces,
                engine=args.engine,
                **({} if args.detect_every is None else {"detect_every": args.detect_every}),
            )
            say(summary.line())
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
