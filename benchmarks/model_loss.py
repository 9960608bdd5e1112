"""The world-model loss: torchdreamer against TorchRL's DreamerV3ModelLoss, in one process.

Both sides run identical copies of the same ``WorldModel`` (the one the agent
trains, at a preset's size, on CartPole-v1's shapes) on the same replay batch of
16 x 64 steps, and take one forward and backward of the whole world-model loss:
symlog reconstruction, two-hot reward over 255 bins, continuation, and the
dynamics and representation KL terms with free nats 1 (scales 1, 1, 1, 1, 0.1).

TorchRL's loss reads its own key layout (``("next", ...)``, ``pixels``,
``reco_pixels``), so an adapter module runs the world model and writes its
outputs there. Our decoder predicts in symlog space, and TorchRL symlogs its
prediction, so the adapter hands it ``symexp(prediction)`` (a pointwise op on
``[16, 64, 4]``, counted on TorchRL's side). The logits already carry the 1 %
unimix, so TorchRL's own unimix is off. Before timing, the script checks that
the two losses agree term by term.

Printed: the loss terms of both sides, the median time of one forward+backward
(the two sides measured in alternating rounds), the ratio ours / TorchRL, and
the operators each dispatches.

Run: ``python benchmarks/model_loss.py`` (``--presets small size1m``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings

import torch
from actor_value_update import count_operators
from agent_throughput import replay_batch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.objectives import DreamerV3ModelLoss as TorchRLModelLoss
from value_loss import compare

from torchdreamer import DreamerV3ModelLoss
from torchdreamer.functional import symexp
from torchdreamer.modules import WORLD_MODEL_OUTPUTS, WorldModel
from torchdreamer.training import Config, DreamerAgent

TERMS = {  # ours -> TorchRL
    "loss_reconstruction": "loss_model_reco",
    "loss_reward": "loss_model_reward",
    "loss_continuation": "loss_model_continue",
    "loss_dynamics": "loss_model_dynamic",
    "loss_representation": "loss_model_representation",
}


class FixedOutputs(nn.Module):
    """Stands in for the world model with precomputed outputs: times the loss math alone."""

    def __init__(self, outputs: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.outputs = [o.detach().clone().requires_grad_(o.is_floating_point()) for o in outputs]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.outputs)


class TorchRLLayout(nn.Module):
    """Runs the world model and writes its outputs where TorchRL's loss reads them."""

    def __init__(self, world_model: nn.Module) -> None:
        super().__init__()
        self.world_model = world_model

    def forward(self, td: TensorDict) -> TensorDict:
        posterior, prior, reward_logits, continuation, reconstruction, *_ = self.world_model(
            td["observation"], td["prev_action"], td["is_first"]
        )
        td.set(("next", "posterior_logits"), posterior)
        td.set(("next", "prior_logits"), prior)
        td.set(("next", "reward_logits"), reward_logits)
        td.set(("next", "continue_pred"), continuation)
        td.set(("next", "reco_pixels"), symexp(reconstruction))
        return td


def world_model_of(preset: str) -> WorldModel:
    """The world model the agent trains at ``preset``, on CartPole's shapes."""
    torch.manual_seed(0)
    return DreamerAgent((4,), 2, discrete=True, config=Config(preset=preset)).world_model


def losses_on(world_model: nn.Module):
    """Our loss and TorchRL's, each around its own copy of ``world_model``."""
    inputs = ["observation", "prev_action", "is_first"]
    ours = DreamerV3ModelLoss(
        TensorDictModule(copy.deepcopy(world_model), inputs, WORLD_MODEL_OUTPUTS),
        observations={"observation": "symlog_mse"},
    )
    theirs = TorchRLModelLoss(
        TorchRLLayout(copy.deepcopy(world_model)),
        kl_mode="separate",
        lambda_dynamic=1.0,
        lambda_representation=0.1,
        lambda_continue=1.0,
        unimix=0.0,
        free_bits=1.0,
        reco_loss="l2",
        reco_symlog=True,
        reward_two_hot=True,
        num_reward_bins=255,
    )
    return ours, theirs


def batches() -> tuple[TensorDict, TensorDict]:
    """One replay batch in our layout and in TorchRL's."""
    torch.manual_seed(0)
    batch = replay_batch()
    batch["reward"] = torch.randn(batch.batch_size).mul(3)  # rewards across the bins
    torchrl_batch = batch.clone()
    torchrl_batch["next"] = TensorDict(
        pixels=batch["observation"],
        reward=batch["reward"].unsqueeze(-1),
        terminated=batch["is_terminal"].unsqueeze(-1),
        batch_size=batch.batch_size,
    )
    return batch, torchrl_batch


def step_of(loss: nn.Module, batch: TensorDict):
    def step() -> None:
        loss_td, _ = loss(batch)
        total = sum(v for k, v in loss_td.items() if k.startswith("loss_"))
        total.backward()

    return step


def check_terms(ours, theirs, batch, torchrl_batch) -> None:
    with torch.no_grad():  # the same posterior samples on both sides
        torch.manual_seed(1)
        ours_td, _ = ours(batch)
        torch.manual_seed(1)
        theirs_td, _ = theirs(torchrl_batch)
    for mine, peer in TERMS.items():
        a, b = float(ours_td[mine]), float(theirs_td[peer].reshape(()))
        print(f"  {mine:22s} ours {a:12.6f}   TorchRL {b:12.6f}   |diff| {abs(a - b):.1e}")
        if not abs(a - b) <= 1e-4 * max(1.0, abs(b)):
            raise SystemExit(f"{mine} differs from TorchRL's {peer}: not the same loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["small", "size1m"])
    parser.add_argument("--min-run-time", type=float, default=10.0, help="seconds per side")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    print(f"replay batch 16 x 64, CartPole shapes, {torch.get_num_threads()} threads")
    batch, torchrl_batch = batches()
    rows = []
    for preset in args.presets:
        world_model = world_model_of(preset)
        with torch.no_grad():
            outputs = world_model(batch["observation"], batch["prev_action"], batch["is_first"])
        cases = {
            f"{preset}: networks + loss": world_model,
            f"{preset}: loss math alone": FixedOutputs(outputs),
        }
        for name, model in cases.items():
            ours, theirs = losses_on(model)
            print(f"{name}: the loss terms on the same networks and batch")
            check_terms(ours, theirs, batch, torchrl_batch)
            step_ours, step_theirs = step_of(ours, batch), step_of(theirs, torchrl_batch)
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
