"""The official replay: windows seeded by the policy's stored latents and refreshed by
training (``replay_context``), the online queue, ``is_last`` before every ``is_first``,
and the episodes a resume cuts, closed."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tensordict import TensorDict
from tiny import TINY_RUN

from torchdreamer.training import Config, DreamerAgent, SequenceReplay, train
from torchdreamer.training.agent import LATENT
from torchdreamer.training.checkpoint import load_checkpoint
from torchdreamer.training.prefetch import Prefetcher
from torchdreamer.training.replay import INDEX

CONFIG = Config(imagination_horizon=3, precision="float32", compile="off")


def tiny_agent() -> DreamerAgent:
    torch.manual_seed(0)
    return DreamerAgent((4,), 2, discrete=True, config=CONFIG)


def window(agent: DreamerAgent, b: int = 3, t: int = 6, latent: bool = True) -> TensorDict:
    """A ``[b, t]`` replay window mid-episode (no ``is_first``), with stored latents."""
    rssm = agent.world_model.rssm
    flags = torch.zeros(b, t, dtype=torch.bool)
    columns = dict(
        observation=torch.randn(b, t, 4),
        prev_action=torch.nn.functional.one_hot(torch.randint(0, 2, (b, t)), 2).float(),
        reward=torch.randn(b, t),
        is_first=flags,
        is_last=flags,
        is_terminal=flags,
    )
    if latent:
        stoch = torch.nn.functional.one_hot(
            torch.randint(0, rssm.classes, (b, t, rssm.categoricals)), rssm.classes
        )
        columns[LATENT] = TensorDict(
            stoch=stoch.flatten(-2).float(), deter=torch.randn(b, t, rssm.deter_size)
        )
    return TensorDict(columns, batch_size=[b, t])


def first_deter(agent: DreamerAgent, deter, stoch, action) -> torch.Tensor:
    """The GRU state after the first step from ``(deter, stoch)``: no draw involved."""
    with torch.no_grad():
        return agent.world_model.rssm.core(deter, stoch, action)


def test_a_window_mid_episode_starts_from_the_latent_stored_with_its_step_0():
    agent = tiny_agent()
    batch = window(agent)
    with torch.no_grad():
        agent.losses(batch)
    latents = agent.latents
    assert latents.batch_size == torch.Size([3, 5])  # steps 1..5 trained, step 0 context
    stored = batch[LATENT][:, 0]
    # Step 1 follows step 0's stored state, fed the action taken at step 0.
    expected = first_deter(agent, stored["deter"], stored["stoch"], batch["prev_action"][:, 1])
    torch.testing.assert_close(latents["deter"][:, 0], expected, rtol=1e-5, atol=1e-6)
    zero = first_deter(
        agent,
        torch.zeros_like(stored["deter"]),
        torch.zeros_like(stored["stoch"]),
        torch.zeros_like(batch["prev_action"][:, 1]),
    )
    assert not torch.allclose(latents["deter"][:, 0], zero)


def test_a_first_step_after_the_context_resets_the_state():
    agent = tiny_agent()
    batch = window(agent)
    first = batch["is_first"].clone()
    first[:, 1] = True  # a new episode starts right after the context step
    batch["is_first"] = first
    with torch.no_grad():
        agent.losses(batch)
    zeros = torch.zeros(3, agent.world_model.rssm.deter_size)
    stoch = torch.zeros(3, agent.world_model.rssm.stoch_size)
    expected = first_deter(agent, zeros, stoch, torch.zeros(3, 2))
    torch.testing.assert_close(agent.latents["deter"][:, 0], expected, rtol=1e-5, atol=1e-6)


def test_a_window_without_context_starts_as_an_episode_does():
    """No stored latent: the zero state, the first step flagged is_first (its real
    previous action ignored), as the official replay flags every window's first step."""
    agent = tiny_agent()
    batch = window(agent, latent=False)
    with torch.no_grad():
        agent.losses(batch)
    assert agent.latents.batch_size == torch.Size([3, 6])
    zeros = torch.zeros(3, agent.world_model.rssm.deter_size)
    stoch = torch.zeros(3, agent.world_model.rssm.stoch_size)
    expected = first_deter(agent, zeros, stoch, torch.zeros(3, 2))
    torch.testing.assert_close(agent.latents["deter"][:, 0], expected, rtol=1e-5, atol=1e-6)
    assert not batch["is_first"][:, 0].any(), "the caller's batch is left as it was"


