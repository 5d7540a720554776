"""Pretrain GLEE-Net's global and local branches on FEC triplets (Sec. III-E).

python jobs/pretrain.py --config paper-bp4d --set pretrain.epochs=5
"""

from __future__ import annotations

import sys

from glee_platform import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, default_config="demo")
    parser.add_argument(
        "--force", action="store_true", help="preprocess again a data folder made otherwise"
    )
    args = parser.parse_args(argv)

    def body() -> int:
        from glee_platform.config import load_config
        from glee_platform.session import ensure_ray, say
        from glee_platform.sources import ensure_preprocessed
        from glee_platform.train import run_pretrain, write_config

        cfg = load_config(args.config, args.set)
        with cli.console(cfg.run_dir, "pretrain", args.verbose):
            ensure_ray()
            ensure_preprocessed(cfg, [cfg.data.dataset, "fec"], force=args.force)
            write_config(cfg)
            result = run_pretrain(cfg)
            final = result.final
            say(
                f"pretrained {len(result.history)} epochs; last: "
                + ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float))
            )
            say(f"checkpoint: {result.checkpoint}")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
