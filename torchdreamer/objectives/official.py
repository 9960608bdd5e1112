"""The official DreamerV3 configuration of the TorchRL-compatible losses, in one place.

The losses' constructors take TorchRL 0.14.1's defaults, so that switching an import from
``torchrl.objectives`` to ``torchdreamer`` changes nothing. Each dict below holds only the
arguments where the official DreamerV3 (``dreamerv3/configs.yaml`` and ``agent.py``)
differs from those defaults; the losses' ``official`` classmethods apply them, and
arguments not listed are official already as TorchRL's defaults.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

__all__ = [
    "ACTOR_LOSS",
    "ACTOR_VALUE_ESTIMATOR",
    "MODEL_LOSS",
    "VALUE_LOSS",
]

#: ``DreamerV3ModelLoss``: separate dynamics / representation KL terms (``loss_scales``
#: dyn 1, rep 0.1), the continuation head trained (con 1), ``unimix: 0.01`` in the
#: categoricals, and the world model's output kept attached (``repval_grad: True``).
MODEL_LOSS: MappingProxyType[str, Any] = MappingProxyType(
    {"kl_mode": "separate", "lambda_continue": 1.0, "unimix": 0.01, "detach_output": False}
)

#: ``DreamerV3ActorLoss``: the score-function (REINFORCE) gradient for every action space
#: (``agent.py``'s ``logpi * sg(adv)``).
ACTOR_LOSS: MappingProxyType[str, Any] = MappingProxyType({"use_reinforce": True})

#: The actor loss's ``make_value_estimator(ValueEstimators.TDLambda, ...)``: ``horizon: 333``
#: (gamma = 1 - 1/333) and ``imag_loss.lam: 0.95``.
ACTOR_VALUE_ESTIMATOR: MappingProxyType[str, Any] = MappingProxyType(
    {"gamma": 1 - 1 / 333, "lmbda": 0.95}
)

#: ``DreamerV3ValueLoss``: the distributional critic over 255 two-hot bins, regularised
#: toward its slow copy (``imag_loss.slowreg: 1.0``).
VALUE_LOSS: MappingProxyType[str, Any] = MappingProxyType(
    {"value_loss": "two_hot", "slow_critic_regularization": 1.0}
)
