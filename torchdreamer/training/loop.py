"""The training loop (``torchdreamer train``) and evaluation (``torchdreamer eval``)."""

from __future__ import annotations

import math
import random
import signal
import time
from collections import deque
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from torchdreamer.training import distributed
from torchdreamer.training.agent import DreamerAgent
from torchdreamer.training.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from torchdreamer.training.config import Config
from torchdreamer.training.envs import make_env
from torchdreamer.training.logs import RunLog, plot_curve
from torchdreamer.training.replay import SequenceReplay
from torchdreamer.training.runner import EnvRunner, Episode

__all__ = ["Summary", "evaluate", "prepare_logdir", "train"]

CONFIG = "config.json"


@dataclass
class Summary:
    """How a run went."""

    env_step: int
    updates: int
    wall_time: float
    mean_score: float
    """Mean score of the last 10 training episodes (NaN before any ended)."""

    def line(self, config: Config) -> str:
        speed = self.env_step / max(self.wall_time, 1e-9)
        rate = self.updates / max(self.wall_time, 1e-9)
        return (
            f"{config.env} seed {config.seed}, preset {config.preset}: {self.env_step} env "
            f"steps and {self.updates} updates in {self.wall_time:.0f} s ({speed:.1f} env "
            f"steps/s, {rate:.2f} updates/s); mean score of the last 10 episodes "
            f"{self.mean_score:.1f}"
        )


def prepare_logdir(config: Config, logdir: Path, resume: bool) -> Config:
    """Check ``logdir`` against the run and return the config to use.

    A new run needs a directory that holds no run. A resumed run must have the
    saved config, except for :attr:`Config.RESUMABLE` fields (``steps``,
    ``device``, …).
    """
    logdir = Path(logdir)
    saved_path = logdir / CONFIG
    if resume:
        if not saved_path.exists():
            raise FileNotFoundError(f"{logdir} holds no {CONFIG}: there is no run to resume.")
        differences = Config.load(saved_path).differences(config)
        if differences:
            raise ValueError(
                f"cannot resume {logdir} with a different {', '.join(sorted(differences))}: "
                f"only {', '.join(Config.RESUMABLE)} may change when a run is resumed."
            )
        saved_path.write_text(config.to_json())
        return config
    if saved_path.exists():
        saved = Config.load(saved_path)
        differences = saved.differences(config)
        if differences:
            listed = "; ".join(
                f"{k}: {a!r} there, {b!r} here" for k, v in differences.items() for a, b in [v]
            )
            raise ValueError(
                f"{logdir} holds another run with an incompatible config ({listed}). "
                "Pick a new --logdir, or continue that run with --resume."
            )
        raise ValueError(
            f"{logdir} already holds this run; continue it with "
            f"`torchdreamer train --resume {logdir}` or pick a new --logdir."
        )
    logdir.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(config.to_json())
    return config


def _mean(scores: deque[float]) -> float:
    """Mean of the recent episode scores (NaN before any episode ended)."""
    return float(np.mean(scores)) if scores else float("nan")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Stop:
    """Turns ``signals`` (SIGTERM) into a clean stop (checkpoint, logs, curve) like Ctrl-C."""

    def __init__(self, signals: tuple[signal.Signals, ...]) -> None:
        self.requested = False
        self._signals = signals
        self._previous = {s: signal.getsignal(s) for s in signals}

    def __enter__(self) -> _Stop:
        try:
            for s in self._signals:
                signal.signal(s, self._handle)
        except ValueError:  # not the main thread
            pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        try:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
        except ValueError:
            pass


#: Largest replay observation storage allocated without being asked explicitly.
REPLAY_MEMORY_LIMIT = 8 * 2**30