def latent_rows(t: int, envs: int = 2, size: int = 3) -> TensorDict:
    """One step per stream, its latent telling which (step, env) it is."""
    env = torch.arange(envs, dtype=torch.float32)
    value = (100 * env + t).unsqueeze(-1).expand(envs, size)
    return TensorDict(
        step=torch.full((envs,), t),
        is_first=torch.full((envs,), t == 0),
        is_last=torch.zeros(envs, dtype=torch.bool),
        latent=TensorDict(stoch=value.clone(), deter=-value, batch_size=[envs]),
        batch_size=[envs],
    )


def test_training_writes_the_refreshed_latents_back_into_the_windows_it_trained_on():
    replay = SequenceReplay(2, 40, torch.Generator().manual_seed(0))
    for t in range(12):
        replay.add(latent_rows(t), torch.ones(2, dtype=torch.bool))
    before = replay.storage.clone()
    batch = replay.sample(3, 5)
    refreshed = TensorDict(
        latent=TensorDict(
            stoch=torch.randn(3, 4, 3), deter=torch.randn(3, 4, 3), batch_size=[3, 4]
        ),
        batch_size=[3, 4],
    )
    replay.update(batch[INDEX], refreshed)
    expected = before["latent"].clone()  # plainly: window after window, steps 1..4
    for b in range(3):
        env = int(batch[INDEX, "env"][b, 0])
        for k in range(4):
            step = int(batch[INDEX, "step"][b, k + 1])
            expected[env, step % replay.per_env] = refreshed["latent"][b, k]
    assert (replay.storage["latent"] == expected).all()
    assert (replay.storage["step"] == before["step"]).all()


def test_an_update_leaves_the_latents_to_write_back():
    agent = tiny_agent()
    replay = SequenceReplay(3, 60, torch.Generator().manual_seed(1))
    for _ in range(10):
        replay.add(window(agent, b=3, t=1)[:, 0], torch.ones(3, dtype=torch.bool))
    batch = replay.sample(1, 7)  # one window: no step trained twice
    agent.update(batch)
    replay.update(batch[INDEX], TensorDict({LATENT: agent.latents}, [1, 6]))
    held = replay.storage[batch[INDEX, "env"], batch[INDEX, "step"] % replay.per_env]
    assert torch.equal(held[LATENT, "deter"][:, 1:], agent.latents["deter"])
    assert torch.equal(held[LATENT, "stoch"][:, 1:], agent.latents["stoch"])
    assert torch.equal(held[LATENT][:, 0]["deter"], batch[LATENT][:, 0]["deter"])


def fresh_windows(written: list[int], length: int) -> list[tuple[int, int]]:
    """Plainly: stream ``e``'s step ``n`` (from 0) ends a fresh window when
    ``n >= length`` is a multiple of ``length`` (and step ``length - 1`` when 1)."""
    out = []
    for n in range(max(written)):
        for env, count in enumerate(written):
            if n < count and n + 1 >= length and n % length == 0:
                out.append((env, n + 1 - length))
    return out


