"""Pretrain GLEE-Net's global and local branches on FEC triplets (Sec. III-E).

python jobs/pretrain.py --config paper-bp4d --set pretrain.epochs=5
"""

from __future__ import annotations

import argparse
import sys

from glee.datasets.errors import DatasetError
from glee_platform.config import ConfigError, load_config
from glee_platform.data import DataError
from glee_platform.preprocess import PreprocessError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="YAML file or preset name (demo)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. pretrain.lr=1e-4 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        from glee_platform.demo import ensure_preprocessed
        from glee_platform.train import ensure_ray, run_pretrain, write_config

        ensure_ray()
        ensure_preprocessed(cfg, [cfg.data.dataset, "fec"])
        write_config(cfg)
        result = run_pretrain(cfg)
    except (ConfigError, DataError, DatasetError, PreprocessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    final = result.final
    print(
        f"pretrained {len(result.history)} epochs; last: "
        + ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float))
    )
    print(f"checkpoint: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
