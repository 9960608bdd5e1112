"""The run directory on its own: checked before anything is written, claimed and locked by
one process, its config agreeing with the run asked for, and where each rank's replay
files go. (Whole runs through the command line: tests/test_cli.py.)"""

from __future__ import annotations

import os

import gymnasium as gym
import pytest

from torchdreamer.training import Config
from torchdreamer.training.run_directory import (
    CONFIG,
    LOCK,
    REPLAY,
    RunDirectory,
    RunInUse,
    read_run,
    with_env,
)


def test_a_new_run_writes_nothing_until_it_claims_the_directory(tmp_path):
    path = tmp_path / "deep" / "run"
    directory = RunDirectory(path)
    config, checkpoint = directory.check(Config(), resume=False)
    assert checkpoint is None and not (tmp_path / "deep").exists()
    directory.claim(config, resume=False)
    assert Config.load(path / CONFIG).differences(Config()) == {}
    assert (path / LOCK).read_text().strip() == str(os.getpid())
    directory.release()
    assert sorted(p.name for p in path.iterdir()) == [CONFIG]


def test_a_claimed_directory_is_refused_to_a_second_run_and_freed_by_release(tmp_path):
    path = tmp_path / "run"
    first = RunDirectory(path)
    first.claim(Config(), resume=False)
    with pytest.raises(RunInUse, match=f"in use by process {os.getpid()} "):
        RunDirectory(path).check(Config(), resume=True)
    first.release()
    second = RunDirectory(path)
    config, checkpoint = second.check(Config(), resume=True)  # no checkpoint yet: over
    assert checkpoint is None and config == Config()
    second.release()
    with pytest.raises(ValueError, match="already holds this run; continue it with"):
        RunDirectory(path).check(Config(), resume=False)


def test_a_resume_may_change_only_the_resumable_fields(tmp_path):
    path = tmp_path / "run"
    directory = RunDirectory(path)
    directory.claim(Config(), resume=False)
    directory.release()
    resumable = Config(steps=Config().steps * 2)  # steps is in Config.RESUMABLE
    assert "steps" in Config.RESUMABLE
    resumed = RunDirectory(path)
    assert resumed.check(resumable, resume=True) == (resumable, None)
    resumed.release()
    with pytest.raises(ValueError, match=r"cannot resume .* with a different seed: only "):
        RunDirectory(path).check(Config(seed=Config().seed + 1), resume=True)


def test_a_file_in_the_way_and_a_missing_run_are_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        RunDirectory(tmp_path / "file").check(Config(), resume=False)
    with pytest.raises(FileNotFoundError, match="holds no config.json: there is no run"):
        RunDirectory(tmp_path / "none").check(Config(), resume=True)
    with pytest.raises(FileNotFoundError, match="does not exist: there is no run there"):
        read_run(tmp_path / "none")


def test_each_rank_keeps_its_replay_files_in_its_own_folder(tmp_path):
    directory = RunDirectory(tmp_path / "run")
    assert directory.replay_files(Config(), 1) is None  # in memory
    on_disk = Config(replay_on_disk=True)
    assert directory.replay_files(on_disk, 1) == tmp_path / "run" / REPLAY / "rank1"


def test_an_env_from_python_is_recorded_and_a_resume_must_give_it_again(tmp_path):
    config = with_env(Config(), lambda: gym.make("CartPole-v1"), tmp_path / "run", False)
    assert config.env.startswith("python:")
    directory = RunDirectory(tmp_path / "run")
    directory.claim(config, resume=False)
    directory.release()
    with pytest.raises(ValueError, match="was trained on an environment from Python"):
        with_env(config, None, tmp_path / "run", True)
    vector = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3)
    with pytest.raises(ValueError, match="the vector env has 3 copies but config.num_envs"):
        with_env(Config(num_envs=2), vector, tmp_path / "other", False)
    vector.close()
