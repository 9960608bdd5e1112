"""The training loop (``torchdreamer train``) and evaluation (``torchdreamer eval``)."""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import random
import shutil
import signal
import time
from collections import deque
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from torchdreamer.training import distributed
from torchdreamer.training.agent import LATENT, DreamerAgent
from torchdreamer.training.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from torchdreamer.training.compiled import compile_agent, compiles, has_images
from torchdreamer.training.config import Config, resolve_precision
from torchdreamer.training.console import say
from torchdreamer.training.envs import env_workers_for, make_env
from torchdreamer.training.evaluation import dream, evaluate_policy, own_draws, policy_name
from torchdreamer.training.logs import (
    RunLog,
    plot_curve,
    read_evaluation_policies,
    read_evaluations,
    write_gif,
)
from torchdreamer.training.own_env import (
    ENV_SPEC,
    EnvSource,
    check_fits,
    check_spaces,
    copies_of,
    with_env,
)
from torchdreamer.training.policy import CONFIG, Policy, _listed, _stored_config, load_agent
from torchdreamer.training.prefetch import Prefetcher
from torchdreamer.training.progress import Progress
from torchdreamer.training.replay import INDEX, SequenceReplay
from torchdreamer.training.runner import EnvRunner, Episode
from torchdreamer.training.static_update import StaticUpdate
from torchdreamer.training.stop import CompileGuard, Stop, UpdateInterrupted
from torchdreamer.training.threads import configure_threads
from torchdreamer.training.when import DreamerV3UpdateRatio, Every

__all__ = [
    "RunDirectory",
    "RunInUse",
    "StoppedBeforeStart",
    "RunState",
    "Summary",
    "check_replay_latents",
    "check_replay_memory",
    "evaluate",
    "train",
]

#: Folder of the memory-mapped replay files (``--replay-on-disk``), one subfolder per rank.
REPLAY = "replay"
LOCK = ".lock"


