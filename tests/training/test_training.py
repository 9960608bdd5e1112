"""Training pieces: the optimiser against a plain reference, replay windows, the env
streams' layout, and the whole CLI (smoke run, eval, resume after kill -9, bad input)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import pickle
import signal
import subprocess
import sys
from collections import deque

import gymnasium as gym
import numpy as np
import pytest
import torch
from processes import cpu_ticks, tree_size, wait_for
from tensordict import TensorDict, TensorDictBase
from tiny import TINY_RUN

import torchdreamer.training.config as config_module
from torchdreamer.envs import make_env
from torchdreamer.training import Config, DreamerAgent, SequenceReplay, train
from torchdreamer.training.optim import DreamerV3Optimizer
from torchdreamer.training.runner import EnvRunner

# Eager: these runs are about the loop (tests/training/test_compiled.py: compiled runs).
TINY = ["--num-envs", "4", "--batch-size", "4", "--batch-length", "16", "--compile", "off"]


def run_cli(*args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "torchdreamer.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


# ------------------------------------------------------------------ optimiser
def reference_laprop(weights, grads_per_step, lr, b1, b2, eps, agc, warmup):
    """Per-element loops in float64, written from the update rule."""
    weights = [w.clone().double() for w in weights]
    nu = [torch.zeros_like(w) for w in weights]
    mu = [torch.zeros_like(w) for w in weights]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
            g = g.double()
            w_norm = math.sqrt(sum(x * x for x in w.flatten().tolist()))
            g_norm = math.sqrt(sum(x * x for x in g.flatten().tolist()))
            limit = agc * max(w_norm, 1e-3)
            if g_norm > limit:
                g = g * (limit / g_norm)
            nu[i] = b2 * nu[i] + (1 - b2) * g * g
            u = g / ((nu[i] / (1 - b2**t)).sqrt() + eps)
            mu[i] = b1 * mu[i] + (1 - b1) * u
            rate = lr * min(1.0, (t - 1) / warmup)  # optax counts updates from 0
            weights[i] = w - rate * mu[i] / (1 - b1**t)
    return weights


@pytest.mark.parametrize(
    ("scalars_as_tensors", "captured"),
    [(False, False), (True, False), (False, True)],
    ids=["numbers", "tensors", "captured"],
)
def test_optimizer_with_agc_and_warmup_matches_plain_reference(scalars_as_tensors, captured):
    """Also with the per-step scalars passed as tensors refilled at every step (what a
    compiled update does), and as a captured step (a CUDA graph's: ``advance`` counts
    and fills on the host, ``step`` only reads the tensors)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5) * 1e-4)]
    start = [p.detach().clone() for p in params]
    grads = [[torch.randn(3, 4) * 10, torch.randn(5)] for _ in range(6)]
    opt = DreamerV3Optimizer(
        params, lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8, agc=0.3, warmup_steps=4
    )
    opt.scalars_as_tensors = scalars_as_tensors
    opt.captured = captured
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = g.clone()
        if captured:
            opt.advance()
        opt.step()
    assert opt.param_groups[0]["step"] == len(grads)
    expected = reference_laprop(start, grads, 0.05, 0.9, 0.99, 1e-8, 0.3, 4)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-7)


