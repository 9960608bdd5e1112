"""The agent's networks (shapes, initial outputs), its update on every kind of
environment it supports (vector or image observations, discrete or continuous
actions), and its acting."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from reference import assert_close_to_reference
from tensordict import TensorDict
from torch.utils._python_dispatch import TorchDispatchMode

import torchdreamer.training.config as config_module
from torchdreamer.envs import make_env
from torchdreamer.modules import (
    BoundedNormalActorHead,
    ConvDecoder,
    ConvEncoder,
    ModelSize,
    OneHotCategorical,
    WorldModel,
)
from torchdreamer.training import PRESETS, Config, DreamerAgent
from torchdreamer.training.config import resolve_precision
from torchdreamer.training.loop import train

SMALL = ModelSize(deter=16, hidden=16, categoricals=4, classes=4, units=16, cnn_depth=4)


class TinyImageEnv(gym.Env):
    """A 16x16 RGB image that brightens with action 1; pays the brightness."""

    observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.level, self.t = 0, 0
        return self._image(), {}

    def step(self, action):
        self.level = min(self.level + int(action), 15)
        self.t += 1
        return self._image(), self.level / 15, False, self.t >= 8, {}

    def _image(self):
        return np.full((16, 16, 3), self.level * 17, np.uint8)


gym.register("TinyImage-v0", entry_point=TinyImageEnv)


def batch_for(observation_shape, action_dim, b=2, t=6, image=False):
    if image:
        observation = torch.randint(0, 256, (b, t, *observation_shape), dtype=torch.uint8)
    else:
        observation = torch.randn(b, t, *observation_shape)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return TensorDict(
        observation=observation,
        prev_action=torch.randn(b, t, action_dim).clamp(-1, 1),
        is_first=first,
        reward=torch.randn(b, t),
        is_last=torch.zeros(b, t, dtype=torch.bool),
        is_terminal=torch.zeros(b, t, dtype=torch.bool),
        batch_size=[b, t],
    )


def test_conv_encoder_decoder_shapes_and_mid_grey_start():
    encoder = ConvEncoder((32, 32, 3), SMALL)
    assert encoder(torch.zeros(2, 32, 32, 3, dtype=torch.uint8)).shape == (2, 2 * 2 * 16)
    decoder = ConvDecoder((32, 32, 3), stoch_size=10, deter_size=16, size=SMALL)
    image = decoder(torch.zeros(5, 10), torch.zeros(5, 16))
    assert image.shape == (5, 32, 32, 3)
    assert torch.allclose(image, torch.full_like(image, 0.5))  # zero features: mid-grey
    with pytest.raises(ValueError, match="multiples of 2\\*\\*4"):
        ConvEncoder((40, 40, 3))


def test_bounded_normal_head_bounds():
    head = BoundedNormalActorHead(4, 3, hidden=8, layers=1, outscale=1.0)
    loc, scale = head(torch.randn(1000, 4) * 100)
    assert loc.abs().max() <= 1 and scale.min() >= 0.1 and scale.max() <= 1.0


def test_gumbel_one_hot_categorical_matches_probabilities():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.6, 0.3])
    samples = OneHotCategorical(logits=probs.log()).sample((40000,))
    assert samples.sum(-1).eq(1).all()
    torch.testing.assert_close(samples.mean(0), probs, atol=0.01, rtol=0)


def test_world_model_starts_predicting_zero_reward():
    model = WorldModel((4,), 2, SMALL)
    outputs = model(torch.randn(3, 5, 4), torch.zeros(3, 5, 2), torch.ones(3, 5, dtype=torch.bool))
    reward_logits = outputs[2]
    assert torch.equal(reward_logits, torch.zeros_like(reward_logits))
    assert outputs[5].shape == (3, 5, 16) and outputs[6].shape == (3, 5, 16)


# The larger presets are built on the meta device and counted in tests/modules/test_architecture.py.
@pytest.mark.parametrize("preset", ["small", "size1m", "size12m"])
def test_presets_build(preset):
    agent = DreamerAgent((4,), 2, discrete=True, config=Config(preset=preset))
    size = PRESETS[preset]
    assert agent.world_model.rssm.deter_size == size.deter
    assert agent.world_model.rssm.stoch_size == size.categoricals * size.classes


@pytest.mark.parametrize(
    ("shape", "discrete", "image"),
    [((4,), True, False), ((3,), False, False), ((16, 16, 3), True, True)],
    ids=["vector-discrete", "vector-continuous", "image-discrete"],
)
def test_update_trains_every_network(shape, discrete, image, monkeypatch):
    monkeypatch.setitem(PRESETS, "test", SMALL)
    torch.manual_seed(0)
    config = Config(preset="test", imagination_horizon=3, warmup=0)
    agent = DreamerAgent(shape, 2, discrete=discrete, config=config)
    before = {k: v.clone() for k, v in agent.state_dict().items() if v.is_floating_point()}
    metrics = agent.update(batch_for(shape, 2, image=image))
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    for name, module in [
        ("world model", agent.world_model),
        ("actor", agent.actor),
        ("critic", agent.critic),
    ]:
        moved = [not torch.equal(p, before_p) for p, before_p in _pairs(module, agent, before)]
        assert any(moved), name
    # The slow critic moved toward the critic (EMA), but not all the way.
    slow = agent.slow_critic.flatten_keys(".")
    assert any(not torch.equal(v, before[f"slow_critic.{k}"]) for k, v in slow.items())


class _ProductDtypes(TorchDispatchMode):
    """Records the dtypes of the floating inputs of every matrix product and convolution."""

    OPS = ("mm", "addmm", "bmm", "convolution")

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.OPS:
            tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
            self.dtypes.update(t.dtype for t in tensors)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("shape", "discrete", "image"),
    [((4,), True, False), ((3,), False, False), ((16, 16, 3), True, True)],
    ids=["vector-discrete", "vector-continuous", "image-discrete"],
)
def test_bfloat16_computes_the_products_in_bfloat16_and_keeps_float32_state(
    shape, discrete, image, monkeypatch
):
    monkeypatch.setitem(PRESETS, "test", SMALL)
    # 128 states: a latent or action whose draw the rounding flips moves a term by < 1%.
    batch = batch_for(shape, 2, b=8, t=16, image=image)
    observation = batch["observation"][:, 0]
    metrics = {}
    for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        torch.manual_seed(0)
        config = Config(preset="test", imagination_horizon=3, warmup=0, precision=precision)
        agent = DreamerAgent(shape, 2, discrete=discrete, config=config)
        torch.manual_seed(1)  # the same draws for both
        with _ProductDtypes() as products:
            total, metrics[precision] = agent.losses(batch)
        assert products.dtypes == {dtype}, precision
        total.backward()
        for name, parameter in agent.named_parameters():
            assert parameter.dtype == torch.float32, name
            assert parameter.grad is None or parameter.grad.dtype == torch.float32, name
        with _ProductDtypes() as products:
            action, state = agent.act(
                observation, torch.ones(8, dtype=torch.bool), agent.initial_state(8)
            )
        assert products.dtypes == {dtype}, precision
        assert action.dtype == state["stoch"].dtype == state["deter"].dtype == torch.float32
    # The same parameters and draws: the terms agree to a few bfloat16 roundings (2**-8
    # each; up to 1.2% seen over 18 batches, flipped draws included).
    for key, expected in metrics["float32"].items():
        torch.testing.assert_close(metrics["bfloat16"][key], expected, rtol=2**-5, atol=1e-4)


class _HostReads(TorchDispatchMode):
    """Records the operators that read tensor values back to the host: on a GPU each
    waits for the device (``.item()``, ``bool(t)``, ``nonzero``, ``F.one_hot``'s range
    check, ``torch.quantile``'s NaN check, ...)."""

    OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "equal")

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.OPS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("shape", "discrete", "image"),
    [((4,), True, False), ((3,), False, False), ((16, 16, 3), True, True)],
    ids=["vector-discrete", "vector-continuous", "image-discrete"],
)
def test_an_update_reads_no_value_back_before_its_metrics(shape, discrete, image, monkeypatch):
    """No host-device synchronisation inside an update: the losses, the backward, the
    optimiser step and the slow critic's EMA (``train_step``, which a CUDA graph
    captures) read nothing back; ``update`` then reads its metrics once."""
    monkeypatch.setitem(PRESETS, "test", SMALL)
    torch.manual_seed(0)
    config = Config(preset="test", imagination_horizon=3, warmup=0)
    agent = DreamerAgent(shape, 2, discrete=discrete, config=config)
    batch = batch_for(shape, 2, image=image)
    agent.update(batch)  # the first update fills caches made once (percentile ranks)
    with _HostReads() as probe:
        torch.ones(()).item()
    assert probe.reads == ["_local_scalar_dense.default"]  # the probe sees a read
    with _HostReads() as probe:
        names, values = agent.train_step(batch)
    assert probe.reads == []
    assert values.shape == (len(names),) and "loss" in names


