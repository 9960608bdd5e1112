"""SequenceReplay: growing storage, the ring, exact checkpoints, memory-mapped files, sampling."""

from __future__ import annotations

import io
import json
import math
import warnings

import pytest
import torch
from tensordict import TensorDict

from torchdreamer.training import SequenceReplay
from torchdreamer.training.checkpoint import load_checkpoint, save_checkpoint
from torchdreamer.training.replay import METADATA

ENVS = 3


def rows_at(t: int, envs: int = ENVS) -> TensorDict:
    """One step of every stream, its values telling which (step, env) it is."""
    env = torch.arange(envs)
    return TensorDict(
        step=torch.full((envs,), t),
        env=env,
        image=(t * 7 + env).view(envs, 1, 1, 1).expand(envs, 4, 4, 3).to(torch.uint8),
        reward=t + env / 10.0,
        is_first=torch.full((envs,), t % 5 == 0),
        nested=TensorDict(value=torch.full((envs, 2), float(t)), batch_size=[envs]),
        batch_size=[envs],
    )


def mask_at(t: int) -> torch.Tensor:
    """Streams that add at their own pace: env 1 skips every third step, env 2 adds once more."""
    return torch.tensor([True, t % 3 != 0, True])


def fill(replay: SequenceReplay, steps: range, masks=mask_at) -> None:
    for t in steps:
        replay.add(rows_at(t), masks(t))


def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def leaves(replay: SequenceReplay) -> list[torch.Tensor]:
    return list(replay.storage.values(include_nested=True, leaves_only=True))


def assert_same_samples(a: SequenceReplay, b: SequenceReplay, draws: int = 5) -> None:
    for _ in range(draws):
        x, y = a.sample(8, 4), b.sample(8, 4)
        assert (x == y).all(), "the replays drew different windows"


# ------------------------------------------------------------------- growth
def test_storage_grows_with_the_data_and_stops_at_capacity():
    per_env = 300
    replay = SequenceReplay(ENVS, ENVS * per_env)
    assert replay.allocated == 0 and replay.storage is None
    sizes = []
    for t in range(2 * per_env):
        replay.add(rows_at(t), torch.ones(ENVS, dtype=torch.bool))
        sizes.append(replay.allocated)
        filled = min(t + 1, per_env)
        assert filled <= replay.allocated <= max(replay.first_allocation, 2 * filled)
    # Doubling from the first allocation, capped at the per-stream capacity.
    assert sorted(set(sizes)) == [64, 128, 256, 300]
    image = replay.storage["image"]
    assert image.shape == (ENVS, per_env, 4, 4, 3)
    pointers = [leaf.data_ptr() for leaf in leaves(replay)]
    fill(replay, range(2 * per_env, 3 * per_env))
    assert [leaf.data_ptr() for leaf in leaves(replay)] == pointers  # never reallocated


def test_growth_keeps_every_row():
    replay = SequenceReplay(ENVS, ENVS * 1000)
    fill(replay, range(200))  # three doublings, streams of different lengths
    for e in range(ENVS):
        kept = int(replay.written[e])
        steps = replay.storage["step"][e, :kept]
        expected = torch.tensor([t for t in range(200) if mask_at(t)[e]])
        assert torch.equal(steps, expected)
        assert torch.equal(replay.storage["image"][e, :kept, 0, 0, 0], (expected * 7 + e) % 256)


# --------------------------------------------------------------------- ring
def test_ring_keeps_each_streams_newest_rows():
    replay = SequenceReplay(ENVS, ENVS * 10, generator=torch.Generator().manual_seed(0))
    fill(replay, range(40))
    assert replay.allocated == 10 and len(replay) == 30
    windows = replay.sample(500, 10)  # the whole ring of a stream, in order
    assert (windows["step"].diff(dim=1) > 0).all()
    for e in range(ENVS):
        newest = [t for t in range(40) if mask_at(t)[e]][-10:]
        mine = windows["step"][windows["env"][:, 0] == e]
        assert len(mine) and (mine == torch.tensor(newest)).all()


# ------------------------------------------------------------- round trips
@pytest.mark.parametrize("steps", [5, 70, 200, 1000])  # first buffer, grown, grown, wrapped
def test_round_trip_samples_what_the_replay_would_have(steps):
    original = SequenceReplay(ENVS, ENVS * 400, torch.Generator().manual_seed(1))
    fill(original, range(steps))
    original.sample(4, 4)  # the generator has moved on
    state = round_trip(original.state_dict())
    resumed = SequenceReplay(ENVS, ENVS * 400, torch.Generator())
    resumed.load_state_dict(state)
    resumed.generator.set_state(original.generator.get_state())
    assert len(resumed) == len(original)
    assert torch.equal(resumed.written, original.written)
    assert_same_samples(original, resumed)
    fill(original, range(steps, steps + 300))  # and both go on alike
    fill(resumed, range(steps, steps + 300))
    assert_same_samples(original, resumed)


