"""The run directory of ``torchdreamer train`` and ``torchdreamer eval``: its lock, and the
agreement of what it holds (``config.json``, ``checkpoint.pt``) with the run asked for.

:class:`RunDirectory` checks a directory before a run writes anything, then claims it;
:func:`read_run` reads a finished or stopped run's config and checkpoint, checked to
agree, for evaluation and :func:`~torchdreamer.training.policy.load_agent`.
:func:`with_env` checks an environment given from Python against the run's, and
:func:`check_fits` a checkpoint against the agent built for this run's environment.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import torch
from torch import nn

from torchdreamer.envs.make import EnvSpec
from torchdreamer.envs.own import (
    EnvSource,
    check_spaces,
    copies_of,
    describe,
    describe_spaces,
    is_python_env,
)
from torchdreamer.training import distributed
from torchdreamer.training.agent import LATENT
from torchdreamer.training.checkpoint import CHECKPOINT, load_checkpoint
from torchdreamer.training.config import Config
from torchdreamer.training.logs import RunLog
from torchdreamer.training.resources import nearest_existing

if TYPE_CHECKING:
    from torchdreamer.training.replay import SequenceReplay

__all__ = [
    "CONFIG",
    "ENV_SPEC",
    "LOCK",
    "REPLAY",
    "RunDirectory",
    "RunInUse",
    "check_fits",
    "check_replay_latents",
    "read_run",
    "with_env",
]

#: Folder of the memory-mapped replay files (``--replay-on-disk``), one subfolder per rank.
REPLAY = "replay"
#: The file whose ``flock`` marks a run directory in use.
LOCK = ".lock"
#: The checkpoint entry that holds the environment's :class:`~torchdreamer.envs.EnvSpec`
#: (``dataclasses.asdict``), where there is one.
ENV_SPEC = "env_spec"
#: The run's configuration, written when the run starts.
CONFIG = "config.json"


def _listed(differences: dict[str, tuple[Any, Any]], there: str, here: str) -> str:
    return "; ".join(f"{k}: {a!r} {there}, {b!r} {here}" for k, (a, b) in differences.items())


def _stored_config(checkpoint: dict[str, Any], path: Path) -> Config:
    """The config a checkpoint was written with."""
    try:
        return Config.from_saved(json.loads(checkpoint["config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} holds no readable config ({error}).") from None


def read_run(
    logdir: Path, map_location: str | torch.device = "cpu"
) -> tuple[Config, dict[str, Any]]:
    """The config and the checkpoint of the run in ``logdir``, checked to agree.

    The checkpoint's checksum is verified
    (:func:`~torchdreamer.training.checkpoint.load_checkpoint`) and the config it was
    written with must be the one ``config.json`` gives.

    Examples:
        >>> import tempfile
        >>> from torchdreamer.training.run_directory import read_run
        >>> read_run(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... holds no config.json: it is not a torchdreamer run ...
    """
    logdir = Path(logdir)
    if logdir.exists() and not logdir.is_dir():
        raise ValueError(f"{logdir} is a file, not a run directory.")
    if not logdir.exists():
        raise FileNotFoundError(
            f"{logdir} does not exist: there is no run there (train one with "
            f"`torchdreamer train --logdir {logdir}`)."
        )
    if not (logdir / CONFIG).exists():
        raise FileNotFoundError(
            f"{logdir} holds no {CONFIG}: it is not a torchdreamer run (a run directory "
            f"holds {CONFIG} and {CHECKPOINT})."
        )
    config = Config.load(logdir / CONFIG)
    checkpoint = load_checkpoint(logdir, map_location=map_location)
    differences = _stored_config(checkpoint, logdir / CHECKPOINT).differences(config)
    if differences:
        raise ValueError(
            f"{logdir / CHECKPOINT} was written with another config than {logdir / CONFIG} "
            f"gives ({_listed(differences, 'in the checkpoint', 'now')}); restore {CONFIG}."
        )
    return config, checkpoint


class RunInUse(ValueError):
    """Another process holds the run directory's lock."""


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
        >>> from torchdreamer.training.run_directory import RunDirectory
        >>> path = Path(tempfile.mkdtemp()) / "run"
        >>> first = RunDirectory(path)
        >>> config, checkpoint = first.check(Config(), resume=False)
        >>> path.exists()  # nothing written yet
        False
        >>> first.claim(config, resume=False)
        >>> RunDirectory(path).check(config, resume=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchdreamer.training.run_directory.RunInUse: .../run is in use by process ... (its lock ...
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

    def check_run(
        self, config: Config, resume: bool, ranks: distributed.Ranks
    ) -> tuple[Config, dict[str, Any] | None, dict[str, Any] | None]:
        """:meth:`check` and the loggers' own check, on rank 0; then, on every rank, the
        config to run, the checkpoint to resume (None for a new run) and this rank's part
        of it."""
        distributed.run_on_main(lambda: RunLog.check(config.logger, self.path, resume))
        config, checkpoint = distributed.run_on_main(
            lambda: self.check(config, resume, ranks.world_size)
        )
        own = distributed.scatter_objects(self.rank_parts) if checkpoint is not None else None
        return config, checkpoint, own

    def replay_files(self, config: Config, rank: int) -> Path | None:
        """Where rank ``rank`` keeps its replay with ``config.replay_on_disk``; None in memory."""
        return self.path / REPLAY / f"rank{rank}" if config.replay_on_disk else None

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
        existing = nearest_existing(self.path)
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


def check_replay_latents(config: Config, replay: SequenceReplay, logdir: Path) -> None:
    """Raise unless a resumed replay holds the policy's latents where
    ``config.replay_context`` needs them (a replay written before they were stored).

    Examples:
        >>> import torch
        >>> from pathlib import Path
        >>> from tensordict import TensorDict
        >>> from torchdreamer.training import Config, SequenceReplay
        >>> from torchdreamer.training.run_directory import check_replay_latents
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


# -------------------------------------------------- environments from Python
def with_env(config: Config, env: EnvSource | None, logdir: Path, resume: bool) -> Config:
    """``config`` with ``env`` recorded as its ``env``, once ``env`` is checked.

    Refused, before anything is written: an ``env`` of another kind, a vector env of
    another size than ``config.num_envs`` or (when the run evaluates) without
    ``env_fns``, a ``config`` that names another environment (``config.env`` other than
    the default, or a ``suite``), and a resume with another environment than the run's
    (its ``config.json``), or without ``env=`` for a run on one from Python.
    """
    saved = _saved_env(logdir) if resume else None
    if env is None:
        if saved is not None and is_python_env(saved):
            raise ValueError(
                f"{logdir} was trained on an environment from Python ({saved}), which no id "
                "makes again: pass it again, train(config, logdir, resume=True, env=...)."
            )
        return config
    name = describe(env)  # checks env's type
    if config.suite:
        raise ValueError(
            f"config.suite {config.suite!r} picks an environment of its own; with env= "
            "leave suite unset (set steps, num_envs, train_ratio and preset as you need)."
        )
    default = Config().env
    if config.env != default and not is_python_env(config.env) and config.env != name:
        raise ValueError(
            f"config.env is {config.env!r}, but env= gives the environment ({name}); leave "
            "config.env unset: the run records the one env= gives."
        )
    if isinstance(env, gym.vector.VectorEnv):
        if env.num_envs != config.num_envs:
            raise ValueError(
                f"the vector env has {env.num_envs} copies but config.num_envs is "
                f"{config.num_envs}; make them equal (Config(num_envs={env.num_envs}, ...))."
            )
        if config.eval_every:
            copies_of(env)  # evaluations need copies of their own
    if saved is not None and saved != name:
        raise ValueError(
            f"{logdir} was trained on {saved!r}, and env= gives {name!r}; resume it with "
            "the environment it was trained on."
        )
    return dataclasses.replace(config, env=name)


def _saved_env(logdir: Path) -> str | None:
    """``config.json``'s ``env`` in ``logdir``, if it has one to read."""
    try:
        saved = json.loads((Path(logdir) / "config.json").read_text()).get("env")
    except (OSError, ValueError, AttributeError):
        return None  # the run directory's own checks name the problem
    return saved if isinstance(saved, str) else None


def check_fits(
    agent: nn.Module, checkpoint: dict[str, Any], spec: EnvSpec, path: Path | str
) -> None:
    """Refuse to load ``checkpoint`` (at ``path``) into ``agent``, built for an environment
    of ``spec``, when the checkpoint was trained on other spaces: its stored
    :class:`EnvSpec` (``checkpoint["env_spec"]``, where there is one) differs, or a network
    has another shape.

    Examples:
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> from torchdreamer.envs import EnvSpec
        >>> from torchdreamer.training.run_directory import check_fits
        >>> config = Config(imagination_horizon=3)
        >>> trained = DreamerAgent((4,), 2, discrete=True, config=config)
        >>> checkpoint = {"agent": trained.state_dict()}
        >>> spec = EnvSpec((4,), discrete=True, action_dim=3)
        >>> agent = DreamerAgent.from_spec(spec, config)
        >>> check_fits(agent, checkpoint, spec, "run")
        Traceback (most recent call last):
        ...
        ValueError: run was trained on an environment of other spaces than this one \
(observations (4,), 3 discrete actions): its world_model.rssm.core.action_in.0.weight has \
shape (64, 2) where this environment's agent has (64, 3); pass the environment it was trained on.
    """
    stored = checkpoint.get(ENV_SPEC)
    if isinstance(stored, dict):
        fields = {f.name for f in dataclasses.fields(EnvSpec)}
        check_spaces(EnvSpec(**{k: v for k, v in stored.items() if k in fields}), spec, path)
    saved = checkpoint["agent"]
    for key, value in agent.state_dict().items():
        other = saved.get(key)
        if isinstance(other, torch.Tensor) and other.shape != value.shape:
            raise ValueError(
                f"{path} was trained on an environment of other spaces than this one "
                f"({describe_spaces(spec)}): its {key} has shape {tuple(other.shape)} where this "
                f"environment's agent has {tuple(value.shape)}; pass the environment it "
                "was trained on."
            )