def test_precision_is_auto_float32_or_bfloat16():
    with pytest.raises(
        ValueError, match=r"precision must be one of \['auto', 'float32', 'bfloat16'\]"
    ):
        Config(precision="float16")
    with pytest.raises(ValueError, match=r"precision must be one of .* got 'half'"):
        resolve_precision("half")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f"}, "float32"),
        ({"avx512f", "avx512_bf16"}, "bfloat16"),
        ({"amx_tile", "amx_bf16"}, "bfloat16"),
        (set(), "float32"),
    ],
)
def test_auto_precision_is_bfloat16_where_the_cpu_multiplies_it(flags, expected, monkeypatch):
    """``auto`` reads the CPU's flags: bfloat16 with AVX-512 BF16 or AMX, float32 otherwise
    and on CUDA (unmeasured); an agent built with ``auto`` computes in that dtype."""
    monkeypatch.setattr(config_module, "cpu_flags", lambda: frozenset(flags))
    assert resolve_precision("auto", "cpu")[0] == expected
    assert resolve_precision("auto", "cuda:1")[0] == "float32"
    for fixed in ("float32", "bfloat16"):
        assert resolve_precision(fixed, "cpu")[0] == fixed
    monkeypatch.setitem(PRESETS, "test", SMALL)
    agent = DreamerAgent((4,), 2, discrete=True, config=Config(preset="test", precision="auto"))
    with _ProductDtypes() as products:
        agent.losses(batch_for((4,), 2, b=2, t=4))
    assert products.dtypes == {getattr(torch, expected)}


