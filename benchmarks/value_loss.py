"""torchdreamer's value loss against TorchRL's, side by side in one process.

For each ``[B, T]`` batch and 255 bins, on identical inputs, forward + backward:

* ``two_hot_cross_entropy`` alone (torchdreamer.functional vs torchrl.objectives);
* the whole ``DreamerV3ValueLoss`` module with an identity value head, in the
  ``two_hot`` and ``symlog_mse`` modes (per-call overhead dominates small batches);
* the module with the slow critic regulariser (weight 1, as the official agent), on
  identical copies of a linear head over 32 features.

It prints medians from ``torch.utils.benchmark`` (ours and TorchRL's measured in
alternating rounds, so both see the same background load), the ratio ours / TorchRL
(below 1 is faster) and, for the cross-entropy, the peak memory allocated during
forward + backward (the input logits excluded, their gradient included) in units
of one ``[N, K]`` float32 buffer. The machine is shared: read the ratios.

Run: ``python benchmarks/value_loss.py`` (``--quick`` for a short smoke run).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import warnings
from collections.abc import Callable

import tensordict
import torch
import torchrl
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch.profiler import ProfilerActivity, profile
from torch.utils.benchmark import Timer
from torchrl.objectives import DreamerV3ValueLoss as TorchRLValueLoss
from torchrl.objectives import two_hot_cross_entropy as torchrl_two_hot_cross_entropy

from torchdreamer import DreamerV3ValueLoss
from torchdreamer.functional import two_hot_bins, two_hot_cross_entropy
from torchdreamer.functional.two_hot import _neighbours

NUM_BINS = 255
SIZES = ((16, 16), (256, 16), (1024, 15))


def compare(ours: Callable[[], None], peer: Callable[[], None], min_run_time: float):
    """Median seconds of ``ours`` and ``peer``, measured in alternating short rounds.

    Interleaving puts both under the same background load, which matters more on
    a shared machine than the length of any single measurement.
    """
    samples: dict[str, list[float]] = {"ours": [], "peer": []}
    rounds = 10
    for fn in (ours, peer):
        fn()  # warm-up (first-call allocations, lazy initialisation)
    for _ in range(rounds):
        for name, fn in (("ours", ours), ("peer", peer)):
            timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
            measurement = timer.blocked_autorange(min_run_time=min_run_time / rounds)
            samples[name].extend(t / measurement.number_per_run for t in measurement.raw_times)
    return statistics.median(samples["ours"]), statistics.median(samples["peer"])


def peak_bytes(fn: Callable[[], None]) -> int:
    """Peak bytes of tensors created by ``fn`` and alive at once (profiler timeline)."""
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in sorted(prof._memory_profile().timeline, key=lambda r: r[0]):
        if action.name == "CREATE":
            live += size
        elif action.name == "DESTROY":
            live -= size
        peak = max(peak, live)
    return peak


def plain_autograd_cross_entropy(logits, target, bins):
    """The variant we do not ship: log_softmax + gather under plain autograd.

    Its backward (gather's) materialises a dense two-hot-shaped [N, K] gradient.
    """
    index, weight = _neighbours(target.detach().reshape(-1), bins)
    log_probs = torch.log_softmax(logits.reshape(-1, NUM_BINS), dim=-1)
    picked = log_probs.gather(-1, index.flatten(1)).view_as(weight)
    return -(weight * picked).sum(-1).reshape(target.shape)


def cross_entropy_case(
    batch: tuple[int, int], compiled: bool = False, ours_fn: Callable = two_hot_cross_entropy
):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(*batch, NUM_BINS, generator=generator).mul_(3).requires_grad_()
    target = torch.randn(*batch, generator=generator).mul_(5).exp_()
    bins = two_hot_bins(NUM_BINS)

    def run(ce):
        if compiled:
            ce = torch.compile(ce, fullgraph=True)

        def step():
            logits.grad = None
            ce(logits, target, bins).sum().backward()

        return step

    return run(ours_fn), run(torchrl_two_hot_cross_entropy)


def module_case(batch: tuple[int, int], mode: str):
    generator = torch.Generator().manual_seed(0)
    width = NUM_BINS if mode == "two_hot" else 1
    out_key = "state_value_logits" if mode == "two_hot" else "state_value"
    features = torch.randn(*batch, width, generator=generator).requires_grad_()
    td = TensorDict(
        features=features,
        lambda_target=torch.randn(*batch, 1, generator=generator).mul_(5).exp_(),
        batch_size=batch,
    )

    def head():
        return TensorDictModule(torch.nn.Identity(), in_keys=["features"], out_keys=[out_key])

    ours = DreamerV3ValueLoss(head(), value_loss=mode)
    peer = TorchRLValueLoss(head(), value_loss=mode)

    def run(loss):
        def step():
            features.grad = None
            loss(td)[0]["loss_value"].backward()

        return step

    return run(ours), run(peer)


def slow_critic_case(batch: tuple[int, int]):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(*batch, 32, generator=generator)
    td = TensorDict(
        features=features,
        lambda_target=torch.randn(*batch, 1, generator=generator).mul_(5).exp_(),
        batch_size=batch,
    )
    torch.manual_seed(0)
    # Logits under "state_value": TorchRL 0.14.1's slow-critic path reads that key
    # and fails (AttributeError) when the head writes only "state_value_logits".
    head = TensorDictModule(torch.nn.Linear(32, NUM_BINS), ["features"], ["state_value"])
    ours = DreamerV3ValueLoss(
        copy.deepcopy(head), value_loss="two_hot", slow_critic_regularization=1.0
    )
    peer = TorchRLValueLoss(
        copy.deepcopy(head), value_loss="two_hot", slow_critic_regularization=1.0
    )

    def run(loss):
        def step():
            loss.zero_grad(set_to_none=True)
            loss(td)[0]["loss_value"].backward()

        return step

    return run(ours), run(peer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="short run: 0.1 s per measurement")
    parser.add_argument(
        "--targets",
        type=int,
        metavar="N",
        help="only the issue's two target cases, N times (their spread across runs)",
    )
    args = parser.parse_args()
    min_run_time = 0.1 if args.quick else args.min_run_time
    warnings.filterwarnings("ignore")
    if args.targets:
        for run in range(args.targets):
            t_ce, t_ce_peer = compare(*cross_entropy_case(SIZES[-1]), min_run_time)
            t_mod, t_mod_peer = compare(*module_case(SIZES[0], "two_hot"), min_run_time)
            print(
                f"run {run}: two_hot_cross_entropy {list(SIZES[-1])} {t_ce / t_ce_peer:.2f} "
                f"(target <= 0.50); DreamerV3ValueLoss two_hot {list(SIZES[0])} "
                f"{t_mod / t_mod_peer:.2f} (target <= 0.67)"
            )
        return

    print(
        f"torch {torch.__version__}, tensordict {tensordict.__version__}, torchrl "
        f"{torchrl.__version__}, {torch.get_num_threads()} threads, {platform.processor() or '?'}"
    )
    print(
        "| case | [B, T] | ours (ms) | TorchRL (ms) | ours / TorchRL "
        "| peak extra [N,K] bufs ours / TorchRL |"
    )
    print("|---|---|---|---|---|---|")
    for batch in SIZES:
        ours, peer = cross_entropy_case(batch)
        t_ours, t_peer = compare(ours, peer, min_run_time)
        buffer = batch[0] * batch[1] * NUM_BINS * 4
        m_ours, m_peer = peak_bytes(ours) / buffer, peak_bytes(peer) / buffer
        print(
            f"| two_hot_cross_entropy | {list(batch)} | {t_ours * 1e3:.3f} | {t_peer * 1e3:.3f} "
            f"| {t_ours / t_peer:.2f} | {m_ours:.2f} / {m_peer:.2f} |"
        )
    ours, peer = cross_entropy_case(SIZES[-1], ours_fn=plain_autograd_cross_entropy)
    t_ours, t_peer = compare(ours, peer, min_run_time)
    buffer = SIZES[-1][0] * SIZES[-1][1] * NUM_BINS * 4
    m_ours, m_peer = peak_bytes(ours) / buffer, peak_bytes(peer) / buffer
    print(
        f"| two_hot_cross_entropy, plain-autograd variant (not used) | {list(SIZES[-1])} "
        f"| {t_ours * 1e3:.3f} | {t_peer * 1e3:.3f} | {t_ours / t_peer:.2f} "
        f"| {m_ours:.2f} / {m_peer:.2f} |"
    )
    ours, peer = cross_entropy_case(SIZES[-1], compiled=True)
    t_ours, t_peer = compare(ours, peer, min_run_time)
    print(
        f"| two_hot_cross_entropy, both torch.compile(fullgraph=True) | {list(SIZES[-1])} "
        f"| {t_ours * 1e3:.3f} | {t_peer * 1e3:.3f} | {t_ours / t_peer:.2f} | |"
    )
    ours, peer = slow_critic_case(SIZES[-1])
    t_ours, t_peer = compare(ours, peer, min_run_time)
    print(
        f"| DreamerV3ValueLoss two_hot + slow critic (weight 1) | {list(SIZES[-1])} "
        f"| {t_ours * 1e3:.3f} | {t_peer * 1e3:.3f} | {t_ours / t_peer:.2f} | |"
    )
    for mode in ("two_hot", "symlog_mse"):
        for batch in SIZES:
            ours, peer = module_case(batch, mode)
            t_ours, t_peer = compare(ours, peer, min_run_time)
            print(
                f"| DreamerV3ValueLoss {mode} | {list(batch)} | {t_ours * 1e3:.3f} "
                f"| {t_peer * 1e3:.3f} | {t_ours / t_peer:.2f} | |"
            )


if __name__ == "__main__":
    main()
