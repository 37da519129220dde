"""``repbend <command>``: the command-line interface."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from . import __version__
from .errors import RepbendError

OVERRIDES_HELP = "key=value overrides, e.g. train.lr=1e-4 output_dir=runs/x (dotted keys; values read as YAML)"


def _train(args) -> int:
    from .config import load_config
    from .train import train

    config = load_config(args.config, args.overrides)
    started = time.time()
    result = train(config, resume=args.resume, progress=not args.quiet)
    minutes = (time.time() - started) / 60
    metrics = {k: round(v, 4) for k, v in result.last_metrics.items() if isinstance(v, float)}
    print(f"\ntrained {result.steps} steps in {minutes:.1f} min")
    print(f"adapter:  {result.adapter_dir}")
    print(f"metrics:  {result.output_dir / 'metrics.jsonl'}")
    print(f"config:   {result.output_dir / 'config.yaml'}")
    if metrics:
        print("last step: " + json.dumps(metrics))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repbend",
        description="Representation Bending: train LLMs to refuse harmful requests from the inside.",
    )
    parser.add_argument("--version", action="version", version=f"repbend {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train a LoRA adapter with a method's loss (RepBend by default)",
        description="Train a LoRA adapter from CONFIG; writes adapter/, config.yaml and metrics.jsonl to output_dir.",
    )
    train.add_argument("config", help="YAML config file (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    train.set_defaults(handler=_train)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except RepbendError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
