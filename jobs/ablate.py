"""Run the Table V ablation: every GLEE-Net variant on one dataset, same folds and seed.

python jobs/ablate.py --config ablation-tiny                  # tiny synthetic BP4D
python jobs/ablate.py --config paper-bp4d --variants full,wo_lb,wo_3dgb
ray job submit --working-dir . -- python jobs/ablate.py --config paper-bp4d
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
    parser.add_argument("--config", default="ablation-tiny", help="YAML file or preset name")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. finetune.epochs=2 (repeatable)",
    )
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated Table V variants (default: all): full, wo_pretrain, "
        "fixed_gb_lb, resnet_gb_lb, wo_gb_lb, wo_3dgb, wo_lb, wo_tc, wo_joint_fc",
    )
    args = parser.parse_args(argv)
    try:
        from glee_platform.ablate import run_ablation

        cfg = load_config(args.config, args.set)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()] or None
        result = run_ablation(cfg, variants)
    except (ConfigError, DataError, DatasetError, PreprocessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.files["md"].read_text(encoding="utf-8"))
    print(f"table: {result.files['md']} and {result.files['csv']}")
    print(f"run folders: {result.run_dir}/<variant>/ (evaluate with jobs/evaluate.py --run ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
