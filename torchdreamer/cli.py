"""``torchdreamer train`` and ``torchdreamer eval``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from torchdreamer.training.config import PRESETS, Config

__all__ = ["main"]

_HELP = {field.name: field for field in dataclasses.fields(Config)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchdreamer", description="Train and evaluate DreamerV3 agents."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train an agent (default: CartPole-v1, small preset)",
        description="Train a DreamerV3 agent; any option left out keeps its default "
        "(or, with --resume, the saved run's value).",
    )
    train.add_argument("--env", help="gymnasium id (default CartPole-v1)")
    train.add_argument("--preset", choices=sorted(PRESETS), help="model size (default small)")
    train.add_argument("--steps", type=int, help="environment steps in all (default 100000)")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--device", help="cpu or cuda (default cpu)")
    train.add_argument("--logdir", type=Path, help="run directory (default runs/ENV-sSEED)")
    train.add_argument("--resume", type=Path, metavar="LOGDIR", help="continue the run in LOGDIR")
    train.add_argument("--image-size", type=int, help="side images are resized to (64)")
    train.add_argument("--num-envs", type=int, help="parallel environments (default 16)")
    train.add_argument("--train-ratio", type=float, help="replayed steps per env step (32)")
    train.add_argument("--replay-capacity", type=int, help="replay rows kept (1000000)")
    train.add_argument("--lr", type=float, help="learning rate (1e-4; official 4e-5)")
    train.add_argument("--warmup", type=int, help="learning-rate warm-up updates (200)")
    train.add_argument("--batch-size", type=int, help="replay sequences per update (16)")
    train.add_argument("--batch-length", type=int, help="steps per replay sequence (64)")
    train.add_argument("--log-every", type=int, help="env steps between metric rows (1000)")
    train.add_argument("--checkpoint-every", type=int, help="env steps between checkpoints (10000)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate = commands.add_parser("eval", help="run a trained policy and print its mean score")
    evaluate.add_argument("logdir", type=Path)
    evaluate.add_argument("--episodes", type=int, default=10)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--sample", action="store_true", help="sample actions, not the mode")
    return parser


def _config(args: argparse.Namespace) -> tuple[Config, Path, bool]:
    given = {
        name: getattr(args, name)
        for name in (
            "env",
            "preset",
            "steps",
            "seed",
            "device",
            "image_size",
            "num_envs",
            "train_ratio",
            "batch_size",
            "batch_length",
            "lr",
            "warmup",
            "replay_capacity",
            "log_every",
            "checkpoint_every",
        )
        if getattr(args, name) is not None
    }
    if args.resume is not None:
        if args.logdir is not None and args.logdir != args.resume:
            raise ValueError("give the run directory once: --resume LOGDIR, without --logdir.")
        saved = args.resume / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"{args.resume} holds no config.json: no run to resume.")
        config = dataclasses.replace(Config.load(saved), **given)
        return config, args.resume, True
    config = Config(**given)
    logdir = args.logdir or Path("runs") / f"{config.env}-s{config.seed}"
    return config, logdir, False


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    from torchdreamer.training import distributed
    from torchdreamer.training.loop import evaluate, train

    ranks = distributed.Ranks()
    try:
        if args.command == "train":
            # Under torchrun: join the job; rank 0 reads the run directory.
            ranks = distributed.init_from_env()
            try:
                config, logdir, resume = distributed.run_on_main(lambda: _config(args))
                summary = train(config, logdir, resume=resume, progress=not args.no_progress)
            finally:
                distributed.shutdown()
            if ranks.is_main:
                print(summary.line(config))
                print(f"logs, checkpoint and learning_curve.png in {logdir}")
        else:
            scores = evaluate(args.logdir, args.episodes, args.device, args.sample)
            mean = sum(scores) / len(scores)
            print(f"mean score over {len(scores)} episodes: {mean:.1f}")
    except (ValueError, FileNotFoundError) as error:
        if ranks.is_main:
            print(f"torchdreamer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
