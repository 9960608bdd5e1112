"""One DreamerV3 actor + critic update: torchdreamer against TorchRL, in one process.

Both sides get identical copies of the same networks and TorchRL's own imagination
environment (``DreamerEnv`` around ``RSSMPriorV3``): start states ``16 x 64 = 1024``,
a 15-step horizon, 32 x 32 categorical latents, a 512-unit belief, 512-unit MLPs, a
two-hot critic over 255 bins. Two actors: tanh-normal with reparameterised
gradients through the dynamics (TorchRL's documented setup) and one-hot categorical
with REINFORCE (DreamerV3's setup for discrete actions). One update is ``actor_loss(start)`` then
``value_loss(imagined)`` and one backward through both. Optimiser steps are left
out: they are identical on both sides.

Printed: the median time per update (the two sides measured in alternating rounds),
the ratio ours / TorchRL, and the operators dispatched per update as the torch
profiler records them: every ``aten::`` call (nested ones included), and the
"compute" ones, leaf calls that are not views or metadata, the closest CPU proxy
for GPU kernel launches.

``--peak-memory`` instead runs each side's update in a fresh process and prints how
far its resident memory peaks above the level before the update.

Run: ``python benchmarks/actor_value_update.py`` (``--quick`` for small sizes).
"""

from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys
import warnings

import torch
from operator_count import count_operators
from tensordict import TensorDict
from tensordict.nn import (
    InteractionType,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    TensorDictSequential,
)
from torchrl.data import Unbounded
from torchrl.envs import TransformedEnv
from torchrl.envs.model_based.dreamer import DreamerEnv
from torchrl.envs.transforms import TensorDictPrimer
from torchrl.modules import MLP, OneHotCategorical, SafeSequential, WorldModelWrapper
from torchrl.modules.distributions.continuous import TanhNormal
from torchrl.modules.models.model_based import DreamerActor, RSSMPriorV3, SymExpTwoHot
from torchrl.objectives import DreamerV3ActorLoss as TorchRLActorLoss
from torchrl.objectives import DreamerV3ValueLoss as TorchRLValueLoss
from torchrl.objectives.utils import ValueEstimators
from torchrl.testing.mocking_classes import (
    ContinuousActionConvMockEnv,
    DiscreteActionConvMockEnv,
)
from value_loss import compare

from torchdreamer import DreamerV3ActorLoss, DreamerV3ValueLoss


def build(batch: int, categoricals: int, classes: int, belief: int, units: int, discrete: bool):
    """The world model, actor and critic, as TorchRL's DreamerV3 examples build them."""
    torch.manual_seed(0)
    state = categoricals * classes
    mock = DiscreteActionConvMockEnv if discrete else ContinuousActionConvMockEnv
    base_env = TransformedEnv(
        mock(pixel_shape=[3, 16, 16]),
        TensorDictPrimer(
            random=False, default_value=0, state=Unbounded(state), belief=Unbounded(belief)
        ),
    )
    action_dim = base_env.action_spec.shape[0]
    prior = RSSMPriorV3(
        action_spec=base_env.action_spec,
        hidden_dim=units,
        rnn_hidden_dim=belief,
        num_categoricals=categoricals,
        num_classes=classes,
        action_dim=action_dim,
    )
    transition = SafeSequential(
        TensorDictModule(
            prior, in_keys=["state", "belief", "action"], out_keys=["_", "state", "belief"]
        )
    )
    reward = TensorDictModule(
        MLP(out_features=1, depth=2, num_cells=units),
        in_keys=["state", "belief"],
        out_keys=["reward"],
    )
    env = DreamerEnv(
        world_model=WorldModelWrapper(transition, reward),
        prior_shape=torch.Size([state]),
        belief_shape=torch.Size([belief]),
    )
    env.set_specs_from_env(base_env)
    if discrete:
        net = MLP(out_features=action_dim, depth=2, num_cells=units)
        params, distribution = ["logits"], OneHotCategorical
    else:
        net = DreamerActor(out_features=action_dim, depth=2, num_cells=units)
        params, distribution = ["loc", "scale"], TanhNormal
    actor = ProbabilisticTensorDictSequential(
        TensorDictModule(net, in_keys=["state", "belief"], out_keys=params),
        ProbabilisticTensorDictModule(
            in_keys=params,
            out_keys=["action"],
            default_interaction_type=InteractionType.RANDOM,
            distribution_class=distribution,
        ),
    )
    critic = TensorDictSequential(
        TensorDictModule(
            MLP(out_features=255, depth=2, num_cells=units),
            in_keys=["state", "belief"],
            out_keys=["state_value_logits"],
        ),
        TensorDictModule(SymExpTwoHot(255), ["state_value_logits"], ["state_value"]),
    )
    warm = TensorDict(
        state=torch.randn(1, 2, state), belief=torch.randn(1, 2, belief), batch_size=[1]
    )
    actor(warm.clone())
    critic(warm.clone())
    with torch.no_grad():
        env.rollout(2)
    start = TensorDict(
        state=torch.randn(batch, state), belief=torch.randn(batch, belief), batch_size=[batch]
    )
    return env, actor, critic, start


