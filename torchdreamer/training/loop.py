"""The training loop: ``torchdreamer train``.

:func:`train` checks a run (:mod:`~torchdreamer.training.run_directory`,
:mod:`~torchdreamer.training.resources`), starts it or resumes it from its checkpoint
(:class:`~torchdreamer.training.checkpoint.RunState`), then collects, updates, logs,
evaluates (:mod:`~torchdreamer.training.evaluation`) and checkpoints until its last step
or a stop (:mod:`~torchdreamer.training.stop`), showing its progress
(:mod:`~torchdreamer.training.progress`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

import torch
from tensordict import TensorDict

from torchdreamer.envs import EnvSource, env_workers_for, make_env
from torchdreamer.training import distributed
from torchdreamer.training.agent import LATENT, DreamerAgent
from torchdreamer.training.checkpoint import CHECKPOINT, RunState, save_run, seed_all
from torchdreamer.training.compiled import compile_agent, compiles, has_images
from torchdreamer.training.config import Config, resolve_precision
from torchdreamer.training.console import say
from torchdreamer.training.evaluation import TrainingEvaluations
from torchdreamer.training.logs import RunLog
from torchdreamer.training.policy import Policy
from torchdreamer.training.prefetch import Prefetcher
from torchdreamer.training.progress import Progress, Summary
from torchdreamer.training.replay import INDEX
from torchdreamer.training.resources import check_run_memory, configure_threads
from torchdreamer.training.run_directory import (
    ENV_SPEC,
    RunDirectory,
    check_fits,
    check_replay_latents,
    with_env,
)
from torchdreamer.training.runner import EnvRunner, Episode
from torchdreamer.training.static_update import StaticUpdate
from torchdreamer.training.stop import CompileGuard, Stop, StoppedBeforeStart, UpdateInterrupted
from torchdreamer.training.when import Every

__all__ = ["train"]


@dataclass
class _Run:
    """The objects of one run that the loop's steps share."""

    config: Config
    logdir: Path
    ranks: distributed.Ranks
    device: torch.device
    source: EnvSource
    """What evaluations make their environments of."""
    state: RunState
    agent: DreamerAgent
    runner: EnvRunner
    log: RunLog | None
    """Rank 0's logs; None on the other ranks."""
    compiled: bool


class _Training:
    """The steps of the loop, each a method, sharing the run's objects."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.config, self.ranks, self.device = run.config, run.ranks, run.device
        self.state, self.agent, self.runner, self.log = run.state, run.agent, run.runner, run.log
        self.parallel = distributed.wrap(run.agent, run.ranks)
        # On CUDA, the update's inputs at the same addresses every update (no graph yet:
        # training/static_update.py); on CPU the plain update, the same numbers.
        self.static = StaticUpdate(run.agent) if run.device.type == "cuda" else None
        self.pending: list[Episode] = []  # ended on this rank since the last gathering
        self.last: dict[str, float] = {}  # the latest update's loss terms
        state = run.state
        self.logged_step = state.env_step
        resumed = state.env_step > 0  # a checkpoint holds this very state
        self.saved_step = state.env_step if resumed else None
        self._window = (time.perf_counter(), state.env_step, state.updates)

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
            score = {"score_mean10": state.mean_score}
            self.log.metrics(state.env_step, {**values, **score, **rates, **self.last})

    def snapshot(self) -> None:
        """The checkpoint: rank 0's counters and networks, every rank's replay."""
        self.gather_episodes()
        self.saved_step = self.state.env_step
        if self.log is not None:
            self.log.flush()  # what the checkpoint counts is on disk before it
        entries = {"config": self.config.to_json(), ENV_SPEC: asdict(self.runner.spec)}
        acting = {"acting": self.runner.state_dict()}
        save_run(self.run.logdir, self.agent, self.state, entries, acting, self.ranks.is_main)


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
    (:mod:`~torchdreamer.envs.own`); ``config.env`` then records
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
        >>> from torchdreamer.training.evaluation import evaluate
        >>> from torchdreamer.training.loop import train
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
    config, checkpoint, own = directory.check_run(config, resume, ranks)
    start = checkpoint["counters"]["env_step"] if checkpoint is not None else 0
    seed_all(config.seed)  # the same initial networks on every rank
    # Environments restart on resume (unless the checkpoint holds their copies: see
    # EnvRunner.state_dict); a seed per start and rank keeps episodes distinct.
    env_seed = config.seed + start + ranks.rank * config.num_envs
    env, spec = make_env(
        source, config.num_envs, env_seed, config.image_size, config.obs, workers=config.env_workers
    )
    try:
        check_run_memory(config, spec.observation_shape, spec.action_dim, logdir)
        agent = DreamerAgent.from_spec(spec, config).to(device)
        if checkpoint is not None:
            check_fits(agent, checkpoint, spec, logdir / CHECKPOINT)
        # 2. Claim the directory: the first write of the run. A stop requested
        # while checking ends the run here, before anything is written.
        if distributed.any_rank(stop.requested)[0]:
            raise StoppedBeforeStart(stop.agreed())
        distributed.run_on_main(lambda: directory.claim(config, resume))
        state = RunState.start(config, ranks.rank, directory.replay_files(config, ranks.rank))
        if checkpoint is not None and own is not None:
            agent.load_state_dict(checkpoint["agent"])
            agent.optimizer.load_state_dict(checkpoint["optimizer"])
            state.load_state_dict(checkpoint, own, ranks.world_size)
            check_replay_latents(config, state.replay, logdir)
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
            state.replay.close_streams()
        run = _Run(config, logdir, ranks, device, source, state, agent, runner, log, compiled)
        stopped_by = _loop(run, progress, stop)
    finally:
        env.close()
    return Summary.of_run(logdir, config, state, stopped_by, update, ranks.is_main)


def _loop(run: _Run, progress: bool, stop: Stop) -> int | None:
    """Collect, update, log, checkpoint until ``config.steps`` or a stop; the final
    checkpoint is written however the loop ends, except after another rank's failure."""
    config, state, ranks = run.config, run.state, run.ranks
    training = _Training(run)
    bar = Progress(config, state.env_step, progress and ranks.is_main, ranks.world_size)
    note = bar.note if progress and ranks.is_main else None
    guard = CompileGuard(
        stop,
        run.agent,
        state.generator,
        compiled=run.compiled,
        collective=ranks.distributed,
        note=note,
    )
    evaluations = None  # rank 0's; the other ranks go on meanwhile
    if run.log is not None:
        policy = Policy(run.agent, run.runner.spec, config)
        evaluations = TrainingEvaluations(policy, run.source, run.log, state.replay, bar.note)
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
            if evaluate_now(state.env_step) and evaluations is not None:
                evaluations(state.env_step, lambda: stop.requested)
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
        if run.log is not None:
            run.log.close()
    return stopped_by
