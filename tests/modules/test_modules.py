"""Networks: initialisation, the block-diagonal GRU, RSSM sampling and resets, and one full
agent update."""

from __future__ import annotations

import math

import pytest
import torch
from reference import assert_close_to_reference
from tensordict import TensorDict
from tensordict.nn import ProbabilisticTensorDictModule as Prob
from tensordict.nn import ProbabilisticTensorDictSequential as Seq
from tensordict.nn import TensorDictModule
from tensordict.utils import unravel_key
from torch import nn
from torchrl.modules import OneHotCategorical
from torchrl.objectives import SoftUpdate

from torchdreamer import DreamerV3ActorLoss, DreamerV3Loss, DreamerV3ModelLoss, DreamerV3ValueLoss
from torchdreamer.modules import (
    MLP,
    RSSM,
    WORLD_MODEL_OUTPUTS,
    BlockGRU,
    BlockLinear,
    CategoricalActorHead,
    ContinuationHead,
    ImaginationEnv,
    ModelSize,
    RMSNorm,
    TwoHotHead,
    WorldModel,
    dreamer_init_,
    sample_one_hot,
)


@pytest.mark.parametrize(
    "layer, fan_in",
    [
        (nn.Linear(400, 300), 400),
        (nn.Conv2d(16, 8, 4), 16 * 16),
        (nn.ConvTranspose2d(16, 8, 4), 16 * 16),
        # The official initialiser counts a block layer's whole input, all blocks.
        (BlockLinear(800, 400, blocks=8), 800),
    ],
)
def test_init_is_truncated_normal_with_unit_fan_in_variance(layer, fan_in):
    torch.manual_seed(0)
    dreamer_init_(layer)
    bound = 2 * 1.1368 / math.sqrt(fan_in)
    assert layer.weight.abs().max() <= bound + 1e-7
    # The 1.1368 correction makes the truncated distribution's std 1 / sqrt(fan_in).
    assert layer.weight.std().item() * math.sqrt(fan_in) == pytest.approx(1.0, rel=0.05)
    assert layer.bias.abs().max() == 0


def test_mlp_blocks_and_zero_output():
    mlp = MLP(5, 3, hidden=8, layers=2, outscale=0.0)
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, RMSNorm, nn.SiLU, nn.Linear, RMSNorm, nn.SiLU, nn.Linear]
    assert torch.equal(mlp(torch.randn(4, 5)), torch.zeros(4, 3))


def test_mlp_input_in_parts_is_the_concatenated_input():
    # mlp(a, b) must be mlp(cat([a, b])) written out: the first layer on the joined
    # input, in float64, and the same gradient on the whole first weight.
    torch.manual_seed(0)
    mlp = MLP(7, 3, hidden=8, layers=2).double()
    a, b = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    linear, norm = mlp[0], mlp[1]
    z = torch.cat([a, b], -1) @ linear.weight.T + linear.bias
    z = z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + 1e-4) * norm.weight
    first = z * torch.sigmoid(z)
    rest = first
    for layer in list(mlp)[3:]:
        rest = layer(rest)
    out = mlp(a, b)
    torch.testing.assert_close(out, rest, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(out.square().sum(), linear.weight)
    (expected,) = torch.autograd.grad(rest.square().sum(), linear.weight)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"sizes \[4, 2\], 6 in all; the MLP takes 7"):
        mlp(a, b[:, :2])


def test_rmsnorm_takes_bfloat16_statistics_in_float32():
    # The formula in float64, rounded once to bfloat16, against the norm of the same
    # bfloat16 input: within one bfloat16 rounding (its float32 arithmetic is far finer).
    torch.manual_seed(0)
    norm = RMSNorm(64, eps=1e-4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(32, 64) * 3).bfloat16()
    wide = x.double()
    expected = wide / torch.sqrt(wide.pow(2).mean(-1, keepdim=True) + 1e-4) * norm.weight.double()
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected, rtol=2**-8, atol=0)
    # In the weight's dtype the casts are no-ops: nn.RMSNorm's numbers exactly.
    plain = nn.RMSNorm(64, eps=1e-4)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(32, 64)
    assert torch.equal(norm(x), plain(x))