def _pairs(module, agent, before):
    names = {id(p): n for n, p in agent.named_parameters()}
    return [(p.detach(), before[names[id(p)]]) for p in module.parameters()]


def test_continuous_actions_are_scaled_to_the_environment_bounds():
    env, spec = make_env("Pendulum-v1", 2, seed=0)
    env.close()
    assert not spec.discrete and spec.action_low == (-2.0,)
    scaled = spec.to_env_action(torch.tensor([[-1.0], [0.0], [1.0]]))
    assert scaled.flatten().tolist() == [-2.0, 0.0, 2.0]


def test_images_of_another_size_are_resized_for_the_agent():
    env, spec = make_env("TinyImage-v0", 2, seed=0, image_size=32)
    assert spec.observation_shape == (32, 32, 3)
    td = env.reset()
    for _ in range(8):  # TinyImage episodes end after 8 steps
        td = env.rand_action(td)
        out, td = env.step_and_maybe_reset(td)
        # The final observation of an episode is resized too, not only the reset one.
        for image in (out["next", "observation"], td["observation"]):
            assert image.shape == (2, 32, 32, 3) and image.dtype == torch.uint8
            flat = image.flatten(1)
            # A uniform frame of brightness 17 * level stays exactly that.
            assert (flat.min(1).values == flat.max(1).values).all()
            assert (flat[:, 0] % 17 == 0).all()
    assert out["next", "done"].all()
    env.close()


# Updates start when each env has made 8 steps (a batch, step 16) and a stream holds a
# window of 8 steps and its context step: TinyImage's episodes end at their 8th step,
# whose final observation is a row of its own (9 rows at step 16: 17 updates, one per
# step); Pendulum's 200-step ones do not (9 rows at step 18: 16 updates).
@pytest.mark.parametrize(("env_id", "updates"), [("TinyImage-v0", 17), ("Pendulum-v1", 16)])
def test_short_training_run(env_id, updates, tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "test", SMALL)
    config = Config(
        env=env_id,
        preset="test",
        steps=48,
        num_envs=2,
        batch_size=2,
        batch_length=8,
        train_ratio=8,
        imagination_horizon=3,
        log_every=16,
        image_size=32,  # TinyImage's 16 x 16 frames are resized
    )
    summary = train(config, tmp_path / "run", progress=False)
    assert summary.env_step == 48 and summary.updates == updates
    assert (tmp_path / "run" / "learning_curve.png").exists() or env_id == "Pendulum-v1"


