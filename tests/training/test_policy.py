"""A trained agent loaded from its run directory: it acts on a fresh environment as the
checkpoint's agent does, and ``torchdreamer eval`` scores through it as before."""

from __future__ import annotations

import json
import random
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from test_agent import TinyImageEnv
from tiny import TINY_RUN

import torchdreamer
import torchdreamer.training
from torchdreamer.envs import EnvSpec, ResizeImage, make_env
from torchdreamer.training import Config, DreamerAgent
from torchdreamer.training.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from torchdreamer.training.evaluation import evaluate
from torchdreamer.training.loop import train
from torchdreamer.training.policy import Policy, load_agent

TINY = dict(
    steps=64,
    **TINY_RUN,
)


class NoisyImageEnv(TinyImageEnv):
    """TinyImage's brightness, with noise, on 24 x 24 frames: resized for a 16 x 16 run."""

    observation_space = gym.spaces.Box(0, 255, (24, 24, 3), np.uint8)

    def _image(self):
        noise = self.np_random.integers(0, 60, (24, 24, 3))
        return (self.level * 12 + noise).astype(np.uint8)


NOISY = "torchdreamer-tests/NoisyImage-v0"
if NOISY not in gym.registry:
    gym.register(NOISY, entry_point=NoisyImageEnv)

