"""Environment ids as people type them: ``module:EnvId`` for their own environments, and
one-line errors that name what is missing (a package, a module, a registration)."""

from __future__ import annotations

import logging
import sys

import gymnasium as gym
import pytest
import torch

from torchdreamer.envs import make_env

MODULE = "torchdreamer_test_corridor"
ENV = "TmpCorridor-v0"

CORRIDOR = f'''
import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    """Position on a line of 5 cells; action 1 moves right, 0 left; the right end pays 1."""

    observation_space = gym.spaces.Box(0.0, 4.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = 0
        return np.array([0.0], np.float32), {{}}

    def step(self, action):
        self.position = min(max(self.position + (1 if action == 1 else -1), 0), 4)
        done = self.position == 4
        return np.array([self.position], np.float32), float(done), done, False, {{}}


gym.register("{ENV}", entry_point=Corridor, max_episode_steps=20)
'''


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A directory on ``sys.path`` for modules the test writes; they and their
    registrations are gone afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registered = set(gym.registry)
    imported = set(sys.modules)
    try:
        yield tmp_path
    finally:
        for key in set(gym.registry) - registered:
            del gym.registry[key]
        for name in set(sys.modules) - imported:
            if name.startswith(MODULE):
                del sys.modules[name]


def _error(env_id: str) -> str:
    with pytest.raises(ValueError) as caught:
        make_env(env_id, 2, seed=0)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_module_colon_id_imports_the_module_that_registers_the_env(module_dir):
    (module_dir / f"{MODULE}.py").write_text(CORRIDOR)
    assert ENV not in gym.registry
    env, spec = make_env(f"{MODULE}:{ENV}", 2, seed=0)
    try:
        assert env.batch_size == torch.Size([2])
        assert spec.observation_shape == (1,) and spec.discrete and spec.action_dim == 2
        td = env.reset()
        assert td["observation"].tolist() == [[0.0], [0.0]]
        right = torch.nn.functional.one_hot(torch.tensor([1, 1]), 2)
        td = env.step(td.set("action", right))
        assert td["next", "observation"].tolist() == [[1.0], [1.0]]
    finally:
        env.close()


def test_a_module_that_does_not_import_is_named(module_dir):
    (module_dir / f"{MODULE}_broken.py").write_text("raise RuntimeError('no simulator here')\n")
    message = _error(f"{MODULE}_broken:{ENV}")
    assert f"module '{MODULE}_broken' could not be imported" in message
    assert "RuntimeError: no simulator here" in message
    message = _error(f"{MODULE}_absent:{ENV}")
    assert f"module '{MODULE}_absent' could not be imported" in message
    assert "ModuleNotFoundError" in message


def test_an_id_the_module_does_not_register_is_named_with_what_it_did(module_dir):
    (module_dir / f"{MODULE}.py").write_text(CORRIDOR)
    message = _error(f"{MODULE}:TmpCorridr-v0")
    assert message.startswith(f"unknown environment id '{MODULE}:TmpCorridr-v0':")
    assert f"module '{MODULE}' was imported (it registered {ENV})" in message
    assert "Did you mean: `TmpCorridor`?" in message


def test_a_module_missing_inside_the_environment_is_named(module_dir):
    constructor = "    def __init__(self):\n        import no_such_simulator_lib\n\n"
    source = CORRIDOR.replace("    def reset(", constructor + "    def reset(")
    (module_dir / f"{MODULE}_needs.py").write_text(source)
    message = _error(f"{MODULE}_needs:{ENV}")
    assert f"environment '{MODULE}_needs:{ENV}' needs the module 'no_such_simulator_lib'" in message


