"""
The trust region's KL: ``E_s[KL(pi_old(.|s) || pi_theta(.|s))]`` summed over action dimensions
(:func:`mean_summed_kl`), the batch's action distribution with its masks (:func:`action_distribution`), and the old
distribution kept safe across an update (SB3's ``get_distribution`` returns the same object on every call:
:func:`old_distribution` copies it, :func:`distribution_not_kept` keeps the step's graphs out of the policy).
"""

import contextlib
import copy
from collections.abc import Iterator

import torch as th
from stable_baselines3.common.distributions import Distribution, kl_divergence, sum_independent_dims
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_npg.distributions import categorical_parts


def action_distribution(policy: BasePolicy, observations: PyTorchObs, action_masks: th.Tensor | None = None) -> Distribution:
    """
    ``policy.get_distribution(observations)``, with ``action_masks`` applied when given (sb3-contrib's maskable
    policies take them as ``get_distribution(obs, action_masks)``).

    :param policy: the actor-critic policy
    :param observations: a batch of observations
    :param action_masks: ``(batch, mask_dims)``, true or 1 for the valid actions, or ``None`` for no masking
    :return: the action distribution
    """
    if action_masks is None:
        return policy.get_distribution(observations)  # type: ignore[operator]
    return policy.get_distribution(observations, action_masks=action_masks)  # type: ignore[operator]


def old_distribution(
    policy: ActorCriticPolicy, observations: PyTorchObs, action_masks: th.Tensor | None = None
) -> Distribution:
    """
    The policy's action distribution on ``observations`` (masked by ``action_masks`` if given), detached and safe
    to keep across an update.

    SB3 policies return the same ``Distribution`` object on every call and only swap its underlying
    torch distribution, so the object is copied before the weights change.
    """
    with th.no_grad():
        return copy.copy(action_distribution(policy, observations, action_masks))


@contextlib.contextmanager
def distribution_not_kept(policy: ActorCriticPolicy) -> Iterator[None]:
    """
    Inside, ``policy.action_dist`` (the object SB3's ``get_distribution`` fills in place and returns) is a shallow
    copy of the policy's own, which is put back on exit: the distributions of the forward passes made inside, and
    their autograd graphs, are not kept by the policy (a policy holding a graph cannot be deep-copied).
    A policy without ``action_dist`` is left as it is.

    :param policy: the policy whose forward passes are made inside
    """
    kept = getattr(policy, "action_dist", None)
    if not isinstance(kept, Distribution):
        yield
        return
    policy.action_dist = copy.copy(kept)
    try:
        yield
    finally:
        policy.action_dist = kept


def mean_summed_kl(old_distribution: Distribution, new_distribution: Distribution) -> th.Tensor:
    """
    ``E_s[KL(pi_old(.|s) || pi_new(.|s))]`` with the KL summed over independent action dimensions.

    SB3's ``kl_divergence`` returns one value per action dimension for Gaussian and Bernoulli
    distributions; summing them gives the KL of the joint action distribution. Categorical distributions
    (maskable ones included, which SB3's ``kl_divergence`` does not take for several dimensions) sum the KL of
    their parts; a masked action has probability 0 in the old distribution and adds exactly 0.
    """
    old_parts, new_parts = categorical_parts(old_distribution), categorical_parts(new_distribution)
    if old_parts is not None and new_parts is not None:
        assert type(old_distribution) is type(new_distribution), "the old and new distributions must be of one kind"
        kls = [th.distributions.kl_divergence(p, q) for p, q in zip(old_parts, new_parts, strict=True)]
        return th.stack(kls, dim=1).sum(dim=1).mean()
    kl = kl_divergence(old_distribution, new_distribution)
    if kl.dim() > 1:
        kl = sum_independent_dims(kl)
    return kl.mean()