#: The runs' environments as the tests see them: observation shape (after training's
#: resize), number or size of actions, discrete.
RUNS = {
    "CartPole-v1": ((4,), 2, True),
    "Pendulum-v1": ((3,), 1, False),
    NOISY: ((16, 16, 3), 2, True),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny trained run per environment of RUNS, by id."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for index, env_id in enumerate(RUNS):
        logdir = root / f"run{index}"
        train(Config(**TINY, env=env_id, image_size=16), logdir, progress=False)
        made[env_id] = logdir
    return made


def reference_agent(logdir, env_id):
    """A DreamerAgent made from the run's config.json and checkpoint weights."""
    shape, actions, discrete = RUNS[env_id]
    config = Config(**json.loads((logdir / "config.json").read_text()))
    agent = DreamerAgent(shape, actions, discrete=discrete, config=config)
    agent.load_state_dict(torch.load(logdir / CHECKPOINT, weights_only=False)["agent"])
    return agent.eval()


def to_gym(action, env_id):
    """The agent's action (one-hot, or in [-1, 1]) as the gymnasium env takes it."""
    if env_id == "Pendulum-v1":  # bounds [-2, 2]
        low, high = -2.0, 2.0
        return (low + (action + 1) * (high - low) / 2).numpy()
    return action.argmax(-1).numpy()


def reference_env(env_id):
    """The environment the reference agent sees: images resized as training resized them."""
    env = gym.make(env_id)
    return ResizeImage(env, 16) if env_id == NOISY else env


def play_policy(policy, env_id, steps, explore):
    """One environment, one observation at a time; a new episode starts with state=None."""
    env = gym.make(env_id)
    observation, _ = env.reset(seed=3)
    state, actions = None, []
    for _ in range(steps):
        action, state = policy.act(observation, state, explore=explore)
        actions.append(action)
        observation, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            observation, _ = env.reset()
            state = None
    return actions


def play_reference(agent, env_id, steps, explore):
    env = reference_env(env_id)
    observation, _ = env.reset(seed=3)
    state, is_first, actions = agent.initial_state(1), torch.ones(1, dtype=torch.bool), []
    for _ in range(steps):
        action, state = agent.act(torch.as_tensor(observation)[None], is_first, state, explore)
        action = to_gym(action, env_id)[0]
        actions.append(action)
        observation, _, terminated, truncated, _ = env.step(action)
        is_first = torch.tensor([terminated or truncated])
        if terminated or truncated:
            observation, _ = env.reset()
    return actions


def vector(env_id, copies, reference):
    make = (lambda: reference_env(env_id)) if reference else (lambda: gym.make(env_id))
    return gym.vector.SyncVectorEnv(
        [make] * copies, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )


def play_policy_batch(policy, env_id, steps, explore, copies=3):
    """``copies`` environments stepped together; where an episode ends the next begins."""
    env = vector(env_id, copies, reference=False)
    observations, _ = env.reset(seed=5)
    state, actions = None, []
    for _ in range(steps):
        action, state = policy.act(observations, state, explore=explore)
        actions.append(action)
        observations, _, terminated, truncated, _ = env.step(action)
        state = policy.reset(state, terminated | truncated)
    return actions


def play_reference_batch(agent, env_id, steps, explore, copies=3):
    env = vector(env_id, copies, reference=True)
    observations, _ = env.reset(seed=5)
    state, is_first = agent.initial_state(copies), torch.ones(copies, dtype=torch.bool)
    actions = []
    for _ in range(steps):
        action, state = agent.act(torch.as_tensor(observations), is_first, state, explore)
        action = to_gym(action, env_id)
        actions.append(action)
        observations, _, terminated, truncated, _ = env.step(action)
        is_first = torch.as_tensor(terminated | truncated)
        state.set("action", state["action"] * (~is_first).unsqueeze(-1).float())
    return actions


def assert_same_actions(actions, expected, env_id):
    assert len(actions) == len(expected)
    for step, (action, reference) in enumerate(zip(actions, expected, strict=True)):
        if env_id == "Pendulum-v1":
            assert isinstance(action, np.ndarray) and action.dtype == np.float32
            assert ((action >= -2.0) & (action <= 2.0)).all()
        elif np.ndim(reference) == 0:
            assert isinstance(action, int), type(action)
        else:
            assert action.dtype == np.int64
        assert np.shape(action) == np.shape(reference), step
        assert np.array_equal(action, reference), (step, action, reference)


@pytest.mark.parametrize("env_id", list(RUNS))
@pytest.mark.parametrize("explore", [False, True], ids=["greedy", "sampled"])
def test_the_loaded_policy_acts_as_the_checkpoints_agent(runs, env_id, explore):
    policy = load_agent(runs[env_id])
    agent = reference_agent(runs[env_id], env_id)
    assert not policy.agent.training and policy.spec.observation_shape == RUNS[env_id][0]
    steps = 40 if env_id == "Pendulum-v1" else 30  # CartPole and NoisyImage episodes end
    torch.manual_seed(11)
    actions = play_policy(policy, env_id, steps, explore)
    torch.manual_seed(11)
    expected = play_reference(agent, env_id, steps, explore)
    assert_same_actions(actions, expected, env_id)
    torch.manual_seed(12)
    batched = play_policy_batch(policy, env_id, steps, explore)
    torch.manual_seed(12)
    expected = play_reference_batch(agent, env_id, steps, explore)
    assert_same_actions(batched, expected, env_id)


def test_the_raw_images_were_resized(runs):
    raw, _ = gym.make(NOISY).reset(seed=0)
    assert raw.shape == (24, 24, 3)
    policy = load_agent(runs[NOISY])
    assert policy.spec.observation_shape == (16, 16, 3)
    # The same image already at the run's size acts the same as the raw one.
    resized = ResizeImage(gym.make(NOISY), 16).observation(raw)
    torch.manual_seed(0)
    first = policy.act(raw, explore=True)[0]
    torch.manual_seed(0)
    assert policy.act(resized, explore=True)[0] == first


def reference_scores(logdir, env_id, episodes, sample):
    """The scores of ``torchdreamer eval``, computed plainly: one episode per copy."""
    config = Config(**json.loads((logdir / "config.json").read_text()))
    agent = reference_agent(logdir, env_id)
    seed = config.seed + 10**9
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        env, _ = make_env(config.env, episodes, seed, config.image_size, config.obs)
        td = env.reset()
        state, is_first = agent.initial_state(episodes), torch.ones(episodes, dtype=torch.bool)
        returns, scores = torch.zeros(episodes, dtype=torch.float64), [None] * episodes
        while any(score is None for score in scores):
            action, state = agent.act(td["observation"], is_first, state, explore=sample)
            if env_id == "Pendulum-v1":
                td.set("action", -2.0 + (action + 1) * (2.0 - -2.0) / 2)
            else:
                td.set("action", action.long())  # TorchRL takes the one-hot
            out, td = env.step_and_maybe_reset(td)
            returns += out["next", "reward"].reshape(episodes).double()
            is_first = out["next", "done"].reshape(episodes)
            for e in is_first.nonzero().flatten().tolist():
                if scores[e] is None:
                    scores[e] = float(returns[e])
            returns[is_first] = 0
            state.set("action", state["action"] * (~is_first).unsqueeze(-1).float())
        env.close()
    return scores


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_eval_scores_are_those_of_the_checkpoints_agent(runs, env_id):
    logdir = runs[env_id]
    for sample in (False, True):
        expected = reference_scores(logdir, env_id, 3, sample)
        assert evaluate(logdir, episodes=3, sample=sample, threads=1) == expected


def test_the_checkpoint_holds_the_env_spec_and_older_ones_make_an_env(runs, tmp_path):
    stored = load_checkpoint(runs["Pendulum-v1"])["env_spec"]
    assert stored == {
        "observation_shape": (3,),
        "discrete": False,
        "action_dim": 1,
        "action_low": (-2.0,),
        "action_high": (2.0,),
        "action_nvec": (),
    }
    assert load_agent(runs["Pendulum-v1"]).spec == EnvSpec((3,), False, 1, (-2.0,), (2.0,))
    # A checkpoint written before the spec was stored: lists (JSON-like) are tuples again,
    # and without it the spec comes from an environment made as training made it.
    old = tmp_path / "old"
    shutil.copytree(runs["CartPole-v1"], old)
    checkpoint = load_checkpoint(old)
    checkpoint["env_spec"] = {**checkpoint["env_spec"], "observation_shape": [4]}
    save_checkpoint(old, checkpoint)
    assert load_agent(old).spec.observation_shape == (4,)
    del checkpoint["env_spec"]
    save_checkpoint(old, checkpoint)
    policy = load_agent(old)
    assert policy.spec == EnvSpec((4,), discrete=True, action_dim=2)
    agent = reference_agent(old, "CartPole-v1")
    torch.manual_seed(0)
    actions = play_policy(policy, "CartPole-v1", 10, explore=True)
    torch.manual_seed(0)
    assert actions == play_reference(agent, "CartPole-v1", 10, explore=True)


def test_wrong_observations_and_states_are_named(runs):
    policy = load_agent(runs["CartPole-v1"])
    expected = r"this policy takes \(4,\) \(one observation\) or \(N, 4\) \(N of them\)"
    for wrong in (np.zeros(5), np.zeros((2, 3)), np.zeros((2, 2, 4)), np.float32(1.0)):
        with pytest.raises(ValueError, match=expected):
            policy.act(wrong)
    with pytest.raises(ValueError, match=r"has shape \(5,\); this policy takes \(4,\)"):
        policy.act(np.zeros(5))
    with pytest.raises(ValueError, match="not a dict of"):
        policy.act({"observation": np.zeros(4)})
    _, state = policy.act(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="the state is for 3 environments and the observation"):
        policy.act(np.zeros((2, 4)), state)
    with pytest.raises(ValueError, match="state must be what act"):
        policy.act(np.zeros(4), {"state": 0})
    with pytest.raises(ValueError, match="done must be a bool or 3 bools"):
        policy.reset(state, [True, False])
    images = load_agent(runs[NOISY])
    with pytest.raises(ValueError, match=r"takes \(H, W, 3\) \(any height and width"):
        images.act(np.zeros((24, 24, 1), np.uint8))
    with pytest.raises(ValueError, match="an image of torch.float32; this policy takes uint8"):
        images.act(np.zeros((16, 16, 3), np.float32))


def test_dict_observations_act_as_the_agent_does():
    shapes = {"joints": (3,), "camera": (16, 16, 3)}
    config = Config(imagination_horizon=3)
    torch.manual_seed(0)
    agent = DreamerAgent(shapes, 2, discrete=True, config=config).eval()
    policy = Policy(agent, EnvSpec(shapes, discrete=True, action_dim=2), config)
    space = gym.spaces.Dict(
        joints=gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
        camera=gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
    )
    space.seed(0)
    observations = [space.sample() for _ in range(4)]
    torch.manual_seed(1)
    state, actions = None, []
    for observation in observations:
        action, state = policy.act(observation, state, explore=True)
        actions.append(action)
    torch.manual_seed(1)
    state, is_first, expected = agent.initial_state(1), torch.ones(1, dtype=torch.bool), []
    for observation in observations:
        td = TensorDict(
            {key: torch.as_tensor(value)[None] for key, value in observation.items()},
            batch_size=[1],
        )
        action, state = agent.act(td, is_first, state, explore=True)
        expected.append(int(action.argmax(-1)))
        is_first = torch.zeros(1, dtype=torch.bool)
    assert actions == expected
    with pytest.raises(ValueError, match=r"missing \['camera'\].*expected \['camera', 'joints'\]"):
        policy.act({"joints": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"unknown \['extra'\]"):
        policy.act({**observations[0], "extra": np.zeros(1)})
    with pytest.raises(ValueError, match="entries disagree on the batch"):
        policy.act({"joints": np.zeros((2, 3), np.float32), "camera": observations[0]["camera"]})
    with pytest.raises(ValueError, match=r"takes a dict of 'joints': \(3,\)"):
        policy.act(np.zeros(3))


def test_a_missing_run_and_a_damaged_checkpoint_are_named(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: there is no run there"):
        load_agent(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json: it is not a torchdreamer"):
        load_agent(tmp_path / "empty")
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["CartPole-v1"], damaged)
    data = bytearray((damaged / CHECKPOINT).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = random.Random(1).randbytes(4096)
    (damaged / CHECKPOINT).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is damaged \\(its checksum does not match"):
        load_agent(damaged)
    edited = tmp_path / "edited"
    shutil.copytree(runs["CartPole-v1"], edited)
    saved = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**saved, "seed": 7}))
    with pytest.raises(ValueError, match="seed: 0 in the checkpoint, 7 now"):
        load_agent(edited)


def test_load_agent_is_exported():
    assert torchdreamer.load_agent is load_agent is torchdreamer.training.load_agent
    assert torchdreamer.training.Policy is Policy
