"""The recipe (torchdreamer.dreamer): old checkpoints load, one rollout for all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from torchdreamer.dreamer import imagine, imagine_step
from torchdreamer.modules import ModelSize
from torchdreamer.training import PRESETS, Config, DreamerAgent
from torchdreamer.training.agent import LATENT
from torchdreamer.training.replay import SequenceReplay

SMALL = ModelSize(deter=16, hidden=16, categoricals=4, classes=4, units=16, cnn_depth=4)
#: Made at 10a3650, before the recipe and the stoch/deter names, by a tiny discrete agent
#: (SMALL, horizon 3) after two updates: its state_dict, optimiser, acting state, and a
#: replay whose latent column is named as then (state, belief).
OLD = Path(__file__).parent / "data" / "checkpoint_before_recipe.pt"


@pytest.fixture(autouse=True)
def _small_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "test", SMALL)


def agent() -> DreamerAgent:
    # The fixture's run, configured as a resume reads its config.json of then (saved before
    # ``critic_lr`` existed: one rate, ``lr``, for every network).
    saved = dict(preset="test", imagination_horizon=3, warmup=0, lr=1e-4)
    return DreamerAgent((4,), 2, discrete=True, config=Config.from_saved(saved))


def test_a_checkpoint_saved_before_the_recipe_resumes():
    old = torch.load(OLD, weights_only=False)
    saved = old["agent"]
    resumed = agent()
    resumed.load_state_dict(saved)  # strict: every entry mapped, none missing
    resumed.optimizer.load_state_dict(old["optimizer"])
    # Each network has the old entries under their new names.
    pairs = {
        "world_model.": "world_model.",
        "actor.": "actor.module.0.module.",
        "critic.": "critic.module.",
        "slow_critic.": "value_loss.target_value_model_params.module.",
    }
    state = resumed.state_dict()
    for new, was in pairs.items():
        names = [k for k in state if k.startswith(new)]
        assert names
        for name in names:
            assert torch.equal(state[name], saved[was + name[len(new) :]]), name
    for name in ("low", "high"):
        assert float(state[f"retnorm.{name}"]) == float(saved[f"actor_loss.retnorm.{name}"])
        assert float(state[f"retnorm.{name}"]) != 0  # moved by the two updates
    # The slow critic is its own EMA, not the critic.
    assert not torch.equal(state["slow_critic.mlp.0.weight"], state["critic.mlp.0.weight"])

    # The acting state of then (state, belief) goes on, in the new names.
    acting = old["acting"]
    assert {"state", "belief", "action"} <= set(acting.keys())
    action, after = resumed.act(torch.randn(2, 4), torch.zeros(2, dtype=torch.bool), acting)
    assert set(after.keys()) == {"stoch", "deter", "action"} and action.shape == (2, 2)

    # The replay's latent column of then is read in the new names, and trains.
    replay = SequenceReplay(num_envs=2, capacity=20)
    replay.load_state_dict(old["replay"])
    assert set(replay.storage.get(LATENT).keys()) == {"stoch", "deter"}
    torch.testing.assert_close(
        replay.storage.get((LATENT, "deter"))[:, 0], acting["belief"].float()
    )
    flags = torch.zeros(2, 3, dtype=torch.bool)
    batch = TensorDict(
        observation=torch.randn(2, 3, 4),
        reward=torch.zeros(2, 3),
        is_first=flags,
        is_last=flags,
        is_terminal=flags,
        prev_action=torch.zeros(2, 3, 2),
        latent=replay.storage[:, :3].get(LATENT),
        batch_size=[2, 3],
    )
    metrics = resumed.update(batch)
    assert torch.isfinite(torch.tensor(list(metrics.values()))).all()
    assert set(resumed.latents.keys()) == {"stoch", "deter"}


def test_the_imagination_rollout_is_its_step_repeated():
    """imagine() stacks the states, actions and rewards of its step, as a plain loop
    over imagine_step gives them with the same draws."""
    torch.manual_seed(0)
    tiny = agent()
    model = tiny.world_model
    stoch = torch.zeros(5, SMALL.stoch_size)
    deter = torch.randn(5, SMALL.deter)

    def step(s, d):
        return imagine_step(tiny.actor, model.rssm, model.reward, s, d)

    torch.manual_seed(1)
    with torch.no_grad():
        stochs, deters, actions, rewards = imagine(step, stoch, deter, 4)
    torch.manual_seed(1)
    s, d = stoch, deter
    with torch.no_grad():
        for t in range(4):
            a, s, d, r = step(s, d)
            assert torch.equal(actions[:, t], a) and torch.equal(stochs[:, t + 1], s)
            assert torch.equal(deters[:, t + 1], d) and torch.equal(rewards[:, t], r[:, 0])
    assert torch.equal(stochs[:, 0], stoch) and torch.equal(deters[:, 0], deter)
