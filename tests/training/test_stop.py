"""Stopping a run while it compiles: the first Ctrl-C says at once that the run stops
after the update in progress, a second one abandons the update and the run ends as if
the update had never started (networks, optimiser, every generator); the exit does not
wait for the compiler. In process, the second Ctrl-C is sent from inside an update
(hooks at several points of it); in a subprocess, during a real compile."""

from __future__ import annotations

import copy
import logging
import os
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from processes import cpu_ticks, wait_for
from tensordict import TensorDict

from torchdreamer.training import Config, DreamerAgent, SequenceReplay
from torchdreamer.training.checkpoint import load_checkpoint
from torchdreamer.training.stop import CompileGuard, Stop, UpdateInterrupted


# ------------------------------------------------------------------ in process
def _parts():
    """A tiny agent, after one update, and a replay holding 12 steps of 2 envs."""
    config = Config(batch_size=2, batch_length=8, imagination_horizon=3, warmup=0, threads=1)
    torch.manual_seed(0)
    agent = DreamerAgent((4,), 2, discrete=True, config=config)
    data = torch.Generator().manual_seed(1)
    replay = SequenceReplay(2, 64, torch.Generator().manual_seed(2))
    for step in range(12):
        rows = TensorDict(
            observation=torch.randn(2, 4, generator=data),
            prev_action=torch.eye(2)[torch.randint(0, 2, (2,), generator=data)],
            reward=torch.randn(2, generator=data),
            is_first=torch.full((2,), step == 0),
            is_last=torch.zeros(2, dtype=torch.bool),
            is_terminal=torch.zeros(2, dtype=torch.bool),
            batch_size=[2],
        )
        replay.add(rows, torch.ones(2, dtype=torch.bool))
    _seed_everything(3)
    _update(agent, replay)  # the optimiser has state to keep
    return agent, replay