def _torchrl_losses(agent):
    """TorchRL's actor and value losses (this package's adapters) over ``agent``'s
    networks, configured as the agent's update: the composition the agent used before
    the recipe (``torchdreamer.dreamer``)."""
    from tensordict.nn import ProbabilisticTensorDictModule as Prob
    from tensordict.nn import ProbabilisticTensorDictSequential as Seq
    from tensordict.nn import TensorDictModule
    from torchrl.objectives.utils import ValueEstimators

    from torchdreamer import DreamerV3ActorLoss, DreamerV3ValueLoss
    from torchdreamer.modules import ImaginationEnv, MultiOneHotCategorical, OneHotCategorical

    cfg, wm, latent = agent.config, agent.world_model, ["state", "belief"]
    if agent.discrete:
        dist = {"distribution_class": OneHotCategorical}
        if agent.action_nvec:
            dist = {
                "distribution_class": MultiOneHotCategorical,
                "distribution_kwargs": {"nvec": agent.action_nvec},
            }
        actor = Seq(
            TensorDictModule(agent.actor, latent, ["logits"]), Prob(["logits"], ["action"], **dist)
        )
    else:
        actor = Seq(
            TensorDictModule(agent.actor, latent, ["loc", "scale"]),
            Prob(["loc", "scale"], ["action"], distribution_class=torch.distributions.Normal),
        )
    critic = TensorDictModule(agent.critic, latent, ["state_value_logits", "state_value"])
    actor_loss = DreamerV3ActorLoss(
        actor,
        critic,
        ImaginationEnv(wm.rssm, wm.reward),
        continuation_model=TensorDictModule(wm.continuation, latent, ["logit", "continuation"]),
        imagination_horizon=cfg.imagination_horizon,
        entropy_bonus=cfg.entropy_bonus,
        use_reinforce=agent.settings.reinforce,
    )
    actor_loss.make_value_estimator(
        ValueEstimators.TDLambda, gamma=1 - 1 / cfg.horizon, lmbda=cfg.lmbda
    )
    value_loss = DreamerV3ValueLoss(
        critic,
        value_loss="two_hot",
        actor_loss=actor_loss,
        slow_critic_regularization=cfg.slow_critic_weight,
    )
    value_loss.target_value_model_params.get("module").update_(agent.slow_critic)
    return actor_loss, value_loss


def _old_composition(agent, batch):
    """The agent's update before the recipe, restated plainly with the functional math
    and TorchRL's actor and value losses (see :func:`_torchrl_losses`).

    The world model's own forward, then the five model terms (official scales, free
    nats 1), imagination from the detached posterior states, the critic on the
    imagined returns and the replay critic bootstrapped from the first imagined
    return, scaled 0.3.
    """
    from torch.nn.functional import binary_cross_entropy_with_logits

    from torchdreamer.functional import kl_balance, symlog, two_hot_bins, two_hot_cross_entropy

    cfg, wm = agent.config, agent.world_model
    post, prior, reward_logits, cont_logit, reco, stoch, deter = wm(
        batch["observation"], batch["prev_action"], batch["is_first"]
    )
    target = batch["observation"]
    target = target.float() / 255 if wm.is_image else symlog(target)
    dyn, rep = kl_balance(post, prior, free_nats=0.0)
    terms = {
        "loss_model_reco": (reco - target).square().flatten(2).sum(-1).mean(),
        "loss_model_reward": two_hot_cross_entropy(
            reward_logits, batch["reward"], two_hot_bins(255)
        ).mean(),
        "loss_model_continue": binary_cross_entropy_with_logits(
            cont_logit.squeeze(-1), 1 - batch["is_terminal"].float()
        ),
        "loss_model_dynamic": dyn.clamp(min=1.0).mean(),
        "loss_model_representation": 0.1 * rep.clamp(min=1.0).mean(),
    }
    actor_loss, value_loss = _torchrl_losses(agent)
    states = TensorDict(state=stoch, belief=deter, batch_size=batch.batch_size)
    actor_td, imagined = actor_loss(states.detach().reshape(-1))
    terms["loss_actor"] = actor_td["loss_actor"]
    terms["loss_value"] = value_loss(imagined)[0]["loss_value"]
    replay = states.update(batch.select("reward", "is_last", "is_terminal"))
    replay.set("bootstrap", imagined["lambda_target"][:, 0, 0].reshape(batch.batch_size))
    replay_td = value_loss.replay_value_loss(replay, cfg.horizon, cfg.lmbda)
    terms["loss_replay_value"] = 0.3 * replay_td["loss_replay_value"]
    return terms