def test_the_online_queue_serves_each_fresh_window_once_first_in_first_out():
    length, envs = 4, 2
    replay = SequenceReplay(envs, 400, torch.Generator().manual_seed(0), online=length)
    served: list[tuple[int, int]] = []
    written = [0, 0]
    uniform = 0
    for t in range(60):
        mask = torch.tensor([True, t % 3 != 0])
        replay.add(latent_rows(t, envs), mask)
        written = [w + int(m) for w, m in zip(written, mask.tolist(), strict=True)]
        if t % 5 == 4 and replay.can_sample(length):
            queued = len(replay.queue)
            batch = replay.sample(2, length)
            taken = min(queued, 2)
            for b in range(taken):
                served.append((int(batch[INDEX, "env"][b, 0]), int(batch[INDEX, "step"][b, 0])))
            uniform += 2 - taken
    while replay.queue:
        batch = replay.sample(2, length)
        for b in range(2):
            if len(served) < len(fresh_windows(written, length)):
                served.append((int(batch[INDEX, "env"][b, 0]), int(batch[INDEX, "step"][b, 0])))
    expected = fresh_windows(written, length)
    assert sorted(served) == sorted(expected) and len(set(served)) == len(served)
    for env in range(envs):  # each stream's windows in the order they were written
        mine = [s for e, s in served if e == env]
        assert mine == sorted(mine)
    assert uniform > 0  # the rest of a batch is drawn uniformly
    # Each served window is the stream's steps [start, start + length).
    batch_steps = replay.storage["step"]
    for env, start in served:
        steps = [int(batch_steps[env, s % replay.per_env]) for s in range(start, start + length)]
        assert steps == sorted(steps) and len(set(steps)) == length


def test_the_online_queue_skips_overwritten_windows_and_survives_a_checkpoint():
    replay = SequenceReplay(1, 8, torch.Generator().manual_seed(0), online=2)
    for t in range(12):
        replay.add(latent_rows(t, 1), torch.ones(1, dtype=torch.bool))
    kept = int(replay.oldest[0])
    state = replay.state_dict()
    assert all(start >= kept for _, start in state["queue"])
    resumed = SequenceReplay(1, 8, torch.Generator().manual_seed(0), online=2)
    resumed.load_state_dict(state)
    batch = resumed.sample(8, 2)
    starts = [int(s) for s in batch[INDEX, "step"][:, 0]]
    queued = [s for n in range(12) if n >= 2 and n % 2 == 0 for s in [n - 1] if s >= kept]
    assert starts[: len(queued)] == queued


def test_a_look_at_the_replay_leaves_the_queue_alone():
    replay = SequenceReplay(1, 20, torch.Generator().manual_seed(0), online=2)
    for t in range(7):
        replay.add(latent_rows(t, 1), torch.ones(1, dtype=torch.bool))
    queue = list(replay.queue)
    replay.sample(2, 2, generator=torch.Generator().manual_seed(3))
    replay.sample(2, 3)  # another length than the queue's windows
    assert list(replay.queue) == queue


def test_a_prefetcher_closed_early_puts_back_the_queue_and_refreshes_latents():
    replay = SequenceReplay(2, 100, torch.Generator().manual_seed(0), online=3)
    for t in range(20):
        replay.add(latent_rows(t), torch.ones(2, dtype=torch.bool))
    queue = list(replay.queue)
    with Prefetcher(replay, 2, 3, count=3, device="cpu", background=True) as batches:
        first = next(batches)
        batches._pending.result()  # the second batch is sampled: then training writes
        ones = TensorDict(
            latent=TensorDict(stoch=torch.ones(2, 2, 3), deter=torch.ones(2, 2, 3)),
            batch_size=[2, 2],
        )
        replay.update(first[INDEX], ones)
        second = next(batches)
    now = replay.storage[second[INDEX, "env"], second[INDEX, "step"] % replay.per_env]
    assert torch.equal(second["latent", "stoch"], now["latent", "stoch"])
    assert list(replay.queue) == queue[4:]  # two batches handed out, the third put back


def test_sampled_windows_end_an_episode_before_every_first_step():
    replay = SequenceReplay(1, 50, torch.Generator().manual_seed(0))
    firsts = [0, 4, 5, 11]
    lasts = [3]  # the episode of steps 5..10 was abandoned: no is_last at 10
    for t in range(15):
        replay.add(
            TensorDict(
                step=torch.tensor([t]),
                is_first=torch.tensor([t in firsts]),
                is_last=torch.tensor([t in lasts]),
                batch_size=[1],
            ),
            torch.ones(1, dtype=torch.bool),
        )
    batch = replay.sample(20, 6)
    for b in range(20):
        steps = batch["step"][b].tolist()
        for k, step in enumerate(steps):
            stored = step in lasts
            follows = k + 1 < len(steps) and steps[k + 1] in firsts
            assert bool(batch["is_last"][b, k]) == (stored or follows), (steps, k)


