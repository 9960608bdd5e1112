"""Run configuration: what ``torchdreamer train`` reads, with the official defaults."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import textwrap
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from torchdreamer.modules.size import ModelSize

__all__ = [
    "LOGGERS",
    "MAX_TRAIN_RATIO",
    "OFFICIAL",
    "PRESETS",
    "SUITE_PRESETS",
    "WHY",
    "Config",
    "ModelSize",
    "field_docs",
    "official_comparison",
    "resolve_precision",
]

#: Largest ``train_ratio`` accepted: 64 times the official maximum (1024).
MAX_TRAIN_RATIO = 65536.0


#: The official sizes (``dreamerv3/configs.yaml``: ``size1m`` ... ``size400m``), named as
#: there; on the same observation and action spaces each has exactly the official
#: number of trainable parameters (e.g. CartPole-v1: size1m 637,381, size12m 9,724,165).
#: ``small`` (ours, the default) is ``size1m`` with a GRU state of 256 instead of 512: the
#: same architecture and depths, 357,573 parameters on CartPole-v1. The first paper's
#: ``XS`` ... ``L`` are gone: they sized a dense GRU and one depth for every MLP, which
#: the official networks no longer have.
PRESETS: dict[str, ModelSize] = {
    "small": ModelSize(deter=256, hidden=64, classes=4, units=64, cnn_depth=4),
    "size1m": ModelSize(deter=512, hidden=64, classes=4, units=64, cnn_depth=4),
    "size12m": ModelSize(deter=2048, hidden=256, classes=16, units=256, cnn_depth=16),
    "size25m": ModelSize(deter=3072, hidden=384, classes=24, units=384, cnn_depth=24),
    "size50m": ModelSize(deter=4096, hidden=512, classes=32, units=512, cnn_depth=32),
    "size100m": ModelSize(deter=6144, hidden=768, classes=48, units=768, cnn_depth=48),
    "size200m": ModelSize(deter=8192, hidden=1024, classes=64, units=1024, cnn_depth=64),
    "size400m": ModelSize(deter=12288, hidden=1536, classes=96, units=1536, cnn_depth=96),
}

#: The official settings that :class:`Config` fields hold (``dreamerv3/configs.yaml`` at
#: danijar/dreamerv3 ``e3f0224``), in our fields' terms: per field, its ``configs.yaml`` key
#: and its value in the ``defaults`` block (``None``: none a run could use: the default task
#: is a test stub, the default run never stops). ``steps`` counts agent steps over all
#: environments, each repeating its action as the suite's adapter does (Atari 4, DMC and
#: Crafter 1), as the official ``run.steps`` does. ``preset`` names the official size (the
#: ``defaults`` block is ``size200m``'s widths: deter 8192, hidden 1024, classes 64, depth 64,
#: units 1024). ``image_size`` is the side of the suite env's ``size`` (``<env>``).
_OFFICIAL_DEFAULTS: dict[str, tuple[str, Any]] = {
    "env": ("task", None),
    "preset": ("agent.dyn.rssm.{deter,hidden,classes}, .*.depth, .*.units", "size200m"),
    "obs": ("env.dmc.{proprio,image}", "both"),
    "steps": ("run.steps", None),
    "seed": ("seed", 0),
    "image_size": ("env.<env>.size", 64),
    "num_envs": ("run.envs", 16),
    "batch_size": ("batch_size", 16),
    "batch_length": ("batch_length", 64),
    "train_ratio": ("run.train_ratio", 32.0),
    "replay_capacity": ("replay.size", 5_000_000),
    "replay_context": ("replay_context", 1),
    "replay_online": ("replay.online", True),
    "imagination_horizon": ("agent.imag_length", 15),
    "horizon": ("agent.horizon", 333.0),
    "lmbda": ("agent.imag_loss.lam", 0.95),
    "entropy_bonus": ("agent.imag_loss.actent", 3e-4),
    "actor_grad": ("agent.ac_grads (False: REINFORCE)", "reinforce"),
    "slow_critic_tau": ("agent.slowvalue.rate", 0.02),
    "slow_critic_weight": ("agent.imag_loss.slowreg", 1.0),
    "replay_value_scale": ("agent.loss_scales.repval", 0.3),
    "lr": ("agent.opt.lr", 4e-5),
    "critic_lr": ("agent.opt.lr (one rate for every network)", 4e-5),
    "warmup": ("agent.opt.warmup", 1000),
    "agc": ("agent.opt.agc", 0.3),
    "eps": ("agent.opt.eps", 1e-20),
    "beta1": ("agent.opt.beta1", 0.9),
    "beta2": ("agent.opt.beta2", 0.999),
    "precision": ("jax.compute_dtype", "bfloat16"),
}

#: What each suite's block (and its env's ``env.<env>`` settings) sets over the defaults:
#: ``task`` (our id of it), ``run.steps``, ``run.envs``, ``run.train_ratio``, the size
#: (``dmc_proprio``: ``size1m``), the observation (``env.dmc.image: False`` or
#: ``env.dmc.proprio: False``; the other suites have images only) and the image side.
_OFFICIAL_SUITES: dict[str, dict[str, Any]] = {
    name: dict(
        zip(
            ("env", "steps", "num_envs", "train_ratio", "preset", "obs", "image_size"),
            row,
            strict=True,
        )
    )
    for name, row in {
        "atari100k": ("atari100k:pong", 110_000, 1, 256.0, "size200m", "image", 64),
        "atari": ("atari:pong", 51_000_000, 16, 32.0, "size200m", "image", 96),
        "crafter": ("crafter", 1_100_000, 1, 512.0, "size200m", "image", 64),
        "dmc_proprio": ("dmc:walker_walk", 1_100_000, 16, 1024.0, "size1m", "proprio", 64),
        "dmc_vision": ("dmc:walker_walk", 1_100_000, 16, 256.0, "size200m", "image", 64),
    }.items()
}

#: The official values of the fields that have one, per suite (``""``: the ``defaults``
#: block alone), each with its ``configs.yaml`` key: ``OFFICIAL[suite][field] == (key,
#: value)``. ``torchdreamer train --show-config`` prints them beside a run's config.
OFFICIAL: dict[str, dict[str, tuple[str, Any]]] = {
    suite: {
        name: (
            key.replace("<env>", suite.partition("_")[0] if suite else "<env>"),
            changes.get(name, value),
        )
        for name, (key, value) in _OFFICIAL_DEFAULTS.items()
    }
    for suite, changes in {"": {}, **_OFFICIAL_SUITES}.items()
}

#: Where our value differs from the official on purpose, why: per suite (``""``: the
#: general defaults, no suite), per field. A suite takes every official value but these.
WHY: dict[str, dict[str, str]] = {
    "": {
        "env": "a task to run without naming one (the official default task is a test stub)",
        "steps": "a CartPole-class run ends at 100k env steps (the official runs until stopped)",
        "preset": "small (size1m's architecture with a GRU state of 256) trains CartPole in "
        "minutes on a CPU; size200m is a GPU model (docs/suites.md: killed for memory on "
        "a 24 GiB CPU machine)",
        "obs": "one observation per env: proprio for dmc tasks (the official default "
        "renders images besides; --obs both does too)",
        "lr": "learns CartPole about twice as fast in wall time as 4e-5 with 1,000 warm-up "
        "updates (docs/performance.md)",
        "warmup": "goes with lr 1e-4 (docs/performance.md)",
        "critic_lr": "the critic learns the returns' size sooner; CartPole-v1 then stays at "
        "500 once there (3 of 3 seeds, against 1 of 3 with one rate; docs/performance.md)",
        "replay_capacity": "the same for runs under 1e6 env steps (the default runs 100k); "
        "bounds the memory of longer image runs (64x64 RGB: 12 GB at 1e6, 61 GB at 5e6)",
        "precision": "auto: bfloat16 where the CPU multiplies it natively, float32 on other "
        "CPUs (where its casts cost more than they save) and on CUDA (not measured yet; "
        "docs/performance.md)",
    },
}

#: The general defaults of the fields whose default depends on the suite: their values
#: when no suite is named (:data:`WHY` says where and why they differ from the official).
_GENERAL = {
    "env": "CartPole-v1",
    "preset": "small",
    "obs": "auto",
    "steps": 100_000,
    "image_size": 64,
    "num_envs": 16,
    "train_ratio": 32.0,
    "replay_capacity": 1_000_000,
    "lr": 1e-4,
    "critic_lr": 4e-4,
    "warmup": 200,
    "precision": "auto",
}

#: The run settings ``Config(suite=...)`` (``--suite``) sets, per suite: the official value
#: of each field whose default depends on the suite. The fields with one default for all
#: hold the official value already (a test keeps ``Config(suite=S)`` equal to
#: :data:`OFFICIAL` field by field).
SUITE_PRESETS: dict[str, dict[str, Any]] = {
    suite: {
        name: value
        for name, (_, value) in OFFICIAL[suite].items()
        if name in _GENERAL and name not in WHY.get(suite, {})
    }
    for suite in _OFFICIAL_SUITES
}

#: Observation kinds ``obs`` accepts.
OBSERVATIONS = ("auto", "proprio", "image", "both")

#: Values ``compile`` accepts.
COMPILE_MODES = ("auto", "on", "off")

#: Values ``precision`` accepts (``auto``: :func:`resolve_precision`).
PRECISIONS = ("auto", "float32", "bfloat16")

#: CPU flags (Linux ``/proc/cpuinfo``) of units that multiply bfloat16 natively: AVX-512
#: BF16 (AMD Zen 4 on, Intel Cooper Lake on) and AMX (Intel Sapphire Rapids on).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

#: Names ``logger`` takes, one or several, comma-separated: where metrics, scores and
#: videos go besides the run directory's own files (see ``docs/loggers.md``).
LOGGERS = ("tensorboard", "wandb", "mlflow", "csv")

#: Values ``actor_grad`` accepts.
ACTOR_GRADS = ("reinforce", "dynamics")

#: The fields that take one of a few words, with those words.
_CHOICES = {
    "obs": OBSERVATIONS,
    "compile": COMPILE_MODES,
    "precision": PRECISIONS,
    "actor_grad": ACTOR_GRADS,
}

#: Fields a saved config (``config.json``, a checkpoint's) written before they existed
#: takes: the value that run trained with, so a resumed run goes on as it began.
_WHEN_ABSENT: dict[str, Callable[[dict[str, Any]], Any]] = {
    "actor_grad": lambda saved: "dynamics",
    "critic_lr": lambda saved: saved.get("lr"),
}

#: The fields that take a comma-separated list of a few words (each once), with those words.
_LISTS = {"logger": LOGGERS}


@dataclass
class Config:
    """Everything a run depends on; saved as ``config.json`` in the log directory.

    Examples:
        >>> from torchdreamer.training import Config
        >>> config = Config(env="Pendulum-v1", preset="size12m")
        >>> config.size.deter, round(1 - 1 / config.horizon, 4)
        (2048, 0.997)
        >>> Config(preset="XXL")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown preset 'XXL'; choose one of ['size100m', 'size12m', ..., 'small'].

        A suite preset sets the official run settings; fields given explicitly win:

        >>> config = Config(suite="atari100k", env="atari100k:breakout", steps=5000)
        >>> config.env, config.steps, config.num_envs, config.train_ratio, config.preset
        ('atari100k:breakout', 5000, 1, 256.0, 'size200m')
        >>> Config(suite="crafter", env="dmc:walker_walk")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: suite 'crafter' is for the env crafter; got env 'dmc:walker_walk' ...

        Loggers, several at once (``docs/loggers.md``):

        >>> Config(logger="tensorboard, wandb").logger
        'tensorboard,wandb'
    """

    env: str = None  # type: ignore[assignment]
    """Gymnasium id (vector or image observations, discrete or continuous actions), a
    benchmark-suite id (``atari100k:pong``, ``atari:pong``, ``dmc:walker_walk``,
    ``crafter``) or ``module:EnvId``. A ``suite`` sets its task. ``python:NAME`` records an
    environment given from Python, ``train(config, logdir, env=...)``."""
    preset: str = None  # type: ignore[assignment]
    """Network sizes: a name in :data:`PRESETS`, in any case. A ``suite`` sets
    its size."""
    suite: str = ""
    """An official per-suite preset: ``atari100k``, ``atari``, ``crafter``,
    ``dmc_proprio`` or ``dmc_vision``. It sets every field to the official value of the
    suite (``dreamerv3/configs.yaml``): ``env`` (its task), ``steps``, ``num_envs``,
    ``train_ratio``, ``preset``, ``obs``, ``image_size``, ``replay_capacity``, ``lr``,
    ``warmup`` and ``precision`` where the general defaults differ; each field given
    explicitly overrides it (``--show-config`` compares a run's config with the official).
    Empty: none."""
    obs: str = None  # type: ignore[assignment]
    """The observation of a DMC task: ``proprio`` (its readings as one vector),
    ``image`` (a render), ``both`` (the two as a dict observation) or ``auto``
    (proprio). Other environments have one kind and take ``auto``. A ``suite`` sets it."""
    steps: int = None  # type: ignore[assignment]
    """Environment steps to train for, summed over the parallel environments (and
    processes): the run stops at ``steps`` or at the next multiple of the environment
    count above it. A ``suite`` sets it."""
    seed: int = 0
    """Seeds torch, the environments and the replay sampling."""
    device: str = "cpu"
    """``cpu`` or ``cuda`` (under ``torchrun``, each process takes GPU ``LOCAL_RANK``)."""
    image_size: int = None  # type: ignore[assignment]
    """Side of the square images the agent sees (64; the suite ``atari`` 96, as the
    official): image observations of another size are resized to it. A multiple of 16 (the
    CNN halves it once per stage, 4 stages), e.g. 32, 64 or 96."""
    num_envs: int = None  # type: ignore[assignment]
    """Environments stepped together (official 16). A ``suite`` sets it."""
    env_workers: int | str = "auto"
    """Worker processes the training environments step in: ``0`` in this process (one
    after the other), N from 1 to ``num_envs`` (the copies split over N processes that
    step them in parallel while the loop waits: the same episodes for the same seed), or
    ``auto``: 2 for DMC from images (``dmc:*`` with ``obs`` image or both), 0 for every
    other environment (vector observations, Atari, Crafter, gymnasium ids, environments
    from Python), as measured fastest on 2 cores (``envs.AUTO_WORKERS``,
    docs/performance.md). The run saves the number ``auto`` resolves to.
    Evaluations and videos step in this process."""
    batch_size: int = 16
    """Replay sequences per update (official 16)."""
    batch_length: int = 64
    """Steps per replay sequence (official 64)."""
    train_ratio: float = None  # type: ignore[assignment]
    """Replayed steps per environment step (official 32 for CartPole-class tasks; at
    most 65536). A ``suite`` sets it."""
    replay_capacity: int = None  # type: ignore[assignment]
    """Replay rows kept, over all environments; the oldest are dropped first (1e6; official
    5e6, which a ``suite`` sets)."""
    replay_on_disk: bool = False
    """Keep the replay in memory-mapped files in ``LOGDIR/replay`` instead of memory, for
    pixel runs whose replay would not fit: the process's memory stays small, the files
    grow to the replay's size on disk, and checkpoints refer to them instead of copying
    them."""
    replay_context: int = 1
    """Replayed steps before each trained window whose stored latent starts the world
    model (official 1): ``1`` replays ``batch_length + 1`` steps, the posterior latent
    the policy stored with the first (refreshed by every update that trains on that
    step since) is the RSSM's start state and the other ``batch_length`` steps are
    trained; ``0`` starts every window from the zero state, flagged ``is_first``."""
    replay_online: bool = True
    """Train on every fresh window once soon after it is written, besides the uniform
    draws (the official ``replay.online``): each stream's windows ending at every
    ``batch_length + replay_context``-th step are queued, and each batch takes queued
    windows first, uniform draws for the rest."""
    imagination_horizon: int = 15
    """Imagined steps from every replay state (official 15)."""
    horizon: float = 333.0
    """Discount horizon: gamma = 1 - 1/horizon (official 333)."""
    lmbda: float = 0.95
    """λ of the λ-returns (official 0.95)."""
    entropy_bonus: float = 3e-4
    """Actor entropy coefficient (official 3e-4)."""
    actor_grad: str = "reinforce"
    """How the actor learns from imagined trajectories: ``reinforce`` (the official,
    ``ac_grads: False``): ``-log π(a|s) sg(advantage)`` for every kind of action, the
    imagined states stop-gradiented; or ``dynamics``: continuous actions backpropagate
    the λ-returns through the imagined dynamics (DreamerV3's first release,
    ``actor_grad_cont: backprop``), while discrete actions, whose samples carry no
    gradient, learn by REINFORCE under both. A ``config.json`` written before this field
    existed loads with ``dynamics``, what such runs trained with."""
    slow_critic_tau: float = 0.02
    """Slow-critic EMA rate, applied every update (official 0.02)."""
    slow_critic_weight: float = 1.0
    """Weight of the regulariser toward the slow critic (official 1)."""
    replay_value_scale: float = 0.3
    """Scale of the critic loss on replayed sequences (official 0.3)."""
    lr: float = None  # type: ignore[assignment]
    """Learning rate of the world model and the actor (1e-4; official 4e-5 with 1,000
    warm-up updates, which a ``suite`` sets; docs/performance.md's CartPole runs compare
    the two). ``--lr 4e-5 --warmup 1000 --critic-lr 4e-5`` restores the official values."""
    critic_lr: float = None  # type: ignore[assignment]
    """Learning rate of the critic (4e-4; official: ``lr``, one rate for every network,
    which a ``suite`` sets). With one rate the critic's values trail the returns (CartPole:
    65 of 333 after 3,000 updates) and a policy that has reached 500 drifts off it
    (docs/performance.md); a config saved before this field takes its ``lr``."""
    warmup: int = None  # type: ignore[assignment]
    """Updates of linear learning-rate warm-up (200; official 1000, which a ``suite`` sets;
    see ``lr``)."""
    agc: float = 0.3
    """Adaptive gradient clipping: ‖g‖ ≤ agc · max(‖w‖, 1e-3), per tensor (official 0.3)."""
    eps: float = 1e-20
    """Optimiser epsilon (official 1e-20)."""
    beta1: float = 0.9
    """Momentum (official 0.9)."""
    beta2: float = 0.999
    """Second-moment decay (official 0.999)."""
    log_every: int = 1000
    """Environment steps between metric rows."""
    checkpoint_every: int = 10_000
    """Environment steps between checkpoints (one is also written at exit)."""
    eval_every: int = 10_000
    """Environment steps between evaluations of the policy (0: none). Each plays
    ``eval_episodes`` episodes on environments of its own, taking the policy's most
    likely action, and writes their scores to ``eval.csv``, the loggers (``eval/score``)
    and the learning curve, and a GIF of its first episode to ``LOGDIR/videos`` and the
    loggers. Its random draws are its own: training goes on exactly as without it."""
    eval_episodes: int = 4
    """Episodes per evaluation."""
    eval_sample: bool = False
    """Sample the evaluation's actions, as in training, instead of the most likely one
    (``eval.csv``'s ``policy`` column and the summary line say ``sampled`` or ``greedy``)."""
    eval_video: bool = True
    """Write each evaluation's GIF (vector-observation environments are rendered)."""
    threads: int = 0
    """CPU threads torch computes with (0 = automatic)."""
    compile: str = "auto"
    """Compile the update's hot regions with ``torch.compile`` (inductor): ``on``,
    ``off``, or ``auto``: compiled on CPU for vector observations and runs planned to
    make at least 1,000 updates (where the compile time is repaid); eager for images (no
    faster), on CUDA and under torchrun (not measured there yet)."""
    precision: str = None  # type: ignore[assignment]
    """Dtype of the networks' computation: ``float32``, ``bfloat16`` (the official
    ``compute_dtype``, which a ``suite`` sets) or ``auto`` (the default): bfloat16 on CPUs
    that multiply it natively (``avx512_bf16`` or AMX), float32 elsewhere and on CUDA (not
    measured there yet); a run resolves it once and ``config.json`` keeps the dtype it
    computed in (:func:`~torchdreamer.training.config.resolve_precision`). In bfloat16 the
    update's losses and acting run under ``torch.autocast``, so matrix products and
    convolutions take bfloat16 inputs and layers' activations stay in it; parameters,
    optimiser state, norms' statistics, the heads' outputs (predictions, logits), the
    recurrent state and the losses stay float32."""
    logger: str = "tensorboard"
    """Where metrics, episode scores, evaluations and videos go, besides the run
    directory's own files (``metrics.csv``, ``metrics.jsonl``, ``episodes.csv``,
    ``eval.csv``, ``videos/``): one or several of ``tensorboard``, ``wandb``, ``mlflow``
    and ``csv`` (TorchRL's loggers), comma-separated, e.g. ``tensorboard,wandb``. W&B
    and MLflow need their packages (``pip install 'torchdreamer[wandb]'``,
    ``'torchdreamer[mlflow]'``); a resumed run continues their runs."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes stored with the run."""

    def __post_init__(self) -> None:
        self._apply_suite()
        self._check_types()
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
        for name, choices in _LISTS.items():
            setattr(self, name, _word_list(name, getattr(self, name), choices))
        canonical = {name.lower(): name for name in PRESETS}
        if not isinstance(self.preset, str) or self.preset.lower() not in canonical:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}.")
        self.preset = canonical[self.preset.lower()]
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if not low(value) or not high(value):
                raise ValueError(f"{name} must be {_describe(name)}, got {value}.")
        self.env_workers = _env_workers(self.env_workers, self.num_envs)
        side, factor = self.image_size, 2 ** len(self.size.cnn_mults)
        if side < factor or side % factor:
            raise ValueError(
                f"image_size must be a multiple of {factor} pixels (the CNN halves it once per "
                f"stage, {len(self.size.cnn_mults)} stages), e.g. 64 or 96; got {side}."
            )
        if self.replay_context not in (0, 1):
            raise ValueError(f"replay_context must be 0 or 1, got {self.replay_context!r}.")
        window = self.window
        if self.replay_capacity < self.num_envs * window:
            raise ValueError(
                f"replay_capacity {self.replay_capacity} cannot hold one sequence of "
                f"{window} steps per environment ({self.num_envs} envs)."
            )

    def _apply_suite(self) -> None:
        """Fields left unset (``None``) take the suite preset's value, or the general one."""
        if isinstance(self.suite, str):
            self.suite = self.suite.lower()
        if not isinstance(self.suite, str) or (self.suite and self.suite not in SUITE_PRESETS):
            raise ValueError(
                f"unknown suite {self.suite!r}; choose one of {sorted(SUITE_PRESETS)} or ''."
            )
        values = {**_GENERAL, **SUITE_PRESETS[self.suite]} if self.suite else _GENERAL
        for name, value in values.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.suite and not isinstance(self.env, str):
            return  # _check_types names the wrong type
        if self.suite and self.env.partition(":")[0] != values["env"].partition(":")[0]:
            family = values["env"].partition(":")[0]
            example = values["env"] if ":" not in values["env"] else f"{family}:<task>"
            raise ValueError(
                f"suite {self.suite!r} is for the env {example}; got env {self.env!r} (drop "
                "--suite, or pick the suite of that env)."
            )

    def _check_types(self) -> None:
        """Integral floats (``1e5``) become ints; other types and non-finite numbers are refused."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.type == "int":
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(f"{item.name} must be a whole number, got {value!r}.")
            elif item.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{item.name} must be a number, got {value!r}.")
                if not math.isfinite(value):
                    raise ValueError(f"{item.name} must be a finite number, got {value!r}.")
                value = float(value)
            elif item.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"{item.name} must be true or false, got {value!r}.")
            elif item.type == "str" and not isinstance(value, str):
                raise ValueError(f"{item.name} must be a string, got {value!r}.")
            setattr(self, item.name, value)

    @property
    def size(self) -> ModelSize:
        return PRESETS[self.preset]

    @property
    def window(self) -> int:
        """Steps of each replayed window: ``batch_length``, after the context step of
        ``replay_context``.

        Examples:
            >>> from torchdreamer.training import Config
            >>> Config().window, Config(replay_context=0).window
            (65, 64)
        """
        return self.batch_length + self.replay_context

    #: Fields that may differ when a run is resumed: where and how the same learning runs
    #: (device, threads, compiling, the compute dtype), not what it learns.
    RESUMABLE = (
        "steps",
        "device",
        "log_every",
        "checkpoint_every",
        "threads",
        "env_workers",
        "compile",
        "precision",
        "eval_every",
        "eval_episodes",
        "eval_sample",
        "eval_video",
        "logger",
    )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> Config:
        """The config saved at ``path``; a file that is not one is refused, naming it."""
        try:
            values = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a valid config ({error}).") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} is not a valid config (a JSON object is expected).")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{path} has unknown fields {unknown}.")
        try:
            return cls.from_saved(values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> Config:
        """The config of saved ``values`` (``config.json``'s, a checkpoint's): fields
        they predate take the value their run trained with, not today's default.

        Examples:
            >>> from torchdreamer.training import Config
            >>> Config.from_saved({"env": "Pendulum-v1"}).actor_grad  # saved before the field
            'dynamics'
            >>> Config().actor_grad
            'reinforce'
        """
        absent = {k: value(values) for k, value in _WHEN_ABSENT.items() if k not in values}
        return cls(**{**absent, **values})

    def differences(self, other: Config) -> dict[str, tuple[Any, Any]]:
        """Fields, other than :attr:`RESUMABLE` ones, where ``other`` differs."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return {
            key: (mine[key], theirs[key])
            for key in mine
            if key not in self.RESUMABLE and mine[key] != theirs[key]
        }