def test_a_captured_optimizer_reads_each_groups_own_scalars():
    """Two parameter groups of different learning rates and warm-ups, captured: each
    follows its own reference; a captured step before ``advance`` is refused."""
    torch.manual_seed(0)
    first, second = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(2, 3))
    start = [first.detach().clone(), second.detach().clone()]
    grads = [[torch.randn(4), torch.randn(2, 3)] for _ in range(5)]
    opt = DreamerV3Optimizer(
        [{"params": [first], "lr": 0.02, "warmup_steps": 2}, {"params": [second]}],
        lr=0.1,
        beta2=0.99,
        eps=1e-8,
        warmup_steps=3,
    )
    opt.captured = True
    first.grad, second.grad = grads[0][0].clone(), grads[0][1].clone()
    with pytest.raises(RuntimeError, match=r"call advance\(\) first"):
        opt.step()
    for step in grads:
        first.grad, second.grad = step[0].clone(), step[1].clone()
        opt.advance()
        opt.step()
    for index, (lr, warmup) in enumerate([(0.02, 2), (0.1, 3)]):
        steps = [[step[index]] for step in grads]
        (expected,) = reference_laprop([start[index]], steps, lr, 0.9, 0.99, 1e-8, 0.3, warmup)
        got = (first, second)[index].detach().double()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_a_copied_optimizer_takes_the_same_step():
    """A deep copy (an agent copied, then compiled, as the compiled tests do) steps on
    its own parameters as the original does on its."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = DreamerV3Optimizer([w], lr=0.1, warmup_steps=2)
    opt.scalars_as_tensors = True
    (w**2).sum().backward()
    opt.step()
    twin = copy.deepcopy(opt)  # torch copies defaults, state and groups, not attributes
    twin.scalars_as_tensors = True  # as compile_agent sets it
    (twin_w,) = twin.param_groups[0]["params"]
    for param, optimizer in ((w, opt), (twin_w, twin)):
        param.grad = torch.tensor([0.5, 0.25, -1.0])
        optimizer.step()
    assert twin_w is not w
    assert torch.equal(twin_w.detach(), w.detach())
    assert not torch.equal(w.detach(), torch.tensor([1.0, -2.0, 3.0]))  # the steps moved it


# --------------------------------------------------------------------- replay
def test_replay_windows_are_consecutive_per_env_and_survive_wraparound():
    replay = SequenceReplay(num_envs=3, capacity=30, generator=torch.Generator().manual_seed(0))
    for t in range(25):  # each stream keeps 10 rows: steps 15..24 remain
        rows = TensorDict(step=torch.full((3,), t), env=torch.arange(3), batch_size=[3])
        replay.add(rows, torch.ones(3, dtype=torch.bool))
    windows = replay.sample(batch_size=2000, length=4)
    assert windows.batch_size == torch.Size([2000, 4])
    assert (windows["step"].diff(dim=1) == 1).all()
    assert (windows["env"] == windows["env"][:, :1]).all()
    assert windows["step"].min() == 15 and windows["step"].max() == 24
    # Uniform over the 7 starts x 3 envs.
    counts = torch.bincount(windows["step"][:, 0] - 15 + 7 * windows["env"][:, 0], minlength=21)
    assert counts.numel() == 21 and counts.min() > 2000 / 21 * 0.6


def test_replay_streams_fill_at_their_own_pace():
    replay = SequenceReplay(num_envs=2, capacity=40)
    rows = TensorDict(step=torch.arange(2), batch_size=[2])
    for _ in range(5):
        replay.add(rows, torch.tensor([True, False]))
    assert not replay.can_sample(6) and replay.can_sample(5)
    assert (replay.sample(50, 5)["step"] == 0).all()  # only env 0 holds a window
    with pytest.raises(RuntimeError, match="no stream holds 6 steps"):
        replay.sample(1, 6)


# ---------------------------------------------------------------- env streams
def test_env_streams_follow_the_official_per_step_layout():
    torch.manual_seed(0)
    env, spec = make_env("CartPole-v1", 3, seed=0)
    agent = DreamerAgent((4,), 2, discrete=True, config=Config(imagination_horizon=2))
    runner = EnvRunner(env, spec, agent)
    streams = [[] for _ in range(3)]
    finished = []
    for step in range(120):
        additions, episodes = runner.step(step * 3)
        finished += episodes
        for rows, mask in additions:
            for e in mask.nonzero().squeeze(-1).tolist():
                streams[e].append(rows[e])
    env.close()
    assert finished, "random CartPole episodes end well within 120 steps"
    lengths = []
    for stream in streams:
        assert stream[0]["is_first"]
        for before, row in zip(stream, stream[1:], strict=False):
            # An episode's last row is always followed by the next one's first.
            assert bool(row["is_first"]) == bool(before["is_last"])
        for row in stream:
            if row["is_first"]:
                assert row["reward"] == 0 and (row["prev_action"] == 0).all()
            else:
                assert row["reward"] == 1 and row["prev_action"].sum() == 1
            if row["is_last"]:
                # The true final observation, not the reset one: CartPole ends
                # when the cart or the pole leaves its bounds.
                x, _, angle, _ = row["observation"].tolist()
                assert row["is_terminal"] and (abs(x) > 2.4 or abs(angle) > 0.2095)
        starts = [i for i, row in enumerate(stream) if row["is_first"]]
        ends = [i for i, row in enumerate(stream) if row["is_last"]]
        lengths += [end - start for start, end in zip(starts, ends, strict=False)]
    # CartPole pays 1 per step: each score is its episode's number of transitions.
    assert sorted(lengths) == sorted(int(e.score) for e in finished)
    assert all(e.length == e.score for e in finished)


# ----------------------------------------------------------------------- CLI
def test_train_smoke_run_then_eval(tmp_path):
    logdir = tmp_path / "run"
    result = run_cli("train", "--steps", "128", *TINY, "--logdir", str(logdir), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "CartPole-v1 seed 0, preset small: 128 env steps" in result.stdout
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "learning_curve.png"):
        assert (logdir / name).exists(), name
    assert list((logdir / "tensorboard").iterdir())
    checkpoint = torch.load(logdir / "checkpoint.pt", weights_only=False)
    # Training starts after batch_size * batch_length = 64 steps; then 32 / 64
    # updates per env step: (128 - 64) / 2 + 2 at the first full batch.
    assert checkpoint["counters"]["updates"] == 34
    rows = read_csv(logdir / "metrics.csv")
    assert [int(r["env_step"]) for r in rows] == [128]
    assert math.isfinite(float(rows[-1]["loss"]))
    evaluation = run_cli("eval", str(logdir), "--episodes", "2")
    assert evaluation.returncode == 0, evaluation.stderr
    assert "score over 2 episodes:" in evaluation.stdout


def state_differences(a, b, path="checkpoint", seen=None):
    """The places where two runs' states differ, bit for bit: tensors by dtype, shape and
    bits, arrays likewise, numpy generators by their state, containers item by item, the
    pickled environment copies unpickled, and any other object attribute by attribute."""
    seen = set() if seen is None else seen
    if isinstance(a, bytes) and isinstance(b, bytes) and a[:1] == b"\x80":
        a, b = pickle.loads(a), pickle.loads(b)  # the environments' copies, pickled
    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} != {type(b).__name__}"]
    if isinstance(a, torch.Tensor):
        bits = [t.detach().contiguous().flatten().view(torch.uint8) for t in (a, b)]
        same = (a.dtype, a.shape) == (b.dtype, b.shape) and torch.equal(*bits)
        return [] if same else [f"{path}: {a.dtype}{list(a.shape)} tensors differ"]
    if isinstance(a, np.ndarray):
        same = (a.dtype, a.shape) == (b.dtype, b.shape) and a.tobytes() == b.tobytes()
        return [] if same else [f"{path}: arrays differ"]
    if isinstance(a, np.random.Generator):
        a, b = a.bit_generator.state, b.bit_generator.state
    if isinstance(a, TensorDictBase):
        a, b = dict(a.items()), dict(b.items())
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(map(str, set(a) ^ set(b)))} in one only"]
        nested = (state_differences(a[k], b[k], f"{path}.{k}", seen) for k in a)
        return [difference for found in nested for difference in found]
    if isinstance(a, list | tuple | deque):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        nested = (
            state_differences(x, y, f"{path}[{i}]", seen)
            for i, (x, y) in enumerate(zip(a, b, strict=True))
        )
        return [difference for found in nested for difference in found]
    if hasattr(a, "__dict__") and not isinstance(a, type):
        if (id(a), id(b)) in seen:
            return []
        seen.add((id(a), id(b)))
        fields = vars(a), vars(b)
        if isinstance(a, gym.spaces.Space):
            # Gymnasium seeds a space's generator from the OS's entropy when something
            # first samples from it (TorchRL's wrapping tries a random step); the run
            # never samples from a space: its draws come from the generators compared.
            fields = ({k: v for k, v in d.items() if k != "_np_random"} for d in fields)
        return state_differences(*fields, f"{path}<{type(a).__name__}>", seen)
    same = a == b or (a != a and b != b)  # NaN == NaN here
    return [] if same else [f"{path}: {a!r} != {b!r}"]


STEPS = 400  # killed past the checkpoint at 160: the rest of the run leaves time for it


def test_resume_after_kill_9_ends_as_the_uninterrupted_run(tmp_path, processes):
    """A run killed (SIGKILL) after its second checkpoint and some updates past it, then
    resumed, loses and repeats no step, and ends with the very state of a run of the same
    seed that was never stopped: networks, optimiser (moments, step counts), return
    normalisation, replay (every column of every stream, cursors), the generators (torch,
    numpy, Python, the replay's sampler, each environment's) and where each environment is,
    bit for bit (float32 on CPU, one thread each)."""
    logdir, whole = tmp_path / "run", tmp_path / "whole"
    # Train ratio 8: a fraction of an update per env step (carried over the kill) and a
    # quarter of the default ratio's updates to wait for.
    args = [
        *("--steps", f"{STEPS}", *TINY, "--checkpoint-every", "80", "--log-every", "40"),
        *("--precision", "float32", "--threads", "1", "--env-workers", "0", "--eval-every", "0"),
        *("--train-ratio", "8"),
    ]
    command = [sys.executable, "-m", "torchdreamer.cli", "train", *args, "--no-progress"]
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process = processes.start([*command, "--logdir", str(logdir)], **quiet)
    uninterrupted = processes.start([*command, "--logdir", str(whole)], stderr=subprocess.PIPE)
    checkpoint_path = logdir / "checkpoint.pt"
    killed_at = None

    def updated_past_the_second_checkpoint() -> bool:
        nonlocal killed_at
        if process.poll() is not None:
            return True
        if checkpoint_path.exists() and (logdir / "metrics.csv").exists():
            counters = torch.load(checkpoint_path, weights_only=False)["counters"]
            logged = read_csv(logdir / "metrics.csv")
            if counters["env_step"] >= 160 and int(logged[-1]["updates"]) > counters["updates"]:
                process.send_signal(signal.SIGKILL)
                killed_at = counters["env_step"]
                return True
        return False

    # Fails only when the run stops making progress (CPU time, files growing), however slow.
    wait_for(
        updated_past_the_second_checkpoint,
        lambda: (cpu_ticks(groups=[process.pid]), tree_size([logdir])),
        "the first training run",
    )
    process.wait()
    assert killed_at is not None, "the run ended or stalled before its second checkpoint"
    assert process.returncode == -signal.SIGKILL
    before = torch.load(checkpoint_path, weights_only=False)["counters"]
    assert before["env_step"] < STEPS

    result = run_cli("train", "--resume", str(logdir), "--no-progress")
    assert result.returncode == 0, result.stderr
    resumed = torch.load(checkpoint_path, weights_only=False)
    after = resumed["counters"]
    assert after["env_step"] == STEPS
    assert after["updates"] > before["updates"]
    steps = [int(r["env_step"]) for r in read_csv(logdir / "metrics.csv")]
    assert steps == list(range(40, STEPS + 1, 40)), "every interval logged exactly once"
    updates = [int(r["updates"]) for r in read_csv(logdir / "metrics.csv")]
    assert updates == sorted(updates)
    episode_steps = [int(r["env_step"]) for r in read_csv(logdir / "episodes.csv")]
    assert episode_steps == sorted(episode_steps) and episode_steps[-1] <= STEPS

    wait_for(
        lambda: uninterrupted.poll() is not None,
        lambda: (cpu_ticks(groups=[uninterrupted.pid]), tree_size([whole])),
        "the uninterrupted run",
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr.read().decode()
    expected = torch.load(whole / "checkpoint.pt", weights_only=False)
    # What the comparison covers is there: networks with the return percentiles, the
    # optimiser's moments and step counts, the replay's rows, the environments' copies.
    assert {"retnorm.low", "retnorm.high"} <= set(expected["agent"])
    assert {"momentum", "rms"} <= set(expected["optimizer"]["state"][0])
    assert expected["optimizer"]["param_groups"][0]["step"] == expected["counters"]["updates"]
    (part,) = expected["ranks"]
    assert part["replay"]["rows"] and part["acting"]["copies"] is not None
    for counters in (expected["counters"], resumed["counters"]):
        counters.pop("wall_time")
    differences = state_differences(expected, resumed)
    assert not differences, f"{len(differences)} differences: {differences[:10]}"


def test_bad_input_is_named_and_the_process_exits_2(tmp_path):
    # The command's own process; tests/test_cli.py runs every bad input in-process.
    result = run_cli(
        "train", "--env", "NoSuchEnv-v0", "--logdir", str(tmp_path / "run"), "--no-progress"
    )
    assert result.returncode == 2
    assert "unknown environment id 'NoSuchEnv-v0'" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "expected"), [({"avx512_bf16"}, "bfloat16"), ((), "float32")])
def test_auto_precision_is_resolved_once_and_kept_in_config_json(
    tmp_path, monkeypatch, flags, expected
):
    """``--precision auto`` is resolved before the first write: ``config.json`` and the
    summary name the dtype the run computed in (which ``--resume`` keeps unless given)."""
    monkeypatch.setattr(config_module, "cpu_flags", lambda: frozenset(flags))
    config = Config(**TINY_RUN, steps=48, precision="auto")
    logdir = tmp_path / "run"
    summary = train(config, logdir, progress=False)
    assert Config.load(logdir / "config.json").precision == expected
    assert f", {expected} (auto: the CPU " in summary.update
    monkeypatch.setattr(config_module, "cpu_flags", lambda: frozenset({"avx512_bf16"}) - flags)
    resumed = train(dataclasses.replace(config, steps=64, precision=expected), logdir, True, False)
    assert resumed.env_step == 64 and f", {expected} (--precision {expected})" in resumed.update