@dataclass
class Summary:
    """How a run went."""

    env_step: int
    updates: int
    wall_time: float
    mean_score: float
    """Mean score of the last 10 training episodes (NaN before any ended)."""
    stopped_by: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped the run early, or None."""
    curve: Path | None = None
    """The learning curve written at the end (None before any episode ended)."""
    update: str = ""
    """How the update ran, and why: e.g. ``compiled (auto: 3125 updates planned, >= 1000),
    float32 (--precision float32)``."""
    evaluation: tuple[int, list[float]] | None = None
    """The run's last evaluation (``eval.csv``): its env step and its episodes' scores;
    None if it made none."""
    evaluation_policy: str | None = None
    """How the last evaluation chose its actions, ``greedy`` or ``sampled``; None if
    ``eval.csv`` does not say (logged before it did: the line takes the config's)."""

    def line(self, config: Config) -> str:
        speed = self.env_step / max(self.wall_time, 1e-9)
        rate = self.updates / max(self.wall_time, 1e-9)
        evaluated = ""
        if self.evaluation is not None:
            # Training episodes sample their actions; evaluations take the likeliest
            # unless config.eval_sample: each score names its policy.
            step, scores = self.evaluation
            policy = self.evaluation_policy or policy_name(config.eval_sample)
            evaluated = (
                f"; {policy} evaluation at {step} env steps {sum(scores) / len(scores):.1f} "
                f"(mean of {len(scores)} episodes)"
            )
        return (
            f"{config.env} seed {config.seed}, preset {config.preset}: {self.env_step} env "
            f"steps and {self.updates} updates in {self.wall_time:.0f} s ({speed:.1f} env "
            f"steps/s, {rate:.2f} updates/s); mean score of the last 10 training episodes "
            f"(sampled) {self.mean_score:.1f}{evaluated}; update {self.update}"
        )


# ------------------------------------------------------------------ run directory
class RunInUse(ValueError):
    """Another process holds the run directory's lock."""


class StoppedBeforeStart(Exception):
    """SIGINT or SIGTERM came before the run's first write: nothing was written.

    The CLI prints it as one line and exits with ``128 + signum`` (130, 143).

    Examples:
        >>> import signal
        >>> from torchdreamer.training.loop import StoppedBeforeStart
        >>> stopped = StoppedBeforeStart(signal.SIGTERM)
        >>> str(stopped), 128 + stopped.signum
        ('stopped by SIGTERM before the run started; nothing was written', 143)
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} before the run started; nothing was written")


class RunDirectory:
    """The log directory of one run: checked before anything is written, then claimed.

    :meth:`check` reads and refuses (a file in the way, another run's
    directory, a resume whose config or checkpoint does not match);
    :meth:`claim` creates the directory and writes ``config.json``. A
    ``.lock`` file holds an exclusive ``flock`` from the claim (from the
    check, for a resume) to :meth:`release`, so two processes never write
    one run; the kernel drops the lock of a killed process.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchdreamer.training import Config
        >>> from torchdreamer.training.loop import RunDirectory
        >>> path = Path(tempfile.mkdtemp()) / "run"
        >>> first = RunDirectory(path)
        >>> config, checkpoint = first.check(Config(), resume=False)
        >>> path.exists()  # nothing written yet
        False
        >>> first.claim(config, resume=False)
        >>> RunDirectory(path).check(config, resume=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchdreamer.training.loop.RunInUse: .../run is in use by process ... (its lock ...
        >>> first.release()
        >>> sorted(p.name for p in path.iterdir())
        ['config.json']

    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rank_parts: list[dict] | None = None
        self._lock: int | None = None

    def check(
        self, config: Config, resume: bool, world_size: int = 1
    ) -> tuple[Config, dict[str, Any] | None]:
        """The config to run and, when resuming, the checkpoint (every rank's part removed
        to :attr:`rank_parts`); raises with the reason when the run cannot start here."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file, not a directory: pick another --logdir.")
        if not resume:
            self._check_new(config)
            return config, None
        saved_path = path / CONFIG
        if not saved_path.exists():
            raise FileNotFoundError(f"{path} holds no {CONFIG}: there is no run to resume.")
        self._check_writable(path)
        self.lock()
        differences = Config.load(saved_path).differences(config)
        if differences:
            raise ValueError(
                f"cannot resume {path} with a different {', '.join(sorted(differences))}: "
                f"only {', '.join(Config.RESUMABLE)} may change when a run is resumed."
            )
        if not (path / CHECKPOINT).exists():
            return config, None  # killed before its first checkpoint: it starts over
        checkpoint = load_checkpoint(path)
        stored = _stored_config(checkpoint, path / CHECKPOINT)
        differences = stored.differences(config)
        if differences:
            raise ValueError(
                f"{path / CHECKPOINT} was written with another config than {saved_path} "
                f"gives ({_listed(differences, 'in the checkpoint', 'now')}); restore "
                f"{CONFIG} or start a new run with another --logdir."
            )
        step = checkpoint["counters"]["env_step"]
        if config.steps < step:
            raise ValueError(
                f"--steps {config.steps} is below the step {step} the run in {path} has "
                f"reached; pass --steps {step} or more to continue it."
            )
        self.rank_parts = checkpoint.pop("ranks")
        if len(self.rank_parts) != world_size:
            raise ValueError(
                f"{path} was checkpointed by {len(self.rank_parts)} processes; resume it with "
                f"as many (this run has {world_size})."
            )
        return config, checkpoint

    def _check_new(self, config: Config) -> None:
        saved_path = self.path / CONFIG
        if saved_path.exists():
            differences = Config.load(saved_path).differences(config)
            if differences:
                raise ValueError(
                    f"{self.path} holds another run with an incompatible config "
                    f"({_listed(differences, 'there', 'here')}). "
                    "Pick a new --logdir, or continue that run with --resume."
                )
            raise ValueError(
                f"{self.path} already holds this run; continue it with "
                f"`torchdreamer train --resume {self.path}` or pick a new --logdir."
            )
        existing = _nearest_existing(self.path)
        if not existing.is_dir():
            raise ValueError(f"{existing} is a file: cannot create the log directory {self.path}.")
        self._check_writable(existing)

    @staticmethod
    def _check_writable(directory: Path) -> None:
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(13, "cannot write into the directory", str(directory))

    def claim(self, config: Config, resume: bool) -> None:
        """Create the directory (a new run), take its lock and write ``config.json``."""
        saved_path = self.path / CONFIG
        if not resume:
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock()
            if saved_path.exists():
                raise ValueError(f"another run started in {self.path} meanwhile.")
        elif saved_path.read_text() == config.to_json():
            return
        partial = saved_path.with_suffix(".json.partial")
        partial.write_text(config.to_json())
        os.replace(partial, saved_path)

    def lock(self) -> None:
        """Take the run's lock, or raise :class:`RunInUse` naming the holder's PID."""
        if self._lock is not None:
            return
        path = self.path / LOCK
        while True:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(handle)
                raise RunInUse(
                    f"{self.path} is in use by process {holder} (its lock {path}); wait for "
                    "it to end or stop it, then run again."
                ) from None
            try:
                same = os.path.samestat(os.fstat(handle), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(handle)  # the file was removed by a run ending meanwhile: lock the new one
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        self._lock = handle

    def release(self) -> None:
        """Drop the lock (and its file); nothing to do if it was not taken."""
        if self._lock is None:
            return
        (self.path / LOCK).unlink(missing_ok=True)
        os.close(self._lock)
        self._lock = None


# --------------------------------------------------------------------- memory
def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable)."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_replay_memory(
    config: Config,
    observation_shape: tuple[int, ...] | dict[str, tuple[int, ...]],
    action_dim: int,
    available: int | None = None,
    processes: int = 1,
    where: Path | None = None,
) -> int:
    """The bytes the replay can reach in this run; raises if they exceed ``available``.

    A run reaches ``min(replay_capacity, steps)`` rows (one observation, action,
    reward and flags each, and with ``replay_context`` the policy's latent), in each
    of ``processes`` processes on this machine.
    ``available`` defaults to the memory the machine has free now or, with
    ``config.replay_on_disk``, to the disk space free at ``where`` (the run
    directory, or the nearest folder above it that exists).

    Examples:
        >>> from torchdreamer.training import Config
        >>> from torchdreamer.training.loop import check_replay_memory
        >>> config = Config(steps=1000, replay_capacity=10**12)
        >>> check_replay_memory(config, (64, 64, 3), 6, available=2**30)  # 1000 rows
        13855000
        >>> check_replay_memory(Config(steps=10**6), (64, 64, 3), 6, available=2**30)
        Traceback (most recent call last):
        ...
        ValueError: the replay would reach 1000000 rows of (64, 64, 3) observations: 12.9 GiB, \
more than the 1.0 GiB of memory available; pass a smaller --replay-capacity (e.g. 38749) \
or --replay-on-disk.

    """
    shapes = (
        observation_shape.values() if isinstance(observation_shape, dict) else [observation_shape]
    )
    # uint8 images, float32 vectors; then the action, the reward and three flags, and
    # with the replay context the policy's latent (float32).
    pixels = sum(math.prod(shape) * (1 if len(shape) == 3 else 4) for shape in shapes)
    latent = config.size.stoch_size + config.size.deter if config.replay_context else 0
    row = pixels + 4 * action_dim + 4 + 3 + 4 * latent
    rows = min(config.replay_capacity, config.steps)
    needed = rows * row * processes
    on_disk = config.replay_on_disk
    if available is None:
        available = _free_disk(where or Path.cwd()) if on_disk else _available_memory()
    if available is not None and needed > available:
        room = "disk space free there" if on_disk else "memory available"
        advice = "" if on_disk else " or --replay-on-disk"
        raise ValueError(
            f"the replay would reach {rows} rows of {_described(observation_shape)} observations"
            f"{f' in each of {processes} processes' if processes > 1 else ''}: "
            f"{needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of {room}; "
            f"pass a smaller --replay-capacity (e.g. {available // 2 // row // processes:d})"
            f"{advice}."
        )
    return needed


def check_replay_latents(config: Config, replay: SequenceReplay, logdir: Path) -> None:
    """Raise unless a resumed replay holds the policy's latents where
    ``config.replay_context`` needs them (a replay written before they were stored).

    Examples:
        >>> import torch
        >>> from pathlib import Path
        >>> from tensordict import TensorDict
        >>> from torchdreamer.training import Config, SequenceReplay
        >>> from torchdreamer.training.loop import check_replay_latents
        >>> replay = SequenceReplay(1, 10)
        >>> replay.add(TensorDict(x=torch.zeros(1), batch_size=[1]), torch.ones(1).bool())
        >>> check_replay_latents(Config(replay_context=0), replay, Path("run"))
        >>> check_replay_latents(Config(), replay, Path("run"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the replay of the checkpoint in run holds no policy latents ...
    """
    if not config.replay_context or replay.storage is None or LATENT in replay.storage.keys():
        return
    raise ValueError(
        f"the replay of the checkpoint in {logdir} holds no policy latents (it was written "
        "by a torchdreamer before the replay context), and this run's replay_context "
        "1 starts every window from one; start the run over, or train it to the end "
        "with the torchdreamer that started it."
    )


def _described(shape: tuple[int, ...] | dict[str, tuple[int, ...]]) -> str:
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {tuple(v)}" for k, v in shape.items()) + "}"
    return str(tuple(shape))


def _nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else the nearest folder above it that does."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_disk(path: Path) -> int | None:
    """Bytes free on the file system of ``path`` or of its nearest existing parent."""
    try:
        return shutil.disk_usage(_nearest_existing(path)).free
    except OSError:
        return None


# ---------------------------------------------------------------- run state
def _mean(scores: deque[float]) -> float:
    """Mean of the recent episode scores (NaN before any episode ended)."""
    return float(np.mean(scores)) if scores else float("nan")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RunState:
    """What a run carries from one loop to the next, and what its checkpoint restores.

    The counters, the recent scores and the train-ratio schedule are the same
    on every rank (:meth:`state_dict`); the replay, its sampling generator and
    the global generators are each rank's own (:meth:`rank_state_dict`).
    :meth:`load_state_dict` takes back exactly what the two return.

    Examples:
        >>> import torch
        >>> from torchdreamer.training import Config, SequenceReplay
        >>> from torchdreamer.training.loop import RunState
        >>> config = Config(num_envs=2, batch_size=2, batch_length=8)
        >>> def fresh():
        ...     generator = torch.Generator().manual_seed(0)
        ...     return RunState(config, SequenceReplay(2, 64, generator), generator)
        >>> state = fresh()
        >>> state.env_step, state.updates = 32, 5
        >>> state.recent.append(21.0)
        >>> restored = fresh()
        >>> restored.load_state_dict(state.state_dict(), state.rank_state_dict())
        >>> restored.env_step, restored.updates, list(restored.recent)
        (32, 5, [21.0])

    """

    def __init__(self, config: Config, replay: SequenceReplay, generator: torch.Generator):
        self.env_step = 0
        self.updates = 0
        self.wall_time = 0.0
        self.recent: deque[float] = deque(maxlen=10)
        batch_steps = config.batch_size * config.batch_length
        self.train_ratio = DreamerV3UpdateRatio(config.train_ratio / batch_steps)
        """Updates due per env step of this rank (TorchRL's schedule; the ratio is positive)."""
        self.replay = replay
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return {
            "counters": {
                "env_step": self.env_step,
                "updates": self.updates,
                "wall_time": self.wall_time,
            },
            "recent_scores": list(self.recent),
            "train_ratio": self.train_ratio.state_dict(),
        }

    def rank_state_dict(self) -> dict[str, Any]:
        return {
            "replay": self.replay.state_dict(),
            "replay_generator": self.generator.get_state(),
            "rng": rng_states(),
        }

    def load_state_dict(
        self, state: dict[str, Any], rank_state: dict[str, Any], world_size: int = 1
    ) -> None:
        counters = state["counters"]
        self.env_step = counters["env_step"]
        self.updates = counters["updates"]
        self.wall_time = counters["wall_time"]
        self.recent.clear()
        self.recent.extend(state["recent_scores"])
        if "train_ratio" in state:
            self.train_ratio.load_state_dict(state["train_ratio"])
        elif counters.get("update_credit") or counters["updates"]:
            # A checkpoint that stored the updates owed as a credit: the same count.
            owed = counters["update_credit"] / self.train_ratio.ratio
            self.train_ratio.reset(self.env_step // world_size - owed)
        self.replay.load_state_dict(rank_state["replay"])
        self.generator.set_state(rank_state["replay_generator"])
        set_rng_states(rank_state["rng"])


# ------------------------------------------------------------------- the loop
def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's state tensors by name, to check that ranks agree on them."""
    return {
        f"optimizer.{index}.{key}": value
        for index, state in optimizer.state_dict()["state"].items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


class _Training:
    """The steps of the loop, each a method, sharing the run's objects."""

    def __init__(
        self,
        config: Config,
        logdir: Path,
        ranks: distributed.Ranks,
        device: torch.device,
        state: RunState,
        agent: DreamerAgent,
        runner: EnvRunner,
        log: RunLog | None,
        resume_point: bool,
        env: EnvSource,
    ) -> None:
        self.env = env  # what evaluations make their environments of
        self.config, self.logdir, self.ranks, self.device = config, logdir, ranks, device
        self.state, self.agent, self.runner, self.log = state, agent, runner, log
        self.parallel = distributed.wrap(agent, ranks)
        # On CUDA, the update's inputs at the same addresses every update (no graph yet:
        # training/static_update.py); on CPU the plain update, the same numbers.
        self.static = StaticUpdate(agent) if device.type == "cuda" else None
        self.pending: list[Episode] = []  # ended on this rank since the last gathering
        self.last: dict[str, float] = {}  # the latest update's loss terms
        self.logged_step = state.env_step
        self.saved_step = state.env_step if resume_point else None
        self._window = (time.perf_counter(), state.env_step, state.updates)
        self._told_no_video = False

    def collect(self) -> None:
        """One step of every environment of every rank, into the replay."""
        state = self.state
        state.env_step += self.config.num_envs * self.ranks.world_size
        additions, episodes = self.runner.step(state.env_step)
        for rows, mask in additions:
            state.replay.add(rows, mask)
        self.pending.extend(episodes)

    def can_update(self) -> bool:
        """Whether this rank's replay holds a batch of this rank's steps."""
        config, state = self.config, self.state
        batch_steps = config.batch_size * config.batch_length
        own_steps = state.env_step // self.ranks.world_size
        return state.replay.can_sample(config.window) and own_steps >= batch_steps

    def update(self, stop: Stop, guard: CompileGuard) -> None:
        """The updates due at the train ratio; a stop request cuts them short, and a
        second Ctrl-C abandons one that compiles (one process; under torchrun updates
        are collective, so ranks finish them)."""
        config, state = self.config, self.state
        own_steps = state.env_step // self.ranks.world_size
        if state.train_ratio.previous is None:
            # The steps of the loop that filled the first batch earn updates, as later ones.
            state.train_ratio.reset(own_steps - config.num_envs)
        due = state.train_ratio(own_steps)
        # On CUDA, each batch is sampled, pinned and copied while the update before it
        # runs, unless updates may still compile: an abandoned one puts back the
        # replay's draws from before its own batch (training/prefetch.py).
        ahead = self.device.type == "cuda" and not guard.updates_compile
        length = config.window
        with Prefetcher(
            state.replay, config.batch_size, length, due, self.device, background=ahead
        ) as batches:
            for done in range(due):
                if stop.requested and not self.ranks.distributed:
                    state.train_ratio.defer(due - done)
                    break
                # The online queue's windows, put back with the guard's state if abandoned.
                sampling = state.replay.sampling_state() if guard.updates_compile else None
                try:
                    with guard.updating():
                        batch = next(batches)
                        if self.static is not None:
                            self.last = self.static(batch, self.parallel)
                        else:
                            self.last = self.agent.update(batch, self.parallel)
                except UpdateInterrupted:  # the guard put back the state before it
                    if sampling is not None:
                        state.replay.set_sampling_state(sampling)
                    state.train_ratio.defer(due - done)
                    break
                if config.replay_context:  # the refreshed latents, as the official update
                    latents = TensorDict({LATENT: self.agent.latents}, self.agent.latents.shape)
                    state.replay.update(batch.get(INDEX), latents)
                state.updates += 1

    def scores(self) -> list[float]:
        """The recent scores, with this rank's episodes not yet gathered."""
        return [*self.state.recent, *(episode.score for episode in self.pending)]

    def gather_episodes(self) -> None:
        """Every rank's finished episodes: logged by rank 0, scored by all."""
        gathered = distributed.all_gather_objects(list(self.pending))
        self.pending.clear()
        for episode in sorted(chain.from_iterable(gathered), key=lambda e: e.env_step):
            if self.log is not None:
                self.log.episode(episode)
            self.state.recent.append(episode.score)

    def record(self) -> None:
        """One metrics row: speeds since the last row, score, the last update's terms."""
        self.gather_episodes()
        state = self.state
        now = time.perf_counter()
        then, step, updates = self._window
        elapsed = max(now - then, 1e-9)
        rates = {
            "env_steps_per_s": (state.env_step - step) / elapsed,
            "updates_per_s": (state.updates - updates) / elapsed,
        }
        self._window = (now, state.env_step, state.updates)
        self.logged_step = state.env_step
        if self.log is not None:
            values = {"updates": state.updates, "wall_time": state.wall_time}
            score = {"score_mean10": _mean(state.recent)}
            self.log.metrics(state.env_step, {**values, **score, **rates, **self.last})

    def evaluate(self, bar: Progress, stop: Stop) -> None:
        """Score the policy on environments of its own (rank 0; the others go on); a stop
        request abandons it."""
        if self.log is None:
            return
        config, step = self.config, self.state.env_step
        result = evaluate_policy(
            Policy(self.agent, self.runner.spec, config),
            self.env,
            config.eval_episodes,
            seed=config.seed + 2 * 10**9 + step,
            image_size=config.image_size,
            obs=config.obs,
            sample=config.eval_sample,
            video=config.eval_video,
            stop=lambda: stop.requested,
        )
        if result is None:
            return
        self.log.evaluation(step, result.episodes, result.frames, result.policy)
        replay = self.state.replay
        if config.eval_video and self.agent.world_model.is_image:
            if replay.can_sample(config.batch_length):
                # Four replayed sequences and the model's draws, apart from training's.
                with own_draws(self.device, config.seed + step):
                    generator = torch.Generator().manual_seed(config.seed + step)
                    batch = replay.sample(4, config.batch_length, generator=generator)
                    self.log.video("dream", dream(self.agent, batch), step, tag="eval/dream")
        if config.eval_video and not result.frames and not self._told_no_video:
            bar.note(f"torchdreamer: no evaluation videos: {result.unavailable}.")
            self._told_no_video = True

    def snapshot(self) -> None:
        """The checkpoint: rank 0's counters and networks, every rank's replay."""
        self.gather_episodes()
        self.saved_step = self.state.env_step
        if self.log is not None:
            self.log.flush()  # what the checkpoint counts is on disk before it
        acting = {"acting": self.runner.state_dict()}
        parts = distributed.gather_objects({**self.state.rank_state_dict(), **acting})
        distributed.check_in_sync(self.agent, _optimizer_tensors(self.agent.optimizer))
        if self.ranks.is_main:
            save_checkpoint(
                self.logdir,
                {
                    "agent": self.agent.state_dict(),
                    "optimizer": self.agent.optimizer.state_dict(),
                    "config": self.config.to_json(),
                    ENV_SPEC: dataclasses.asdict(self.runner.spec),
                    **self.state.state_dict(),
                    "ranks": parts,
                },
            )


def train(
    config: Config,
    logdir: Path,
    resume: bool = False,
    progress: bool = True,
    *,
    env: EnvSource | None = None,
) -> Summary:
    """Train a DreamerV3 agent on ``config.env`` (or ``env``) for ``config.steps`` env steps.

    ``env`` gives the environment from Python instead of ``config.env``'s id: a function
    that makes one ``gymnasium.Env`` (called once per copy), or a
    ``gymnasium.vector.VectorEnv`` of ``config.num_envs`` copies
    (:mod:`~torchdreamer.training.own_env`); ``config.env`` then records
    ``python:`` and its name, and a resume takes the same ``env`` again.

    Writes to ``logdir``: ``config.json``, ``metrics.csv``, ``metrics.jsonl``,
    ``episodes.csv``, the files of the loggers ``config.logger`` names
    (TensorBoard events by default), ``checkpoint.pt`` (every
    ``checkpoint_every`` steps and at exit; the one before it as
    ``checkpoint.prev.pt``) and ``learning_curve.png``. Everything is checked
    before the first write (the config, the loggers, the environments and their
    spaces, the replay's memory): a run that cannot start leaves ``logdir`` as
    it was.

    With ``resume=True`` the run continues from its last checkpoint, with
    every counter, generator and the replay buffer restored; what the
    interrupted run logged after that checkpoint is discarded, so no step is
    counted twice or lost. SIGINT (Ctrl-C) and SIGTERM stop the run between
    two env steps or two updates with the same final checkpoint, logs and
    curve; :attr:`Summary.stopped_by` tells which signal. During an update
    that may compile, the first signal says so on stderr and a second Ctrl-C
    abandons the update, the run ending as before it (see
    :mod:`torchdreamer.training.stop`). With ``progress``, stderr shows a bar on
    a terminal and plain lines elsewhere (:mod:`torchdreamer.training.progress`).

    Under ``torchrun`` (see :mod:`torchdreamer.training.distributed`) every
    rank runs ``config.num_envs`` environments and its own replay, the
    gradients of each update are averaged over ranks, and ``config.steps``
    counts the environment steps of all ranks together. Rank 0 alone writes
    to ``logdir``; its checkpoint holds every rank's replay and generators,
    so the run resumes with the same number of processes. A stop is agreed
    by all ranks at the end of a loop.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchdreamer.training import Config
        >>> from torchdreamer.training.loop import evaluate, train
        >>> logdir = Path(tempfile.mkdtemp()) / "run"
        >>> config = Config(steps=64, num_envs=2, batch_size=2, batch_length=8,
        ...                 train_ratio=4, imagination_horizon=3, threads=1)
        >>> summary = train(config, logdir, progress=False)
        >>> summary.env_step, summary.updates  # updates start once 2 x 8 steps are in
        (64, 12)
        >>> summary.stopped_by, summary.curve.name
        (None, 'learning_curve.png')
        >>> sorted(p.name for p in logdir.iterdir())
        ['checkpoint.pt', 'config.json', 'episodes.csv', 'learning_curve.png',
         'metrics.csv', 'metrics.jsonl', 'tensorboard']
        >>> len(evaluate(logdir, episodes=2))
        2
    """
    logdir = Path(logdir)
    config = with_env(config, env, logdir, resume)
    source = env if env is not None else config.env
    configure_threads(config.threads)
    ranks = distributed.current()
    device = distributed.device_for(config.device, ranks)
    directory = RunDirectory(logdir)
    with Stop(tell=ranks.is_main) as stop:
        try:
            return _train(config, directory, resume, progress, ranks, device, stop, source)
        finally:
            directory.release()


def _train(
    config: Config,
    directory: RunDirectory,
    resume: bool,
    progress: bool,
    ranks: distributed.Ranks,
    device: torch.device,
    stop: Stop,
    source: EnvSource,
) -> Summary:
    logdir = directory.path
    # What ``auto`` picks on this machine (the dtype, the env workers) is what
    # config.json keeps.
    precision, precision_why = resolve_precision(config.precision, device.type)
    workers = env_workers_for(source, config.env_workers, config.num_envs, config.obs)
    config = dataclasses.replace(config, precision=precision, env_workers=workers)
    # 1. Check: the loggers, the run directory and the checkpoint to resume (rank 0).
    distributed.run_on_main(lambda: RunLog.check(config.logger, logdir, resume))
    config, checkpoint = distributed.run_on_main(
        lambda: directory.check(config, resume, ranks.world_size)
    )
    own = distributed.scatter_objects(directory.rank_parts) if checkpoint is not None else None
    start = checkpoint["counters"]["env_step"] if checkpoint is not None else 0
    _seed(config.seed)  # the same initial networks on every rank
    # Environments restart on resume (unless the checkpoint holds their copies: see
    # EnvRunner.state_dict); a seed per start and rank keeps episodes distinct.
    env_seed = config.seed + start + ranks.rank * config.num_envs
    env, spec = make_env(
        source,
        config.num_envs,
        env_seed,
        config.image_size,
        config.obs,
        workers=config.env_workers,
    )
    try:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        check_replay_memory(
            config,
            spec.observation_shape,
            spec.action_dim,
            processes=local_processes,
            where=logdir,
        )
        agent = DreamerAgent.from_spec(spec, config).to(device)
        if checkpoint is not None:
            check_fits(agent, checkpoint, spec, logdir / CHECKPOINT)
        # 2. Claim the directory: the first write of the run. A stop requested
        # while checking ends the run here, before anything is written.
        if distributed.any_rank(stop.requested)[0]:
            raise StoppedBeforeStart(stop.agreed())
        distributed.run_on_main(lambda: directory.claim(config, resume))
        rank_seed = config.seed + 1_000_003 * ranks.rank
        if ranks.rank:
            _seed(rank_seed)  # each rank explores and imagines with its own draws
        generator = torch.Generator().manual_seed(rank_seed)
        replay_files = logdir / REPLAY / f"rank{ranks.rank}" if config.replay_on_disk else None
        online = config.window if config.replay_online else None
        replay = SequenceReplay(
            config.num_envs,
            config.replay_capacity,
            generator,
            directory=replay_files,
            online=online,
        )
        state = RunState(config, replay, generator)
        if checkpoint is not None and own is not None:
            agent.load_state_dict(checkpoint["agent"])
            agent.optimizer.load_state_dict(checkpoint["optimizer"])
            state.load_state_dict(checkpoint, own, ranks.world_size)
            check_replay_latents(config, replay, logdir)
        compiled, why = compiles(config, device, has_images(agent), ranks.distributed)
        if compiled:
            compile_agent(agent)
        update = f"{'compiled' if compiled else 'eager'} ({why}), {precision} ({precision_why})"
        if ranks.is_main and progress:  # before the first update, which compiles
            say(f"update: {update}")
        # A resumed run with no checkpoint yet starts over: its old rows go too.
        resume_step = state.env_step if resume else None
        log = None
        if ranks.is_main:
            log = RunLog(logdir, resume_step=resume_step, loggers=config.logger, config=config)
        runner = EnvRunner(env, spec, agent)
        # The same episodes go on where the checkpoint holds the copies; elsewhere the
        # environments restart, and each stream's episode under way ends here.
        if own is not None and not runner.load_state_dict(own.get("acting")):
            replay.close_streams()
        stopped_by = _loop(
            config,
            logdir,
            ranks,
            device,
            state,
            agent,
            runner,
            log,
            progress,
            stop,
            source,
            compiled=compiled,
        )
    finally:
        env.close()
    curve, evaluation, evaluation_policy = None, None, None
    if ranks.is_main:
        curve = plot_curve(logdir, f"{config.env}, seed {config.seed}, preset {config.preset}")
        evaluations = read_evaluations(logdir)
        if evaluations:
            evaluation = max(evaluations.items())
            evaluation_policy = read_evaluation_policies(logdir).get(evaluation[0])
    return Summary(
        state.env_step,
        state.updates,
        state.wall_time,
        _mean(state.recent),
        stopped_by,
        curve,
        update,
        evaluation,
        evaluation_policy,
    )


def _loop(
    config: Config,
    logdir: Path,
    ranks: distributed.Ranks,
    device: torch.device,
    state: RunState,
    agent: DreamerAgent,
    runner: EnvRunner,
    log: RunLog | None,
    progress: bool,
    stop: Stop,
    source: EnvSource,
    compiled: bool = False,
) -> int | None:
    """Collect, update, log, checkpoint until ``config.steps`` or a stop; the final
    checkpoint is written however the loop ends, except after another rank's failure."""
    resumed = state.env_step > 0  # a checkpoint holds this very state
    training = _Training(config, logdir, ranks, device, state, agent, runner, log, resumed, source)
    bar = Progress(config, state.env_step, progress and ranks.is_main, ranks.world_size)
    note = bar.note if progress and ranks.is_main else None
    guard = CompileGuard(
        stop, agent, state.generator, compiled=compiled, collective=ranks.distributed, note=note
    )
    log_now = Every(config.log_every, initial=False)
    checkpoint_now = Every(config.checkpoint_every, initial=False)
    evaluate_now = Every(config.eval_every, initial=False)  # 0: never
    # Count from the start step.
    log_now(state.env_step), checkpoint_now(state.env_step), evaluate_now(state.env_step)
    started = time.perf_counter() - state.wall_time
    stopped_by = None
    failed = False
    try:
        while state.env_step < config.steps:
            try:
                with guard.acting(state):
                    training.collect()
            except UpdateInterrupted:  # failed after a stop request, and put back
                stopped_by = stop.agreed()
                break
            # Updates and stops are collective: every rank takes them together.
            stopping, unready = distributed.any_rank(stop.requested, not training.can_update())
            if not unready:
                training.update(stop, guard)
            state.wall_time = time.perf_counter() - started
            bar.show(state, training.scores())
            if log_now(state.env_step):
                training.record()
            if evaluate_now(state.env_step):
                training.evaluate(bar, stop)
            if checkpoint_now(state.env_step):
                training.snapshot()
            if stopping or (stop.requested and not ranks.distributed):
                stopped_by = stop.agreed()
                break
    except BaseException:
        # Another rank may not reach the collectives of the final checkpoint.
        failed = ranks.distributed
        raise
    finally:
        bar.close()
        state.wall_time = time.perf_counter() - started
        if not failed:
            if training.logged_step != state.env_step:
                training.record()  # the run's last step, when it fell between two rows
            if training.saved_step != state.env_step:
                training.snapshot()
        if log is not None:
            log.close()
    return stopped_by


# ----------------------------------------------------------------- evaluation
def evaluate(
    logdir: Path,
    episodes: int = 10,
    device: str = "cpu",
    sample: bool = False,
    threads: int | None = None,
    video: Path | None = None,
    *,
    env: EnvSource | None = None,
) -> list[float]:
    """Run the trained policy of ``logdir`` for ``episodes`` episodes; their scores.

    The policy is the one :func:`~torchdreamer.training.policy.load_agent` returns
    (the checkpoint's checksum and its config checked against ``config.json``
    first). ``env``: the environment from Python (as :func:`train` takes it) to play
    on instead of ``config.env``'s id; a run trained on one needs it, and its spaces
    must be the run's. ``threads`` defaults to the run's ``config.threads``. The
    episodes are played as :func:`~torchdreamer.training.evaluation.evaluate_policy`
    plays them; ``video`` names a GIF to write of the first one.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    policy = load_agent(logdir, device)
    config = policy.config
    configure_threads(config.threads if threads is None else threads)
    source = config.env
    if env is not None:
        source = copies_of(env)
        probe, spec = make_env(source, 1, config.seed, config.image_size, config.obs)
        probe.close()
        check_spaces(policy.spec, spec, Path(logdir))
    result = evaluate_policy(
        policy,
        source,
        episodes,
        seed=config.seed + 10**9,
        image_size=config.image_size,
        obs=config.obs,
        sample=sample,
        video=video is not None,
    )
    if video is not None:
        if not result.frames:
            raise ValueError(f"no video: {result.unavailable}.")
        write_gif(video, result.frames)
    return result.scores