def official_comparison(
    config: Config, given: Collection[str] = ()
) -> list[tuple[str, Any, Any, str, str]]:
    """``config`` beside the official settings of its suite (:data:`OFFICIAL`), field by
    field: ``(field, ours, official, configs.yaml key, note)``. The note is empty where the
    two agree, else ``given`` for a field in ``given`` (set by the user), or the reason
    (:data:`WHY`) for a deliberate difference, and ``ours only`` for a field the official
    config has no counterpart of (official and key ``None``).

    Examples:
        >>> from torchdreamer.training.config import Config, official_comparison
        >>> rows = official_comparison(Config(suite="atari", lr=1e-4), given=["lr"])
        >>> [row for row in rows if row[0] in ("image_size", "lr", "warmup", "device")]
        ... # doctest: +NORMALIZE_WHITESPACE
        [('device', 'cpu', None, None, 'ours only'),
         ('image_size', 96, 96, 'env.atari.size', ''),
         ('lr', 0.0001, 4e-05, 'agent.opt.lr', 'given'),
         ('warmup', 1000, 1000, 'agent.opt.warmup', '')]
        >>> next(row for row in official_comparison(Config()) if row[0] == "warmup")[4]
        'goes with lr 1e-4 (docs/performance.md)'
    """
    official, why = OFFICIAL[config.suite], WHY.get(config.suite, {})
    rows = []
    for item in dataclasses.fields(config):
        ours = getattr(config, item.name)
        if item.name not in official:
            rows.append((item.name, ours, None, None, "ours only"))
            continue
        key, value = official[item.name]
        if ours == value:
            note = ""
        elif item.name in given:
            note = "given"
        else:
            note = why.get(item.name, "differs; no reason recorded")
        rows.append((item.name, ours, value, key, note))
    return rows