def test_checkpoint_holds_the_filled_rows_only():
    replay = SequenceReplay(2, 2 * 100_000)
    image = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    for _ in range(100):
        replay.add(TensorDict(image=image, batch_size=[2]), torch.ones(2, dtype=torch.bool))
    assert replay.allocated == 128
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)
    data = 2 * 100 * image[0].numel()
    assert data <= len(buffer.getvalue()) < data + 64 * 1024


def test_an_empty_replay_round_trips():
    replay = SequenceReplay(ENVS, 60)
    resumed = SequenceReplay(ENVS, 60)
    resumed.load_state_dict(round_trip(replay.state_dict()))
    assert len(resumed) == 0 and resumed.storage is None
    fill(resumed, range(5))
    assert len(resumed) == 5 + 3 + 5  # env 1 skips step 0 and 3


def old_layout_state(per_env: int, steps: range) -> dict:
    """A replay checkpointed by the full-storage layout: slot ``step % per_env`` of each stream."""
    storage = rows_at(0).unsqueeze(1).expand(ENVS, per_env).clone().zero_()
    written = torch.zeros(ENVS, dtype=torch.long)
    for t in steps:
        for e in mask_at(t).nonzero().squeeze(-1).tolist():
            storage[e, int(written[e]) % per_env] = rows_at(t)[e]
            written[e] += 1
    return {"storage": storage, "written": written}


@pytest.mark.parametrize("steps", [30, 100])  # not wrapped, wrapped
def test_old_full_storage_checkpoints_still_load(steps):
    fresh = SequenceReplay(ENVS, ENVS * 50, torch.Generator().manual_seed(3))
    fill(fresh, range(steps))
    resumed = SequenceReplay(ENVS, ENVS * 50, torch.Generator().manual_seed(3))
    resumed.load_state_dict(round_trip(old_layout_state(50, range(steps))))
    assert resumed.allocated <= max(fresh.allocated, 64)
    assert_same_samples(fresh, resumed)


def test_old_checkpoint_of_another_capacity_is_refused():
    replay = SequenceReplay(ENVS, ENVS * 40)
    with pytest.raises(ValueError, match=r"storage is \[3, 50\].*\[3, 40\].*replay_capacity"):
        replay.load_state_dict(old_layout_state(50, range(10)))
    state = SequenceReplay(ENVS, ENVS * 50).state_dict()
    with pytest.raises(ValueError, match="3 streams of 50 rows, this one 3 of 40"):
        replay.load_state_dict(state)


# ----------------------------------------------------------- memory-mapped
def test_memmap_replay_writes_files_and_a_checkpoint_refers_to_them(tmp_path):
    directory = tmp_path / "replay"
    replay = SequenceReplay(ENVS, ENVS * 100, torch.Generator().manual_seed(2), directory=directory)
    memory = SequenceReplay(ENVS, ENVS * 100, torch.Generator().manual_seed(2))
    for r in (replay, memory):
        fill(r, range(250))  # wrapped
    assert_same_samples(replay, memory)
    files = json.loads((directory / METADATA).read_text())["entries"]
    assert sorted(tuple(f["key"]) for f in files) == sorted(
        k if isinstance(k, tuple) else (k,) for k in rows_at(0).keys(True, True)
    )
    image = next(f for f in files if f["key"] == ["image"])
    assert (directory / image["file"]).stat().st_size == ENVS * 100 * 4 * 4 * 3

    logdir = tmp_path / "run"
    logdir.mkdir()
    save_checkpoint(
        logdir, {"replay": replay.state_dict(), "generator": replay.generator.get_state()}
    )
    assert (logdir / "checkpoint.pt").stat().st_size < 16 * 1024  # cursors, not rows
    del replay
    checkpoint = load_checkpoint(logdir)
    assert "rows" not in checkpoint["replay"]
    resumed = SequenceReplay(ENVS, ENVS * 100, torch.Generator())
    resumed.load_state_dict(checkpoint["replay"])
    resumed.generator.set_state(checkpoint["generator"])
    assert resumed.directory == directory
    assert_same_samples(memory, resumed)
    fill(memory, range(250, 300))
    fill(resumed, range(250, 300))
    assert_same_samples(memory, resumed)


