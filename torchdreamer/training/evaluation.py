"""Evaluating the policy: episodes on environments of their own, their scores and a video.

:func:`evaluate` is ``torchdreamer eval``: the trained policy of a run directory;
:class:`TrainingEvaluations` the evaluations a training run makes every
``config.eval_every`` env steps; both play their episodes with :func:`evaluate_policy`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase

from torchdreamer.envs import EnvSpec, make_env, recorder
from torchdreamer.envs.own import EnvSource, check_spaces, copies_of
from torchdreamer.training.agent import DreamerAgent
from torchdreamer.training.logs import write_gif
from torchdreamer.training.policy import Policy, load_agent
from torchdreamer.training.resources import configure_threads
from torchdreamer.training.runner import Episode

if TYPE_CHECKING:
    from torchdreamer.training.logs import RunLog
    from torchdreamer.training.replay import SequenceReplay

__all__ = [
    "Evaluation",
    "TrainingEvaluations",
    "dream",
    "evaluate",
    "evaluate_policy",
    "own_draws",
    "policy_name",
]


def policy_name(sample: bool) -> str:
    """How a score's actions were chosen: ``"sampled"`` from the policy (as training
    episodes, and the official DreamerV3's reported scores, choose them) or ``"greedy"``
    (the policy's most likely action). ``eval.csv``, the run's summary line and
    ``torchdreamer eval`` name each evaluation's policy by these words.

    Examples:
        >>> from torchdreamer.training.evaluation import policy_name
        >>> policy_name(False), policy_name(True)
        ('greedy', 'sampled')
    """
    return "sampled" if sample else "greedy"


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate_policy`: its episodes and the first one's frames."""

    episodes: list[Episode]
    frames: list[np.ndarray]
    """The first episode's frames (``[H, W, C]`` uint8), empty when none could be made."""
    unavailable: str | None
    """Why there are no frames, when there are none."""
    policy: str
    """How the actions were chosen: ``greedy`` or ``sampled`` (:func:`policy_name`)."""

    @property
    def scores(self) -> list[float]:
        return [episode.score for episode in self.episodes]


@contextmanager
def own_draws(device: torch.device, seed: int) -> Iterator[None]:
    """Inside the block torch draws from streams seeded by ``seed`` (the CPU's, and
    ``device``'s when it is a GPU); after it, the streams are as they were before."""
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        yield


def evaluate_policy(
    policy: Policy,
    env_id: EnvSource,
    episodes: int,
    *,
    seed: int,
    image_size: int = 64,
    obs: str = "auto",
    sample: bool = False,
    video: bool = False,
    parallel: int = 16,
    stop: Callable[[], bool] | None = None,
) -> Evaluation | None:
    """Play ``episodes`` episodes of ``env_id`` with ``policy`` on fresh environments.

    ``env_id`` is an id, or an environment given from Python
    (:mod:`~torchdreamer.envs.own`): a function that makes one, or a vector env,
    whose ``env_fns`` make the copies.

    The policy acts through the method its users call (:meth:`Policy.act_torchrl
    <torchdreamer.training.policy.Policy.act_torchrl>`, under :meth:`Policy.act
    <torchdreamer.training.policy.Policy.act>`) and takes its most likely action
    (``sample=True``: it samples, as in training); :attr:`Evaluation.policy` says which.
    Up to ``parallel`` copies run together and each plays its share of the episodes in
    turn; the episodes are reported copy by copy and round by round, so which episodes
    count does not depend on how long they last. The draws come from a generator seeded
    by ``seed`` inside a forked RNG: an evaluation in the middle of training leaves the
    training's random streams as they were. ``video=True`` keeps the frames of the first
    episode (:class:`~torchdreamer.envs.RecordFrames`). ``stop`` is asked before
    every step: once it returns True the evaluation is abandoned and ``None`` returned
    (a Ctrl-C during a long evaluation stops the run as promptly as during training).

    Examples:
        >>> from torchdreamer.training import Config, DreamerAgent, Policy
        >>> from torchdreamer.envs import EnvSpec
        >>> from torchdreamer.training.evaluation import evaluate_policy
        >>> config = Config(imagination_horizon=3)
        >>> agent = DreamerAgent((4,), 2, discrete=True, config=config)
        >>> policy = Policy(agent, EnvSpec((4,), discrete=True, action_dim=2), config)
        >>> result = evaluate_policy(policy, "CartPole-v1", 3, seed=0, video=True)
        >>> len(result.scores), result.frames[0].shape, result.policy  # CartPole rendered
        (3, (400, 600, 3), 'greedy')
        >>> len(result.frames) == result.episodes[0].length + 1  # the reset, then each step
        True
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    source = copies_of(env_id)
    copies = min(episodes, parallel)
    share = [episodes // copies + (i < episodes % copies) for i in range(copies)]
    # Making the env draws too (TorchRL steps it once to learn its specs).
    with own_draws(policy.device, seed):
        env, spec = make_env(source, copies, seed, image_size, obs, record=video)
        try:
            frames = recorder(env) if video else None
            if frames is not None:
                frames.restart()
            played = _play(policy, env, spec, share, sample, stop)
        finally:
            env.close()
    if played is None:
        return None
    ordered = [played[i][r] for r in range(max(share)) for i in range(copies) if r < share[i]]
    kind = policy_name(sample)
    if frames is None:
        return Evaluation(ordered, [], "no video was asked for", kind)
    return Evaluation(ordered, list(frames.frames), frames.unavailable, kind)


def _play(
    policy: Policy,
    env: EnvBase,
    spec: EnvSpec,
    share: list[int],
    sample: bool,
    stop: Callable[[], bool] | None,
) -> list[list[Episode]] | None:
    """Each copy's first ``share[i]`` episodes; None if ``stop`` asked for it."""
    copies = len(share)
    played: list[list[Episode]] = [[] for _ in range(copies)]
    td = env.reset()
    state = None  # every copy starts an episode
    returns = torch.zeros(copies, dtype=torch.float64)
    lengths = torch.zeros(copies, dtype=torch.long)
    step = 0
    while any(len(done) < want for done, want in zip(played, share, strict=True)):
        if stop is not None and stop():
            return None
        step += 1
        action, state = policy.act_torchrl(spec.observation_of(td), state, explore=sample)
        td.set("action", action)
        out, td = env.step_and_maybe_reset(td)
        nxt = out.get("next")
        returns += nxt.get("reward").reshape(copies).double()
        lengths += 1
        done = nxt.get("done").reshape(copies)
        for e in done.nonzero().squeeze(-1).tolist():
            if len(played[e]) < share[e]:
                played[e].append(Episode(step, float(returns[e]), int(lengths[e]), e))
        returns[done], lengths[done] = 0, 0
        state = policy.reset(state, done)  # where an episode ended, the next begins
    return played


class TrainingEvaluations:
    """The evaluations of a training run, on rank 0: ``policy`` scored on environments of
    its own made from ``source`` (:func:`evaluate_policy`), logged to ``log`` (``eval.csv``
    and the loggers), with, when ``config.eval_video``, a video of the first episode and of
    the world model's open-loop prediction of replayed sequences (:func:`dream`).
    ``note`` tells once when no video can be made."""

    def __init__(
        self,
        policy: Policy,
        source: EnvSource,
        log: RunLog,
        replay: SequenceReplay,
        note: Callable[[str], None],
    ) -> None:
        self.policy, self.source, self.log, self.replay = policy, source, log, replay
        self._note = note
        self._told_no_video = False

    def __call__(self, step: int, stop: Callable[[], bool]) -> None:
        """Evaluate at env step ``step``; ``stop`` returning True abandons it."""
        config, agent = self.policy.config, self.policy.agent
        result = evaluate_policy(
            self.policy,
            self.source,
            config.eval_episodes,
            seed=config.seed + 2 * 10**9 + step,
            image_size=config.image_size,
            obs=config.obs,
            sample=config.eval_sample,
            video=config.eval_video,
            stop=stop,
        )
        if result is None:
            return
        self.log.evaluation(step, result.episodes, result.frames, result.policy)
        if config.eval_video and agent.world_model.is_image:
            if self.replay.can_sample(config.batch_length):
                # Four replayed sequences and the model's draws, apart from training's.
                with own_draws(self.policy.device, config.seed + step):
                    generator = torch.Generator().manual_seed(config.seed + step)
                    batch = self.replay.sample(4, config.batch_length, generator=generator)
                    self.log.video("dream", dream(agent, batch), step, tag="eval/dream")
        if config.eval_video and not result.frames and not self._told_no_video:
            self._note(f"torchdreamer: no evaluation videos: {result.unavailable}.")
            self._told_no_video = True


@torch.no_grad()
def dream(agent: DreamerAgent, batch: TensorDictBase, context: int = 5) -> list[np.ndarray]:
    """The world model's open-loop prediction of replayed image sequences, as video frames.

    The model filters the first ``context`` observations of each ``[B, T]`` sequence, then
    predicts the rest from its prior alone, fed the sequence's own actions (the official
    report's ``openloop`` view). Frame ``t`` shows every sequence side by side as a column
    of three: the truth, the model (its reconstruction over the context, its prediction
    after it) and the error ``(model - truth + 1) / 2``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> from torchdreamer.training.evaluation import dream
        >>> agent = DreamerAgent((16, 16, 3), 2, discrete=True, config=Config())
        >>> batch = TensorDict(
        ...     observation=torch.randint(0, 256, (2, 8, 16, 16, 3), dtype=torch.uint8),
        ...     prev_action=torch.zeros(2, 8, 2),
        ...     is_first=torch.zeros(2, 8, dtype=torch.bool),
        ...     batch_size=[2, 8],
        ... )
        >>> frames = dream(agent, batch, context=3)
        >>> len(frames), frames[0].shape, frames[0].dtype  # 3 rows of 16, 2 columns of 16
        (8, (48, 32, 3), dtype('uint8'))
    """
    model = agent.world_model
    if not model.is_image:
        raise ValueError("dream() shows image observations; this world model reads vectors.")
    device = next(agent.parameters()).device
    batch = batch.to(device)
    truth = batch.get("observation")
    action = batch.get("prev_action")
    is_first = batch.get("is_first").reshape(truth.shape[:2])
    steps = truth.shape[1]
    if not 1 <= context < steps:
        raise ValueError(f"context must be in [1, {steps - 1}] for {steps}-step sequences.")
    with agent.autocast():
        seen = model.rssm.observe(
            model.embed(truth[:, :context]), action[:, :context], is_first[:, :context]
        )
        stoch, deter = seen["stoch"][:, -1], seen["deter"][:, -1]
        stochs, deters = [seen["stoch"]], [seen["deter"]]
        for t in range(context, steps):
            stoch, deter, _ = model.rssm.img_step(stoch, deter, action[:, t])
            stochs.append(stoch.unsqueeze(1))
            deters.append(deter.unsqueeze(1))
        predicted = model.decode(torch.cat(stochs, 1), torch.cat(deters, 1)).clamp(0, 1)
    real = truth.float() / 255
    error = (predicted - real + 1) / 2
    # [B, T, H, W, C] x 3 -> [T, 3 * H, B * W, C]
    rows = torch.stack([real, predicted, error], 2)  # [B, T, 3, H, W, C]
    grid = rows.permute(1, 2, 3, 0, 4, 5).flatten(1, 2).flatten(2, 3)
    frames = (grid * 255).round().to(torch.uint8).cpu().numpy()
    return list(frames)


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
    first). ``env``: the environment from Python (as
    :func:`~torchdreamer.training.loop.train` takes it) to play on instead of
    ``config.env``'s id; a run trained on one needs it, and its spaces must be the run's.
    ``threads`` defaults to the run's ``config.threads``. The episodes are played as
    :func:`evaluate_policy` plays them; ``video`` names a GIF to write of the first one.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchdreamer.training import Config, evaluate, train
        >>> logdir = Path(tempfile.mkdtemp()) / "run"
        >>> config = Config(steps=32, num_envs=2, batch_size=2, batch_length=8,
        ...                 train_ratio=4, imagination_horizon=3, threads=1)
        >>> _ = train(config, logdir, progress=False)
        >>> scores = evaluate(logdir, episodes=3)  # greedy actions; sample=True draws them
        >>> len(scores), all(1 <= score <= 500 for score in scores)
        (3, True)
        >>> evaluate(logdir, episodes=0)
        Traceback (most recent call last):
        ...
        ValueError: episodes must be >= 1, got 0.
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
