"""The suite adapters against their suites' raw output (ALE, dm_control, crafter).

Each reference below drives the suite's own package directly and applies the official
DreamerV3 preprocessing written out plainly here. The suite tests are collected only where
the suite's extra is installed (``pip install -e ".[all]"``); without it they are skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from torchdreamer.envs import suites
from torchdreamer.envs.suites import is_suite_id, make_suite_env
from torchdreamer.training.config import OFFICIAL, PRESETS, WHY, Config, official_comparison


def test_plain_ids_are_not_suites():
    assert make_suite_env("CartPole-v1", seed=0) is None
    assert make_suite_env("Pendulum-v1", seed=0, image_size=64) is None


@pytest.mark.parametrize(
    "env_id, obs, message",
    [
        ("atari100k:", "auto", "names no task"),
        ("dmc:", "auto", "names no task"),
        ("crafter:other", "auto", "one task"),
        ("atari:pong", "proprio", "only image"),
        ("dmc:walker_walk", "vector", "obs must be"),
    ],
)
def test_bad_ids_and_options_are_refused(env_id, obs, message):
    with pytest.raises(ValueError, match=message):
        make_suite_env(env_id, seed=0, obs=obs)


@pytest.mark.parametrize(
    "env_id, module, extra",
    [
        ("atari100k:pong", "ale_py", "atari"),
        ("dmc:walker_walk", "dm_control", "dmc"),
        ("crafter", "crafter", "crafter"),
    ],
)
def test_a_missing_package_names_its_extra(env_id, module, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=rf"torchdreamer\[{extra}\]"):
        make_suite_env(env_id, seed=0)


# dreamerv3/configs.yaml at danijar/dreamerv3 e3f0224, written out here in our fields' terms.
# The `defaults` block (size200m's widths: rssm deter 8192, hidden 1024, classes 64, depth
# 64, units 1024; jax.compute_dtype bfloat16):
OFFICIAL_DEFAULTS = {
    "preset": "size200m",
    "seed": 0,
    "num_envs": 16,  # run.envs
    "batch_size": 16,
    "batch_length": 64,
    "train_ratio": 32.0,  # run.train_ratio
    "replay_capacity": 5_000_000,  # replay.size 5e6
    "replay_context": 1,  # replay_context
    "replay_online": True,  # replay.online
    "imagination_horizon": 15,  # agent.imag_length
    "horizon": 333,  # agent.horizon
    "lmbda": 0.95,  # agent.imag_loss.lam
    "entropy_bonus": 3e-4,  # agent.imag_loss.actent
    "actor_grad": "reinforce",  # agent.ac_grads False: REINFORCE for every action kind
    "slow_critic_tau": 0.02,  # agent.slowvalue.rate
    "slow_critic_weight": 1.0,  # agent.imag_loss.slowreg
    "replay_value_scale": 0.3,  # agent.loss_scales.repval
    "lr": 4e-5,  # agent.opt
    "critic_lr": 4e-5,  # agent.opt.lr: one optimiser, one rate for every network
    "warmup": 1000,
    "agc": 0.3,
    "eps": 1e-20,
    "beta1": 0.9,
    "beta2": 0.999,
    "precision": "bfloat16",  # jax.compute_dtype
}
# Each suite's block over the defaults, with its env's size (env.atari.size [96, 96],
# env.atari100k / env.crafter / env.dmc size [64, 64]) and observation (dmc_proprio:
# env.dmc.image False; dmc_vision: env.dmc.proprio False; the others have images only).
OFFICIAL_SUITES = {
    "atari100k": dict(
        env="atari100k:pong",
        steps=110_000,
        num_envs=1,
        train_ratio=256.0,
        obs="image",
        image_size=64,
    ),
    "atari": dict(env="atari:pong", steps=51_000_000, train_ratio=32.0, obs="image", image_size=96),
    "crafter": dict(
        env="crafter", steps=1_100_000, num_envs=1, train_ratio=512.0, obs="image", image_size=64
    ),
    "dmc_proprio": dict(
        env="dmc:walker_walk",
        steps=1_100_000,
        train_ratio=1024.0,
        preset="size1m",
        obs="proprio",
        image_size=64,
    ),
    "dmc_vision": dict(
        env="dmc:walker_walk", steps=1_100_000, train_ratio=256.0, obs="image", image_size=64
    ),
}


@pytest.mark.parametrize("suite", sorted(OFFICIAL_SUITES))
def test_a_suite_is_every_official_setting_of_it(suite):
    official = {**OFFICIAL_DEFAULTS, **OFFICIAL_SUITES[suite]}
    config = Config(suite=suite)
    for name, value in official.items():
        assert getattr(config, name) == value, (suite, name)
    assert is_suite_id(config.env)
    # The package's table says the same, field by field, and nothing differs from it.
    assert {name: value for name, (_, value) in OFFICIAL[suite].items()} == official
    assert [row for row in official_comparison(config) if row[4] not in ("", "ours only")] == []


def test_the_official_size1m_and_size200m_are_the_configs_sizes():
    for name, (deter, hidden, classes, units, depth) in {
        "size1m": (512, 64, 4, 64, 4),
        "size200m": (8192, 1024, 64, 1024, 64),
    }.items():
        size = PRESETS[name]
        assert (size.deter, size.hidden, size.classes, size.units, size.cnn_depth) == (
            deter,
            hidden,
            classes,
            units,
            depth,
        )


def test_given_fields_win_over_a_suite_and_general_defaults_hold_without_one():
    config = Config(suite="atari", lr=1e-4, warmup=200, image_size=64, precision="float32")
    assert (config.lr, config.warmup, config.image_size, config.precision) == (
        1e-4,
        200,
        64,
        "float32",
    )
    rows = {row[0]: row for row in official_comparison(config, given={"lr", "warmup"})}
    assert rows["lr"][1:] == (1e-4, 4e-5, "agent.opt.lr", "given")
    # An explicit official value stays, with no suite too.
    assert Config(lr=4e-5, warmup=1000).lr == 4e-5
    plain = Config()
    assert (plain.lr, plain.warmup, plain.replay_capacity, plain.image_size) == (
        1e-4,
        200,
        1_000_000,
        64,
    )
    assert (plain.preset, plain.precision) == ("small", "auto")


def test_each_general_default_that_differs_from_the_official_has_its_reason_in_the_readme():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    differ = [row for row in official_comparison(Config()) if row[4] not in ("", "ours only")]
    assert {row[0] for row in differ} >= {"lr", "warmup", "replay_capacity", "preset"}
    for name, _, _, _, why in differ:
        assert why == WHY[""][name], name
        assert f"| `{name}` |" in readme, f"{name} is not in the README's table"


def test_a_suite_preset_yields_to_given_fields_and_checks_the_env():
    config = Config(suite="DMC_Vision", env="dmc:cartpole_swingup", train_ratio=64, num_envs=2)
    assert (config.suite, config.env, config.train_ratio, config.num_envs) == (
        "dmc_vision",
        "dmc:cartpole_swingup",
        64.0,
        2,
    )
    assert (config.steps, config.preset, config.obs) == (1_100_000, "size200m", "image")
    # Saved and loaded, the resolved values stay as they are.
    again = Config(**json.loads(config.to_json()))
    assert again == config
    with pytest.raises(ValueError, match=r"suite 'atari100k' is for the env atari100k:<task>"):
        Config(suite="atari100k", env="CartPole-v1")
    with pytest.raises(ValueError, match=r"unknown suite 'procgen'; choose one of \['atari'"):
        Config(suite="procgen")
    with pytest.raises(
        ValueError, match=r"obs must be one of \['auto', 'proprio', 'image', 'both'\]"
    ):
        Config(obs="vector")
    # Without a suite the general defaults hold.
    plain = Config()
    assert (plain.env, plain.steps, plain.num_envs, plain.train_ratio, plain.preset) == (
        "CartPole-v1",
        100_000,
        16,
        32.0,
        "small",
    )


# --- Atari ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ale_py():
    return pytest.importorskip("ale_py")


def raw_ale(ale_py, game, sticky=0.0, seed=0):
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.setInt("random_seed", seed)
    ale.setFloat("repeat_action_probability", sticky)
    ale.loadROM(str(ale_py.roms.get_rom_path(game)))
    return ale


def pillow_resize(frame, size):
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))


def reference_atari_rollout(ale, action_set, actions, noops, repeat=4, size=(64, 64)):
    """Plain DreamerV3 Atari preprocessing on the raw ALE: observations, rewards, and on how
    many steps the max-pool of the last two screens differs from the last screen."""
    import ale_py

    ale.reset_game()
    for _ in range(noops):
        ale.act(ale_py.Action.NOOP)
    frame = ale.getScreenRGB()
    observations, rewards, pool_differs = [pillow_resize(frame, size)], [], 0
    for a in actions:
        total, screens = 0.0, []
        for _ in range(repeat):
            total += ale.act(action_set[a])
            screens.append(ale.getScreenRGB())
        pooled = np.maximum(screens[-2], screens[-1])
        pool_differs += int((pooled != screens[-1]).any())
        observations.append(pillow_resize(pooled, size))
        rewards.append(total)
    return observations, rewards, pool_differs


def test_atari100k_matches_the_raw_ale(ale_py):
    env = make_suite_env("atari100k:pong", seed=3)
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    ale = raw_ale(ale_py, "pong")
    minimal = list(ale.getMinimalActionSet())
    assert env.action_space == gym.spaces.Discrete(len(minimal)) and env.action_set == minimal
    assert env.ale.getFloat("repeat_action_probability") == 0.0

    obs, _ = env.reset()  # the constructor's seed: ALE loads the game once
    noops = env.ale.getEpisodeFrameNumber()
    ale.reset_game()
    noops -= ale.getEpisodeFrameNumber()
    assert 0 <= noops <= 30

    actions = np.random.default_rng(0).integers(len(minimal), size=300)
    expected_obs, expected_rewards, pool_differs = reference_atari_rollout(
        ale, minimal, actions, noops
    )
    assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3)
    np.testing.assert_array_equal(obs, expected_obs[0])
    rewards = []
    for t, a in enumerate(actions):
        obs, reward, terminated, truncated, _ = env.step(a)
        assert not (terminated or truncated)
        np.testing.assert_array_equal(obs, expected_obs[t + 1], err_msg=f"step {t}")
        rewards.append(reward)
    assert rewards == expected_rewards
    assert any(r != 0 for r in rewards)  # the summed rewards were checked on real points
    assert pool_differs > 0  # and the max-pool on frames where the last two differ


def test_atari_noops_are_seeded_and_vary(ale_py):
    env = suites.AtariEnv("breakout", seed=0)
    base = raw_ale(ale_py, "breakout")
    base.reset_game()
    start = base.getEpisodeFrameNumber()

    def noops(seed):
        env.reset(seed=seed)
        return env.ale.getEpisodeFrameNumber() - start

    counts = [noops(seed) for seed in range(8)]
    assert all(0 <= c <= 30 for c in counts)
    assert len(set(counts)) > 1
    assert [noops(seed) for seed in range(8)] == counts
    env0 = suites.AtariEnv("breakout", noops=0)
    env0.reset(seed=1)
    assert env0.ale.getEpisodeFrameNumber() == start


def test_full_atari_settings(ale_py):
    env = make_suite_env("atari:breakout", seed=0)
    assert env.observation_space == gym.spaces.Box(0, 255, (96, 96, 1), np.uint8)
    assert env.action_space == gym.spaces.Discrete(18)
    assert env.action_set == list(env.ale.getLegalActionSet())
    assert env.ale.getFloat("repeat_action_probability") == 0.25

    # Grey conversion: 0.299 R + 0.587 G + 0.114 B of the resized pooled frame, truncated.
    grey = suites.AtariEnv("breakout", size=96, gray=True, noops=0, seed=0)
    ale = raw_ale(ale_py, "breakout")
    actions = np.random.default_rng(1).integers(4, size=40)
    expected, _, _ = reference_atari_rollout(
        ale, list(ale.getMinimalActionSet()), actions, 0, size=(96, 96)
    )
    # (the blue weight as the official code writes it: truncation to uint8 sees its last bit)
    weights = np.array([0.299, 0.587, 1 - (0.299 + 0.587)])
    observations = [grey.reset(seed=0)[0]] + [grey.step(a)[0] for a in actions]
    for obs, rgb in zip(observations, expected, strict=True):
        assert obs.shape == (96, 96, 1) and obs.dtype == np.uint8
        np.testing.assert_array_equal(obs[..., 0], (rgb * weights).sum(-1).astype(np.uint8))

    # Sticky actions act: the same actions give other screens than without them.
    sticky = suites.AtariEnv("breakout", noops=0, sticky=True, seed=0)
    plain = suites.AtariEnv("breakout", noops=0, sticky=False, seed=0)
    sticky.reset(seed=0)
    plain.reset(seed=0)
    actions = np.random.default_rng(2).integers(4, size=200)
    differ = [not np.array_equal(sticky.step(a)[0], plain.step(a)[0]) for a in actions]
    assert any(differ)


def test_atari_time_limit_truncates(ale_py):
    env = suites.AtariEnv("pong", length=40, seed=0)
    env.reset()
    ends = [env.step(0)[2:4] for _ in range(10)]
    assert ends[:-1] == [(False, False)] * 9 and ends[-1] == (False, True)
    with pytest.raises(ValueError, match="not in Discrete"):
        env.step(6)
    with pytest.raises(ValueError, match="unknown Atari game"):
        suites.AtariEnv("not_a_game")


# --- DMC --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dm_suite():
    pytest.importorskip("dm_control")
    return suites._import_dm_control_suite()


@pytest.mark.parametrize("task", ["walker_walk", "cartpole_swingup", "cup_catch"])
def test_dmc_proprio_flattens_the_raw_readings_in_sorted_order(dm_suite, task):
    env = make_suite_env(f"dmc:{task}", seed=7)
    domain, name = task.split("_", 1)
    raw = dm_suite.load({"cup": "ball_in_cup"}.get(domain, domain), name, task_kwargs={"random": 7})
    assert env.action_space == gym.spaces.Box(-1, 1, raw.action_spec().shape, np.float32)

    def flat(time_step):
        readings = time_step.observation
        return np.concatenate(
            [np.asarray(readings[k], np.float64).reshape(-1) for k in sorted(readings)]
        )

    obs, _ = env.reset(seed=7)
    expected = flat(raw.reset())
    assert obs.dtype == np.float32 and env.observation_space.shape == expected.shape
    np.testing.assert_array_equal(obs, expected.astype(np.float32))
    for action in np.random.default_rng(0).uniform(-1, 1, (20, *env.action_space.shape)):
        obs, reward, terminated, truncated, _ = env.step(action)
        step = raw.step(action)  # this suite's bounds are [-1, 1]
        np.testing.assert_array_equal(obs, flat(step).astype(np.float32))
        assert reward == step.reward and not (terminated or truncated)


def test_dmc_action_repeat_sums_rewards_and_time_limit_truncates(dm_suite):
    env = suites.DMCEnv("cartpole_balance", repeat=2, seed=1)
    raw = dm_suite.load("cartpole", "balance", task_kwargs={"random": 1})
    env.reset(seed=1)
    raw.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (500, 1))
    for t, action in enumerate(actions):
        obs, reward, terminated, truncated, _ = env.step(action)
        first, second = raw.step(action), raw.step(action)
        assert reward == first.reward + second.reward
        assert reward > 0
        np.testing.assert_array_equal(
            obs,
            np.concatenate([second.observation["position"], second.observation["velocity"]]).astype(
                np.float32
            ),
        )
        # the suite's limit is 1000 simulator steps, 500 agent steps here
        assert (terminated, truncated) == (False, t == 499)


def test_dmc_maps_actions_onto_the_task_bounds(dm_suite):
    env = suites.DMCEnv("cartpole_balance", seed=0)
    env._low, env._high = np.array([-0.5]), np.array([0.5])  # a task with narrower bounds
    sent, step = [], env._env.step
    env._env.step = lambda action: (sent.append(action), step(action))[1]
    env.reset(seed=None)
    env.step(np.array([1.0]))
    env.step(np.array([-3.0]))  # outside [-1, 1]: clipped first
    env.step(np.array([0.0]))
    np.testing.assert_allclose(np.concatenate(sent), [0.5, -0.5, 0.0])
    with pytest.raises(ValueError, match="finite array of shape"):
        env.step(np.array([np.nan]))


def test_dmc_image_is_the_official_camera_render(dm_suite):
    env = make_suite_env("dmc:walker_walk", seed=2, obs="image")
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.camera == 0
    raw = dm_suite.load("walker", "walk", task_kwargs={"random": 2})
    obs, _ = env.reset(seed=2)
    raw.reset()
    np.testing.assert_array_equal(obs, raw.physics.render(64, 64, camera_id=0))
    action = np.full(env.action_space.shape, 0.3)
    obs, *_ = env.step(action)
    raw.step(action)
    assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3) and obs.std() > 0
    np.testing.assert_array_equal(obs, raw.physics.render(64, 64, camera_id=0))
    assert suites.DMCEnv("quadruped_walk", obs="image", size=32).camera == 2


def test_dmc_both_is_a_dict_of_the_proprio_vector_and_the_image(dm_suite):
    env = make_suite_env("dmc:cartpole_balance", seed=0, obs="both")
    proprio = make_suite_env("dmc:cartpole_balance", seed=0, obs="proprio")
    image = make_suite_env("dmc:cartpole_balance", seed=0, obs="image")
    assert isinstance(env.observation_space, gym.spaces.Dict)
    assert env.observation_space["proprio"] == proprio.observation_space
    assert env.observation_space["image"] == image.observation_space
    both, _ = env.reset(seed=0)
    np.testing.assert_array_equal(both["proprio"], proprio.reset(seed=0)[0])
    np.testing.assert_array_equal(both["image"], image.reset(seed=0)[0])
    action = np.array([0.3], np.float32)
    both, *_ = env.step(action)
    np.testing.assert_array_equal(both["proprio"], proprio.step(action)[0])
    np.testing.assert_array_equal(both["image"], image.step(action)[0])


def test_dmc_refuses_bad_tasks_and_backends(dm_suite, monkeypatch):
    with pytest.raises(ValueError, match="unknown DMC task"):
        make_suite_env("dmc:walker_fly", seed=0)
    monkeypatch.setenv("MUJOCO_GL", "vulkan")
    with pytest.raises(ValueError, match="MUJOCO_GL='vulkan'.*egl.*osmesa"):
        make_suite_env("dmc:walker_walk", seed=0)
    message = suites._render_help("osmesa", AttributeError("no glGetError"))
    assert "libosmesa6" in message and "MUJOCO_GL=egl" in message


# --- Crafter ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crafter():
    return pytest.importorskip("crafter")


def test_crafter_matches_the_raw_game(crafter):
    env = make_suite_env("crafter", seed=4)
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == gym.spaces.Discrete(17)
    raw = crafter.Env(size=(64, 64), reward=True, seed=4)
    obs, _ = env.reset(seed=4)
    np.testing.assert_array_equal(obs, raw.reset())  # the seeded first world
    # Crafter's later steps are not reproducible between two games of one seed (creatures
    # move differently), so each step is compared with what the wrapped game returned.
    returned, step = [], env._env.step
    env._env.step = lambda action: returned.append(step(action)) or returned[-1]
    rewards = []
    for action in np.random.default_rng(0).integers(17, size=400):
        obs, reward, terminated, truncated, _ = env.step(action)
        image, expected, done, info = returned[-1]
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        np.testing.assert_array_equal(obs, image)
        assert reward == expected and terminated == (done and info["discount"] == 0)
        assert truncated == (done and info["discount"] != 0)
        rewards.append(reward)
        if done:
            break
    assert any(r != 0 for r in rewards)


def test_crafter_episode_length_truncates(crafter):
    env = suites.CrafterEnv(length=25, seed=0)
    env.reset()
    ends = [env.step(0)[2:4] for _ in range(25)]  # noop: no death within 25 steps
    assert ends[:-1] == [(False, False)] * 24 and ends[-1] == (False, True)
    assert suites.CrafterEnv(seed=0)._env._length == 10_000


# --- TorchRL ----------------------------------------------------------------------------


_SUITES = [
    ("atari100k:pong", "auto", "ale_py"),
    ("dmc:cartpole_swingup", "proprio", "dm_control"),
    ("dmc:cartpole_swingup", "image", "dm_control"),
    ("dmc:cartpole_swingup", "both", "dm_control"),
    ("crafter", "auto", "crafter"),
]


@pytest.mark.parametrize("env_id, obs, module", _SUITES)
def test_make_env_batches_suites_for_torchrl(env_id, obs, module):
    pytest.importorskip(module)
    from torchdreamer.envs import make_env

    env, spec = make_env(env_id, num_envs=2, seed=0, obs=obs)
    try:
        rollout = env.rollout(5)
        observation = spec.observation_of(rollout)
        if obs == "both":
            assert spec.observation_shape == {"proprio": (5,), "image": (64, 64, 3)}
            for key, shape in spec.observation_shape.items():
                assert observation[key].shape == (2, 5, *shape)
        else:
            assert observation.shape == (2, 5, *spec.observation_shape)
        assert rollout["next", "reward"].shape == (2, 5, 1)
        assert spec.discrete == (not env_id.startswith("dmc:"))
    finally:
        env.close()


@pytest.mark.parametrize("env_id, obs, module", [s for s in _SUITES if s[1] != "image"])
def test_a_short_training_run_on_each_suite(env_id, obs, module, tmp_path):
    pytest.importorskip(module)
    from torchdreamer.training import Config
    from torchdreamer.training.loop import train

    config = Config(
        env=env_id,
        steps=32,
        num_envs=2,
        batch_size=2,
        batch_length=8,
        train_ratio=4,
        imagination_horizon=3,
        replay_capacity=1024,
        obs=obs,
    )
    summary = train(config, tmp_path / "run", progress=False)
    assert (summary.env_step, summary.updates) == (32, 4)
    assert (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "env_id, obs, module",
    [
        ("atari100k:pong", "auto", "ale_py"),
        ("dmc:cartpole_swingup", "proprio", "dm_control"),
        ("dmc:cartpole_swingup", "image", "dm_control"),
        ("dmc:cartpole_swingup", "both", "dm_control"),
        ("crafter", "auto", "crafter"),
    ],
)
def test_suites_pass_gymnasiums_env_checker(env_id, obs, module):
    # spaces hold what reset/step return, and a seeded reset repeats itself
    pytest.importorskip(module)
    from gymnasium.utils.env_checker import check_env

    check_env(make_suite_env(env_id, seed=0, obs=obs), skip_render_check=True)


def test_the_suite_flag_applies_the_preset_prints_it_and_saves_it(tmp_path, capsys):
    pytest.importorskip("dm_control")
    from torchdreamer import cli

    logdir = tmp_path / "run"
    small = ["--steps", "32", "--num-envs", "2", "--batch-size", "2", "--batch-length", "8"]
    code = cli.main(
        ["train", "--suite", "dmc_proprio", "--env", "dmc:cartpole_balance", *small]
        + ["--train-ratio", "4", "--imagination-horizon", "3", "--replay-capacity", "1024"]
        + ["--eval-every", "0", "--no-progress", "--threads", "1", "--logdir", str(logdir)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert (
        "suite dmc_proprio (official settings): env dmc:cartpole_balance (given), preset "
        "size1m, obs proprio, steps 32 (given), image_size 64, num_envs 2 (given), train_ratio "
        "4.0 (given), replay_capacity 1024 (given), lr 4e-05, critic_lr 4e-05, warmup 1000, "
        "precision bfloat16"
    ) in out
    saved = json.loads((logdir / "config.json").read_text())
    assert (saved["suite"], saved["preset"], saved["obs"]) == ("dmc_proprio", "size1m", "proprio")


def test_the_atari_suite_trains_on_96_by_96_grey_images(ale_py, tmp_path):
    from torchdreamer.training.loop import train
    from torchdreamer.training.policy import load_agent

    tiny = dict(num_envs=2, batch_size=2, batch_length=8, train_ratio=4, imagination_horizon=3)
    config = Config(
        suite="atari", preset="small", steps=32, replay_capacity=1024, threads=1, **tiny
    )
    assert (config.image_size, config.lr, config.warmup) == (96, 4e-5, 1000)
    summary = train(config, tmp_path / "run", progress=False)
    assert (summary.env_step, summary.updates) == (32, 4)
    agent = load_agent(tmp_path / "run")
    image, _ = make_suite_env("atari:pong", seed=0, image_size=96).reset(seed=0)
    assert image.shape == (96, 96, 1)
    action, _ = agent.act(image, None)
    assert 0 <= int(action) < 18


def test_the_suite_envs_take_the_official_env_settings(ale_py):
    # configs.yaml env.atari100k, env.atari, env.dmc, env.crafter (size, repeat, sticky,
    # gray, actions, noops; pooling 2 by max for both Ataris).
    official = {
        "atari100k:pong": dict(size=(64, 64), repeat=4, sticky=False, gray=False, noops=30),
        "atari:pong": dict(size=(96, 96), repeat=4, sticky=True, gray=True, noops=30),
    }
    for env_id, settings in official.items():
        env = make_suite_env(env_id, seed=0)
        assert {name: getattr(env, name) for name in settings} == settings, env_id
        assert env.pooling == 2
    assert make_suite_env("atari:pong", seed=0).action_space.n == 18  # actions: all
    assert make_suite_env("atari100k:pong", seed=0).action_space.n == 6  # actions: needed
    pytest.importorskip("dm_control")
    dmc = make_suite_env("dmc:walker_walk", seed=0, obs="image")
    assert (dmc.size, dmc.repeat, dmc.camera) == ((64, 64), 1, 0)
    pytest.importorskip("crafter")
    assert make_suite_env("crafter", seed=0).size == (64, 64)


def test_dmc_proprio_videos_are_rendered_from_the_official_camera(dm_suite):
    from torchdreamer.envs import RecordFrames

    env = RecordFrames(suites.DMCEnv("cartpole_balance", seed=0))
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    assert env.unavailable is None
    assert len(env.frames) == 4 and env.frames[0].shape == (64, 64, 3)
    raw = dm_suite.load("cartpole", "balance", task_kwargs={"random": 0})
    raw.reset()
    np.testing.assert_array_equal(env.frames[0], raw.physics.render(64, 64, camera_id=0))