def test_mlp_outputs_are_float32_under_bfloat16_autocast():
    torch.manual_seed(0)
    head, trunk = MLP(6, 3, hidden=32, layers=2), MLP(6, None, hidden=32, layers=2)
    a, b = torch.randn(64, 2), torch.randn(64, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, features = head(a, b), trunk(torch.cat([a, b], -1))
    # An output layer returns the parameters' dtype; a trunk what it computed in.
    assert out.dtype == torch.float32 and features.dtype == torch.bfloat16
    # Three bfloat16 products and norms deep: close to float32 at bfloat16's precision.
    torch.testing.assert_close(out, head(a, b), rtol=2**-5, atol=2**-5)
    assert head.double()(a.double(), b.double()).dtype == torch.float64


def test_heads_start_at_zero_and_learn():
    head = TwoHotHead(6, hidden=16)
    logits, value = head(torch.randn(8, 6))
    assert torch.equal(value, torch.zeros(8, 1)) and torch.equal(logits, torch.zeros(8, 255))
    logit, prob = ContinuationHead(6, hidden=16)(torch.randn(8, 6))
    torch.testing.assert_close(prob, torch.sigmoid(logit))
    actor_logits = CategoricalActorHead(6, 4, hidden=16, unimix=0.01)(torch.randn(8, 6))
    torch.testing.assert_close(actor_logits.exp().sum(-1), torch.ones(8))
    assert bool((actor_logits.exp() >= 0.01 / 4 - 1e-7).all())


def _official_core64(core, deter, stoch, action):
    """The official RSSM core written out literally in float64: the three embeddings,
    repeated for every block and concatenated with the block's slice of deter, then
    block matmuls (``[blocks, in, out]`` kernels) and the per-block gate split."""

    def dense(mlp, x):
        linear, norm = mlp[0], mlp[1]
        z = x @ linear.weight.double().T + linear.bias.double()
        z = z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + 1e-4) * norm.weight.double()
        return z * torch.sigmoid(z)

    def block(layer, x):
        g = layer.blocks
        parts = x.reshape(x.shape[0], g, -1)
        w = layer.weight.double()
        out = torch.stack([parts[:, k] @ w[k] for k in range(g)], 1)
        return out.reshape(x.shape[0], -1) + layer.bias.double()

    g = core.blocks
    action = action / torch.clamp(action.abs(), min=1.0)
    x = torch.cat([dense(core.deter_in, deter), dense(core.stoch_in, stoch)], -1)
    x = torch.cat([x, dense(core.action_in, action)], -1)
    x = x[:, None, :].repeat(1, g, 1)
    x = torch.cat([deter.reshape(deter.shape[0], g, -1), x], -1).reshape(deter.shape[0], -1)
    layer, norm = core.hidden_layers[0], core.hidden_layers[1]
    z = block(layer, x)
    z = z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + 1e-4) * norm.weight.double()
    x = z * torch.sigmoid(z)
    gates = block(core.gates, x).reshape(x.shape[0], g, -1)
    reset, cand, update = (part.reshape(x.shape[0], -1) for part in gates.chunk(3, -1))
    cand = torch.tanh(torch.sigmoid(reset) * cand)
    update = torch.sigmoid(update - 1)
    return update * cand + (1 - update) * deter


def test_block_gru_matches_the_official_core_in_float64():
    torch.manual_seed(0)
    core = BlockGRU(stoch_size=12, action_dim=3, size=ModelSize(deter=32, hidden=8, blocks=4))
    with torch.no_grad():  # non-zero biases and scales, so every term is checked
        for param in core.parameters():
            param.add_(0.3 * torch.randn_like(param))
    deter, stoch = torch.randn(5, 32), torch.randn(5, 12)
    action = torch.randn(5, 3) * 2  # some beyond [-1, 1]: divided by |a|
    with torch.no_grad():
        expected = _official_core64(core, deter.double(), stoch.double(), action.double())
    assert_close_to_reference(core(deter, stoch, action), expected)


def test_block_linear_maps_each_slice_to_its_own_block():
    torch.manual_seed(0)
    layer = BlockLinear(16, 8, blocks=4)
    with torch.no_grad():
        layer.bias.normal_()
    for k in range(4):
        x = torch.zeros(1, 16)
        x[0, 4 * k : 4 * (k + 1)] = torch.randn(4)
        out, bias = layer(x)[0].detach(), layer.bias.detach()
        expected = bias.clone()
        expected[2 * k : 2 * (k + 1)] += x[0, 4 * k : 4 * (k + 1)] @ layer.weight[k].detach()
        torch.testing.assert_close(out, expected)


def test_sample_one_hot_follows_the_probabilities_without_gradient():
    torch.manual_seed(3)
    probs = torch.tensor([0.1, 0.6, 0.3])
    logits = probs.log().expand(40000, 3).requires_grad_()
    samples = sample_one_hot(logits)
    assert not samples.requires_grad and samples.dtype == logits.dtype
    assert torch.equal(samples.sum(-1), torch.ones(40000))
    torch.testing.assert_close(samples.mean(0), probs, atol=0.01, rtol=0)


@pytest.fixture
def rssm():
    torch.manual_seed(0)
    size = ModelSize(deter=12, hidden=12, categoricals=3, classes=5, blocks=4, decoder_blocks=4)
    return RSSM(action_dim=2, embed_dim=6, size=size)