def _word_list(name: str, value: str, choices: tuple[str, ...]) -> str:
    """``value``, a comma-separated list of ``choices`` (each once), without spaces."""
    words = [word.strip() for word in value.split(",")]
    usage = f"a comma-separated list of {list(choices)}, e.g. '{choices[0]},{choices[-1]}'"
    if not any(words):
        raise ValueError(f"{name} must be {usage}; got {value!r}.")
    for word in words:
        if word not in choices:
            raise ValueError(f"{name}: unknown name {word!r} in {value!r}; it must be {usage}.")
        if words.count(word) > 1:
            raise ValueError(f"{name}: {word!r} is named twice in {value!r}; name it once.")
    return ",".join(words)


def _env_workers(value: Any, num_envs: int) -> int | str:
    """``env_workers`` checked: ``"auto"``, or a whole number from 0 to ``num_envs``."""
    if value == "auto":
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(
            f"env_workers must be 'auto' or a whole number >= 0 (0: the environments step "
            f"in this process), got {value!r}."
        )
    if value > num_envs:
        raise ValueError(
            f"env_workers {value} is more than num_envs {num_envs}: each worker steps at "
            f"least one environment; use 0 to {num_envs}, or 'auto'."
        )
    return value


def _positive(value: float) -> bool:
    return value > 0


