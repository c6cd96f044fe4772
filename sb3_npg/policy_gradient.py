"""
The policy gradient ``g = E[A grad log pi(a|s)]`` at ``theta_old`` (:func:`policy_gradient`), as ``J^T`` applied to
the advantage-weighted scores, from the batch's Jacobian, which :func:`policy_jacobian` builds: the one place that
chooses the hand-derived MLP products (:mod:`sb3_npg.fast.mlp_jacobian`) or autograd's (the reference).
"""

from collections.abc import Sequence

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_npg.distributions import output_fisher
from sb3_npg.fast.mlp_jacobian import MLPJacobian
from sb3_npg.jacobian import AutogradJacobian, PolicyJacobian


def policy_jacobian(
    policy: ActorCriticPolicy,
    parameters: Sequence[nn.Parameter],
    observations: PyTorchObs,
    action_masks: th.Tensor | None = None,
) -> PolicyJacobian:
    """
    The fastest exact Jacobian for the policy: hand-derived for SB3's (and sb3-contrib's maskable) MLP actors,
    autograd otherwise; of the masked distribution when ``action_masks`` are given.
    """
    # Anything else with a get_distribution (e.g. RecurrentNPG's batch of sequences) takes autograd
    mlp_jacobian = (
        MLPJacobian.for_policy(policy, parameters, observations, action_masks) if isinstance(policy, BasePolicy) else None
    )
    return mlp_jacobian or AutogradJacobian(policy, parameters, observations, action_masks)


def policy_gradient(jacobian: PolicyJacobian, actions: th.Tensor, advantages: th.Tensor) -> th.Tensor:
    """
    ``g = E[A * grad log pi(a|s)]`` at ``theta_old`` (the gradient of the surrogate ``E[A * pi_theta / pi_old]``
    there), as ``J^T`` applied to the advantage-weighted scores of the actions in the distribution outputs:
    no forward pass besides the Jacobian's own.

    :param jacobian: the Jacobian on the batch of ``actions``
    :param actions: the actions taken
    :param advantages: their advantages
    :return: ``g``, flat over the actor parameters
    """
    scores = output_fisher(jacobian.distribution, actions).scores
    assert scores is not None  # actions were given
    weights = (advantages / jacobian.n_samples).unsqueeze(-1)
    return jacobian.vjp([weights * score for score in scores])