def test_close_streams_ends_each_streams_open_episode():
    replay = SequenceReplay(3, 30)
    for t in range(4):
        done = torch.tensor([False, t == 3, False])
        replay.add(
            TensorDict(is_last=done, step=torch.full((3,), t), batch_size=[3]),
            torch.tensor([True, True, t < 2]),
        )
    assert replay.close_streams() == 2  # stream 1 ended its episode itself
    last = replay.storage["is_last"]
    assert last[0, 3] and last[1, 3] and last[2, 1]
    filled = [last[0, :4], last[1, :4], last[2, :2]]  # the rest is never written
    assert sum(int(rows.sum()) for rows in filled) == 3


@pytest.mark.parametrize("on_disk", [False, True])
def test_latents_ride_along_in_checkpoints_and_memory_mapped_files(tmp_path, on_disk):
    directory = tmp_path / "replay" if on_disk else None
    replay = SequenceReplay(2, 40, torch.Generator().manual_seed(0), directory=directory)
    for t in range(9):
        replay.add(latent_rows(t), torch.ones(2, dtype=torch.bool))
    batch = replay.sample(2, 4)
    refreshed = TensorDict(
        latent=TensorDict(stoch=torch.randn(2, 3, 3), deter=torch.randn(2, 3, 3)),
        batch_size=[2, 3],
    )
    replay.update(batch[INDEX], refreshed)
    state = replay.state_dict()
    resumed = SequenceReplay(2, 40, torch.Generator().manual_seed(0))
    resumed.load_state_dict(state)
    for key in [("latent", "stoch"), ("latent", "deter"), "step"]:
        mine = replay.storage[key][:, :9]
        assert torch.equal(resumed.storage[key][:, :9], mine), key


def test_a_resumed_run_closes_its_cut_episodes_and_keeps_latents(tmp_path):
    # Copies in a worker process are not checkpointed: the resume restarts them.
    config = Config(
        **TINY_RUN, env="CartPole-v1", env_workers=1, steps=40, seed=3, precision="float32"
    )
    logdir = tmp_path / "run"
    train(config, logdir, progress=False)
    before = load_checkpoint(logdir)["ranks"][0]["replay"]
    written = before["written"]
    cut_open = [not bool(rows["is_last"][-1]) for rows in before["rows"]]
    train(dataclasses.replace(config, steps=56), logdir, resume=True, progress=False)
    after = load_checkpoint(logdir)["ranks"][0]["replay"]
    for env, rows in enumerate(after["rows"]):
        cut = int(written[env]) - 1
        assert bool(rows["is_last"][cut]), f"stream {env}'s episode runs on across the resume"
        assert cut_open[env] or bool(before["rows"][env]["is_last"][-1])
        assert bool(rows["is_first"][cut + 1])
        latent = rows[LATENT]
        assert latent["deter"].dtype == torch.float32
        # The rows the policy acted on hold its one-hot sample (or training's since);
        # an episode's final observation, never acted on, zeros until trained on.
        acted = ~rows["is_last"]
        acted[cut] = True
        ones = latent["stoch"].sum(-1)
        assert (ones[acted] == config.size.categoricals).all()
        assert ((ones[~acted] == 0) | (ones[~acted] == config.size.categoricals)).all()


def test_a_run_without_context_or_queue_stores_no_latents(tmp_path):
    config = Config(
        **TINY_RUN,
        env="CartPole-v1",
        steps=40,
        precision="float32",
        replay_context=0,
        replay_online=False,
    )
    summary = train(config, tmp_path / "run", progress=False)
    assert summary.updates > 0
    replay = load_checkpoint(tmp_path / "run")["ranks"][0]["replay"]
    assert all(LATENT not in rows.keys() for rows in replay["rows"])
    assert replay["queue"] == []


def test_replay_context_is_0_or_1():
    with pytest.raises(ValueError, match="replay_context must be 0 or 1"):
        Config(replay_context=2)
