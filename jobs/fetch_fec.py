"""Download the FEC images and cut their face crops (resumable).

    python jobs/fetch_fec.py --csv faceexp-comparison-data-{train,test}-public.csv --out data/fec
    python jobs/preprocess.py --dataset fec --root data/fec --out data/prep/fec

The CSVs are copied into --out, beside images/, crops/ and dead_links.csv, so --out is the
FEC root preprocessing reads as it is.
"""

from __future__ import annotations

import argparse
import sys

from glee.datasets.errors import DatasetError
from glee.datasets.fetch_fec import fetch_fec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", nargs="+", required=True, help="FEC CSV file(s)")
    parser.add_argument("--out", required=True, help="FEC root to write (CSVs, images/, crops/)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--retries", type=int, default=3, help="retries after the first try")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry wait, doubles")
    parser.add_argument("--retry-dead", action="store_true", help="retry dead_links.csv urls")
    parser.add_argument("--no-keep-images", action="store_true", help="store only the crops")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = fetch_fec(
            args.csv,
            args.out,
            workers=args.workers,
            retries=args.retries,
            timeout=args.timeout,
            backoff=args.backoff,
            retry_dead=args.retry_dead,
            keep_images=not args.no_keep_images,
            progress=not args.no_progress,
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
