"""``torchdreamer train`` and ``torchdreamer eval``.

The options of ``train`` are the fields of :class:`~torchdreamer.training.Config`:
names, types, help text and defaults all come from the dataclass. Nothing
imports torch until a command runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from torchdreamer.training.config import (
    ACTOR_GRADS,
    COMPILE_MODES,
    PRECISIONS,
    PRESETS,
    SUITE_PRESETS,
    Config,
    field_docs,
    official_comparison,
)
from torchdreamer.training.console import say

__all__ = ["main"]

#: Config fields with no command-line option.
_NOT_OPTIONS = {"extra"}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        say(f"{self.prog}: error: {message} (see {self.prog} --help)", sys.stderr)
        raise SystemExit(2)


def _whole(text: str) -> int:
    """An integer option: ``100000``, ``100_000`` or an integral float literal (``1e5``)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not (math.isfinite(value) and value.is_integer()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def _number(text: str) -> float:
    """A float option; NaN and infinities are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _preset(text: str) -> str:
    canonical = {name.lower(): name for name in PRESETS}
    if text.lower() not in canonical:
        raise argparse.ArgumentTypeError(
            f"unknown preset {text!r}; choose one of {sorted(PRESETS)} (any case)"
        )
    return canonical[text.lower()]


def _auto_or_whole(text: str) -> int | str:
    """``auto`` or a whole number (``--env-workers``)."""
    if text == "auto":
        return text
    try:
        return _whole(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither auto nor a whole number") from None


_TYPES = {"int": _whole, "float": _number, "str": str, "int | str": _auto_or_whole}
_METAVARS = {"int": "N", "float": "X", "int | str": "{auto,N}"}


def _help(text: str) -> str:
    """A docstring as help text: ``field`` becomes --field, ``%`` is escaped for argparse."""
    names = {item.name for item in dataclasses.fields(Config)}

    def option(match: re.Match) -> str:
        word = match.group(1)
        return f"--{word.replace('_', '-')}" if word in names else word

    text = re.sub(r":\w+:`([^`]+)`", r"\1", text)  # Sphinx roles
    return re.sub(r"``([^`]+)``", option, text).replace("%", "%%")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`Config` field, with its docstring and default as help."""
    docs = field_docs()
    defaults = Config()
    for item in dataclasses.fields(Config):
        if item.name in _NOT_OPTIONS:
            continue
        default = getattr(defaults, item.name)
        flag = f"--{item.name.replace('_', '-')}"
        if item.type == "bool":  # --flag / --no-flag; None: not given
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{_help(docs.get(item.name, ''))} (default: {'on' if default else 'off'})",
            )
            continue
        kind = _preset if item.name == "preset" else _TYPES[str(item.type)]
        choices = {
            "preset": tuple(PRESETS),
            "compile": COMPILE_MODES,
            "precision": PRECISIONS,
            "actor_grad": ACTOR_GRADS,
        }.get(item.name)
        parser.add_argument(
            flag,
            type=kind,
            # Checked by argparse, except preset: its _preset takes any case.
            choices=choices if item.name != "preset" else None,
            default=None,  # None: not given (a resumed run keeps its saved value)
            metavar=_METAVARS.get(str(item.type), item.name.upper())
            if choices is None
            else "{" + ",".join(choices) + "}",
            help=f"{_help(docs.get(item.name, ''))} (default: {default})",
        )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="torchdreamer", description="Train and evaluate DreamerV3 agents.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser(
        "train",
        help="train an agent (default: CartPole-v1, small preset)",
        description="Train a DreamerV3 agent; any option left out keeps its default "
        "(or, with --resume, the saved run's value). Ctrl-C or SIGTERM stops it with a "
        "final checkpoint after the update in progress (a second Ctrl-C abandons an "
        "update that compiles); --resume continues it.",
    )
    train.add_argument("--logdir", type=Path, help="run directory (default: runs/ENV-sSEED)")
    train.add_argument("--resume", type=Path, metavar="LOGDIR", help="continue the run in LOGDIR")
    train.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (a bar on a terminal, a line a minute elsewhere)",
    )
    train.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved config beside the official dreamerv3/configs.yaml values "
        "(of --suite, or the official defaults), each difference with its reason, and exit "
        "without training",
    )
    _add_config_options(train)
    evaluate = commands.add_parser(
        "eval",
        help="run a trained policy and print its scores",
        description="Run the policy of a run's checkpoint.pt and print the mean ± std, "
        "min and max of its episode scores.",
    )
    evaluate.add_argument("logdir", type=Path, help="the run directory (holds checkpoint.pt)")
    evaluate.add_argument(
        "--episodes", type=_whole, default=10, help="episodes to run (default: 10)"
    )
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    evaluate.add_argument(
        "--sample",
        action="store_true",
        help="sample actions from the policy (default: its most likely action)",
    )
    evaluate.add_argument(
        "--threads",
        type=_whole,
        default=None,
        help="CPU threads torch computes with, 0 = automatic (default: the run's)",
    )
    evaluate.add_argument(
        "--video",
        type=Path,
        default=None,
        metavar="FILE.gif",
        help="write a GIF of the first episode to FILE.gif (default: none)",
    )
    return parser


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The config options given on the command line."""
    return {
        item.name: getattr(args, item.name)
        for item in dataclasses.fields(Config)
        if item.name not in _NOT_OPTIONS and getattr(args, item.name) is not None
    }


def _suite_line(config: Config, given: dict[str, Any]) -> str:
    """What the suite preset set, and which of its fields the command line overrode."""
    fields = ", ".join(
        f"{name} {getattr(config, name)}" + (" (given)" if name in given else "")
        for name in SUITE_PRESETS[config.suite]
    )
    return f"suite {config.suite} (official settings): {fields}"


def _shown(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value) or "''"
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _show_config(args: argparse.Namespace) -> int:
    """``train --show-config``: the resolved config beside the official values; no training."""
    try:
        config, _, _ = _config(args)
    except (ValueError, OSError) as error:
        say(f"torchdreamer: error: {_message(error)}", sys.stderr)
        return 2
    rows = official_comparison(config, _given(args))
    source = f"defaults + {config.suite}" if config.suite else "defaults; no --suite"
    say(
        f"the resolved config beside the official dreamerv3/configs.yaml (danijar/dreamerv3 "
        f"e3f0224, {source}):"
    )
    table = [("field", "ours", "official", "configs.yaml key", "difference")] + [
        (name, _shown(ours), _shown(value), key, note)
        for name, ours, value, key, note in rows
        if key is not None
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        say("  ".join([*cells, row[4]]).rstrip())
    only = [f"{name} {_shown(ours)}" for name, ours, _, key, _ in rows if key is None]
    say(f"ours only (no official counterpart): {', '.join(only)}")
    differ = [row[0] for row in rows if row[3] is not None and row[4]]
    say(
        f"{len(differ)} difference{'s' * (len(differ) != 1)} from the official"
        + (f": {', '.join(differ)}" if differ else "")
    )
    return 0


def _config(args: argparse.Namespace) -> tuple[Config, Path, bool]:
    given = _given(args)
    if args.resume is not None:
        if args.logdir is not None and args.logdir != args.resume:
            raise ValueError("give the run directory once: --resume LOGDIR, without --logdir.")
        if args.resume.exists() and not args.resume.is_dir():
            raise ValueError(f"{args.resume} is a file, not a run directory.")
        saved = args.resume / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"{args.resume} holds no config.json: no run to resume.")
        config = dataclasses.replace(Config.load(saved), **given)
        return config, args.resume, True
    config = Config(**given)
    logdir = args.logdir or Path("runs") / f"{config.env}-s{config.seed}"
    return config, logdir, False


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and not isinstance(error, FileNotFoundError):
        return f"{error.strerror or error}: {error.filename}"
    return str(error)


def _train(args: argparse.Namespace) -> int:
    from torchdreamer.training import distributed
    from torchdreamer.training.loop import train
    from torchdreamer.training.stop import StoppedBeforeStart

    # Under torchrun: join the job; rank 0 reads the run directory.
    ranks = distributed.init_from_env()
    try:
        try:
            config, logdir, resume = distributed.run_on_main(lambda: _config(args))
            if config.suite and not resume and ranks.is_main:
                say(_suite_line(config, _given(args)))
            summary = train(config, logdir, resume=resume, progress=not args.no_progress)
        finally:
            distributed.shutdown()
    except (ValueError, OSError) as error:
        if ranks.is_main:
            say(f"torchdreamer: error: {_message(error)}", sys.stderr)
        return 2
    except StoppedBeforeStart as stopped:
        if ranks.is_main:
            say(f"torchdreamer: {stopped}", sys.stderr)
        return 128 + stopped.signum
    if ranks.is_main:
        say(summary.line(config))
        written = "logs and checkpoint" + (f", {summary.curve.name}" if summary.curve else "")
        say(f"{written} in {logdir}")
        if summary.stopped_by is not None:
            name = signal.Signals(summary.stopped_by).name
            say(
                f"stopped at step {summary.env_step} by {name}; checkpoint saved; resume with "
                f"`torchdreamer train --resume {logdir}`"
            )
    return 0 if summary.stopped_by is None else 128 + summary.stopped_by


def _evaluate(args: argparse.Namespace) -> int:
    from torchdreamer.training.evaluation import evaluate, policy_name

    try:
        scores = evaluate(
            args.logdir, args.episodes, args.device, args.sample, args.threads, args.video
        )
    except (ValueError, OSError) as error:
        say(f"torchdreamer: error: {_message(error)}", sys.stderr)
        return 2
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    say(
        f"score over {len(scores)} episodes: {mean:.1f} ± {std:.1f} (mean ± std), "
        f"min {min(scores):.1f}, max {max(scores):.1f}; {policy_name(args.sample)} policy"
    )
    if args.video is not None:
        say(f"video of the first episode in {args.video}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train" and args.show_config:
            return _show_config(args)
        return _train(args) if args.command == "train" else _evaluate(args)
    except KeyboardInterrupt:  # before training started or after it ended: nothing to save
        say("torchdreamer: interrupted outside training; no run state was lost", sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