def _any(value: float) -> bool:
    return True


def _at_least(bound: float):
    return lambda value: value >= bound


def _at_most(bound: float):
    return lambda value: value <= bound


def _below(bound: float):
    return lambda value: value < bound


#: (field, lower test, upper test): the values each numeric field accepts.
_RANGES = (
    *((name, _at_least(1), _any) for name in ("steps", "num_envs", "batch_size")),
    ("batch_length", _at_least(2), _any),
    ("imagination_horizon", _at_least(1), _any),
    ("log_every", _at_least(1), _any),
    ("eval_every", _at_least(0), _any),
    ("eval_episodes", _at_least(1), _any),
    ("checkpoint_every", _at_least(1), _any),
    ("seed", _at_least(0), _any),
    ("warmup", _at_least(0), _any),
    ("threads", _at_least(0), _any),
    ("train_ratio", _positive, _at_most(MAX_TRAIN_RATIO)),
    ("lr", _positive, _any),
    ("critic_lr", _positive, _any),
    ("horizon", _at_least(1), _any),
    ("lmbda", _at_least(0), _at_most(1)),
    ("entropy_bonus", _at_least(0), _any),
    ("slow_critic_tau", _positive, _at_most(1)),
    ("slow_critic_weight", _at_least(0), _any),
    ("replay_value_scale", _at_least(0), _any),
    ("agc", _positive, _any),
    ("eps", _positive, _any),
    ("beta1", _at_least(0), _below(1)),
    ("beta2", _at_least(0), _below(1)),
)

