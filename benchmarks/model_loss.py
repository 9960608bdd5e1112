"""The world-model loss: torchdreamer against TorchRL's DreamerV3ModelLoss, in one process.

Both losses take the same TorchRL constructor arguments and keys, the ones the
agent uses (``kl_mode="separate"`` with scales 1 / 0.1, free bits 1, two-hot
reward over 255 bins, continuation on, symlog-MSE reconstruction, unimix off
because the RSSM's logits carry it already), and each wraps an identical copy
of the same world-model module: the agent's ``WorldModel`` at a preset's size,
on CartPole-v1's shapes, writing its outputs under ``"next"`` as the agent's
loss reads them. TorchRL symlogs the reconstruction itself, so the module hands
both sides ``symexp`` of our decoder's symlog-space output (one pointwise op,
the same on both sides). The replay batch is 16 x 64 steps in the agent's
layout under ``"next"``.

Before timing, the script checks that the two losses agree term by term on the
same posterior samples. Printed: the terms of both sides, the median time of one
forward + backward (the two sides in alternating rounds), the ratio ours /
TorchRL, and the operators each dispatches. "Loss math alone" replaces the
world model by its precomputed outputs.

Run: ``python benchmarks/model_loss.py`` (``--presets small size1m``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings

import torch
from agent_throughput import replay_batch
from operator_count import count_operators
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from tensordict.utils import unravel_key
from torch import nn
from torchrl.objectives import DreamerV3ModelLoss as TorchRLModelLoss
from value_loss import compare

from torchdreamer import DreamerV3ModelLoss
from torchdreamer.functional import symexp
from torchdreamer.modules import WORLD_MODEL_OUTPUTS, WorldModel
from torchdreamer.training import Config, DreamerAgent

INPUTS = [("next", key) for key in ("observation", "prev_action", "is_first")]
OUTPUTS = [unravel_key(("next", key)) for key in WORLD_MODEL_OUTPUTS]
RECONSTRUCTION = ("next", "reconstruction", "observation")
TERMS = ["loss_model_reco", "loss_model_reward", "loss_model_continue",
         "loss_model_dynamic", "loss_model_representation"]  # fmt: skip


class FixedOutputs(nn.Module):
    """Stands in for the world model with precomputed outputs: times the loss math alone."""

    def __init__(self, outputs: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.outputs = [o.detach().clone().requires_grad_(o.is_floating_point()) for o in outputs]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.outputs)


def world_model_module(network: nn.Module) -> TensorDictSequential:
    """``network`` reading and writing under ``"next"``, its reconstruction in raw space."""
    return TensorDictSequential(
        TensorDictModule(network, INPUTS, OUTPUTS),
        TensorDictModule(symexp, [RECONSTRUCTION], [RECONSTRUCTION]),
    )


def world_model_of(preset: str) -> WorldModel:
    """The world model the agent trains at ``preset``, on CartPole's shapes."""
    torch.manual_seed(0)
    return DreamerAgent(
        (4,), 2, discrete=True, config=Config(preset=preset, precision="float32")
    ).world_model


def losses_on(network: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Our loss and TorchRL's, built alike, each around its own copy of ``network``."""
    losses = []
    for cls in (DreamerV3ModelLoss, TorchRLModelLoss):
        loss = cls(
            world_model_module(copy.deepcopy(network)),
            lambda_continue=1.0,
            kl_mode="separate",
            lambda_dynamic=1.0,
            lambda_representation=0.1,
            unimix=0.0,
            free_bits=1.0,
            reco_loss="l2",
            reco_symlog=True,
            reward_two_hot=True,
            num_reward_bins=255,
        )
        loss.set_keys(
            pixels="observation",
            reco_pixels=("reconstruction", "observation"),
            continue_pred="continuation_logits",
            done="is_last",
            terminated="is_terminal",
        )
        losses.append(loss)
    return losses[0], losses[1]


def batch_of() -> TensorDict:
    """One 16 x 64 replay batch under ``"next"``, with rewards across the bins."""
    torch.manual_seed(0)
    batch = replay_batch()
    batch["reward"] = torch.randn(batch.batch_size).mul(3)
    return TensorDict({"next": batch}, batch_size=batch.batch_size)


def step_of(loss: nn.Module, batch: TensorDictBase):
    def step() -> None:
        loss_td, _ = loss(batch)
        total = sum(v for k, v in loss_td.items() if k.startswith("loss_"))
        total.backward()

    return step


def check_terms(ours: nn.Module, theirs: nn.Module, batch: TensorDictBase) -> None:
    with torch.no_grad():  # the same posterior samples on both sides
        torch.manual_seed(1)
        ours_td, _ = ours(batch)
        torch.manual_seed(1)
        theirs_td, _ = theirs(batch)
    for term in TERMS:
        a, b = float(ours_td[term].reshape(())), float(theirs_td[term].reshape(()))
        print(f"  {term:26s} ours {a:12.6f}   TorchRL {b:12.6f}   |diff| {abs(a - b):.1e}")
        if not abs(a - b) <= 1e-4 * max(1.0, abs(b)):
            raise SystemExit(f"{term} differs from TorchRL's: not the same loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["small", "size1m"])
    parser.add_argument("--min-run-time", type=float, default=10.0, help="seconds per side")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    print(f"replay batch 16 x 64, CartPole shapes, {torch.get_num_threads()} threads")
    batch = batch_of()
    inputs = [batch.get(key) for key in INPUTS]
    rows = []
    for preset in args.presets:
        network = world_model_of(preset)
        with torch.no_grad():
            outputs = network(*inputs)
        cases = {
            f"{preset}: networks + loss": network,
            f"{preset}: loss math alone": FixedOutputs(outputs),
        }
        for name, model in cases.items():
            ours, theirs = losses_on(model)
            print(f"{name}: the loss terms on the same networks and batch")
            check_terms(ours, theirs, batch)
            step_ours, step_theirs = step_of(ours, batch), step_of(theirs, batch)
            t_ours, t_theirs = compare(step_ours, step_theirs, args.min_run_time)
            ops = count_operators(step_ours), count_operators(step_theirs)
            rows.append((name, t_ours, t_theirs, *ops))
    print()
    print(
        "| forward + backward | ours (ms) | TorchRL (ms) | time ours / TorchRL "
        "| aten ops ours / TorchRL | compute ops ours / TorchRL |"
    )
    print("|---|---|---|---|---|---|")
    for name, t_ours, t_theirs, (all_o, comp_o), (all_t, comp_t) in rows:
        print(
            f"| {name} | {t_ours * 1e3:.1f} | {t_theirs * 1e3:.1f} | {t_ours / t_theirs:.2f} "
            f"| {all_o} / {all_t} | {comp_o} / {comp_t} |"
        )


if __name__ == "__main__":
    main()