def _check_replay_memory(config: Config, observation_shape: tuple[int, ...]) -> None:
    image = len(observation_shape) == 3
    row = math.prod(observation_shape) * (1 if image else 4)
    needed = config.replay_capacity * row
    if needed > REPLAY_MEMORY_LIMIT:
        raise ValueError(
            f"a replay of {config.replay_capacity} rows of {observation_shape} observations "
            f"needs {needed / 2**30:.1f} GiB; pass a smaller --replay-capacity (e.g. "
            f"{REPLAY_MEMORY_LIMIT // row // 2:d})."
        )


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's state tensors by name, to check that ranks agree on them."""
    return {
        f"optimizer.{index}.{key}": value
        for index, state in optimizer.state_dict()["state"].items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


def train(config: Config, logdir: Path, resume: bool = False, progress: bool = True) -> Summary:
    """Train a DreamerV3 agent on ``config.env`` for ``config.steps`` env steps.

    Writes to ``logdir``: ``config.json``, ``metrics.csv``, ``episodes.csv``,
    TensorBoard events, ``checkpoint.pt`` (every ``checkpoint_every`` steps and
    at exit) and ``learning_curve.png``. With ``resume=True`` the run continues
    from its last checkpoint, with every counter, generator and the replay
    buffer restored; what the interrupted run logged after that checkpoint is
    discarded, so no step is counted twice or lost.

    Under ``torchrun`` (see :mod:`torchdreamer.training.distributed`) every
    rank runs ``config.num_envs`` environments and its own replay, the
    gradients of each update are averaged over ranks, and ``config.steps``
    counts the environment steps of all ranks together. Rank 0 alone writes
    to ``logdir``; its checkpoint holds every rank's replay and generators,
    so the run resumes with the same number of processes.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchdreamer.training import Config
        >>> from torchdreamer.training.loop import evaluate, train
        >>> logdir = Path(tempfile.mkdtemp()) / "run"
        >>> config = Config(steps=32, num_envs=2, batch_size=2, batch_length=8,
        ...                 train_ratio=4, imagination_horizon=3)
        >>> summary = train(config, logdir, progress=False)
        >>> summary.env_step, summary.updates  # updates start once 2 x 8 steps are in
        (32, 4)
        >>> sorted(p.name for p in logdir.iterdir())
        ['checkpoint.pt', 'config.json', 'episodes.csv', 'learning_curve.png',
         'metrics.csv', 'tensorboard']
        >>> len(evaluate(logdir, episodes=2))
        2
    """
    logdir = Path(logdir)
    ranks = distributed.current()
    device = distributed.device_for(config.device, ranks)
    config = distributed.run_on_main(lambda: prepare_logdir(config, logdir, resume))
    _seed(config.seed)  # the same initial networks on every rank
    own_parts: list[dict] = []

    def load() -> dict | None:
        if not (resume and (logdir / CHECKPOINT).exists()):
            return None
        checkpoint = load_checkpoint(logdir)
        own_parts.extend(checkpoint.pop("ranks"))
        if len(own_parts) != ranks.world_size:
            raise ValueError(
                f"{logdir} was checkpointed by {len(own_parts)} processes; resume it with "
                f"as many (this run has {ranks.world_size})."
            )
        return checkpoint

    shared = distributed.run_on_main(load)
    mine = distributed.scatter_objects(own_parts) if shared is not None else None
    counters = {"env_step": 0, "updates": 0, "update_credit": 0.0, "wall_time": 0.0}
    if shared is not None:
        counters = shared["counters"]
    # Environments restart on resume; a seed per start and rank keeps episodes distinct.
    env_seed = config.seed + counters["env_step"] + ranks.rank * config.num_envs
    env, spec = make_env(config.env, config.num_envs, env_seed, config.image_size)
    _check_replay_memory(config, spec.observation_shape)
    agent = DreamerAgent(
        spec.observation_shape, spec.action_dim, discrete=spec.discrete, config=config
    ).to(device)
    rank_seed = config.seed + 1_000_003 * ranks.rank
    if ranks.rank:
        _seed(rank_seed)  # each rank explores and imagines with its own draws
    generator = torch.Generator().manual_seed(rank_seed)
    replay = SequenceReplay(config.num_envs, config.replay_capacity, generator)
    recent: deque[float] = deque(maxlen=10)
    if shared is not None and mine is not None:
        agent.load_state_dict(shared["agent"])
        agent.optimizer.load_state_dict(shared["optimizer"])
        recent.extend(shared["recent_scores"])
        replay.load_state_dict(mine["replay"])
        generator.set_state(mine["replay_generator"])
        set_rng_states(mine["rng"])
    parallel = distributed.wrap(agent, ranks)
    log = None
    if ranks.is_main:
        # A resumed run with no checkpoint yet starts over: its old rows go too.
        log = RunLog(logdir, resume_step=counters["env_step"] if resume else None)
    runner = EnvRunner(env, spec, agent)
    pending: list[Episode] = []  # ended on this rank since the last collect()

    def collect() -> None:
        """Every rank's finished episodes: logged by rank 0, scored by all."""
        gathered = distributed.all_gather_objects(list(pending))
        pending.clear()
        for episode in sorted(chain.from_iterable(gathered), key=lambda e: e.env_step):
            if log is not None:
                log.episode(episode)
            recent.append(episode.score)

    def snapshot() -> None:
        collect()
        parts = distributed.gather_objects(
            {
                "replay": replay.state_dict(),
                "replay_generator": generator.get_state(),
                "rng": rng_states(),
            }
        )
        distributed.check_in_sync(agent, _optimizer_tensors(agent.optimizer))
        if ranks.is_main:
            state = {
                "agent": agent.state_dict(),
                "optimizer": agent.optimizer.state_dict(),
                "counters": dict(counters),
                "recent_scores": list(recent),
                "config": config.to_json(),
                "ranks": parts,
            }
            save_checkpoint(logdir, state)

    step_size = config.num_envs * ranks.world_size  # env steps of all ranks per loop
    batch_steps = config.batch_size * config.batch_length
    last: dict[str, float] = {}
    bar = tqdm(
        total=config.steps,
        initial=counters["env_step"],
        unit="step",
        disable=not (progress and ranks.is_main),
        dynamic_ncols=True,
    )
    started = time.perf_counter() - counters["wall_time"]
    window = [time.perf_counter(), counters["env_step"], counters["updates"]]
    logged = [counters["env_step"]]

    def record() -> None:
        """One metrics row: speeds since the last row, score, the last update's terms."""
        collect()
        now, step = time.perf_counter(), counters["env_step"]
        elapsed = max(now - window[0], 1e-9)
        rates = {
            "env_steps_per_s": (step - window[1]) / elapsed,
            "updates_per_s": (counters["updates"] - window[2]) / elapsed,
        }
        window[:] = [now, step, counters["updates"]]
        logged[0] = step
        mean = _mean(recent)
        if log is not None:
            values = {"updates": counters["updates"], "wall_time": counters["wall_time"]}
            log.metrics(step, {**values, "score_mean10": mean, **rates, **last})
        bar.set_postfix(
            updates_per_s=f"{rates['updates_per_s']:.2f}",
            score=f"{recent[-1]:.1f}" if recent else "-",
            mean10=f"{mean:.1f}",
        )

    # Under torchrun, Ctrl-C reaches every rank at a different point: it becomes
    # a stop request too, agreed on by all ranks at the end of a loop.
    signals = (signal.SIGTERM, signal.SIGINT) if ranks.distributed else (signal.SIGTERM,)
    failed = False
    with _Stop(signals) as stop:
        try:
            while counters["env_step"] < config.steps:
                before = counters["env_step"]
                counters["env_step"] += step_size
                additions, episodes = runner.step(counters["env_step"])
                for rows, mask in additions:
                    replay.add(rows, mask)
                pending.extend(episodes)
                # Updates and stops are collective: every rank must take them together.
                stopping, unready = distributed.any_rank(
                    stop.requested, not replay.can_sample(config.batch_length)
                )
                if not unready and counters["env_step"] // ranks.world_size >= batch_steps:
                    counters["update_credit"] += config.num_envs * config.train_ratio / batch_steps
                    while counters["update_credit"] >= 1:
                        batch = replay.sample(config.batch_size, config.batch_length)
                        last = agent.update(batch.to(device), parallel)
                        counters["updates"] += 1
                        counters["update_credit"] -= 1
                step = counters["env_step"]
                counters["wall_time"] = time.perf_counter() - started
                bar.update(step_size)
                if step // config.log_every > before // config.log_every:
                    record()
                if step // config.checkpoint_every > before // config.checkpoint_every:
                    snapshot()
                if stopping:
                    break
        except BaseException:
            # Another rank may not reach the collectives of the final checkpoint.
            failed = ranks.distributed
            raise
        finally:
            bar.close()
            counters["wall_time"] = time.perf_counter() - started
            if not failed:
                if logged[0] != counters["env_step"]:
                    record()  # the run's last step, when it fell between two rows
                snapshot()
            if log is not None:
                log.close()
            env.close()
    if ranks.is_main:
        plot_curve(logdir, f"{config.env}, seed {config.seed}, preset {config.preset}")
    mean = _mean(recent)
    return Summary(counters["env_step"], counters["updates"], counters["wall_time"], mean)


def evaluate(
    logdir: Path, episodes: int = 10, device: str = "cpu", sample: bool = False
) -> list[float]:
    """Run the trained policy of ``logdir`` for ``episodes`` episodes; their scores."""
    logdir = Path(logdir)
    if not (logdir / CONFIG).exists():
        raise FileNotFoundError(f"{logdir} holds no {CONFIG}: it is not a torchdreamer run.")
    config = Config.load(logdir / CONFIG)
    config.device = str(distributed.device_for(device, distributed.Ranks()))
    checkpoint = load_checkpoint(logdir, map_location=config.device)
    env, spec = make_env(config.env, 1, config.seed + 10**9, config.image_size)
    agent = DreamerAgent(
        spec.observation_shape, spec.action_dim, discrete=spec.discrete, config=config
    ).to(config.device)
    agent.load_state_dict(checkpoint["agent"])
    agent.eval()
    runner = EnvRunner(env, spec, agent)
    scores: list[float] = []
    step = 0
    while len(scores) < episodes:
        step += 1
        _, ended = runner.step(step, explore=sample)
        scores.extend(e.score for e in ended)
    env.close()
    return scores[:episodes]