def test_latents_are_mixed_one_hot_with_straight_through_gradients(rssm):
    stoch, deter = rssm.initial(torch.Size([4]))
    _, _, logits = rssm.img_step(stoch, deter, torch.ones(4, 2))
    assert bool((logits.exp() >= 0.01 / 5 - 1e-7).all())
    logits = logits.detach().requires_grad_()
    sample = rssm.sample(logits)
    one_hot = sample.view(4, 3, 5)
    assert torch.equal(one_hot.sum(-1), torch.ones(4, 3)) and set(one_hot.unique().tolist()) == {
        0.0,
        1.0,
    }
    weights = torch.randn(4, 15)
    (grad_sample,) = torch.autograd.grad((sample * weights).sum(), logits)
    (grad_probs,) = torch.autograd.grad((logits.exp().flatten(-2) * weights).sum(), logits)
    torch.testing.assert_close(grad_sample, grad_probs)


def test_gumbel_max_samples_follow_the_probabilities(rssm):
    torch.manual_seed(1)
    logits = torch.log_softmax(torch.tensor([[[2.0, 0.0, -1.0, 0.5, -3.0]]]), -1)
    logits = logits.expand(20000, 3, 5)
    frequencies = rssm.sample(logits).view(20000, 3, 5).mean(0)
    torch.testing.assert_close(frequencies, logits[0].exp(), atol=0.015, rtol=0)


def test_is_first_resets_state_and_action(rssm):
    torch.manual_seed(2)
    stoch, deter = torch.randn(4, 15), torch.randn(4, 12)
    action, embed = torch.randn(4, 2), torch.randn(4, 6)
    first = torch.tensor([True, False, True, False])
    _, deter_out, post = rssm.obs_step(stoch, deter, action, embed, first)
    zero_stoch, zero_deter = rssm.initial(torch.Size([4]))
    _, deter_fresh, post_fresh = rssm.obs_step(
        zero_stoch, zero_deter, torch.zeros(4, 2), embed, torch.zeros(4, dtype=torch.bool)
    )
    prior, prior_fresh = rssm.prior(deter_out), rssm.prior(deter_fresh)
    for got, fresh in ((deter_out, deter_fresh), (post, post_fresh), (prior, prior_fresh)):
        torch.testing.assert_close(got[first], fresh[first])
        assert not torch.allclose(got[~first], fresh[~first])


def test_one_full_agent_update_trains_every_network():
    torch.manual_seed(0)
    obs_dim, actions, batch, steps = 4, 2, 3, 8
    size = ModelSize(deter=16, hidden=16, categoricals=4, classes=4, units=16, encoder_layers=1)
    model = WorldModel((obs_dim,), actions, size)
    world = TensorDictModule(
        model,
        in_keys=[("next", k) for k in ("observation", "prev_action", "is_first")],
        out_keys=[unravel_key(("next", k)) for k in WORLD_MODEL_OUTPUTS],
    )
    feat = model.rssm.feature_size
    actor = Seq(
        TensorDictModule(
            CategoricalActorHead(feat, actions, hidden=16), ["state", "belief"], ["logits"]
        ),
        Prob(["logits"], ["action"], distribution_class=OneHotCategorical),
    )
    critic = TensorDictModule(
        TwoHotHead(feat, hidden=16), ["state", "belief"], ["state_value_logits", "state_value"]
    )
    continuation = TensorDictModule(
        model.continuation, ["state", "belief"], ["_logit", "continuation"]
    )
    model_loss = DreamerV3ModelLoss.official(world, unimix=0.0, symlog_predictions=True)
    model_loss.set_keys(
        pixels="observation",
        reco_pixels=("reconstruction", "observation"),
        continue_pred="continuation_logits",
        done="is_last",
        terminated="is_terminal",
    )
    actor_loss = DreamerV3ActorLoss(
        actor,
        critic,
        ImaginationEnv(model.rssm, model.reward),
        continuation_model=continuation,
        imagination_horizon=5,
        use_reinforce=True,
    )
    value_loss = DreamerV3ValueLoss(
        critic, value_loss="two_hot", actor_loss=actor_loss, slow_critic_regularization=1.0
    )
    value_loss.set_keys(done="is_last", terminated="is_terminal")
    SoftUpdate(value_loss, tau=0.02)

    replay = TensorDict(
        observation=torch.randn(batch, steps, obs_dim),
        prev_action=nn.functional.one_hot(
            torch.randint(0, actions, (batch, steps)), actions
        ).float(),
        is_first=torch.zeros(batch, steps, dtype=torch.bool).index_fill_(
            1, torch.tensor([0]), True
        ),
        reward=torch.randn(batch, steps),
        is_terminal=torch.zeros(batch, steps, dtype=torch.bool),
        is_last=torch.zeros(batch, steps, dtype=torch.bool),
        batch_size=[batch, steps],
    )
    losses = DreamerV3Loss(model_loss, actor_loss, value_loss)(
        TensorDict(next=replay, batch_size=replay.batch_size)
    )
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    total.backward()
    for name, module in [
        ("encoder", model.encoder),
        ("rssm", model.rssm),
        ("decoder", model.decoder),
        ("reward", model.reward),
        ("continuation", model.continuation),
        ("actor", actor),
        ("critic", critic),
    ]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