# Real gymnasium ids whose simulator package is absent. Importing the package is blocked
# (None in sys.modules), so each case holds where the package happens to be installed too.
MISSING = [
    ("Ant-v5", "mujoco", "the mujoco package", 'pip install "gymnasium[mujoco]"'),
    ("CarRacing-v3", "Box2D", "the box2d package", 'pip install "gymnasium[box2d]"'),
    ("LunarLander-v3", "Box2D", "the box2d package", "pip install swig, then"),
    ("ALE/Pong-v5", "ale_py", "the ale-py package", 'pip install "gymnasium[atari]"'),
]


@pytest.mark.parametrize(("env_id", "module", "package", "command"), MISSING)
def test_a_missing_simulator_package_is_named_with_its_pip_command(
    monkeypatch, env_id, module, package, command
):
    monkeypatch.setitem(sys.modules, module, None)
    for registered in [k for k in gym.registry if k.startswith("ALE/")]:
        monkeypatch.delitem(gym.registry, registered)  # as if ale-py had never been imported
    message = _error(env_id)
    assert message.startswith(f"environment '{env_id}' needs {package}, which is not installed:")
    assert command in message


@pytest.mark.parametrize(
    ("env_id", "expected"),
    [
        ("CartPol-v1", "Did you mean: `CartPole`?"),
        ("CartPole-v9", "It provides versioned environments: [ `v0`, `v1` ]"),
        ("Cartpole-v1", "CartPole"),
        ("Taxi-v3", "Please use `Taxi-v4` instead"),
        ("NoSuchEnv-v0", "Environment `NoSuchEnv` doesn't exist"),
    ],
)
def test_an_unknown_id_is_named_with_close_matches(env_id, expected):
    message = _error(env_id)
    assert message.startswith(f"unknown environment id '{env_id}':")
    assert expected in message
    assert "pass a registered gymnasium id such as CartPole-v1, or module:EnvId" in message


def test_close_matches_come_from_the_registry_when_gymnasium_gives_none():
    message = _error("CartPole-v2")
    assert "close matches: CartPole-v1, CartPole-v0" in message


def test_an_installed_ale_py_is_imported_to_register_the_atari_namespace(module_dir, monkeypatch):
    # A stand-in ale_py that registers one ALE game, as the real one registers them all.
    # Whatever happens, the real ale_py (or its absence) and the registry come back after.
    monkeypatch.setattr(gym.envs.registration, "registry", dict(gym.registry))
    monkeypatch.setattr(gym, "registry", gym.envs.registration.registry)
    for registered in [k for k in gym.registry if k.startswith("ALE/")]:
        del gym.registry[registered]
    real = sys.modules.pop("ale_py", None)
    try:
        source = CORRIDOR.replace(f'"{ENV}"', '"ALE/TmpPong-v5"')
        (module_dir / "ale_py.py").write_text(source)
        env, spec = make_env("ALE/TmpPong-v5", 1, seed=0)
        env.close()
        assert spec.observation_shape == (1,) and sys.modules["ale_py"].__file__.startswith(
            str(module_dir)
        )
    finally:
        sys.modules.pop("ale_py", None)
        if real is not None:
            sys.modules["ale_py"] = real


def test_wrapping_prints_no_torchrl_info_and_keeps_its_level():
    """TorchRL logs two INFO lines each time it wraps a vector env (every evaluation):
    not printed; its logger's level is left as it was (INFO, TorchRL's default)."""
    logger = logging.getLogger("torchrl")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        env, _ = make_env("CartPole-v1", num_envs=2, seed=0)
        env.close()
        assert logger.level == logging.INFO
        assert not [r for r in records if r.levelno <= logging.INFO], [
            r.getMessage() for r in records
        ]
        # The same wrapping outside make_env does log them (the test sees the logger).
        from torchrl.envs import GymWrapper

        same_step = gym.vector.AutoresetMode.SAME_STEP
        makers = [lambda: gym.make("CartPole-v1")] * 2
        GymWrapper(gym.vector.SyncVectorEnv(makers, autoreset_mode=same_step)).close()
        assert any("check_env_specs" in r.getMessage() for r in records)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
