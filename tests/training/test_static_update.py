"""The update on static input tensors: bit for bit the plain update on CPU over 20
updates, one set of input tensors for all, clear errors for batches of another layout;
the CUDA graph of it (CUDA only)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from torchdreamer.modules import ModelSize
from torchdreamer.training import PRESETS, Config, DreamerAgent
from torchdreamer.training.static_update import StaticUpdate

SMALL = ModelSize(deter=16, hidden=16, categoricals=4, classes=4, units=16, cnn_depth=4)
KINDS = [((4,), True, False), ((3,), False, False), ((16, 16, 3), True, True)]
IDS = ["vector-discrete", "vector-continuous", "image-discrete"]


def batches(shape, count, image, b=2, t=6, seed=0):
    """``count`` replay batches of one layout, with episode starts inside the windows."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        if image:
            observation = torch.randint(0, 256, (b, t, *shape), generator=generator)
            observation = observation.to(torch.uint8)
        else:
            observation = torch.randn(b, t, *shape, generator=generator)
        first = torch.rand(b, t, generator=generator) < 0.2
        first[:, 0] = True
        last = torch.rand(b, t, generator=generator) < 0.1
        out.append(
            TensorDict(
                observation=observation,
                prev_action=torch.rand(b, t, 2, generator=generator) * 2 - 1,
                is_first=first,
                reward=torch.randn(b, t, generator=generator),
                is_last=last,
                is_terminal=last & (torch.rand(b, t, generator=generator) < 0.5),
                batch_size=[b, t],
            )
        )
    return out


def agent_for(shape, discrete, device="cpu"):
    torch.manual_seed(0)
    config = Config(preset="test", imagination_horizon=3, warmup=2)
    return DreamerAgent(shape, 2, discrete=discrete, config=config).to(device)


def state_of(agent):
    """Networks, slow critic, return scales and the optimiser's moments and counts."""
    state = dict(agent.state_dict())
    for index, group in enumerate(agent.optimizer.state_dict()["state"].values()):
        state.update({f"optimizer.{index}.{k}": v for k, v in group.items()})
    state["steps"] = torch.tensor([g["step"] for g in agent.optimizer.param_groups])
    return state


@pytest.mark.parametrize(
    ("shape", "discrete", "image", "count"),
    [(*kind, 20 if index == 0 else 5) for index, kind in enumerate(KINDS)],
    ids=IDS,
)
def test_static_updates_are_the_plain_updates_bit_for_bit(
    shape, discrete, image, count, monkeypatch
):
    """20 updates (5 for the other kinds of agent: the same code)."""
    monkeypatch.setitem(PRESETS, "test", SMALL)
    data = batches(shape, count, image)
    plain, static = agent_for(shape, discrete), agent_for(shape, discrete)
    update = StaticUpdate(static)
    torch.manual_seed(1)  # the imagination's draws
    expected = [plain.update(batch) for batch in data]
    torch.manual_seed(1)
    got = [update(batch) for batch in data]
    assert got == expected  # every metric of every update, exactly
    want = state_of(plain)
    for key, value in state_of(static).items():
        assert torch.equal(value, want[key]), key
    assert update.updates == count


def test_every_batch_goes_into_the_same_input_tensors(monkeypatch):
    monkeypatch.setitem(PRESETS, "test", SMALL)
    data = batches((4,), 3, image=False)
    update = StaticUpdate(agent_for((4,), True))
    update(data[0])
    addresses = {k: v.data_ptr() for k, v in update.inputs.items()}
    for batch in data[1:]:
        update(batch)
        assert {k: v.data_ptr() for k, v in update.inputs.items()} == addresses
        for key, value in batch.items():
            assert torch.equal(update.inputs[key], value), key
    # Inputs of their own: a batch changed after its update changes nothing there.
    data[-1]["reward"].add_(1.0)
    assert not torch.equal(update.inputs["reward"], data[-1]["reward"])


def test_a_batch_of_another_layout_is_named(monkeypatch):
    monkeypatch.setitem(PRESETS, "test", SMALL)
    update = StaticUpdate(agent_for((4,), True))
    update(batches((4,), 1, image=False)[0])
    longer = batches((4,), 1, image=False, t=7)[0]
    with pytest.raises(ValueError, match=r"'observation' is \[2, 7, 4\] torch.float32"):
        update(longer)
    fewer = batches((4,), 1, image=False)[0].exclude("reward")
    with pytest.raises(ValueError, match="keys .* are not the first batch's"):
        update(fewer)


def test_a_graph_needs_a_cuda_device(monkeypatch):
    monkeypatch.setitem(PRESETS, "test", SMALL)
    with pytest.raises(ValueError, match="captures a CUDA graph, and the agent is on cpu"):
        StaticUpdate(agent_for((4,), True), graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("shape", "discrete", "image"), KINDS, ids=IDS)
def test_on_cuda_the_graphed_updates_follow_the_eager_ones(shape, discrete, image, monkeypatch):
    """Two eager updates, a capture, then replays: the same numbers as eager updates on
    the same inputs and draws, to float32 rounding (the kernels may differ in order)."""
    monkeypatch.setitem(PRESETS, "test", SMALL)
    data = batches(shape, 8, image)
    eager = StaticUpdate(agent_for(shape, discrete, "cuda"))
    graphed = StaticUpdate(agent_for(shape, discrete, "cuda"), graph=True, warmup=2)
    torch.manual_seed(1)
    expected = [eager(batch.to("cuda")) for batch in data]
    torch.manual_seed(1)
    got = [graphed(batch.to("cuda")) for batch in data]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    want = state_of(eager.agent)
    for key, value in state_of(graphed.agent).items():
        torch.testing.assert_close(value, want[key], rtol=1e-4, atol=1e-5, msg=key)
