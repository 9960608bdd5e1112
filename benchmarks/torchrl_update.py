"""One whole DreamerV3 update, torchdreamer against TorchRL 0.14.1's own, at one size.

TorchRL's side is its own learner, put together from its public DreamerV3 parts the
way its ``sota-implementations/dreamer_v3`` script does, at the official architecture
and the widths of our preset: ``DreamerV3MLP`` encoder and decoder (3 layers),
``RSSMPriorV3`` with the block GRU (8 blocks, 2 prior layers), ``RSSMPosteriorV3``
(1 layer), ``RSSMRolloutV3`` over the sequence, 1-layer reward (255-bin two-hot) and
continuation heads, ``DreamerV3DiscreteActor`` and a two-hot critic (3 layers each),
``DreamerEnv`` for the imagination; ``DreamerV3Loss`` (world model, actor, critic,
replay value), ``DreamerV3Optimizer`` (LaProp with adaptive clipping) and the slow
critic's ``SoftUpdate``, all stepped by ``DreamerV3OptimizationStepper``: eager (its
CPU default) and with ``compile_train_step=True`` (forward and backward under one
``torch.compile``, the RSSM as a higher-order scan).

Our side is ``DreamerAgent.update`` at the same preset, eager and compiled
(``training/compiled.py``). Both get CartPole-v1's shapes (4 observations, 2 discrete
actions), 16 x 64 replay steps, 15 imagined steps from each of the 1,024 states.

Each (side, mode) runs in a fresh process with an empty inductor cache, the processes
alternating over ``--rounds``; printed are the parameters per side, and per mode the
median update time, the ratio ours / TorchRL, operators per update (leaf ATen calls
that compute plus inductor's fused kernels, as in ``compiled_update.py``), compile time
(warm-up and first update, less an eager update) and peak resident memory.

Run (nothing else running): ``python benchmarks/torchrl_update.py --presets size1m size12m``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential

sys.path.insert(0, str(Path(__file__).parent))

from agent_throughput import replay_batch  # noqa: E402
from compiled_update import in_fresh_process, measure  # noqa: E402

from torchdreamer.training import Config, DreamerAgent  # noqa: E402
from torchdreamer.training.compiled import compile_agent  # noqa: E402
from torchdreamer.training.config import PRESETS  # noqa: E402

OBSERVATIONS, ACTIONS, BATCH, LENGTH, HORIZON, BINS = 4, 2, 16, 64, 15, 255


def count(*modules: torch.nn.Module) -> int:
    """Parameters of ``modules`` together."""
    return sum(p.numel() for module in modules for p in module.parameters())


def torchrl_learner(preset: str, device: str | torch.device = "cpu"):
    """TorchRL's DreamerV3 at ``preset``'s widths, on ``device``: (loss, parameters by
    part)."""
    from torchrl.data import Composite, OneHot, Unbounded
    from torchrl.envs.model_based.dreamer import DreamerEnv
    from torchrl.modules import (
        DreamerV3DiscreteActor,
        DreamerV3MLP,
        RSSMPosteriorV3,
        RSSMPriorV3,
        RSSMRolloutV3,
        SymExpTwoHot,
        WorldModelWrapper,
    )
    from torchrl.objectives import (
        DreamerV3ActorLoss,
        DreamerV3Loss,
        DreamerV3ModelLoss,
        DreamerV3ValueLoss,
        symexp,
        symlog,
    )
    from torchrl.objectives.utils import ValueEstimators

    size = PRESETS[preset]
    stoch, deter, units = size.categoricals * size.classes, size.deter, size.units
    features = stoch + deter
    nxt = lambda key: ("next", key)  # noqa: E731

    encoder = DreamerV3MLP(OBSERVATIONS, None, depth=size.encoder_layers, num_cells=units)
    prior = RSSMPriorV3(
        action_shape=torch.Size([ACTIONS]),
        action_dim=ACTIONS,
        hidden_dim=size.hidden,
        rnn_hidden_dim=deter,
        num_categoricals=size.categoricals,
        num_classes=size.classes,
        recurrent_model="block_gru",
        num_blocks=size.blocks,
        num_layers=size.dyn_layers,
        prior_num_layers=size.img_layers,
        unimix=0.01,
    )
    posterior = RSSMPosteriorV3(
        hidden_dim=size.hidden,
        num_categoricals=size.categoricals,
        num_classes=size.classes,
        rnn_hidden_dim=deter,
        obs_embed_dim=units,
        use_rms_norm=True,
        num_layers=size.obs_layers,
        unimix=0.01,
    )
    decoder = DreamerV3MLP(features, OBSERVATIONS, depth=size.decoder_layers, num_cells=units)
    reward = DreamerV3MLP(features, BINS, depth=size.reward_layers, num_cells=units, outscale=0.0)
    continuation = DreamerV3MLP(features, 1, depth=size.continuation_layers, num_cells=units)
    world_model = TensorDictSequential(
        TensorDictModule(symlog, [nxt("observation")], [nxt("symlog_observation")]),
        TensorDictModule(encoder, [nxt("symlog_observation")], [nxt("encoded")]),
        RSSMRolloutV3(
            TensorDictModule(
                prior,
                ["state", "belief", "action"],
                [nxt("prior_logits"), nxt("state"), nxt("belief")],
            ),
            TensorDictModule(
                posterior,
                [nxt("belief"), nxt("encoded")],
                [nxt("posterior_logits"), nxt("state")],
            ),
        ),
        TensorDictModule(decoder, [nxt("state"), nxt("belief")], [nxt("reco_symlog")]),
        TensorDictModule(symexp, [nxt("reco_symlog")], [nxt("reco_pixels")]),
        TensorDictModule(reward, [nxt("state"), nxt("belief")], [nxt("reward_logits")]),
        TensorDictModule(SymExpTwoHot(BINS), [nxt("reward_logits")], [nxt("reward")]),
        TensorDictModule(continuation, [nxt("state"), nxt("belief")], [nxt("continue_pred")]),
    )
    imagination = WorldModelWrapper(
        TensorDictModule(prior, ["state", "belief", "action"], ["_", "state", "belief"]),
        TensorDictSequential(
            TensorDictModule(reward, ["state", "belief"], ["reward_logits"]),
            TensorDictModule(SymExpTwoHot(BINS), ["reward_logits"], ["reward"]),
        ),
    )
    env = DreamerEnv(imagination, prior_shape=(stoch,), belief_shape=(deter,), device=device)
    env.observation_spec = Composite(state=Unbounded(stoch), belief=Unbounded(deter))
    env.state_spec = env.observation_spec.clone()
    env.action_spec = OneHot(ACTIONS)
    env.reward_spec = Unbounded((1,))
    continues = TensorDictSequential(
        TensorDictModule(continuation, ["state", "belief"], ["continue_logits"]),
        TensorDictModule(torch.sigmoid, ["continue_logits"], ["continuation"]),
    )
    actor = DreamerV3DiscreteActor(features, ACTIONS, depth=size.actor_layers, num_cells=units)
    critic_net = DreamerV3MLP(features, BINS, depth=size.critic_layers, num_cells=units)
    critic = TensorDictSequential(
        TensorDictModule(critic_net, ["state", "belief"], ["state_value_logits"]),
        TensorDictModule(SymExpTwoHot(BINS), ["state_value_logits"], ["state_value"]),
    )

    model_loss = DreamerV3ModelLoss(
        world_model,
        kl_mode="separate",
        lambda_continue=1.0,
        unimix=0.01,
        continue_target_scale=1 - 1 / 333,
        num_reward_bins=BINS,
        detach_output=False,
    )
    model_loss.set_keys(pixels="observation")
    actor_loss = DreamerV3ActorLoss(
        actor,
        critic,
        env,
        continuation_model=continues,
        imagination_horizon=HORIZON,
        use_reinforce=True,
    )
    actor_loss.make_value_estimator(ValueEstimators.TDLambda, gamma=1 - 1 / 333, lmbda=0.95)
    value_loss = DreamerV3ValueLoss(
        critic,
        value_loss="two_hot",
        num_value_bins=BINS,
        actor_loss=actor_loss,
        slow_critic_regularization=1.0,
    )
    loss = DreamerV3Loss(model_loss, actor_loss, value_loss).to(device)
    parts = {
        "RSSM": count(prior, posterior),
        "encoder": count(encoder),
        "decoder": count(decoder),
        "reward": count(reward),
        "continuation": count(continuation),
        "actor": count(actor),
        "critic": count(critic_net),
    }
    return loss, parts


def torchrl_sample(preset: str, batch: int = BATCH, length: int = LENGTH) -> TensorDict:
    """Our replay batch (``batch`` x ``length`` steps) in TorchRL's layout: zero start
    states, actions one-hot, flags ``[B, T, 1]`` under ``next``."""
    size = PRESETS[preset]
    ours = replay_batch(batch, length)
    flag = lambda key: ours[key].unsqueeze(-1)  # noqa: E731
    return TensorDict(
        {
            "state": torch.zeros(batch, length, size.categoricals * size.classes),
            "belief": torch.zeros(batch, length, size.deter),
            "action": ours["prev_action"],
            "is_init": flag("is_first"),
            "next": {
                "observation": ours["observation"],
                "reward": flag("reward"),
                "done": flag("is_terminal") | flag("is_last"),
                "terminated": flag("is_terminal"),
            },
        },
        [batch, length],
    )


def torchrl_step(
    preset: str,
    compiled: bool,
    device: str | torch.device = "cpu",
    batch: int = BATCH,
    length: int = LENGTH,
):
    """TorchRL's whole update at ``preset`` on ``device``, on one ``batch`` x ``length``
    sample: (the step, parameters by part, seconds its compiling warm-up took)."""
    from torchrl.objectives import SoftUpdate
    from torchrl.trainers.algorithms import DreamerV3OptimizationStepper, DreamerV3Optimizer

    loss, parts = torchrl_learner(preset, device)
    stepper = DreamerV3OptimizationStepper(
        loss,
        DreamerV3Optimizer(loss.parameters()),
        SoftUpdate(loss.value_loss, tau=0.02),
        compile_train_step=compiled,
        cudagraph=False,
        warmup_steps=1,
    )
    sample = torchrl_sample(preset, batch, length).to(device)
    started = time.perf_counter()
    if compiled:  # TorchRL compiles in warmup(), one forward and backward, no step
        stepper.warmup(sample)
    return (lambda: stepper.step(None, sample)), parts, time.perf_counter() - started


def our_step(preset: str, compiled: bool):
    agent = DreamerAgent(
        (OBSERVATIONS,), ACTIONS, discrete=True, config=Config(preset=preset, precision="float32")
    )
    if compiled:
        compile_agent(agent)
    batch = replay_batch(BATCH, LENGTH)
    model = agent.world_model
    parts = {
        "RSSM": count(model.rssm),
        "encoder": count(model.encoder),
        "decoder": count(model.decoder),
        "reward": count(model.reward),
        "continuation": count(model.continuation),
        "actor": count(agent.actor),
        "critic": count(agent.critic),
    }
    return (lambda: agent.update(batch)), parts, 0.0  # ours compiles in its first update


SIDES = {"ours": our_step, "torchrl": torchrl_step}
MODES = ("eager", "compiled")


def child(side: str, mode: str, preset: str, warmup: int, updates: int) -> None:
    torch.manual_seed(0)
    if mode == "compiled":  # each inductor kernel recorded by name, for operators()
        torch._inductor.config.cpp.enable_kernel_profile = True
    step, parts, setup_s = SIDES[side](preset, mode == "compiled")
    result = measure(step, warmup, updates)
    result["first_s"] += setup_s
    print(json.dumps({"parts": parts, **result}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["size1m", "size12m"])
    parser.add_argument(
        "--runs",
        nargs="+",
        default=[f"{side}:{mode}" for mode in MODES for side in SIDES],
        help="SIDE:MODE pairs, run in this order each round (default: all four)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument(
        "--child", nargs=3, metavar=("SIDE", "MODE", "PRESET"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    options = ["--warmup", str(args.warmup), "--updates", str(args.updates)]
    if args.child:
        child(*args.child, args.warmup, args.updates)
        return
    runs = [tuple(run.split(":")) for run in args.runs]
    for side, mode in runs:
        if side not in SIDES or mode not in MODES:
            parser.error(f"--runs {side}:{mode}: SIDE is one of {list(SIDES)}, MODE of {MODES}")
    import torchrl

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, torchrl {torchrl.__version__}, {threads} threads")
    for preset in args.presets:
        results: dict[tuple[str, str], list[dict]] = {run: [] for run in runs}
        for _ in range(args.rounds):
            for side, mode in runs:
                if any("error" in row for row in results[side, mode]):
                    continue  # failed once: not tried again
                try:
                    row = in_fresh_process(__file__, side, mode, preset, *options)
                except RuntimeError as error:  # reported in the table, the others go on
                    print(error, file=sys.stderr)
                    row = {"error": str(error).strip().splitlines()[-1]}
                print(f"{preset} {side} {mode}: {json.dumps(row)}", flush=True)
                results[side, mode].append(row)
        print_tables(preset, args.updates, results)


NAMES = {"ours": "torchdreamer", "torchrl": "TorchRL"}


def print_tables(preset: str, updates: int, results: dict[tuple[str, str], list[dict]]) -> None:
    """The parameters of each side, a row per run, and the ratios of ours to TorchRL's."""
    rows = {run: [r for r in found if "error" not in r] for run, found in results.items()}
    parts = {side: found[0]["parts"] for (side, _), found in rows.items() if found}
    if set(parts) == set(SIDES):
        print(f"\n{preset}, CartPole shapes: trainable parameters")
        print("| part | torchdreamer | TorchRL |\n|---|---|---|")
        for part in parts["ours"]:
            print(f"| {part} | {parts['ours'][part]:,} | {parts['torchrl'][part]:,} |")
        totals = [sum(parts[side].values()) for side in SIDES]
        print(f"| total | {totals[0]:,} | {totals[1]:,} |")

    keys = ("first_s", "update_s", "operators", "peak_rss_mib")
    m = {
        run: {key: statistics.median(r[key] for r in found) for key in keys}
        for run, found in rows.items()
        if found
    }
    print(f"\n{preset} (rounds: {max(len(f) for f in results.values())}, median of {updates} each)")
    print("| run | ms per update | operators per update | compile s | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for (side, mode), found in results.items():
        if (side, mode) not in m:
            error = next(r["error"] for r in found if "error" in r)
            print(f"| {NAMES[side]} {mode} | failed: {error} | | | |")
            continue
        r = m[side, mode]
        compile_s = "—"
        if mode == "compiled" and (side, "eager") in m:
            compile_s = f"{r['first_s'] - m[side, 'eager']['update_s']:.0f}"
        print(
            f"| {NAMES[side]} {mode} | {r['update_s'] * 1e3:,.0f} | {r['operators']:,.0f} "
            f"| {compile_s} | {r['peak_rss_mib']:,.0f} |"
        )
    for ours_mode in MODES:
        for their_mode in MODES:
            if ("ours", ours_mode) in m and ("torchrl", their_mode) in m:
                ours, theirs = m["ours", ours_mode], m["torchrl", their_mode]
                print(
                    f"torchdreamer {ours_mode} / TorchRL {their_mode}: time "
                    f"{ours['update_s'] / theirs['update_s']:.2f}, operators "
                    f"{ours['operators'] / theirs['operators']:.2f}"
                )


if __name__ == "__main__":
    main()