def test_memmap_resume_ignores_rows_added_after_the_checkpoint(tmp_path):
    replay = SequenceReplay(ENVS, ENVS * 100, torch.Generator().manual_seed(4), directory=tmp_path)
    fill(replay, range(60))
    state = round_trip(replay.state_dict())
    memory = SequenceReplay(ENVS, ENVS * 100, torch.Generator().manual_seed(4))
    fill(memory, range(60))
    fill(replay, range(60, 90))  # the run goes on, then dies without a newer checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing checkpointed was overwritten
        resumed = SequenceReplay(ENVS, ENVS * 100, torch.Generator().manual_seed(4))
        resumed.load_state_dict(state)
    assert_same_samples(memory, resumed)


def test_memmap_resume_drops_rows_overwritten_after_the_checkpoint(tmp_path):
    replay = SequenceReplay(ENVS, ENVS * 20, torch.Generator().manual_seed(5), directory=tmp_path)
    fill(replay, range(30))
    state = round_trip(replay.state_dict())
    fill(replay, range(30, 36))  # wraps over the oldest checkpointed rows of every stream
    resumed = SequenceReplay(ENVS, ENVS * 20, torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="were overwritten after it was written"):
        resumed.load_state_dict(state)
    assert torch.equal(resumed.written, state["written"])
    windows = resumed.sample(2000, 2)
    for e in range(ENVS):
        checkpointed = [t for t in range(30) if mask_at(t)[e]][-20:]
        overwritten = sum(bool(mask_at(t)[e]) for t in range(30, 36))
        intact = set(checkpointed[overwritten:])
        seen = set(windows["step"][windows["env"][:, 0] == e].flatten().tolist())
        assert seen == intact  # every intact row, and no row of the abandoned future
    assert len(resumed) == sum(
        20 - sum(bool(mask_at(t)[e]) for t in range(30, 36)) for e in range(3)
    )


def test_memmap_resume_refuses_missing_or_foreign_files(tmp_path):
    replay = SequenceReplay(ENVS, ENVS * 20, directory=tmp_path / "a")
    fill(replay, range(10))
    state = round_trip(replay.state_dict())
    with pytest.raises(FileNotFoundError, match="replay files are missing"):
        SequenceReplay(ENVS, ENVS * 20, directory=tmp_path / "elsewhere").load_state_dict(state)
    image = (
        tmp_path
        / "a"
        / next(
            f["file"]
            for f in json.loads((tmp_path / "a" / METADATA).read_text())["entries"]
            if f["key"] == ["image"]
        )
    )
    with open(image, "r+b") as file:
        file.truncate(10)
    with pytest.raises(ValueError, match=r"entry \['image'\].*is missing or not 2880 bytes"):
        SequenceReplay(ENVS, ENVS * 20).load_state_dict(state)
    fill(SequenceReplay(ENVS, ENVS * 20, directory=tmp_path / "a"), range(3))  # a new run there
    with pytest.raises(ValueError, match="belong to another replay"):
        SequenceReplay(ENVS, ENVS * 20).load_state_dict(state)


def test_in_memory_checkpoint_resumes_into_files(tmp_path):
    memory = SequenceReplay(ENVS, ENVS * 50, torch.Generator().manual_seed(6))
    fill(memory, range(80))
    disk = SequenceReplay(ENVS, ENVS * 50, torch.Generator().manual_seed(6), directory=tmp_path)
    disk.load_state_dict(round_trip(memory.state_dict()))
    assert (tmp_path / METADATA).exists()
    assert_same_samples(memory, disk)
    reopened = SequenceReplay(ENVS, ENVS * 50, torch.Generator().manual_seed(7))
    reopened.load_state_dict(disk.state_dict())
    memory.generator.manual_seed(7)
    assert_same_samples(memory, reopened)


# ----------------------------------------------------------------- sampling
def test_windows_are_uniform_over_every_valid_start():
    """Streams of 10 and 6 rows, windows of 4: 7 + 3 starts, each drawn 1/10 of the time."""
    replay = SequenceReplay(2, 2 * 10, torch.Generator().manual_seed(8))
    for t in range(16):  # stream 0 wraps (steps 6..15 kept), stream 1 holds 6 rows
        replay.add(rows_at(t, 2), torch.tensor([True, t < 6]))
    draws = 20_000
    windows = replay.sample(draws, 4)
    assert windows.batch_size == (draws, 4)
    assert (windows["step"].diff(dim=1) == 1).all()
    assert (windows["env"] == windows["env"][:, :1]).all()
    starts = windows["step"][:, 0] + 100 * windows["env"][:, 0]
    valid = list(range(6, 13)) + list(range(100, 103))
    counts = {s: int((starts == s).sum()) for s in valid}
    assert sum(counts.values()) == draws  # no window starts anywhere else
    # Each count is Binomial(draws, 1/10): within 5 standard deviations of its mean.
    p = 1 / len(valid)
    bound = 5 * math.sqrt(draws * p * (1 - p))
    assert all(abs(c - draws * p) < bound for c in counts.values()), counts
