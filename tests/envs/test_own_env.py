"""Environments given from Python (never registered with gymnasium): a factory or a vector
env trains, evaluates and resumes; bad values and other spaces are refused before anything
is written; MultiDiscrete actions reach the environment as valid integer vectors."""

from __future__ import annotations

import dataclasses
import json
import pickle
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import ProbabilisticTensorDictModule as Prob
from tensordict.nn import ProbabilisticTensorDictSequential as Seq
from tensordict.nn import TensorDictModule
from tiny import TINY_RUN
from torch import nn

from torchdreamer import DreamerV3ActorLoss
from torchdreamer.envs import make_env
from torchdreamer.modules import MultiOneHotCategorical
from torchdreamer.training import Config, DreamerAgent, evaluate, train
from torchdreamer.training.checkpoint import load_checkpoint
from torchdreamer.training.logs import read_evaluations

TINY = Config(
    steps=32,
    **TINY_RUN,
    eval_every=16,
    eval_episodes=2,
    eval_video=False,
)
SAME_STEP = gym.vector.AutoresetMode.SAME_STEP


class Corridor(gym.Env):
    """Cells 0..4: the first action component moves right (1) or left (0); the right end
    pays 1. Episodes last at most 8 steps. The observation is ``size`` numbers."""

    def __init__(self, size: int = 2, nvec: tuple[int, ...] | None = None) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (size,), np.float32)
        self.action_space = (
            gym.spaces.MultiDiscrete(nvec) if nvec is not None else gym.spaces.Discrete(2)
        )
        self.received: list[object] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position, self.time = 0, 0
        return self._observation(), {}

    def step(self, action):
        self.received.append(action)
        right = int(np.asarray(action).reshape(-1)[0]) == 1
        self.position = min(max(self.position + (1 if right else -1), 0), 4)
        self.time += 1
        done = self.position == 4
        return self._observation(), float(done), done, self.time >= 8, {}

    def _observation(self) -> np.ndarray:
        values = np.zeros(self.observation_space.shape, np.float32)
        values[0], values[-1] = self.position / 4, self.time / 8
        return values


