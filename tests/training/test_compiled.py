"""The compiled update (``training/compiled.py``) against the eager one: the same
numbers over 20 updates, one compilation per region and shape, no graph breaks, no
recompilation in steady state; and ``--compile``'s choice."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from functools import partial

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from tensordict import TensorDict
from torch._dynamo.utils import counters

from torchdreamer.dreamer import imagine, imagine_step
from torchdreamer.functional import symlog
from torchdreamer.training import Config, DreamerAgent
from torchdreamer.training.compiled import (
    BREAK_EVEN_UPDATES,
    compile_agent,
    compiles,
    has_images,
)

B, T = 4, 8


def _batch(seed: int) -> TensorDict:
    generator = torch.Generator().manual_seed(seed)
    first = torch.rand(B, T, generator=generator) < 0.1
    first[:, 0] = True
    action = torch.randint(2, (B, T), generator=generator)
    return TensorDict(
        observation=torch.randn(B, T, 4, generator=generator),
        prev_action=torch.nn.functional.one_hot(action, 2).float(),
        is_first=first,
        reward=torch.randn(B, T, generator=generator),
        is_last=torch.zeros(B, T, dtype=torch.bool),
        is_terminal=torch.rand(B, T, generator=generator) < 0.05,
        batch_size=[B, T],
    )


@pytest.fixture(scope="module")
def agents():
    """An eager agent and a compiled copy."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    # float32: the tolerances below are float32's roundings (bfloat16's are 2**16 larger).
    config = Config(
        imagination_horizon=5, batch_size=B, batch_length=T, warmup=0, lr=3e-4, precision="float32"
    )
    eager = DreamerAgent((4,), 2, discrete=True, config=config)
    # The two-hot heads start uniform over 255 bins reaching ±4.8e8, where the decoded
    # value is float32 noise of order 0.1-1 (an ulp of one outer bin's probability
    # moves it by ~0.1, and one of its logits' ulps by as much): eager and compiled,
    # rounding differently, would disagree by that noise. Here the outer bins are made
    # unlikely, as training makes them, so that the decoded values are well-conditioned.
    with torch.no_grad():
        for head in (eager.critic, eager.world_model.reward):
            head.mlp[-1].bias.copy_(-2 * symlog(head.bins).abs())
    eager.slow_critic.data.copy_(TensorDict.from_module(eager.critic).data)
    compiled = compile_agent(copy.deepcopy(eager))
    yield eager, compiled
    torch._dynamo.reset()