def update_step(make_actor_loss, make_value_loss, networks, start):
    env, actor, critic = (copy.deepcopy(n) for n in networks)
    actor_loss = make_actor_loss(actor, critic, env)
    value_loss = make_value_loss(critic, actor_loss)

    def step():
        loss_td, imagined = actor_loss(start)
        value_td, _ = value_loss(imagined)
        (loss_td["loss_actor"] + value_td["loss_value"]).backward()
        for module in (actor, critic):
            module.zero_grad(set_to_none=True)

    return step


def ours(networks, start, reinforce):
    def actor_loss(actor, critic, env):
        return DreamerV3ActorLoss(
            actor, critic, env, imagination_horizon=15, use_reinforce=reinforce
        )

    def value_loss(critic, actor_loss):
        return DreamerV3ValueLoss(critic, value_loss="two_hot", actor_loss=actor_loss)

    return update_step(actor_loss, value_loss, networks, start)


def torchrl(networks, start, reinforce):
    def actor_loss(actor, critic, env):
        loss = TorchRLActorLoss(actor, critic, env, imagination_horizon=15, use_reinforce=reinforce)
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=1 - 1 / 333, lmbda=0.95)
        return loss

    def value_loss(critic, actor_loss):
        return TorchRLValueLoss(critic, value_loss="two_hot", actor_loss=actor_loss)

    return update_step(actor_loss, value_loss, networks, start)


CONFIGS = {"tanh-normal, reparameterised": False, "one-hot, REINFORCE": True}
SIDES = {"ours": ours, "torchrl": torchrl}


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_growth_of_one_side(sizes: dict, config: str, side: str) -> int:
    """In this (fresh) process: bytes by which one update peaks above the state before it."""
    discrete = CONFIGS[config]
    env, actor, critic, start = build(**sizes, discrete=discrete)
    step = SIDES[side]((env, actor, critic), start, reinforce=discrete)
    before = resident_bytes()
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def print_peak_memory(quick: bool) -> None:
    print(
        "| actor | peak memory growth in one update, ours (GiB) | TorchRL (GiB) | ours / TorchRL |"
    )
    print("|---|---|---|---|")
    for config in CONFIGS:
        growth = {}
        for side in SIDES:
            command = [sys.executable, __file__, "--one-side", side, "--config", config]
            out = subprocess.run(
                command + (["--quick"] if quick else []), capture_output=True, text=True, check=True
            )
            growth[side] = int(out.stdout.strip().splitlines()[-1])
        ours_gib, torchrl_gib = growth["ours"] / 2**30, growth["torchrl"] / 2**30
        print(f"| {config} | {ours_gib:.2f} | {torchrl_gib:.2f} | {ours_gib / torchrl_gib:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-run-time", type=float, default=20.0, help="seconds in total")
    parser.add_argument("--quick", action="store_true", help="small sizes, short run")
    parser.add_argument("--peak-memory", action="store_true", help="peak memory, not time")
    parser.add_argument("--one-side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.quick:
        sizes = dict(batch=64, categoricals=8, classes=8, belief=64, units=64)
        min_run_time = 2.0
    else:
        sizes = dict(batch=16 * 64, categoricals=32, classes=32, belief=512, units=512)
        min_run_time = args.min_run_time
    if args.one_side:
        print(peak_growth_of_one_side(sizes, args.config, args.one_side))
        return
    print(f"sizes: {sizes}, horizon 15, {torch.get_num_threads()} threads")
    if args.peak_memory:
        print_peak_memory(args.quick)
        return
    print(
        "| actor | ours (ms) | TorchRL (ms) | time ours / TorchRL "
        "| aten ops ours / TorchRL | compute ops ours / TorchRL |"
    )
    print("|---|---|---|---|---|---|")
    for name, discrete in CONFIGS.items():
        env, actor, critic, start = build(**sizes, discrete=discrete)
        networks = (env, actor, critic)
        step_ours = ours(networks, start, reinforce=discrete)
        step_torchrl = torchrl(networks, start, reinforce=discrete)
        t_ours, t_torchrl = compare(step_ours, step_torchrl, min_run_time)
        (all_ours, compute_ours), (all_torchrl, compute_torchrl) = (
            count_operators(step_ours),
            count_operators(step_torchrl),
        )
        print(
            f"| {name} | {t_ours * 1e3:.1f} | {t_torchrl * 1e3:.1f} | {t_ours / t_torchrl:.2f} "
            f"| {all_ours} / {all_torchrl} | {compute_ours} / {compute_torchrl} |"
        )


if __name__ == "__main__":
    main()
