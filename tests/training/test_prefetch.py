"""The prefetcher: the replay's batches, in order and bit for bit, with the draws of
direct sampling; sampled ahead in a worker thread; early closes put back the draws."""

from __future__ import annotations

import threading

import pytest
import torch
from tensordict import TensorDict

from torchdreamer.training import SequenceReplay
from torchdreamer.training.prefetch import Prefetcher


def filled_replay(seed=0):
    """Three streams filled at different paces, with a step counter and a float entry."""
    replay = SequenceReplay(3, 300, torch.Generator().manual_seed(seed))
    data = torch.Generator().manual_seed(seed + 1)  # the rows: the same in every replay
    for t in range(40):
        rows = TensorDict(
            step=torch.full((3,), t),
            observation=torch.randn(3, 5, generator=data),
            is_first=torch.tensor([t % 7 == 0] * 3),
            batch_size=[3],
        )
        replay.add(rows, torch.tensor([True, t % 2 == 0, t % 3 == 0]))
    return replay


def direct(replay, count, batch_size=4, length=6):
    return [replay.sample(batch_size, length) for _ in range(count)]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.batch_size == b.batch_size
        for key, value in b.items(include_nested=True, leaves_only=True):
            assert torch.equal(a[key], value), key


@pytest.mark.parametrize("background", [False, True], ids=["on-demand", "background"])
@pytest.mark.parametrize("count", [0, 1, 5])
def test_batches_and_draws_are_direct_samplings(background, count):
    replay, twin = filled_replay(), filled_replay()
    with Prefetcher(replay, 4, 6, count, "cpu", background=background) as batches:
        got = list(batches)
    assert_same_batches(got, direct(twin, count))
    # The generator is where the direct samplings left it: the next draws agree.
    assert torch.equal(replay.generator.get_state(), twin.generator.get_state())


@pytest.mark.parametrize("handed", [0, 2, 4])
def test_an_early_close_puts_back_the_draws_of_the_batch_sampled_ahead(handed):
    replay, twin = filled_replay(), filled_replay()
    batches = Prefetcher(replay, 4, 6, 5, "cpu", background=True)
    got = [next(batches) for _ in range(handed)]
    batches.close()
    assert_same_batches(got, direct(twin, handed))
    assert torch.equal(replay.generator.get_state(), twin.generator.get_state())
    assert list(batches) == []  # closed: nothing more


def test_the_next_batch_is_sampled_in_the_worker_while_the_caller_holds_this_one():
    replay = filled_replay()
    sample, threads, second = replay.sample, [], threading.Event()

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        if len(threads) == 2:
            second.set()
        return sample(*args, **kwargs)

    replay.sample = recording
    with Prefetcher(replay, 4, 6, 3, "cpu", background=True) as batches:
        next(batches)
        # Not asked for yet, batch 1 is drawn meanwhile.
        assert second.wait(timeout=30)
    assert len(threads) == 2
    assert all(name.startswith("torchdreamer-prefetch") for name in threads)


def test_a_failed_draw_is_raised_where_the_batch_is_asked_for():
    replay = filled_replay()
    with Prefetcher(replay, 4, 100, 2, "cpu", background=True) as batches:
        with pytest.raises(RuntimeError, match="no stream holds 100 steps"):
            next(batches)


def test_a_background_prefetcher_needs_the_replays_own_generator():
    replay = SequenceReplay(2, 40)
    with pytest.raises(ValueError, match="its own generator"):
        Prefetcher(replay, 1, 2, 1, "cpu", background=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_batches_arrive_on_the_device_equal_to_direct_samplings():
    replay, twin = filled_replay(), filled_replay()
    device = torch.device("cuda")
    with Prefetcher(replay, 4, 6, 5, device) as batches:  # background: the CUDA default
        assert batches.background
        got = [batch.cpu() for batch in batches if batch.device.type == "cuda"]
    assert_same_batches(got, direct(twin, 5))
