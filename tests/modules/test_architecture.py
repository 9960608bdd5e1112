"""The official DreamerV3 networks at every size: parameter counts, the official
initialisation and output scales, image observations, and one update at size1m.

The expected counts are the official agent's (``dreamerv3`` instantiated on CartPole-v1's
spaces: float32[4] observations, 2 discrete actions), and, for the parts with no quoted
figure, sums of the official layer shapes written out here layer by layer
(``dreamerv3/rssm.py``, ``embodied/jax/nets.py``, ``embodied/jax/heads.py``).
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from torchdreamer.modules import ModelSize, WorldModel
from torchdreamer.training import PRESETS, Config, DreamerAgent


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def breakdown(agent: DreamerAgent) -> dict[str, int]:
    wm = agent.world_model
    parts = {
        "rssm": wm.rssm,
        "encoder": wm.encoder,
        "decoder": wm.decoder,
        "reward": wm.reward,
        "continuation": wm.continuation,
        "actor": agent.actor,
        "critic": agent.critic,
    }
    return {name: count(module) for name, module in parts.items()}


def cartpole_agent(preset: str) -> DreamerAgent:
    return DreamerAgent((4,), 2, discrete=True, config=Config(preset=preset))


def test_size1m_has_the_official_parameter_counts_on_cartpole():
    agent = cartpole_agent("size1m")
    assert breakdown(agent) == {
        "rssm": 364_160,
        "encoder": 8_832,
        "decoder": 49_796,
        "reward": 57_663,
        "continuation": 41_153,
        "actor": 49_666,
        "critic": 66_111,
    }
    assert sum(p.numel() for p in agent.trainable_parameters()) == 637_381


def test_size12m_has_the_official_parameter_count_on_cartpole():
    agent = cartpole_agent("size12m")
    assert sum(p.numel() for p in agent.trainable_parameters()) == 9_724_165


def official_counts(size: dict, obs: int, actions: int) -> dict[str, int]:
    """The official layer shapes (vector observations, discrete actions), summed."""
    deter, hidden, units = size["deter"], size["hidden"], size["units"]
    stoch, blocks = 32 * size["classes"], 8

    def linear(n_in, n_out, norm=True):  # kernel, bias and, before an activation, a norm scale
        return n_in * n_out + n_out + (n_out if norm else 0)

    def mlp(n_in, layers):
        return linear(n_in, units) + (layers - 1) * linear(units, units)

    per_block_in = deter // blocks + 3 * hidden
    rssm = (
        linear(deter, hidden)
        + linear(stoch, hidden)
        + linear(actions, hidden)  # dynin0..2
        + blocks * per_block_in * (deter // blocks)
        + deter
        + deter  # dynhid0 + its norm
        + blocks * (deter // blocks) * (3 * deter // blocks)
        + 3 * deter  # dyngru
        + linear(deter, hidden)
        + linear(hidden, hidden)
        + linear(hidden, stoch, False)  # prior
        + linear(deter + units, hidden)
        + linear(hidden, stoch, False)  # posterior
    )
    feat = deter + stoch
    return {
        "rssm": rssm,
        "encoder": mlp(obs, 3),
        "decoder": mlp(feat, 3) + linear(units, obs, False),
        "reward": mlp(feat, 1) + linear(units, 255, False),
        "continuation": mlp(feat, 1) + linear(units, 1, False),
        "actor": mlp(feat, 3) + linear(units, actions, False),
        "critic": mlp(feat, 3) + linear(units, 255, False),
    }


# dreamerv3/configs.yaml: size1m ... size400m (stoch 32 at every size).
OFFICIAL_SIZES = {
    "size1m": dict(deter=512, hidden=64, classes=4, units=64, depth=4),
    "size12m": dict(deter=2048, hidden=256, classes=16, units=256, depth=16),
    "size25m": dict(deter=3072, hidden=384, classes=24, units=384, depth=24),
    "size50m": dict(deter=4096, hidden=512, classes=32, units=512, depth=32),
    "size100m": dict(deter=6144, hidden=768, classes=48, units=768, depth=48),
    "size200m": dict(deter=8192, hidden=1024, classes=64, units=1024, depth=64),
    "size400m": dict(deter=12288, hidden=1536, classes=96, units=1536, depth=96),
}


def test_the_layer_sums_reproduce_the_official_agents_counts():
    assert sum(official_counts(OFFICIAL_SIZES["size1m"], 4, 2).values()) == 637_381
    assert sum(official_counts(OFFICIAL_SIZES["size12m"], 4, 2).values()) == 9_724_165


@pytest.mark.parametrize("preset", sorted(OFFICIAL_SIZES))
def test_every_official_preset_has_the_official_sizes_and_counts(preset):
    official = OFFICIAL_SIZES[preset]
    size = PRESETS[preset]
    assert (size.deter, size.hidden, size.classes, size.units, size.cnn_depth) == (
        official["deter"],
        official["hidden"],
        official["classes"],
        official["units"],
        official["depth"],
    )
    expected = official_counts(official, obs=17, actions=6)
    with torch.device("meta"):  # shapes only: size400m would need gigabytes
        wm = WorldModel((17,), 6, size)
    got = {
        "rssm": count(wm.rssm),
        "encoder": count(wm.encoder),
        "decoder": count(wm.decoder),
        "reward": count(wm.reward),
        "continuation": count(wm.continuation),
    }
    assert got == {k: expected[k] for k in got}


def official_image_counts(size: dict, side: int, channels: int) -> dict[str, int]:
    """The official CNN encoder and decoder (kernel 5, channels depth * (2, 3, 4, 4),
    stride-1 convs with 2x pooling / upsampling, decoder bspace 8) on a square image."""
    depths = [size["depth"] * m for m in (2, 3, 4, 4)]
    deter, units, stoch = size["deter"], size["units"], 32 * size["classes"]

    def conv(n_in, n_out, norm=True):
        return 25 * n_in * n_out + n_out + (n_out if norm else 0)

    encoder = conv(channels, depths[0]) + sum(
        conv(a, b) for a, b in zip(depths[:-1], depths[1:], strict=True)
    )
    area = (side // 16) ** 2 * depths[-1]
    decoder = (
        deter * area // 8
        + area  # sp0: block linear from deter, 8 blocks
        + stoch * 2 * units
        + 2 * units
        + 2 * units  # sp1 and its norm
        + 2 * units * area
        + area  # sp2
        + depths[-1]  # spnorm
        + conv(depths[3], depths[2])
        + conv(depths[2], depths[1])
        + conv(depths[1], depths[0])
        + conv(depths[0], channels, norm=False)  # imgout
    )
    return {"encoder": encoder, "decoder": decoder, "embed": area}


@pytest.mark.parametrize("preset", ["size1m", "size12m"])
def test_image_encoder_and_decoder_have_the_official_layers(preset):
    size = PRESETS[preset]
    expected = official_image_counts(OFFICIAL_SIZES[preset], side=64, channels=3)
    wm = WorldModel((64, 64, 3), 4, size)
    assert count(wm.encoder) == expected["encoder"]
    assert count(wm.decoder) == expected["decoder"]
    assert wm.encoder.out_features == expected["embed"]  # a 4 x 4 map of depth * 4 channels
    kernels = {m.kernel_size for m in wm.modules() if isinstance(m, torch.nn.Conv2d)}
    assert kernels == {(5, 5)}
    images = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    first = torch.zeros(2, 3, dtype=torch.bool)
    out = wm(images, torch.zeros(2, 3, 4), first)
    reconstruction = out[4]
    assert reconstruction.shape == (2, 3, 64, 64, 3)
    assert bool(((reconstruction > 0) & (reconstruction < 1)).all())  # sigmoid output


def test_atari_images_96_by_96_grey_take_the_official_cnn_and_an_update_trains_it():
    # The official atari env is 96 x 96 grey. Each of the 4 CNN stages halves the side
    # (96 -> 48 -> 24 -> 12 -> 6); the decoder starts from the 6 x 6 map and doubles it back.
    expected = official_image_counts(OFFICIAL_SIZES["size1m"], side=96, channels=1)
    wm = WorldModel((96, 96, 1), 18, PRESETS["size1m"])
    assert count(wm.encoder) == expected["encoder"]
    assert count(wm.decoder) == expected["decoder"]
    assert wm.encoder.out_features == expected["embed"] == 6 * 6 * 4 * 4
    shapes = []
    for net in (wm.encoder.net, wm.decoder.net):
        for module in net:
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(lambda m, i, out: shapes.append(out.shape[1:]))
    images = torch.randint(0, 256, (2, 3, 96, 96, 1), dtype=torch.uint8)
    out = wm(images, torch.zeros(2, 3, 18), torch.zeros(2, 3, dtype=torch.bool))
    assert out[4].shape == (2, 3, 96, 96, 1)
    # Encoder convs (depth * (2, 3, 4, 4), each before a 2 x 2 pooling), then decoder convs
    # (after each upsampling: depth * (4, 3, 2), then the image's one channel).
    assert [tuple(s) for s in shapes] == [
        (8, 96, 96),
        (12, 48, 48),
        (16, 24, 24),
        (16, 12, 12),
        (16, 12, 12),
        (12, 24, 24),
        (8, 48, 48),
        (1, 96, 96),
    ]
    # One update of a small agent on 96 x 96 grey images moves the CNNs.
    torch.manual_seed(0)
    config = Config(preset="small", image_size=96, imagination_horizon=3, warmup=0)
    agent = DreamerAgent((96, 96, 1), 18, discrete=True, config=config)
    b, t = 2, 4
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    batch = TensorDict(
        observation=torch.randint(0, 256, (b, t, 96, 96, 1), dtype=torch.uint8),
        prev_action=torch.nn.functional.one_hot(torch.randint(0, 18, (b, t)), 18).float(),
        is_first=first,
        reward=torch.randn(b, t),
        is_last=torch.zeros(b, t, dtype=torch.bool),
        is_terminal=torch.zeros(b, t, dtype=torch.bool),
        batch_size=[b, t],
    )
    cnns = {
        name: p.detach().clone()
        for name, p in agent.world_model.named_parameters()
        if name.startswith(("encoder.net", "decoder.net"))
    }
    metrics = agent.update(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    params = dict(agent.world_model.named_parameters())
    still = [name for name, before in cnns.items() if torch.equal(params[name], before)]
    assert not still, still


def test_output_layers_start_at_the_official_scales():
    torch.manual_seed(0)
    agent = cartpole_agent("size1m")
    wm = agent.world_model
    # outscale 0: reward and critic start predicting exactly 0.
    for head in (wm.reward.mlp, agent.critic.mlp):
        assert torch.equal(head[-1].weight, torch.zeros_like(head[-1].weight))
    # outscale 0.01 for the policy, 1 elsewhere: std 1.1368 * scale / sqrt(fan_in) before
    # truncation at 2 std, i.e. std of about scale / sqrt(fan_in).
    policy_out = agent.actor.mlp[-1].weight
    assert policy_out.std().item() * 64**0.5 == pytest.approx(0.01, rel=0.25)
    assert policy_out.abs().max() <= 2 * 1.1368 * 0.01 / 64**0.5 + 1e-9
    continuation_out = wm.continuation.mlp[-1].weight
    assert continuation_out.abs().max() <= 2 * 1.1368 / 64**0.5 + 1e-9
    assert continuation_out.abs().max() > 2 * 1.1368 * 0.1 / 64**0.5
    # The GRU's block kernels use the whole input as fan-in (8 blocks of 256 inputs).
    hidden = wm.rssm.core.hidden_layers[0].weight
    assert hidden.shape == (8, 64 + 3 * 64, 64)
    assert hidden.std().item() * (8 * 256) ** 0.5 == pytest.approx(1.0, rel=0.05)


def test_agent_update_at_size1m_moves_every_network():
    torch.manual_seed(0)
    config = Config(preset="size1m", imagination_horizon=3, warmup=0)
    agent = DreamerAgent((4,), 2, discrete=True, config=config)
    b, t = 2, 4
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    batch = TensorDict(
        observation=torch.randn(b, t, 4),
        prev_action=torch.nn.functional.one_hot(torch.randint(0, 2, (b, t)), 2).float(),
        is_first=first,
        reward=torch.randn(b, t),
        is_last=torch.zeros(b, t, dtype=torch.bool),
        is_terminal=torch.zeros(b, t, dtype=torch.bool),
        batch_size=[b, t],
    )
    networks = {"world model": agent.world_model, "actor": agent.actor, "critic": agent.critic}
    before = {
        (net, name): p.detach().clone()
        for net, module in networks.items()
        for name, p in module.named_parameters()
    }
    metrics = agent.update(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    moved = {
        (net, name): not torch.equal(p, before[net, name])
        for net, module in networks.items()
        for name, p in module.named_parameters()
    }
    for net in networks:
        assert any(m for (n, _), m in moved.items() if n == net), net
    # Every tensor of the RSSM moves, each GRU block's kernels included (the heads' hidden
    # layers behind a zero-initialised output get no gradient on the first update).
    still = [name for (net, name), m in moved.items() if name.startswith("rssm.") and not m]
    assert not still, still


def test_model_size_refuses_blocks_that_do_not_divide():
    with pytest.raises(ValueError, match="multiple of blocks"):
        ModelSize(deter=100)
    with pytest.raises(ValueError, match="decoder_blocks"):
        ModelSize(cnn_depth=3)


def test_small_is_the_official_architecture_with_a_narrower_gru():
    small = dict(deter=256, hidden=64, classes=4, units=64)
    agent = cartpole_agent("small")
    assert breakdown(agent) == official_counts(small, obs=4, actions=2)
    assert sum(p.numel() for p in agent.trainable_parameters()) == 357_573