def _act(agent: DreamerAgent, envs: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    state = agent.initial_state(envs)
    first = torch.ones(envs, dtype=torch.bool)
    for _ in range(3):
        action, state = agent.act(torch.randn(envs, 4), first, state)
        first = torch.zeros(envs, dtype=torch.bool)
    return action


def _synchronise(agent: DreamerAgent, source: DreamerAgent) -> None:
    """Copy ``source``'s parameters, buffers and optimiser state into ``agent``, in place
    (a compiled agent keeps its graphs)."""
    agent.load_state_dict(source.state_dict())
    mine, theirs = agent.trainable_parameters(), source.trainable_parameters()
    for p, q in zip(mine, theirs, strict=True):
        for name, value in source.optimizer.state[q].items():
            agent.optimizer.state[p][name].copy_(value)


def test_compiled_updates_match_eager_for_20_updates(agents):
    """20 updates along the eager agent's training, each compiled one from the eager
    agent's state before it: float32 rounding does not compound through the training
    dynamics (where a sampled action flips after a few updates and both runs go their
    own way, as any two runs with different rounding do)."""
    eager, compiled = agents
    for update in range(20):
        batch = _batch(update)
        if update:  # (the first starts equal)
            _synchronise(compiled, eager)
        before = {name: p.detach().clone() for name, p in eager.named_parameters()}
        torch.manual_seed(100 + update)  # the same draws for both
        expected = eager.update(batch)
        torch.manual_seed(100 + update)
        got = compiled.update(batch)
        assert got.keys() == expected.keys()
        # Inductor sums in another order: float32 rounding.
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (update, name)
        # The movement, as one vector (LaProp scales each component by its own
        # gradient's size, so every network counts). It divides each gradient by the
        # root of its second moment (eps 1e-20): at the first update every component
        # moves by +-lr whatever its size, so a component whose gradient is rounding
        # noise around zero moves by +-lr at random. Those, the components whose two
        # gradients (update() leaves them set) differ in sign, are left out (seen: one
        # component, in the GRU's first layer, on a 2-core AMD EPYC); the others move
        # alike to float32 rounding.
        mine, theirs = dict(compiled.named_parameters()), dict(eager.named_parameters())
        names = list(before)
        same_sign = torch.cat(
            [(mine[n].grad.sign() == theirs[n].grad.sign()).flatten() for n in names]
        )
        assert (~same_sign).sum() <= max(1, same_sign.numel() // 10_000), update
        expected_move = torch.cat([(theirs[n] - before[n]).flatten() for n in names])
        got_move = torch.cat([(mine[n] - before[n]).flatten() for n in names])
        error = (got_move - expected_move)[same_sign].norm() / expected_move.norm()
        assert error < 1e-3, (update, error)
    # Acting draws the same actions.
    _synchronise(compiled, eager)
    assert torch.equal(_act(compiled, 3, 7), _act(eager, 3, 7))


def test_no_graph_breaks_and_no_recompiles_in_steady_state(agents):
    _, compiled = agents
    compiled.update(_batch(0))  # every update-time graph exists (also after the test above)
    _act(compiled, 3, 0)
    _act(compiled, 6, 0)  # a second batch size: graphs of its own (static shapes)
    assert not counters["graph_break"], dict(counters["graph_break"])
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # the regions did compile
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(3):
            compiled.update(_batch(seed + 50))
            _act(compiled, 3, seed)
            _act(compiled, 6, seed)
    assert counters["stats"]["unique_graphs"] == graphs
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_every_region_stays_compiled_at_every_batch_size(agents):
    """Dynamo runs a function eager once its cache holds 8 graphs, and all the MLPs of an
    agent share one function: updating, then acting for training, evaluation and one
    environment made the ninth graph of ``MLP.forward``. Each region has its own cache."""
    _, compiled = agents
    compiled.update(_batch(0))
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for envs in (16, 4):
            _act(compiled, envs, 0)
        graphs = counters["stats"]["unique_graphs"]
        _act(compiled, 1, 0)  # size 1 is specialised: new graphs, compiled
        assert counters["stats"]["unique_graphs"] > graphs
        compiled.update(_batch(1))
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_the_recipe_rollout_is_torchrls_generic_rollout():
    """The recipe's one rollout (:func:`imagine` of :func:`imagine_step`) draws and
    computes what TorchRL's generic rollout (the actor loss's tensordict modules,
    imagination environment and ``step_mdp``) does over the same networks, bit for bit."""
    from tensordict.nn import ProbabilisticTensorDictModule as Prob
    from tensordict.nn import ProbabilisticTensorDictSequential as Seq
    from tensordict.nn import TensorDictModule
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from torchdreamer import DreamerV3ActorLoss
    from torchdreamer.modules import ImaginationEnv, OneHotCategorical

    agent = DreamerAgent((4,), 2, discrete=True, config=Config(imagination_horizon=4))
    model, latent = agent.world_model, ["state", "belief"]
    actor = Seq(
        TensorDictModule(agent.actor, latent, ["logits"]),
        Prob(["logits"], ["action"], distribution_class=OneHotCategorical),
    )
    critic = TensorDictModule(agent.critic, latent, ["state_value_logits", "state_value"])
    env = ImaginationEnv(model.rssm, model.reward)
    torchrl = DreamerV3ActorLoss(actor, critic, env, imagination_horizon=4)
    stoch, deter = torch.randn(6, model.rssm.stoch_size), torch.randn(6, model.rssm.deter_size)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        torch.manual_seed(3)
        expected, states = torchrl._imagine(TensorDict(state=stoch, belief=deter, batch_size=[6]))
        torch.manual_seed(3)
        step = partial(imagine_step, agent.actor, model.rssm, model.reward)
        got = imagine(step, stoch, deter, 4)
    assert torch.equal(got[0], states["state"]) and torch.equal(got[1], states["belief"])
    assert torch.equal(got[2], expected["action"])
    assert torch.equal(got[3], expected["next", "reward"][..., 0])


def test_the_compiled_rollout_is_the_eager_one():
    """The same rollout with its step compiled draws the same actions and reaches the
    same states, to float32 rounding."""
    agent = DreamerAgent((4,), 2, discrete=True, config=Config(imagination_horizon=4))
    model = agent.world_model
    step = partial(imagine_step, agent.actor, model.rssm, model.reward)
    stoch, deter = torch.zeros(6, model.rssm.stoch_size), torch.randn(6, model.rssm.deter_size)
    runs = []
    for function in (step, torch.compile(step, options={"fallback_random": True})):
        torch.manual_seed(5)
        with torch.no_grad():
            runs.append(imagine(function, stoch, deter, 4))
    for got, expected in zip(runs[1], runs[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(runs[1][2], runs[0][2])  # the same actions


def test_a_detached_two_hot_value_runs_no_backward(agents):
    """The losses read the critic's and the reward's decoded values detached or not at
    all: a loss on a compiled head's logits alone must not run the decoding's backward
    (in one graph with the logits, autograd would run it on zero gradients), and its
    gradient is the eager head's."""
    eager, compiled = agents
    _synchronise(compiled, eager)
    rssm = eager.world_model.rssm
    features = torch.randn(3, 5, rssm.stoch_size), torch.randn(3, 5, rssm.deter_size)
    for part in ("critic", "world_model.reward"):
        heads = [agent.get_submodule(part) for agent in (eager, compiled)]
        grads = []
        for head in heads:
            head.zero_grad()
            logits, value = head(*features)
            ran = []
            value.grad_fn.register_prehook(lambda _, ran=ran: ran.append(True))
            logits.logsumexp(-1).sum().backward()
            assert not ran, part
            grads.append([p.grad.clone() for p in head.parameters()])
        for got, expected in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_compiled_agents_state_dict_loads_into_an_eager_one(agents):
    eager, compiled = agents
    fresh = DreamerAgent((4,), 2, discrete=True, config=eager.config)
    fresh.load_state_dict(compiled.state_dict())
    assert fresh.state_dict().keys() == eager.state_dict().keys()
    for name, tensor in compiled.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    "given, device, images, steps, expected, reason",
    [
        ("on", "cpu", True, 10, True, "--compile on"),
        ("off", "cpu", False, 10**6, False, "--compile off"),
        ("auto", "cuda", False, 10**6, False, "not measured"),
        ("auto", "cpu", True, 10**6, False, "image observations"),
        ("auto", "cpu", False, 10**6, True, "31250 updates planned"),
        ("auto", "cpu", False, 1000, False, "31 updates planned"),
    ],
)
def test_compile_choice(given, device, images, steps, expected, reason):
    config = Config(compile=given, steps=steps)
    compiled, why = compiles(config, torch.device(device), images)
    assert compiled is expected
    assert reason in why
    # auto's line is the break-even count of updates.
    edge = BREAK_EVEN_UPDATES * config.batch_size * config.batch_length / config.train_ratio
    assert compiles(Config(steps=int(edge)), torch.device("cpu"), False)[0]
    assert not compiles(Config(steps=int(edge) - 1), torch.device("cpu"), False)[0]
    # Under torchrun, auto stays eager; on is on.
    assert not compiles(Config(), torch.device("cpu"), False, distributed=True)[0]
    assert compiles(Config(compile="on"), torch.device("cpu"), False, distributed=True)[0]


def test_has_images():
    config = Config()
    assert not has_images(DreamerAgent((4,), 2, discrete=True, config=config))
    assert has_images(DreamerAgent((16, 16, 3), 2, discrete=True, config=config))
    both = DreamerAgent({"joints": (3,), "image": (16, 16, 3)}, 2, discrete=True, config=config)
    assert has_images(both)


def test_compile_refuses_unknown_modes():
    with pytest.raises(ValueError, match=r"compile must be one of \['auto', 'on', 'off'\]"):
        Config(compile="yes")


def test_a_compiled_run_trains_and_says_so(tmp_path):
    logdir = tmp_path / "run"
    # The shapes of the agents above (batch 4 x 8, acting batch 4): their graphs are reused.
    args = ["--steps", "96", "--num-envs", "4", "--batch-size", "4", "--batch-length", "8"]
    args += ["--imagination-horizon", "5", "--compile", "on"]
    args += ["--eval-every", "96", "--eval-episodes", "2", "--no-eval-video"]  # acting at batch 1
    result = subprocess.run(
        [sys.executable, "-m", "torchdreamer.cli", "train", *args, "--no-progress"]
        + ["--logdir", str(logdir)],
        capture_output=True,
        text=True,
        timeout=600,  # subprocess.run kills the run at the timeout
    )
    assert result.returncode == 0, result.stderr
    assert "; update compiled (--compile on)" in result.stdout
    rows = list(csv.DictReader((logdir / "metrics.csv").read_text().splitlines()))
    assert int(rows[-1]["updates"]) > 0
    evaluations = list(csv.DictReader((logdir / "eval.csv").read_text().splitlines()))
    assert [int(row["env_step"]) for row in evaluations] == [96, 96]
    assert json.loads((logdir / "config.json").read_text())["compile"] == "on"