@pytest.mark.parametrize(
    ("shape", "discrete", "image", "actor_grad"),
    [
        ((4,), True, False, "reinforce"),
        ((3,), False, False, "reinforce"),
        ((3,), False, False, "dynamics"),
        ((16, 16, 3), True, True, "reinforce"),
    ],
    ids=["vector-discrete", "vector-continuous", "vector-continuous-dynamics", "image-discrete"],
)
def test_agent_losses_equal_the_old_composition(shape, discrete, image, actor_grad, monkeypatch):
    """DreamerV3Loss computes the agent's terms and gradients as the plain composition.

    The replay critic's gradient reaches the world model through the posterior
    features (official ``repval_grad``), so the composition restated here keeps
    them attached there too.
    """
    import copy

    monkeypatch.setitem(PRESETS, "test", SMALL)
    torch.manual_seed(0)
    # float32: the composition below computes without autocast, to float32's roundings.
    config = Config(
        preset="test",
        imagination_horizon=3,
        warmup=0,
        precision="float32",
        actor_grad=actor_grad,
    )
    agent = DreamerAgent(shape, 2, discrete=discrete, config=config)
    with torch.no_grad():  # the critic's zero-initialised output passes back no gradient
        for p in agent.critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    old_agent = copy.deepcopy(agent)
    batch = batch_for(shape, 2, image=image)
    batch["is_terminal"][1, 3] = batch["is_last"][1, 3] = True

    # Whether each critic call records a graph: with REINFORCE (every action by default;
    # discrete ones always) the actor loss's critic pass, with its gradient, is the value
    # loss's too; then the slow critic, the replay critic and its slow critic.
    calls = []
    agent.critic.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    torch.manual_seed(1)
    total, metrics = agent.losses(batch)
    reinforce = discrete or actor_grad == "reinforce"
    assert calls == ([True, False, True, False] if reinforce else [True, True, False, True, False])
    torch.manual_seed(1)
    old = _old_composition(old_agent, batch)

    assert set(old) == {k for k in metrics if k.startswith("loss_")}
    for key, value in old.items():
        assert_close_to_reference(metrics[key], value.detach().double())
    old_total = sum(old.values())
    torch.testing.assert_close(total.detach(), old_total.detach())
    replay_grads = torch.autograd.grad(
        old["loss_replay_value"],
        list(old_agent.world_model.encoder.parameters()),
        retain_graph=True,
        allow_unused=True,
    )
    # The replay value loss reaches the world model (exercised, not zero).
    assert sum(g.abs().sum() for g in replay_grads if g is not None) > 0
    total.backward()
    old_total.backward()
    for (name, p), q in zip(agent.named_parameters(), old_agent.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            # float32 sums of many terms, whose order differs between the two
            # compositions: a tolerance scaled to the gradient's largest entry.
            assert_close_to_reference(p.grad, q.grad.double(), scale=float(q.grad.abs().max()))


def test_the_critic_learns_at_its_own_rate_and_the_rest_at_lr(monkeypatch):
    monkeypatch.setitem(PRESETS, "test", SMALL)
    agent = DreamerAgent((3,), 2, discrete=True, config=Config(preset="test"))
    assert (agent.config.lr, agent.config.critic_lr) == (1e-4, 4e-4)
    rates = {id(p): group["lr"] for group in agent.optimizer.param_groups for p in group["params"]}
    critic = {id(p) for p in agent.critic.parameters()}
    trained = [id(p) for p in agent.trainable_parameters()]
    assert sorted(rates) == sorted(trained)  # each trained tensor in exactly one group
    assert sum(len(g["params"]) for g in agent.optimizer.param_groups) == len(trained)
    assert {rates[i] for i in critic} == {4e-4}
    assert {rates[i] for i in trained if i not in critic} == {1e-4}
    # Equal rates: one group, the optimiser (and its checkpoints) as before the field.
    same = DreamerAgent((3,), 2, discrete=True, config=Config(preset="test", critic_lr=1e-4))
    assert len(same.optimizer.param_groups) == 1


def test_the_critic_rate_moves_only_the_critic(monkeypatch):
    """One update from the same start, the critic's rate doubled: the critic's weights move
    twice as far (LaProp's step is proportional to the rate), the others exactly alike."""
    monkeypatch.setitem(PRESETS, "test", SMALL)
    moved = {}
    for rate in (4e-4, 8e-4):
        torch.manual_seed(0)
        config = Config(preset="test", imagination_horizon=3, warmup=0, critic_lr=rate)
        agent = DreamerAgent((3,), 2, discrete=True, config=config)
        before = [p.detach().clone() for p in agent.trainable_parameters()]
        torch.manual_seed(1)
        agent.update(batch_for((3,), 2))
        after = agent.trainable_parameters()
        moved[rate] = [p.detach() - b for p, b in zip(after, before, strict=True)]
    critic = {id(p) for p in agent.critic.parameters()}
    for p, slow, fast in zip(agent.trainable_parameters(), moved[4e-4], moved[8e-4], strict=True):
        if id(p) in critic:
            torch.testing.assert_close(fast, 2 * slow, rtol=1e-5, atol=1e-12)
        else:
            assert torch.equal(fast, slow)


def test_a_run_saved_before_critic_lr_resumes_with_one_rate(tmp_path):
    saved = json.loads(Config(lr=2e-4).to_json())
    del saved["critic_lr"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert Config.load(tmp_path / "config.json").critic_lr == 2e-4
    assert Config().critic_lr == 4e-4
