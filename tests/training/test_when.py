"""Schedules: Ratio and Every against plain restatements of the official rules, and
DreamerV3UpdateRatio against TorchRL's own class on the same call sequences."""

from __future__ import annotations

import inspect
import random

import pytest

from torchdreamer.training.when import DreamerV3UpdateRatio, Every, Ratio


def official_ratio_counts(ratio, steps):
    """The official rule written out: updates owed since the last call, remainder kept."""
    counts, previous = [], None
    for step in steps:
        if ratio == 0:
            counts.append(0)
        elif ratio < 0:
            counts.append(1)
        elif previous is None:
            previous = step
            counts.append(1)
        else:
            repeats = int((step - previous) * ratio)
            previous += repeats / ratio
            counts.append(repeats)
    return counts


def cumulative_steps(seed, n=300):
    rng = random.Random(seed)
    step, steps = rng.randrange(0, 50), []
    for _ in range(n):
        step += rng.choice([0, 1, 3, 4, 16, 17])
        steps.append(step)
    return steps


@pytest.mark.parametrize("ratio", [0.5, 0.25, 1 / 3, 32 / 1024, 2.5, 0.0, -1.0])
def test_ratio_follows_the_official_rule(ratio):
    steps = cumulative_steps(0)
    schedule = Ratio(ratio)
    assert [schedule(s) for s in steps] == official_ratio_counts(ratio, steps)


def test_ratio_totals_match_the_ratio_over_a_run():
    schedule = Ratio(32 / 64)
    total = sum(schedule(step) for step in range(64, 10_065, 16))
    # 1 at the first call, then half an update per step for the 10,000 steps after it.
    assert total == 1 + 10_000 // 2


def test_ratio_state_round_trips_mid_remainder():
    steps = cumulative_steps(1)
    whole = Ratio(1 / 3)
    expected = [whole(s) for s in steps]
    first = Ratio(1 / 3)
    got = [first(s) for s in steps[:137]]
    second = Ratio(99.0)  # overwritten by the state
    second.load_state_dict(first.state_dict())
    got += [second(s) for s in steps[137:]]
    assert got == expected


def test_every_follows_the_official_rule():
    def official(every, initial, steps):
        out, previous = [], None
        for step in steps:
            if every < 0:
                out.append(True)
            elif every == 0:
                out.append(False)
            elif previous is None:
                previous = step // every * every
                out.append(initial)
            elif step >= previous + every:
                previous += every
                out.append(True)
            else:
                out.append(False)
        return out

    steps = cumulative_steps(2)
    for every in (1, 7, 40, 100, 0, -1):
        for initial in (True, False):
            trigger = Every(every, initial)
            assert [trigger(s) for s in steps] == official(every, initial, steps), every


def test_every_state_round_trips():
    steps = list(range(0, 500, 12))
    whole = Every(40, initial=False)
    expected = [whole(s) for s in steps]
    first = Every(40, initial=False)
    got = [first(s) for s in steps[:20]]
    second = Every(1)
    second.load_state_dict(first.state_dict())
    got += [second(s) for s in steps[20:]]
    assert got == expected


torchrl_algorithms = pytest.importorskip("torchrl.trainers.algorithms")


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1 / 3, 32 / 1024, 3.0, 0.0, -2.0])
def test_dreamer_v3_update_ratio_matches_torchrl(ratio):
    theirs = torchrl_algorithms.DreamerV3UpdateRatio(ratio)
    ours = DreamerV3UpdateRatio(ratio)
    steps = cumulative_steps(3)
    for i, step in enumerate(steps):
        assert ours(step) == theirs(step), (i, step)
        if i == 100:
            theirs.reset(step + 5)
            ours.reset(step + 5)
        if i == 200:  # a save and restore halfway through a remainder
            saved_theirs, saved_ours = theirs.state_dict(), ours.state_dict()
            assert saved_ours == saved_theirs
            theirs = torchrl_algorithms.DreamerV3UpdateRatio(7.0)
            ours = DreamerV3UpdateRatio(7.0)
            theirs.load_state_dict(saved_theirs)
            ours.load_state_dict(saved_ours)
    assert ours.state_dict() == theirs.state_dict()


def test_dreamer_v3_update_ratio_has_torchrl_signatures():
    theirs = torchrl_algorithms.DreamerV3UpdateRatio
    for name in ("__init__", "__call__", "reset", "state_dict", "load_state_dict"):
        ours_parameters = list(inspect.signature(getattr(DreamerV3UpdateRatio, name)).parameters)
        theirs_parameters = list(inspect.signature(getattr(theirs, name)).parameters)
        assert ours_parameters == theirs_parameters, name
