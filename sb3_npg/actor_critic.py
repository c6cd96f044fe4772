"""
NPG's split of an actor-critic policy: the actor parameters (those the action distribution depends on, moved by the
natural-gradient step alone) and the critic parameters (the rest), the critic's own optimiser, and whether the policy
has running statistics (updated once per update, in training mode).
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from sb3_npg.distributions import distribution_outputs
from sb3_npg.kl import distribution_not_kept


def probe_observation(space: spaces.Space) -> Any:
    """
    An observation of ``space`` to find the actor parameters with: a sample whose ``Box`` values are clipped to
    ``[-1, 1]`` (within the bounds). A plain sample of a wide ``Box`` (CartPole's velocities: up to 3.4e38) can
    overflow the network to NaN logits, which the distribution rejects.

    :param space: the observation space (a ``Dict`` space key by key)
    """
    if isinstance(space, spaces.Dict):
        return {key: probe_observation(subspace) for key, subspace in space.spaces.items()}
    sample = space.sample()
    if not isinstance(space, spaces.Box):
        return sample
    lower, upper = np.clip(-1.0, space.low, space.high), np.clip(1.0, space.low, space.high)
    return np.clip(sample, lower, upper).astype(space.dtype)


def split_parameters(
    policy: ActorCriticPolicy, sample_distribution: Callable[[], Distribution]
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """
    Split the policy's parameters into actor (those the action distribution depends on) and critic (the rest).

    Found by differentiating the distribution on a sample observation, so it holds for custom
    policies too, whatever their parameter names. The policy runs in evaluation mode there (a ``BatchNorm``
    takes its running statistics, not one sample's, and keeps them; ``Dropout`` draws nothing) and does not keep
    the distribution of that pass (its autograd graph would make the policy impossible to deep-copy).

    :param policy: the actor-critic policy
    :param sample_distribution: gives the policy's action distribution on a sample observation
    :return: the actor parameters and the critic parameters, each in the policy's parameter order
    """
    parameters = list(policy.parameters())
    training = policy.training
    policy.set_training_mode(False)
    try:
        with distribution_not_kept(policy):
            outputs = distribution_outputs(sample_distribution())
            gradients = th.autograd.grad([output.sum() for output in outputs], parameters, allow_unused=True)
    finally:
        policy.set_training_mode(training)
    actor = [p for p, grad in zip(parameters, gradients, strict=True) if grad is not None]
    critic = [p for p, grad in zip(parameters, gradients, strict=True) if grad is None]
    return actor, critic


def critic_optimizer(
    policy: ActorCriticPolicy, critic_parameters: list[nn.Parameter], learning_rate: float
) -> th.optim.Optimizer:
    """
    The critic's optimiser: the policy's ``optimizer_class`` and ``optimizer_kwargs`` on the critic parameters only
    (``fused=True`` added for ``Adam``/``AdamW`` unless ``fused`` or ``foreach`` is given).

    :param policy: the actor-critic policy
    :param critic_parameters: the parameters the optimiser moves
    :param learning_rate: its initial learning rate
    """
    optimizer_kwargs = dict(policy.optimizer_kwargs)
    if policy.optimizer_class in (th.optim.Adam, th.optim.AdamW) and not {"fused", "foreach"} & optimizer_kwargs.keys():
        optimizer_kwargs["fused"] = True  # one kernel for all parameters: same update, less overhead
    return policy.optimizer_class(  # type: ignore[call-arg]
        critic_parameters, lr=learning_rate, **optimizer_kwargs
    )


def has_running_statistics(module: nn.Module) -> bool:
    """Whether ``module`` has a layer with running statistics (``BatchNorm*``, ``InstanceNorm*`` that tracks them)."""
    return any(
        getattr(layer, "track_running_stats", False) and getattr(layer, "running_mean", None) is not None
        for layer in module.modules()
    )
