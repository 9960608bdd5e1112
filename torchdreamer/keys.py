"""The tensordict keys the DreamerV3 networks and losses exchange, each named once.

A replay batch ``[B, T]`` carries :data:`OBSERVATION`, :data:`PREV_ACTION` (the action
that led to each observation), :data:`IS_FIRST`, :data:`REWARD`, :data:`IS_LAST` and
:data:`IS_TERMINAL`. The world model adds :data:`POSTERIOR_LOGITS`, :data:`PRIOR_LOGITS`
(``[..., categoricals, classes]``), :data:`REWARD_LOGITS` (two-hot bins),
:data:`CONTINUATION_LOGITS`, :data:`RECONSTRUCTION` (one entry per observation key) and
the latent: :data:`STOCH` (the flat stochastic sample) and :data:`DETER` (the
deterministic GRU state), as the official names them; actor and critic read both.
:data:`STATE` and :data:`BELIEF` are TorchRL's names of the same two, the default keys
of the TorchRL-compatible losses (:mod:`torchdreamer.objectives`) only.

Examples:
    >>> from torchdreamer import keys
    >>> keys.STOCH, keys.DETER, keys.RECONSTRUCTION
    ('stoch', 'deter', 'reconstruction')

"""

OBSERVATION = "observation"
"""The observation (vector, or channel-last ``uint8`` image)."""
PREV_ACTION = "prev_action"
"""The action that led to the observation (zeros at an episode's start)."""
ACTION = "action"
"""The action chosen at a state (one-hot for discrete actions)."""
IS_FIRST = "is_first"
"""The step starts an episode: the latent state is reset before it."""
IS_LAST = "is_last"
"""The step ends an episode (terminal or truncated)."""
IS_TERMINAL = "is_terminal"
"""The episode ended in a terminal state (no bootstrap after it)."""
REWARD = "reward"
"""The reward received on arriving at the step."""
STOCH = "stoch"
"""The flat stochastic latent, ``[..., categoricals * classes]`` one-hot samples."""
DETER = "deter"
"""The deterministic GRU state."""
STATE = "state"
"""TorchRL's name of :data:`STOCH`: the default key of the TorchRL-compatible losses."""
BELIEF = "belief"
"""TorchRL's name of :data:`DETER`: the default key of the TorchRL-compatible losses."""
POSTERIOR_LOGITS = "posterior_logits"
"""Log-probabilities of the posterior latents, ``[..., categoricals, classes]``."""
PRIOR_LOGITS = "prior_logits"
"""Log-probabilities of the prior latents, ``[..., categoricals, classes]``."""
REWARD_LOGITS = "reward_logits"
"""Logits of the reward head over the two-hot bins."""
CONTINUATION_LOGITS = "continuation_logits"
"""Logit of the continuation head, ``[..., 1]`` (the probability that the episode goes
on is its sigmoid)."""
RECONSTRUCTION = "reconstruction"
"""Root of the decoder's outputs: ``(RECONSTRUCTION, key)`` for each observation key."""
STATE_VALUE = "state_value"
"""The critic's decoded value, ``[..., 1]``."""
STATE_VALUE_LOGITS = "state_value_logits"
"""Logits of the critic over the two-hot bins."""
LOGITS = "logits"
"""Normalised log-probabilities of a discrete policy."""
LOC = "loc"
"""Mean of a continuous policy, in ``[-1, 1]``."""
SCALE = "scale"
"""Standard deviation of a continuous policy."""
NEXT = "next"
"""TorchRL's sub-tensordict of the step's outcome."""
RENAMED_LATENT = {STATE: STOCH, BELIEF: DETER}
"""The latent's names before :data:`STOCH` and :data:`DETER`, old to new: what acting states
and replay columns in checkpoints written before the rename hold."""
