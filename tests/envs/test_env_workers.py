"""Environments in worker processes (``env_workers``): the same steps and episodes as in
process, the number ``auto`` resolves to saved in config.json, and no worker process
left behind, whether the run ends, fails or its process is killed."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
from processes import is_gone, wait_for
from test_own_env import TINY as OWN_TINY

from torchdreamer.cli import _config, _parser
from torchdreamer.envs import env_workers_for, make_env
from torchdreamer.envs.workers import WorkerVectorEnv, groups
from torchdreamer.training import Config, train

#: test_own_env's tiny run, longer and with 4 copies: several episodes end in it.
TINY = dataclasses.replace(OWN_TINY, steps=200, num_envs=4, train_ratio=2, eval_every=0)
SAME_STEP = gym.vector.AutoresetMode.SAME_STEP


class Failing(gym.Env):
    """CartPole-like spaces; ``step`` raises at step ``fail_at`` (module level: it pickles)."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, fail_at: int = 5) -> None:
        self.fail_at, self.steps = fail_at, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.steps >= self.fail_at:
            raise RuntimeError(f"Failing broke at step {self.steps}")
        return np.zeros(3, np.float32), 1.0, False, False, {}


class Unsupported(Failing):
    observation_space = gym.spaces.Discrete(3)  # refused by make_env after the workers start


def _children() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("torchdreamer")]


def _wait_gone(pids: list[int]) -> None:
    wait_for(lambda: all(is_gone(pid) for pid in pids), lambda: 0, "worker exit", stall=30)


# ------------------------------------------------------------------- config and CLI
def test_env_workers_takes_auto_or_a_count_up_to_num_envs():
    assert Config().env_workers == "auto"
    assert Config(num_envs=4, env_workers=4.0).env_workers == 4
    for bad in (-1, "two", True, 1.5):
        with pytest.raises(ValueError, match="env_workers must be 'auto' or a whole number"):
            Config(env_workers=bad)
    with pytest.raises(ValueError, match="env_workers 3 is more than num_envs 2"):
        Config(num_envs=2, env_workers=3)
    assert "env_workers" in Config.RESUMABLE


def test_the_command_line_takes_auto_or_a_number():
    parse = _parser().parse_args
    assert _config(parse(["train", "--env-workers", "2"]))[0].env_workers == 2
    assert _config(parse(["train", "--env-workers", "auto"]))[0].env_workers == "auto"
    with pytest.raises(SystemExit):
        parse(["train", "--env-workers", "some"])


def test_auto_runs_dmc_images_in_two_workers_and_everything_else_in_process():
    assert env_workers_for("CartPole-v1", "auto", 16) == 0
    assert env_workers_for("dmc:walker_walk", "auto", 16, obs="proprio") == 0
    assert env_workers_for(Failing, "auto", 16) == 0
    for obs in ("image", "both"):
        assert env_workers_for("dmc:walker_walk", "auto", 16, obs) == 2
        assert env_workers_for("dmc:walker_walk", "auto", 1, obs) == 1  # one per copy at most
    for env_id in ("crafter", "atari:pong", "atari100k:pong"):
        assert env_workers_for(env_id, "auto", 16) == 0
    assert env_workers_for("dmc:walker_walk", 3, 16, obs="image") == 3


@pytest.mark.parametrize("copies, workers", [(5, 2), (4, 4), (3, 1), (7, 3)])
def test_groups_cover_the_copies_in_order_and_differ_by_at_most_one(copies, workers):
    parts = groups(copies, workers)
    assert [i for part in parts for i in part] == list(range(copies))
    sizes = [len(part) for part in parts]
    assert len(sizes) == workers and max(sizes) - min(sizes) <= 1


# ------------------------------------------------------------------- the same steps
def _equal_infos(mine: dict, theirs: dict) -> None:
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, dict):
            _equal_infos(mine[key], value)
        elif value.dtype == object:
            for a, b in zip(mine[key], value, strict=True):
                assert (a is None and b is None) or np.array_equal(a, b)
        else:
            assert mine[key].dtype == value.dtype
            np.testing.assert_array_equal(mine[key], value)


