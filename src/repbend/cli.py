"""``repbend <command>``: the command-line interface."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from . import __version__
from .errors import RepbendError
from .resources import shipped_path

CONFIG_HELP = ("YAML config file, or a shipped config by name when no such file is here "
               "(tiny-test, smollm2-cpu, recipe, ...: see configs/)")
OVERRIDES_HELP = "key=value overrides, e.g. train.lr=1e-4 output_dir=runs/x (dotted keys; values read as YAML)"


def _train(args) -> int:
    from accelerate import PartialState

    from .config import load_config
    from .training import train

    config = load_config(args.config, args.overrides)  # a bad config fails before any launch
    if args.num_processes or args.accelerate_config:
        return _launch(args)
    started = time.time()
    result = train(config, resume=args.resume, progress=not args.quiet, allow_changes=frozenset(args.allow_change))
    if not PartialState().is_main_process:
        return 0
    minutes = (time.time() - started) / 60
    metrics = {k: round(v, 4) for k, v in result.last_metrics.items() if isinstance(v, float)}
    print(f"\ntrained {result.steps} steps in {minutes:.1f} min")
    print(f"adapter:  {result.adapter_dir}")
    print(f"metrics:  {result.output_dir / 'metrics.jsonl'}")
    print(f"config:   {result.output_dir / 'config.yaml'}")
    if metrics:
        print("last step: " + json.dumps(metrics))
    return 0


def _launch(args) -> int:
    """Run this same ``train`` command under ``accelerate launch`` (one process per GPU,
    or gloo processes on a CPU machine)."""
    import socket
    import subprocess

    with socket.socket() as probe:  # a free port: two runs on one machine must not meet on 29500
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--main_process_port", str(port)]
    if args.num_processes:
        launch += ["--num_processes", str(args.num_processes)]
    if args.accelerate_config:
        # configs/accelerate/... names the shipped file from any folder, as CONFIG does.
        shipped = None if os.path.exists(args.accelerate_config) else shipped_path(args.accelerate_config)
        launch += ["--config_file", str(shipped or args.accelerate_config)]
    elif (args.num_processes or 1) > 1:
        # accelerate's torchrun launcher: DDP over NCCL, or gloo where there is no GPU
        # (its --cpu launcher needs MPI for several processes).
        launch += ["--multi_gpu"]
    command = [*launch, "-m", "repbend", *(["-v"] if args.verbose else []), "train", args.config, *args.overrides]
    command += [flag for flag, on in (("--resume", args.resume), ("-q", args.quiet)) if on]
    command += [part for key in args.allow_change for part in ("--allow-change", key)]
    print("running: " + " ".join(command), flush=True)
    return subprocess.call(command)


def _eval(args) -> int:
    from .config import load_config
    from .commands.evaluate import evaluate
    from .eval.report import render_markdown

    config = load_config(args.config, args.overrides)
    result = evaluate(config, progress=not args.quiet)
    print("\n" + render_markdown(result.results))
    print(f"generated {result.generated} responses (the rest from the cache)")
    for name in ("results.json", "generations.jsonl", "results.md"):
        print(f"{name + ':':<19}{result.output_dir / name}")
    return 0


def _data(args) -> int:
    from .commands.data import build_data, summary
    from .config import load_config

    config = load_config(args.config, args.overrides)
    started = time.time()
    result = build_data(config, progress=not args.quiet)
    print(f"\n{summary(result)}")
    print(f"took {(time.time() - started) / 60:.1f} min")
    return 0


def _report(args) -> int:
    from .eval.report import load_results, render_markdown

    text = render_markdown(load_results(args.runs))
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text)
    print(text)
    return 0


def _run(args) -> int:
    from .commands.run import DEFAULT_CONFIG, run, summary_lines
    from .config import load_config

    overrides, path = list(args.overrides), args.config
    if path and "=" in path and not os.path.exists(path):  # `repbend run key=value`: no CONFIG given
        overrides, path = [path, *overrides], None
    config = load_config(path or DEFAULT_CONFIG, overrides)
    result = run(config, progress=not args.quiet)
    print("\n" + "\n".join(summary_lines(result)))
    return 0


def _analyze(args) -> int:
    from .analysis import summary_lines
    from .commands.analyze import analyze
    from .config import load_config

    result = analyze(load_config(args.config, args.overrides), progress=not args.quiet)
    print("\n" + "\n".join(summary_lines(result)))
    return 0


def _tune(args) -> int:
    from .commands.tune import summary_lines, tune
    from .config import load_config

    result = tune(load_config(args.config, args.overrides), progress=not args.quiet)
    print("\n" + "\n".join(summary_lines(result)))
    return 0


def _compare(args) -> int:
    from .commands.compare import compare
    from .config import load_config

    config = load_config(args.config, args.overrides)
    started = time.time()
    result = compare(config, progress=not args.quiet)
    print("\n" + result.table)
    print(f"took {(time.time() - started) / 60:.1f} min")
    for name in ("compare.md", "compare.json", "safety_usability.png"):
        print(f"{name + ':':<22}{result.output_dir / name}")
    if "relearn" in result.data:
        print(f"{'relearn.png:':<22}{result.output_dir / result.data['relearn']['plot']}")
    return 0


def _relearn(args) -> int:
    import dataclasses

    from .commands.relearn import relearn, summary_lines
    from .config import load_config

    config = load_config(args.config, args.overrides)
    if args.adapter:
        config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, adapters=args.adapter))
    started = time.time()
    result = relearn(config, progress=not args.quiet)
    print("\n" + "\n".join(summary_lines(result)))
    print(f"took {(time.time() - started) / 60:.1f} min")
    return 0


def config_command(commands, name: str, handler, help: str, description: str, config_optional: bool = False):
    """A subcommand that reads CONFIG plus key=value overrides."""
    command = commands.add_parser(name, help=help, description=description)
    if config_optional:
        command.add_argument("config", nargs="?", help=CONFIG_HELP)
    else:
        command.add_argument("config", help=CONFIG_HELP)
    command.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    command.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    command.set_defaults(handler=handler)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repbend",
        description="Representation Bending: train LLMs to refuse harmful requests from the inside.",
    )
    parser.add_argument("--version", action="version", version=f"repbend {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = config_command(
        commands, "train", _train,
        help="train a LoRA adapter with a method's loss (RepBend by default)",
        description="Train a LoRA adapter from CONFIG; writes adapter/, config.yaml and metrics.jsonl to output_dir.",
    )
    train.add_argument("--resume", action="store_true",
                       help="continue from the last checkpoint in output_dir; refused when a training setting changed")
    train.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                       help="with --resume, accept a change to KEY (only train.steps: train longer)")
    train.add_argument("--num-processes", type=int, metavar="N",
                       help="run under `accelerate launch` with N processes (GPUs; gloo processes on a CPU machine)")
    train.add_argument("--accelerate-config", metavar="FILE",
                       help="accelerate config file for the launch (configs/accelerate/: DDP, DeepSpeed ZeRO-2/3, FSDP)")
    config_command(
        commands, "eval", _eval,
        help="evaluate the base model and adapters under attacks, with judges and intervals",
        description="Run CONFIG's eval.benchmarks x attacks on the base model and eval.adapters; "
        "writes results.json, generations.jsonl and results.md to eval.output_dir (default OUTPUT_DIR/eval).",
    )
    config_command(
        commands, "data", _data,
        help="build the training sets and the dev/test evaluation splits from packaged data and the base model",
        description="Build CONFIG's build section: P_s, P_us, P_uu and retain (train.jsonl) plus disjoint dev and "
        "test splits of harmful, benign, everyday and over-refusal prompts (dev_<set>.jsonl for every choice, "
        "test_<set>.jsonl for the final report only), from data in installed packages and the model's own answers; "
        "writes to build.output_dir (default OUTPUT_DIR/data) and reuses a finished build with the same settings.",
    )
    config_command(
        commands, "run", _run,
        help="the main job: data -> train -> eval -> report, each step cached",
        description="Build the data, train, evaluate base vs trained and write report.md to output_dir. "
        "Without CONFIG it runs configs/smollm2-cpu.yaml on the embedded model. Re-running reuses finished steps.",
        config_optional=True,
    )

    config_command(
        commands, "analyze", _analyze,
        help="logit lens and safe-vs-unsafe activation geometry, base vs adapter (PNGs, analysis.json/.md)",
        description="Compare the base model (adapter disabled) with analysis.adapter (default OUTPUT_DIR/adapter; "
        "a training run folder works too) on analysis.safe_path / analysis.unsafe_path (default the dev split "
        "of the built data); writes to analysis.output_dir (default OUTPUT_DIR/analysis).",
    )
    config_command(
        commands, "tune", _tune,
        help="multi-objective Optuna search over training settings; the best point as a ready config",
        description="Search CONFIG's tune.space (short trials scored on samples of the built data's dev split), store the study in OUTPUT_DIR/tune/study.db (re-run to resume), write the Pareto front "
        "(front.md/.json/.png) and best.yaml, then `repbend run` best.yaml, reported on the test split (OUTPUT_DIR/tune/final).",
    )
    config_command(
        commands, "compare", _compare,
        help="train RepBend and the baselines on one budget, evaluate them together, write compare.md",
        description="Train each of CONFIG's compare.methods (overlays in configs/methods/) with the same data, "
        "seed and step budget into OUTPUT_DIR/<method>/ (finished runs are reused), evaluate the base model and "
        "every result in one evaluation, and write compare.md, compare.json and safety_usability.png.",
    )
    relearn = config_command(
        commands, "relearn", _relearn,
        help="re-learning attack: ASR after N steps of LoRA fine-tuning on harmful answers",
        description="Fine-tune each model under test (the base model and eval.adapters, or --adapter) with a fresh "
        "LoRA on relearn.rows harmful answers (P_uu rows) of the training data, and read the ASR of one benchmark "
        "and attack (relearn.benchmark, relearn.attack) after each number of steps in relearn.steps; writes "
        "relearn.json and relearn.png to relearn.output_dir (default OUTPUT_DIR/relearn). Finished steps are reused.",
    )
    relearn.add_argument("--adapter", action="append", default=[], metavar="PATH",
                         help="an adapter or merged model folder to attack (repeatable; default: eval.adapters)")

    report = commands.add_parser(
        "report",
        help="render the results table again from saved evaluation runs",
        description="Merge the results.json of one or more evaluation folders into one Markdown table.",
    )
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluation folders (or results.json files)")
    report.add_argument("-o", "--output", help="also write the table to this file")
    report.set_defaults(handler=_report)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting overrides at the first option (`CONFIG -q key=value`);
    # key=value words after it are still overrides.
    if extra:
        if not hasattr(args, "overrides") or any(word.startswith("-") or "=" not in word for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except RepbendError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError) as error:
        # An output folder that cannot be written (read-only, a file in its place): the
        # path and the reason, not a traceback.
        where = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
        print(f"error: cannot write {where}: {error.strerror}; choose another output_dir or fix its "
              f"permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept: run the same command again to continue "
              "(`repbend train` needs --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
