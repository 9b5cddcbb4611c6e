"""Entry point: ``accelerate launch train.py --config configs/X.yaml key=value ...`` (or plain ``python train.py``).

With no argument it runs the embedded default: one-step distillation of the analytic 8-mode 2-D mixture teacher
(``configs/gmm2d.yaml`` holds the same values).
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (defaults are used for keys it leaves out)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. objective.divergence=fkl")
    args = parser.parse_intermixed_args(argv)  # key=value overrides before or after the options

    from fdistill.config import ConfigError, load_config

    overrides = list(args.overrides) + (["resume=latest"] if args.resume else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from eval.gmm import gmm_metrics
    from fdistill.methods import method_class
    from fdistill.run import run

    result = run(cfg, method_class(cfg.task), measures=gmm_metrics)  # runs on mixture teachers are measured exactly
    if result:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()})
    print(f"outputs in {cfg.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