def _update(agent, replay):
    return agent.update(replay.sample(2, 8))


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _run_state(agent, replay):
    """Plain copies of what a checkpoint keeps of the run."""
    return {
        "networks": {k: v.clone() for k, v in agent.state_dict().items()},
        "optimizer": copy.deepcopy(agent.optimizer.state_dict()),
        "replay generator": replay.generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _ctrl_c_twice():
    os.kill(os.getpid(), signal.SIGINT)  # the stop request
    os.kill(os.getpid(), signal.SIGINT)  # stop now


def _inside_world_model(agent, monkeypatch):
    return agent.world_model.encoder.register_forward_hook(lambda *args: _ctrl_c_twice())


def _inside_critic(agent, monkeypatch):
    return agent.critic.register_forward_hook(lambda *args: _ctrl_c_twice())


def _after_optimiser_step(agent, monkeypatch):
    # Parameters, moments and the step count changed in place; the slow critic not yet.
    step = agent.optimizer.step

    def interrupted(*args, **kwargs):
        step(*args, **kwargs)
        _ctrl_c_twice()

    monkeypatch.setattr(agent.optimizer, "step", interrupted)


def _after_slow_critic(agent, monkeypatch):
    step = agent.update_slow_critic

    def interrupted():
        step()
        _ctrl_c_twice()

    monkeypatch.setattr(agent, "update_slow_critic", interrupted)


@pytest.mark.parametrize(
    "interrupt",
    [_inside_world_model, _inside_critic, _after_optimiser_step, _after_slow_critic],
    ids=["world-model", "critic", "after-optimiser-step", "after-slow-critic"],
)
def test_an_interrupted_update_leaves_the_run_as_if_it_never_started(interrupt, monkeypatch):
    agent, replay = _parts()
    twin, twin_replay = _parts()  # the same run, never interrupted
    _seed_everything(7)
    before = _run_state(agent, replay)
    hook = interrupt(agent, monkeypatch)
    with Stop(tell=False) as stop:
        guard = CompileGuard(stop, agent, replay.generator, compiled=True)
        with pytest.raises(UpdateInterrupted):
            with guard.updating():
                _update(agent, replay)
    if hook is not None:
        hook.remove()
    monkeypatch.undo()
    assert stop.signal == signal.SIGINT
    _assert_same(before, _run_state(agent, replay))
    # The next update is the one the uninterrupted run makes.
    _update(agent, replay)
    _seed_everything(7)
    _update(twin, twin_replay)
    _assert_same(_run_state(twin, twin_replay), _run_state(agent, replay))


def test_an_update_failing_after_a_stop_request_is_abandoned_and_one_failing_alone_raises(
    capfd,
):
    agent, replay = _parts()
    before = _run_state(agent, replay)

    def compiler_killed(*args):  # Ctrl-C in a terminal reaches the C++ compiler too
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("C++ compile error")

    hook = agent.critic.register_forward_hook(compiler_killed)
    with Stop() as stop:
        guard = CompileGuard(stop, agent, replay.generator, compiled=True)
        with pytest.raises(UpdateInterrupted) as raised:
            with guard.updating():
                _update(agent, replay)
    assert isinstance(raised.value.__cause__, RuntimeError)
    _assert_same(before, _run_state(agent, replay))
    err = capfd.readouterr().err.splitlines()
    assert err[0].startswith("torchdreamer: SIGINT: the run stops after the update in progress")
    assert err[1] == (
        "torchdreamer: the update failed after SIGINT (RuntimeError); it is abandoned, nothing lost"
    )
    hook.remove()

    def failing(*args):
        raise RuntimeError("a bug")

    hook = agent.critic.register_forward_hook(failing)
    with Stop() as stop:
        guard = CompileGuard(stop, agent, replay.generator, compiled=True)
        with pytest.raises(RuntimeError, match="a bug"):
            with guard.updating():
                _update(agent, replay)
    hook.remove()
    _assert_same(before, _run_state(agent, replay))  # the final checkpoint is whole


class _Linear(torch.nn.Module):
    """The least an agent needs for the guard: parameters and an optimiser."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.1)


def test_updates_are_guarded_until_one_compiles_nothing_and_eager_ones_never(capfd):
    model = _Linear()
    x = torch.randn(4, 3)

    @torch.compile(backend="eager")  # a function of this test's own: dynamo has no graph yet
    def loss(x):
        return model.layer(x).sin().sum()

    notes = []
    with Stop() as stop:
        guard = CompileGuard(stop, model, torch.Generator(), compiled=True, note=notes.append)
        for _ in range(2):  # the first compiles, the second does not
            with guard.updating():
                loss(x).backward()
        assert not guard.updates_compile and len(notes) == 1
        assert notes[0].startswith("torchdreamer: compiling the update")
        with guard.updating():  # no longer guarded: a stop request waits for the update
            _ctrl_c_twice()
        eager = CompileGuard(stop, model, torch.Generator(), compiled=False)
        with eager.updating():
            _ctrl_c_twice()
    assert stop.signal == signal.SIGINT and len(notes) == 1
    assert capfd.readouterr().err == ""  # outside guarded updates a signal says nothing


def test_under_torchrun_a_second_ctrl_c_lets_the_update_finish(capfd):
    model = _Linear()
    before = model.layer.weight.detach().clone()
    with Stop() as stop:
        guard = CompileGuard(stop, model, torch.Generator(), compiled=True, collective=True)
        with guard.updating():
            _ctrl_c_twice()
            model.layer.weight.data.add_(1.0)  # the update goes on to its end
    assert torch.equal(model.layer.weight.detach(), before + 1.0)
    assert capfd.readouterr().err.strip() == (
        "torchdreamer: SIGINT: the run stops after the update in progress (it may be "
        "compiling: minutes in an empty inductor cache; under torchrun every rank finishes it)"
    )


def test_sigterm_waits_for_the_update_and_says_how_to_stop_now(capfd):
    model = _Linear()
    with Stop() as stop:
        guard = CompileGuard(stop, model, torch.Generator(), compiled=True)
        with guard.updating():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's repeated TERM: no abort
    assert stop.signal == signal.SIGTERM
    assert capfd.readouterr().err.strip() == (
        "torchdreamer: SIGTERM: the run stops after the update in progress (it may be "
        "compiling: minutes in an empty inductor cache); Ctrl-C (SIGINT) stops it now, "
        "nothing lost"
    )


def test_an_env_step_that_compiles_the_policy_says_the_run_stops_after_it(capfd):
    model = _Linear()
    x = torch.randn(4, 3)

    @torch.compile(backend="eager")  # a function of this test's own: dynamo has no graph yet
    def act(x):
        return model.layer(x).tanh()

    with Stop() as stop:
        guard = CompileGuard(stop, model, torch.Generator(), compiled=True)
        with torch.no_grad(), guard.acting():
            _ctrl_c_twice()  # an env step is never abandoned
            act(x)
    assert stop.signal == signal.SIGINT and guard.steps_compile
    assert capfd.readouterr().err.strip() == (
        "torchdreamer: SIGINT: the run stops after this env step (the policy may be "
        "compiling: up to a minute in an empty inductor cache)"
    )


def test_an_env_step_failing_after_a_stop_request_is_abandoned(capfd):
    model = _Linear()
    state = SimpleNamespace(env_step=32)
    _seed_everything(5)
    before = (torch.get_rng_state(), np.random.get_state(), random.getstate())

    def step():  # the loop counts the step first, then acts: the compile fails
        state.env_step += 2
        torch.rand(3), np.random.rand(), random.random()
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("C++ compile error")

    with Stop() as stop:
        guard = CompileGuard(stop, model, torch.Generator(), compiled=True)
        with pytest.raises(UpdateInterrupted):
            with guard.acting(state):
                step()
    assert state.env_step == 32
    _assert_same(before, (torch.get_rng_state(), np.random.get_state(), random.getstate()))
    assert capfd.readouterr().err.splitlines()[1:] == [
        "torchdreamer: the env step failed after SIGINT (RuntimeError); it is abandoned, "
        "nothing lost"
    ]
    with Stop() as stop:  # without a stop request an error is an error
        guard = CompileGuard(stop, model, torch.Generator(), compiled=True)
        with pytest.raises(RuntimeError, match="a bug"):
            with guard.acting(state):
                raise RuntimeError("a bug")


def test_after_the_first_signal_an_update_logs_no_warnings(caplog):
    model = _Linear()
    log = logging.getLogger("test_stop.compiler")
    with Stop(tell=False) as stop:
        guard = CompileGuard(stop, model, torch.Generator(), compiled=True)
        with guard.updating():
            log.warning("before the signal")
            os.kill(os.getpid(), signal.SIGTERM)
            log.warning("failed to compile: a killed compiler's traceback")
        log.warning("after the update")
    assert [r.getMessage() for r in caplog.records] == ["before the signal", "after the update"]


class _SecondCtrlC(torch.autograd.Function):
    """The identity whose backward gets a second Ctrl-C, as a compiling update's can."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        os.kill(os.getpid(), signal.SIGINT)
        return grad


def test_after_the_first_signal_a_region_warns_nothing_not_even_autograd_anomaly_mode():
    # AOT autograd traces the backward under anomaly mode; a second Ctrl-C raised there
    # made autograd warn its "Error detected in ... Traceback of forward call" (seen in
    # the compiling-update test below).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Stop(tell=False) as stop:
            with pytest.raises(UpdateInterrupted):
                with stop.during("{signal}: {again} stops now", interruptible=True):
                    warnings.warn("before the signal", stacklevel=1)
                    os.kill(os.getpid(), signal.SIGINT)
                    warnings.warn("after the first signal", stacklevel=1)
                    x = torch.ones(2, requires_grad=True)
                    with torch.autograd.detect_anomaly(check_nan=False):
                        _SecondCtrlC.apply(x).sum().backward()
            warnings.warn("after the region", stacklevel=1)
            with stop.during("{signal}: {again} stops now", interruptible=True):
                warnings.warn("in the next region", stacklevel=1)
    said = [str(w.message) for w in caught]
    assert said == ["before the signal", "after the region", "in the next region"], said


# ------------------------------------------------------------------ subprocess
COMPILING = "torchdreamer: compiling the update"
STOP_LINE = "torchdreamer: SIGINT: the run stops after the update in progress"


def _group_left(group):
    """Live processes of process ``group`` (the compile workers among them)."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = (Path("/proc") / entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            left.append(int(entry))
    return left


def test_ctrl_c_during_the_compiling_update_says_so_and_a_second_one_stops_now(processes, tmp_path):
    logdir, output = tmp_path / "run", tmp_path / "output"
    # Train ratio 16 = one update per env step: the first loop to hold a batch (2 x 8
    # steps, after the context step: 9 per stream) owes 2 updates, and the first of
    # them compiles.
    tiny = ["--num-envs", "2", "--batch-size", "2", "--batch-length", "8"]
    tiny += ["--train-ratio", "16", "--imagination-horizon", "3", "--threads", "1"]
    args = [sys.executable, "-m", "torchdreamer", "train", "--logdir", str(logdir)]
    args += ["--steps", "64", "--eval-every", "0", "--compile", "on", *tiny]
    with output.open("w") as stream:
        run = processes.start(args, stdout=stream, stderr=subprocess.STDOUT)

    def text():
        return output.read_text()

    def waiting(what, done):
        wait_for(
            lambda: done() or run.poll() is not None,
            lambda: (cpu_ticks(groups=[run.pid]), output.stat().st_size),
            what,
        )
        assert done(), f"the run ended (rc {run.returncode}) before {what}:\n{text()}"

    waiting("the compiling update", lambda: COMPILING in text())
    run.send_signal(signal.SIGINT)
    waiting("the stop line", lambda: STOP_LINE in text())
    # Still in the first update: its progress line ("train ...") comes after it.
    assert run.poll() is None and "\ntrain " not in text(), text()
    run.send_signal(signal.SIGINT)
    waiting("the exit", lambda: run.poll() is not None)
    out = text()
    assert run.returncode == 130, out
    assert "Traceback" not in out
    assert "stopped at step 18 by SIGINT; checkpoint saved" in out
    wait_for(lambda: not _group_left(run.pid), lambda: None, "the compile workers' exit", 30)
    checkpoint = load_checkpoint(logdir)
    assert checkpoint["counters"]["env_step"] == 18 and checkpoint["counters"]["updates"] == 0
    # No optimiser step was made: the optimiser is as new.
    assert checkpoint["optimizer"]["state"] == {}
    assert all(group["step"] == 0 for group in checkpoint["optimizer"]["param_groups"])
    resumed = processes.run(
        [sys.executable, "-m", "torchdreamer", "train", "--resume", str(logdir)]
        + ["--steps", "24", "--compile", "off", "--no-progress"],
        tmp_path / "resumed",
    )
    assert resumed.returncode == 0, resumed.stderr
    counters = load_checkpoint(logdir)["counters"]
    # The 2 updates owed at step 18, then one per env step to 24.
    assert counters["env_step"] == 24 and counters["updates"] == 2 + 6, counters