class Maker:
    """A factory of Corridors that keeps every copy it made."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs, self.made = kwargs, []

    def __call__(self) -> Corridor:
        self.made.append(Corridor(**self.kwargs))
        return self.made[-1]


def make_corridor() -> Corridor:
    return Corridor()


def files(logdir):
    """Every file under ``logdir`` and its bytes."""
    return {p.relative_to(logdir): p.read_bytes() for p in logdir.rglob("*") if p.is_file()}


def test_gymnasium_never_saw_the_test_environments():
    entry_points = {str(spec.entry_point) for spec in gym.registry.values()}
    assert not any("Corridor" in entry and "test_own_env" in entry for entry in entry_points)


# --------------------------------------------------------------------------- factory
def test_a_factory_trains_evaluates_and_resumes(tmp_path):
    maker = Maker()
    logdir = tmp_path / "run"
    summary = train(TINY, logdir, progress=False, env=maker)
    assert (summary.env_step, summary.stopped_by) == (32, None)
    saved = json.loads((logdir / "config.json").read_text())
    assert saved["env"] == "python:test_own_env.Maker"
    # Evaluations at 16 and 32 env steps, each of 2 episodes on copies of their own.
    evaluations = read_evaluations(logdir)
    assert sorted(evaluations) == [16, 32] and all(len(s) == 2 for s in evaluations.values())
    assert len(maker.made) == TINY.num_envs + 2 * 2  # training's copies, then 2 per evaluation
    trained = maker.made[: TINY.num_envs]
    # Training stepped its own copies (and TorchRL a few steps, wrapping them, to read specs).
    assert sum(len(env.received) for env in trained) >= 32
    for env in maker.made[TINY.num_envs :]:
        assert env.received  # each evaluation copy played
    # A resume with the same factory continues the run where it stopped.
    again = Maker()
    resumed = train(
        dataclasses.replace(TINY, steps=48), logdir, resume=True, progress=False, env=again
    )
    assert resumed.env_step == 48 and resumed.updates > summary.updates
    # Its copies go on from where the checkpoint left them (pickled there, their episodes
    # unbroken); the factory's new ones only had their spaces checked.
    copies = pickle.loads(load_checkpoint(logdir)["ranks"][0]["acting"]["copies"])
    before = sum(len(env.received) for env in trained)
    assert sum(len(env.unwrapped.received) for env in copies) >= before + 16
    assert sorted(read_evaluations(logdir)) == [16, 32, 48]
    # The trained policy plays on the same factory's copies.
    assert len(evaluate(logdir, episodes=3, env=Maker())) == 3


def test_a_module_level_function_is_recorded_by_its_qualified_name(tmp_path):
    config = dataclasses.replace(TINY, steps=16, eval_every=0)
    train(config, tmp_path / "run", progress=False, env=make_corridor)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["env"] == "python:test_own_env.make_corridor"


# ------------------------------------------------------------------------ vector env
def test_a_vector_env_trains_and_evaluations_use_its_env_fns(tmp_path):
    evaluation_copies = Maker()
    vector = gym.vector.SyncVectorEnv([Corridor, evaluation_copies], autoreset_mode=SAME_STEP)
    made_by_the_vector = len(evaluation_copies.made)
    try:
        logdir = tmp_path / "run"
        summary = train(TINY, logdir, progress=False, env=vector)
        assert summary.env_step == 32
        saved = json.loads((logdir / "config.json").read_text())
        assert saved["env"] == "python:SyncVectorEnv[test_own_env.Corridor]"
        assert sum(len(env.received) for env in vector.envs) >= 32
        # Evaluations made copies with env_fns in turn: the second of each pair is a Maker's.
        assert sorted(read_evaluations(logdir)) == [16, 32]
        assert len(evaluation_copies.made) == made_by_the_vector + 2
        # The run leaves the vector env open: it is the caller's.
        assert not vector.closed
        vector.reset(seed=0)
    finally:
        vector.close()


class Frames(gym.Env):
    """6 x 6 images filled with 10 + 20 t at step t; episodes end at t = 2."""

    observation_space = gym.spaces.Box(0, 255, (6, 6, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.time = 0
        return np.full((6, 6, 3), 10, np.uint8), {}

    def step(self, action):
        self.time += 1
        image = np.full((6, 6, 3), 10 + 20 * self.time, np.uint8)
        return image, 0.0, self.time == 2, False, {}


def test_a_vector_envs_images_are_resized_final_observations_too():
    vector = gym.vector.SyncVectorEnv([Frames, Frames], autoreset_mode=SAME_STEP)
    try:
        env, spec = make_env(vector, 2, seed=0, image_size=4)
        assert spec.observation_shape == (4, 4, 3)
        td = env.reset()
        assert td["observation"].shape == (2, 4, 4, 3)
        assert (td["observation"] == 10).all()  # a uniform image stays uniform
        seen = []
        for _ in range(2):
            td["action"] = torch.tensor([[1, 0], [0, 1]])
            out, td = env.step_and_maybe_reset(td)
            seen.append(out["next", "observation"])
        assert (seen[0] == 30).all()
        assert (seen[1] == 50).all() and out["next", "done"].all()  # the episodes' last images
        assert (td["observation"] == 10).all()  # and the reset ones after them
        env.close()
        assert not vector.closed
    finally:
        vector.close()


# ---------------------------------------------------------------------- bad values
def _wrong_kind():
    return 42


def _a_vector():
    return gym.vector.SyncVectorEnv([Corridor], autoreset_mode=SAME_STEP)


def _shifted() -> Corridor:
    env = Corridor(nvec=(3, 2))
    env.action_space = gym.spaces.MultiDiscrete([3, 2], start=[1, 0])
    return env


def _flat() -> Corridor:
    return Corridor(nvec=np.array([[2, 2], [3, 3]]))


#: (what makes the env= value, the config, the error, words of its message)
BAD = {
    "not-callable": (lambda: 42, TINY, TypeError, "env must be a gymnasium id (str), a function"),
    "an-instance": (
        lambda: Corridor(),
        TINY,
        TypeError,
        "env is a gymnasium.Env instance (Corridor); pass a function that makes one",
    ),
    "factory-of-no-env": (
        lambda: _wrong_kind,
        TINY,
        TypeError,
        "the env factory test_own_env._wrong_kind returned int 42, not a gymnasium.Env",
    ),
    "factory-of-a-vector": (
        lambda: _a_vector,
        TINY,
        TypeError,
        "returned a vector env (SyncVectorEnv); a factory makes one environment",
    ),
    "vector-of-another-size": (
        lambda: gym.vector.SyncVectorEnv([Corridor] * 3, autoreset_mode=SAME_STEP),
        TINY,
        ValueError,
        "the vector env has 3 copies but config.num_envs is 2",
    ),
    "vector-resetting-next-step": (
        lambda: gym.vector.SyncVectorEnv([Corridor] * 2),
        dataclasses.replace(TINY, eval_every=0),
        ValueError,
        "autoreset mode AutoresetMode.NEXT_STEP; torchdreamer needs them reset on the step",
    ),
    "wrapped-vector-and-evaluations": (
        lambda: gym.vector.VectorWrapper(
            gym.vector.SyncVectorEnv([Corridor] * 2, autoreset_mode=SAME_STEP)
        ),
        TINY,
        ValueError,
        "this vector env cannot make them: it is wrapped (VectorWrapper)",
    ),
    "config-naming-another-env": (
        lambda: make_corridor,
        Config(env="Pendulum-v1"),
        ValueError,
        "config.env is 'Pendulum-v1', but env= gives the environment",
    ),
    "config-with-a-suite": (
        lambda: make_corridor,
        Config(suite="crafter"),
        ValueError,
        "config.suite 'crafter' picks an environment of its own",
    ),
    "config-with-dmc-obs": (
        lambda: make_corridor,
        dataclasses.replace(TINY, obs="image"),
        ValueError,
        "obs='image' picks a DMC suite's observations",
    ),
    "multidiscrete-2d": (
        lambda: _flat,
        TINY,
        ValueError,
        "has nvec of shape (2, 2); torchdreamer supports MultiDiscrete actions with a one-dim",
    ),
    "multidiscrete-start": (
        lambda: _shifted,
        TINY,
        ValueError,
        "starts at [1, 0]; torchdreamer supports MultiDiscrete actions starting at 0",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_envs_are_refused_before_anything_is_written(tmp_path, case):
    make, config, error, words = BAD[case]
    env = make()
    logdir = tmp_path / "run"
    try:
        with pytest.raises(error) as raised:
            train(config, logdir, progress=False, env=env)
    finally:
        if isinstance(env, gym.vector.VectorEnv):
            env.close()
    assert words in str(raised.value), str(raised.value)
    assert not logdir.exists()


# ------------------------------------------------------------------------- resuming
def test_a_resume_or_an_evaluation_needs_the_same_environment(tmp_path):
    logdir = tmp_path / "run"
    config = dataclasses.replace(TINY, eval_every=0)
    train(config, logdir, progress=False, env=Maker(size=2))
    before = files(logdir)
    more = dataclasses.replace(config, steps=48)

    def refused(error, words, **kwargs):
        with pytest.raises(error) as raised:
            train(more, logdir, resume=True, progress=False, **kwargs)
        assert words in str(raised.value), str(raised.value)
        assert files(logdir) == before

    # The same name but other spaces than the checkpoint's stored spec.
    refused(
        ValueError,
        "checkpoint.pt was trained on an environment of observations (2,), 2 discrete "
        "actions; this one has observations (3,), 2 discrete actions.",
        env=Maker(size=3),
    )
    refused(
        ValueError,
        "was trained on 'python:test_own_env.Maker', and env= gives "
        "'python:test_own_env.make_corridor'; resume it with the environment it was trained on",
        env=make_corridor,
    )
    # Without env= (as `torchdreamer train --resume` would): nothing makes it again.
    saved = dataclasses.replace(config, env=json.loads((logdir / "config.json").read_text())["env"])
    with pytest.raises(ValueError, match=r"from Python \(python:test_own_env.Maker\)"):
        train(saved, logdir, resume=True, progress=False)
    with pytest.raises(ValueError, match="environment from Python"):
        train(config, logdir, resume=True, progress=False)
    assert files(logdir) == before
    # Evaluating takes env= too, with the run's spaces.
    with pytest.raises(ValueError, match=r"'python:test_own_env.Maker' was given from Python"):
        evaluate(logdir, episodes=1)
    with pytest.raises(ValueError, match="observations \\(3,\\), 2 discrete actions"):
        evaluate(logdir, episodes=1, env=Maker(size=3))
    assert len(evaluate(logdir, episodes=2, env=Maker(size=2))) == 2
    assert files(logdir) == before


# ---------------------------------------------------------------------- MultiDiscrete
def test_multi_discrete_actions_train_and_reach_the_env_as_integer_vectors(tmp_path):
    maker = Maker(nvec=(3, 2))
    summary = train(TINY, tmp_path / "run", progress=False, env=maker)
    assert summary.env_step == 32 and summary.updates > 0
    received = [action for env in maker.made for action in env.received]
    assert len(received) >= 32
    for action in received:
        assert isinstance(action, np.ndarray) and action.dtype.kind == "i"
        assert action.shape == (2,) and 0 <= action[0] < 3 and 0 <= action[1] < 2
    # A near-uniform policy tries every action of each component.
    stacked = np.stack(received)
    assert set(stacked[:, 0].tolist()) == {0, 1, 2} and set(stacked[:, 1].tolist()) == {0, 1}


def test_multi_discrete_spec_and_greedy_action_is_argmax_per_component():
    env, spec = make_env(Maker(nvec=(3, 2)), 2, seed=0)
    env.close()
    assert (spec.discrete, spec.action_dim, spec.action_nvec) == (True, 5, (3, 2))
    again = type(spec)(**dataclasses.asdict(spec))
    assert again == spec
    torch.manual_seed(0)
    agent = DreamerAgent.from_spec(spec, TINY)
    observation, first = torch.randn(64, 2), torch.ones(64, dtype=torch.bool)
    action, state = agent.act(observation, first, agent.initial_state(64), explore=False)
    with torch.no_grad(), agent.autocast():  # the dtype act computed in
        logits = agent.actor(state["stoch"], state["deter"]).double()
    parts = logits.split([3, 2], -1)
    indices = torch.stack([part.argmax(-1) for part in parts], -1)
    one_hots = [nn.functional.one_hot(indices[:, i], n) for i, n in enumerate((3, 2))]
    assert torch.equal(action, torch.cat(one_hots, -1).to(action.dtype))
    assert torch.equal(spec.to_env_action(action), indices)
    sampled, _ = agent.act(observation, first, agent.initial_state(64), explore=True)
    assert torch.equal(sampled[:, :3].sum(-1), torch.ones(64))
    assert torch.equal(sampled[:, 3:].sum(-1), torch.ones(64))


def test_the_imagination_draws_multi_discrete_actions_per_component():
    """The one rollout draws one one-hot action per component, compiled or not."""
    from torchdreamer.dreamer import imagine, imagine_step

    agent = DreamerAgent((2,), 5, discrete=True, config=TINY, action_nvec=(3, 2))
    rssm = agent.world_model.rssm
    stoch, deter = torch.randn(6, rssm.stoch_size), torch.randn(6, rssm.deter_size)
    step = partial(imagine_step, agent.actor, rssm, agent.world_model.reward)
    with torch.no_grad():
        _, _, action, _ = imagine(step, stoch, deter, 3)
    assert action.shape == (6, 3, 5)
    assert torch.equal(action[..., :3].sum(-1), torch.ones(6, 3))
    assert torch.equal(action[..., 3:].sum(-1), torch.ones(6, 3))


class Walk(nn.Module):
    """A 1-D world: the first component moves by -1, 0 or +1, the second adds 0 or 1."""

    def reset(self, td):
        return td.clone()

    def step(self, td):
        action = td["action"]
        move = action[..., :3].argmax(-1, keepdim=True).float() - 1
        move = move + action[..., 3:].argmax(-1, keepdim=True).float()
        state = td["state"] + move
        td["next"] = TensorDict(state=state, reward=-state.abs(), batch_size=td.shape)
        return td


def test_actor_loss_scores_multi_discrete_actions_per_component():
    torch.manual_seed(0)
    nvec, eta = (3, 2), 0.1
    linear = nn.Linear(1, 5)
    actor = Seq(
        TensorDictModule(linear, ["state"], ["logits"]),
        Prob(
            ["logits"],
            ["action"],
            distribution_class=MultiOneHotCategorical,
            distribution_kwargs={"nvec": nvec},
        ),
    )
    value = nn.Linear(1, 1)
    critic = TensorDictModule(value, ["state"], ["state_value"])
    loss = DreamerV3ActorLoss(
        actor, critic, Walk(), use_reinforce=True, entropy_bonus=eta, imagination_horizon=4
    )
    loss_td, imagined = loss(TensorDict(state=torch.randn(6, 1), batch_size=[6]))
    loss_td["loss_actor"].backward()

    # Plain float64: per component, log-softmax at the chosen index and the entropy.
    weight64 = linear.weight.detach().double().requires_grad_()
    states = imagined["state"].double()
    logits = states @ weight64.T + linear.bias.detach().double()
    action = imagined["action"]
    log_prob = torch.zeros(states.shape[:-1], dtype=torch.float64)
    entropy = torch.zeros_like(log_prob)
    for part, chosen in zip(logits.split(nvec, -1), action.split(nvec, -1), strict=True):
        logp = part.log_softmax(-1)
        log_prob = log_prob + logp.gather(-1, chosen.argmax(-1, keepdim=True)).squeeze(-1)
        entropy = entropy - (logp.exp() * logp).sum(-1)
    values = (states @ value.weight.detach().double().T + value.bias.detach().double())[..., 0]
    returns = imagined["lambda_target"][..., 0].double()
    weight = imagined["discount_weight"][..., 0].double()
    scale = loss_td["return_scale"].double()
    advantage = (returns - values) / scale
    expected = -(weight * (log_prob * advantage + eta * entropy)).mean()
    expected.backward()
    assert loss_td["loss_actor"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert loss_td["actor_entropy"].item() == pytest.approx(
        (weight * entropy).mean().item(), rel=1e-5
    )
    torch.testing.assert_close(linear.weight.grad.double(), weight64.grad, rtol=1e-4, atol=1e-6)