_RANGE_TEXT = {
    "batch_length": ">= 2",
    "train_ratio": f"in (0, {MAX_TRAIN_RATIO:g}] (replayed steps per env step)",
    "lmbda": "in [0, 1]",
    "slow_critic_tau": "in (0, 1]",
    "beta1": "in [0, 1)",
    "beta2": "in [0, 1)",
    "horizon": ">= 1",
}


def _describe(name: str) -> str:
    if name in _RANGE_TEXT:
        return _RANGE_TEXT[name]
    low = next(test for key, test, _ in _RANGES if key == name)
    return "> 0" if low is _positive else (">= 1" if not low(0) else ">= 0")


@cache
def field_docs(cls: type = Config) -> dict[str, str]:
    """The docstring under each field of the dataclass ``cls``, by field name.

    Examples:
        >>> from torchdreamer.training.config import field_docs
        >>> field_docs()["batch_size"]
        'Replay sequences per update (official 16).'

    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in ``/proc/cpuinfo`` (none elsewhere)."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(
    precision: str, device: str = "cpu", flags: frozenset[str] | None = None
) -> tuple[str, str]:
    """The dtype ``precision`` computes in on ``device`` (a device type or name such as
    ``"cuda:0"``), and why. ``flags``: the CPU's flags (default: this machine's).

    ``auto`` is bfloat16 on a CPU that multiplies bfloat16 natively (a flag of
    :data:`BF16_CPU_FLAGS`), where the update was measured faster in bfloat16 and
    CartPole-v1 still learned (``docs/performance.md``, "bfloat16"), and float32
    elsewhere: on other CPUs bfloat16's casts cost more than they save, and on CUDA it is
    not measured yet. :func:`~torchdreamer.training.train` resolves it once, before
    writing ``config.json``, which keeps the dtype the run computed in.

    Examples:
        >>> from torchdreamer.training.config import resolve_precision
        >>> resolve_precision("auto", "cpu", flags=frozenset({"avx2", "avx512_bf16"}))
        ('bfloat16', 'auto: the CPU multiplies bfloat16 natively (avx512_bf16)')
        >>> resolve_precision("auto", "cpu", flags=frozenset({"avx2"}))
        ('float32', 'auto: the CPU has no bfloat16 matrix unit (avx512_bf16, amx_bf16)')
        >>> resolve_precision("auto", "cuda:0")
        ('float32', 'auto, on cuda: bfloat16 is not measured there yet')
        >>> resolve_precision("bfloat16", "cuda")
        ('bfloat16', '--precision bfloat16')
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
    if precision != "auto":
        return precision, f"--precision {precision}"
    kind = str(device).partition(":")[0]
    if kind != "cpu":
        return "float32", f"auto, on {kind}: bfloat16 is not measured there yet"
    present = [flag for flag in BF16_CPU_FLAGS if flag in (cpu_flags() if flags is None else flags)]
    if present:
        return "bfloat16", f"auto: the CPU multiplies bfloat16 natively ({', '.join(present)})"
    return "float32", f"auto: the CPU has no bfloat16 matrix unit ({', '.join(BF16_CPU_FLAGS)})"
