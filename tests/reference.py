"""Plain Python restatements of the official DreamerV3 formulas, shared by the tests."""

from __future__ import annotations


def ref_lambda_return(reward, cont, boot, gamma, lmbda, last=None):
    """The official recursion, one trajectory, Python floats, walking back from R_T = b_T."""
    steps = len(reward)
    last = last or [0.0] * steps
    returns = [0.0] * (steps - 1)
    running = boot[-1]
    for t in reversed(range(steps - 1)):
        mix = lmbda * (1 - last[t + 1])
        running = reward[t + 1] + gamma * cont[t + 1] * ((1 - mix) * boot[t + 1] + mix * running)
        returns[t] = running
    return returns


def ref_weights(cont, gamma):
    """w_t = gamma^t * c_0 * ... * c_t."""
    out, running = [], 1.0
    for t, c in enumerate(cont):
        running *= c if t == 0 else gamma * c
        out.append(running)
    return out
