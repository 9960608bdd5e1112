"""The small learner of TorchRL's ``DreamerV3Loss`` docstring (a real RSSM whose prior also
drives the imagination), built with TorchRL's modules for tests that run TorchRL's losses
and ours on the same networks."""

from __future__ import annotations

import torch
from tensordict.nn import (
    NormalParamExtractor,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    TensorDictSequential,
)
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs.model_based import DreamerEnv
from torchrl.modules import (
    MLP,
    RSSMPosteriorV3,
    RSSMPriorV3,
    RSSMRolloutV3,
    TanhNormal,
    WorldModelWrapper,
)


def learner_parts(reward_bins: int | None = None):
    """``(world_model, env, actor, critic)``: observations of 3, latents of 4 + 8, one
    continuous action. The world model writes ``("next", "reward")`` with the imagination's
    own reward network (``reward_bins`` None), or ``("next", "reward_logits")`` over
    ``reward_bins`` two-hot bins from a head of its own."""
    torch.manual_seed(0)
    prior_net = RSSMPriorV3(
        action_shape=(1,),
        hidden_dim=8,
        rnn_hidden_dim=8,
        num_categoricals=2,
        num_classes=2,
        action_dim=1,
    )
    posterior_net = RSSMPosteriorV3(
        hidden_dim=8, rnn_hidden_dim=8, num_categoricals=2, num_classes=2, obs_embed_dim=8
    )
    prior = TensorDictModule(
        prior_net,
        in_keys=["state", "belief", "action"],
        out_keys=[("next", "prior_logits"), ("next", "state"), ("next", "belief")],
    )
    posterior = TensorDictModule(
        posterior_net,
        in_keys=[("next", "belief"), ("next", "encoded")],
        out_keys=[("next", "posterior_logits"), ("next", "state")],
    )
    features = [("next", "state"), ("next", "belief")]
    reward_net = MLP(in_features=12, out_features=1, num_cells=8, depth=1)
    encoder = TensorDictModule(
        torch.nn.Linear(3, 8), in_keys=[("next", "observation")], out_keys=[("next", "encoded")]
    )
    decoder = TensorDictModule(
        MLP(in_features=12, out_features=3, num_cells=8, depth=1),
        in_keys=features,
        out_keys=[("next", "reco_pixels")],
    )
    if reward_bins is None:
        reward = TensorDictModule(reward_net, in_keys=features, out_keys=[("next", "reward")])
    else:
        reward = TensorDictModule(
            MLP(in_features=12, out_features=reward_bins, num_cells=8, depth=1),
            in_keys=features,
            out_keys=[("next", "reward_logits")],
        )
    world_model = TensorDictSequential(
        encoder, RSSMRolloutV3(prior, posterior, reset_key="is_init"), decoder, reward
    )
    imagination = WorldModelWrapper(
        TensorDictModule(
            prior_net, in_keys=["state", "belief", "action"], out_keys=["_", "state", "belief"]
        ),
        TensorDictModule(reward_net, in_keys=["state", "belief"], out_keys=["reward"]),
    )
    env = DreamerEnv(imagination, prior_shape=(4,), belief_shape=(8,))
    env.observation_spec = Composite(state=Unbounded(4), belief=Unbounded(8))
    env.state_spec = env.observation_spec.clone()
    env.action_spec = Bounded(-1, 1, (1,))
    env.reward_spec = Unbounded((1,))
    actor = ProbabilisticTensorDictSequential(
        TensorDictModule(
            MLP(in_features=12, out_features=2, num_cells=8, depth=1),
            in_keys=["state", "belief"],
            out_keys=["params"],
        ),
        TensorDictModule(NormalParamExtractor(), in_keys=["params"], out_keys=["loc", "scale"]),
        ProbabilisticTensorDictModule(
            in_keys=["loc", "scale"],
            out_keys=["action"],
            distribution_class=TanhNormal,
            return_log_prob=True,
        ),
    )
    critic = TensorDictModule(
        MLP(in_features=12, out_features=1, num_cells=8, depth=1),
        in_keys=["state", "belief"],
        out_keys=["state_value"],
    )
    return world_model, env, actor, critic
