"""Dict observations: the multi-key encoder and decoder, their loss, and runs on Dict envs."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from reference import assert_close_to_reference
from tensordict import TensorDict

from torchdreamer.dreamer import loss as recipe_loss
from torchdreamer.envs import make_env
from torchdreamer.modules import ModelSize, MultiDecoder, MultiEncoder
from torchdreamer.training import Config, DreamerAgent
from torchdreamer.training.loop import train
from torchdreamer.training.resources import check_replay_memory

SIZE = ModelSize(deter=32, hidden=16, classes=4, units=16, cnn_depth=2)
SHAPES = {"b": (2,), "a": (3,), "cam": (16, 16, 3), "depth": (16, 16, 1)}


class ToyDict(gym.Env):
    """A joint reading and a camera; ten steps an episode, reward 1 for action 1."""

    observation_space = gym.spaces.Dict(
        joints=gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
        camera=gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
    )
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action), False, self.t >= 10, {}


TOY = "torchdreamer-tests/ToyDict-v0"
if TOY not in gym.registry:
    gym.register(TOY, entry_point=ToyDict)


def observations(batch=(2, 5), seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = {
        key: torch.randint(0, 256, (*batch, *shape), generator=generator, dtype=torch.uint8)
        if len(shape) == 3
        else 3 * torch.randn(*batch, *shape, generator=generator)
        for key, shape in SHAPES.items()
    }
    return TensorDict(values, batch_size=list(batch))


def test_the_encoder_reads_sorted_vectors_by_one_mlp_and_stacked_images_by_one_cnn():
    encoder = MultiEncoder(SHAPES, SIZE)
    assert (encoder.vector_keys, encoder.image_keys) == (["a", "b"], ["cam", "depth"])
    assert encoder.mlp[0].in_features == 5  # a (3) then b (2)
    assert encoder.cnn.net[0].in_channels == 4  # cam (3) then depth (1)
    obs = observations()
    vector = torch.cat([obs["a"], obs["b"]], -1)
    expected = torch.cat(
        [
            encoder.mlp(torch.sign(vector) * torch.log1p(vector.abs())),
            encoder.cnn(torch.cat([obs["cam"], obs["depth"]], -1)),
        ],
        -1,
    )
    torch.testing.assert_close(encoder(obs), expected, rtol=0, atol=0)
    assert encoder(obs).shape == (2, 5, encoder.out_features)


def test_the_decoder_gives_each_key_its_own_slice():
    decoder = MultiDecoder(SHAPES, stoch_size=16, deter_size=32, size=SIZE)
    stoch, deter = torch.randn(2, 5, 16), torch.randn(2, 5, 32)
    out = decoder(stoch, deter)
    assert {k: tuple(v.shape[2:]) for k, v in out.items()} == SHAPES
    vector = decoder.mlp(stoch, deter)
    torch.testing.assert_close(torch.cat([out["a"], out["b"]], -1), vector, rtol=0, atol=0)
    image = decoder.cnn(stoch, deter)
    torch.testing.assert_close(torch.cat([out["cam"], out["depth"]], -1), image, rtol=0, atol=0)


def test_bad_dict_shapes_are_refused():
    with pytest.raises(ValueError, match="must share height and width"):
        MultiEncoder({"left": (16, 16, 3), "right": (32, 32, 3)}, SIZE)
    with pytest.raises(ValueError, match=r"vectors \(D,\) or channel-last images"):
        MultiEncoder({"grid": (4, 4)}, SIZE)


def test_the_reconstruction_loss_is_symlog_mse_per_vector_and_mse_per_image():
    torch.manual_seed(0)
    agent = DreamerAgent(SHAPES, 2, discrete=True, config=Config(imagination_horizon=3))
    batch = TensorDict(
        observation=observations(),
        prev_action=torch.zeros(2, 5, 2),
        reward=torch.zeros(2, 5),
        is_first=torch.zeros(2, 5, dtype=torch.bool),
        is_last=torch.zeros(2, 5, dtype=torch.bool),
        is_terminal=torch.zeros(2, 5, dtype=torch.bool),
        batch_size=[2, 5],
    )
    torch.manual_seed(1)
    start = agent.world_model.rssm.initial(torch.Size([2]))
    loss, _, _ = recipe_loss(agent.networks(), batch, start, agent.settings)
    torch.manual_seed(1)
    outputs = agent.world_model(batch["observation"], batch["prev_action"], batch["is_first"])
    reconstruction = outputs[4]
    expected = 0.0
    for key, shape in SHAPES.items():
        prediction = reconstruction[key].double()
        target = batch["observation", key].double()
        if len(shape) == 1:  # predicted in symlog space
            target = torch.sign(target) * torch.log1p(target.abs())
        else:
            target = target / 255
        expected += (prediction - target).square().reshape(2, 5, -1).sum(-1).mean()
    assert_close_to_reference(loss["loss_model_reco"], expected)


def test_a_gymnasium_dict_env_trains_evaluates_and_resumes(tmp_path, capsys):
    env, spec = make_env(TOY, num_envs=2, seed=0)
    env.close()
    assert spec.observation_shape == {"joints": (3,), "camera": (16, 16, 3)}
    logdir = tmp_path / "run"
    config = Config(
        env=TOY,
        steps=64,
        num_envs=2,
        batch_size=2,
        batch_length=8,
        train_ratio=4,
        imagination_horizon=3,
        eval_every=32,
        eval_episodes=2,
        threads=1,
    )
    summary = train(config, logdir, progress=False)
    assert (summary.env_step, summary.updates) == (64, 12)
    assert not math.isnan(summary.mean_score)  # episodes ended and were scored
    rows = (logdir / "eval.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2
    # ToyDict has no render(): the run says so once and goes on without policy videos.
    err = capsys.readouterr().err
    assert err.count("no evaluation videos") == 1
    config.steps = 96
    resumed = train(config, logdir, resume=True, progress=False)
    assert resumed.env_step == 96


def test_dict_keys_that_torchrl_uses_are_refused():
    from torchdreamer.envs.make import _spec_of

    space = gym.spaces.Dict(reward=gym.spaces.Box(-1, 1, (1,), np.float32))
    with pytest.raises(ValueError, match=r"keys \['reward'\] are names TorchRL uses"):
        _spec_of("Mine-v0", space, gym.spaces.Discrete(2))
    nested = gym.spaces.Dict(inner=gym.spaces.Dict(x=gym.spaces.Box(-1, 1, (1,), np.float32)))
    with pytest.raises(ValueError, match="of key 'inner' is Dict"):
        _spec_of("Mine-v0", nested, gym.spaces.Discrete(2))


def test_the_replay_memory_of_a_dict_observation_counts_every_key():
    config = Config(steps=1000, replay_capacity=10**9, replay_context=0)
    shapes = {"joints": (3,), "camera": (16, 16, 3)}
    # per row: 3 float32 + 768 uint8, a 2-float action, the reward and three flags
    assert check_replay_memory(config, shapes, 2, available=2**40) == 1000 * (12 + 768 + 8 + 7)
    with pytest.raises(ValueError, match=r"rows of \{joints: \(3,\), camera: \(16, 16, 3\)\}"):
        check_replay_memory(config, shapes, 2, available=1000)
