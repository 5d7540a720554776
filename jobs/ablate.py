"""Run the Table V ablation: every GLEE-Net variant on one dataset, same folds and seed.

python jobs/ablate.py --config ablation-tiny                  # tiny synthetic BP4D
python jobs/ablate.py --config paper-bp4d --variants full,wo_lb,wo_3dgb
ray job submit --working-dir . -- python jobs/ablate.py --config paper-bp4d
"""

from __future__ import annotations

import sys

from glee_platform import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, default_config="ablation-tiny")
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated Table V variants (default: all): full, wo_pretrain, "
        "fixed_gb_lb, resnet_gb_lb, wo_gb_lb, wo_3dgb, wo_lb, wo_tc, wo_joint_fc",
    )
    args = parser.parse_args(argv)

    def body() -> int:
        from glee_platform.ablate import run_ablation
        from glee_platform.config import load_config
        from glee_platform.session import say

        cfg = load_config(args.config, args.set)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()] or None
        with cli.console(cfg.run_dir, "ablate", args.verbose):
            result = run_ablation(cfg, variants)
            say(result.files["md"].read_text(encoding="utf-8"))
            say(f"table: {result.files['md']} and {result.files['csv']}")
            say(f"run folders: {result.run_dir}/<variant>/ (jobs/evaluate.py --run ...)")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