def test_workers_step_exactly_as_one_sync_vector_env():
    makers = [functools.partial(gym.make, "CartPole-v1", max_episode_steps=30)] * 5
    workers = WorkerVectorEnv(makers, workers=2)  # groups of 3 and 2
    plain = gym.vector.SyncVectorEnv(makers, autoreset_mode=SAME_STEP)
    try:
        (mine, mine_info), (theirs, their_info) = workers.reset(seed=7), plain.reset(seed=7)
        np.testing.assert_array_equal(mine, theirs)
        _equal_infos(mine_info, their_info)
        actions = np.random.default_rng(0).integers(0, 2, (120, 5))
        ended = 0
        for action in actions:
            mine, theirs = workers.step(action), plain.step(action)
            for a, b in zip(mine[:4], theirs[:4], strict=True):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)
            _equal_infos(mine[4], theirs[4])
            ended += int(theirs[2].sum() + theirs[3].sum())
        assert ended >= 10  # episodes ended and restarted, their final_obs compared
    finally:
        workers.close()
        plain.close()
    assert not _children()


def test_a_training_run_has_the_same_episodes_with_workers_and_saves_the_count(tmp_path):
    rows = {}
    for setting, saved in (("auto", 0), (2, 2)):
        logdir = tmp_path / f"run{setting}"
        train(dataclasses.replace(TINY, env_workers=setting), logdir, progress=False)
        assert json.loads((logdir / "config.json").read_text())["env_workers"] == saved
        with open(logdir / "episodes.csv") as file:
            rows[saved] = list(csv.DictReader(file))
        assert not _children()
    assert len(rows[0]) >= 5
    assert rows[2] == rows[0]


# ------------------------------------------------------------------- refusals
def test_what_cannot_run_in_workers_is_refused_saying_what_to_do():
    with pytest.raises(ValueError, match="pickled.*module's top level.*env_workers 0"):
        make_env(lambda: Failing(), num_envs=2, seed=0, workers=1)
    vector = gym.vector.SyncVectorEnv([Failing] * 2, autoreset_mode=SAME_STEP)
    with pytest.raises(ValueError, match="steps its copies itself: set env_workers 0"):
        make_env(vector, num_envs=2, seed=0, workers=1)
    vector.close()
    with pytest.raises(ValueError, match="record=True.*workers=0"):
        make_env("CartPole-v1", num_envs=2, seed=0, record=True, workers=1)
    assert not _children()


# ------------------------------------------------------------------- no orphans
def test_workers_are_gone_after_close_and_after_errors():
    env, _ = make_env(Failing, num_envs=3, seed=0, workers=2)
    pids = [p.pid for p in _children()]
    assert len(pids) == 2
    env.close()
    _wait_gone(pids)
    # refused after the workers started: make_env closes them
    with pytest.raises(ValueError, match="observation space is Discrete"):
        make_env(Unsupported, num_envs=2, seed=0, workers=2)
    assert not _children()
    # an environment's error reaches this process with the worker's traceback
    env, _ = make_env(Failing, num_envs=2, seed=0, workers=2)
    try:
        with pytest.raises(RuntimeError, match="Failing broke") as raised:
            for _ in range(10):
                env.rand_step()
        assert "in an environment worker process" in "".join(raised.value.__notes__)
    finally:
        env.close()
    assert not _children()


def test_a_run_whose_environment_fails_leaves_no_worker(tmp_path):
    config = dataclasses.replace(TINY, env_workers=2)
    with pytest.raises(RuntimeError, match="Failing broke"):
        train(config, tmp_path / "run", progress=False, env=functools.partial(Failing, 40))
    assert not _children()


def test_workers_ignore_ctrl_c_and_exit_when_their_process_is_killed(tmp_path, processes):
    script = textwrap.dedent(
        """
        import functools, sys, time
        import gymnasium as gym
        from torchdreamer.envs.workers import WorkerVectorEnv
        if __name__ == "__main__":
            env = WorkerVectorEnv([functools.partial(gym.make, "CartPole-v1")] * 2, 2)
            env.reset(seed=0)
            print(*[p.pid for p in env.processes], flush=True)
            for line in sys.stdin:  # a step per line, until killed
                env.step(env.action_space.sample())
                print("stepped", flush=True)
        """
    )
    path = tmp_path / "parent.py"
    path.write_text(script)
    parent = processes.start(
        [sys.executable, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches the process group
    parent.stdin.write("\n")
    parent.stdin.flush()
    assert parent.stdout.readline().strip() == "stepped"
    os.kill(parent.pid, signal.SIGKILL)  # no close: the workers see their pipe close
    _wait_gone(pids)
