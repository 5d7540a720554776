"""Open a run folder's dashboards: TensorBoard, and optuna-dashboard for a search.

python jobs/dashboards.py runs/demo
python jobs/dashboards.py runs/tune-demo
"""

from __future__ import annotations

import sys
import time

from glee_platform import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("run", help="run folder (runs/<name>)")
    args = parser.parse_args(argv)

    def body() -> int:
        from glee_platform.dashboards import RAY_DASHBOARD, dashboards

        with dashboards(args.run) as boards:
            for board in boards:
                print(f"{board.name:17s} {board.url}")
            print(
                f"{'Ray dashboard':17s} {RAY_DASHBOARD} (while a job runs; on a cluster: "
                "ray dashboard cluster.yaml)"
            )
            print("Ctrl-C stops them.", flush=True)
            try:
                while all(b.process.poll() is None for b in boards):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
