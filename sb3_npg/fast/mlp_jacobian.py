"""
The actor's Jacobian for SB3's ``MlpPolicy`` (and sb3-contrib's maskable one) from hand-derived products on the
cached activations (:class:`~sb3_npg.fast.mlp.LinearChain`): the same products as
:class:`~sb3_npg.jacobian.AutogradJacobian`, without autograd's per-node overhead.

Chosen, with its fallback to :class:`~sb3_npg.jacobian.AutogradJacobian`, in one place:
:func:`~sb3_npg.policy_gradient.policy_jacobian`. :meth:`MLPJacobian.for_policy` accepts only what it reproduces:
SB3's standard distributions (exact types) or the maskable categoricals, SB3's ``MlpExtractor`` (exact type) of
``Linear`` layers and elementwise activations, and actor parameters that are exactly the chain's (plus ``log_std``).
It rests on the activation kernels :mod:`sb3_npg.fast.mlp` feature-tests. Kept exact by tests/test_jacobian.py
(every product against autograd's and the dense Fisher) and tests/test_fisher.py.
"""

import copy
from collections.abc import Sequence

import torch as th
from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution, MaskableMultiCategoricalDistribution
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_npg.fast.mlp import LinearChain
from sb3_npg.jacobian import PolicyJacobian
from sb3_npg.parameters import flatten, unflatten


class MLPJacobian(PolicyJacobian):
    """
    SB3's ``MlpPolicy`` actor (parameter-free features, ``policy_net`` then ``action_net``, and a
    state-independent ``log_std`` for Gaussians), or sb3-contrib's maskable one: hand-derived products on the
    cached activations. Build it with :meth:`for_policy`, which says ``None`` when the policy is not of that form.

    With ``action_masks`` the distribution is the masked one: a masked action has probability exactly 0, so the
    metric ``diag(p) - p p^T`` and the scores are 0 there and the products need not mask ``J`` itself.
    """

    def __init__(
        self,
        parameters: Sequence[nn.Parameter],
        chain: LinearChain,
        features: th.Tensor,
        action_distribution: Distribution,
        log_std: nn.Parameter | None,
        split_sizes: list[int] | None,
        action_masks: th.Tensor | None = None,
    ):
        cache = chain.forward(features)
        # The policy's distribution object is shared by all its calls: fill a copy from the cached output
        distribution = copy.copy(action_distribution)
        if log_std is not None:
            distribution.proba_distribution(cache.output, log_std.detach())  # type: ignore[call-arg]
        else:
            distribution.proba_distribution(cache.output)  # type: ignore[call-arg]
        if action_masks is not None:
            distribution.apply_masking(action_masks)  # type: ignore[attr-defined]
        super().__init__(parameters, distribution)
        self._chain = chain
        self._cache = cache
        self._log_std = log_std
        self._split_sizes = split_sizes
        positions = {id(parameter): index for index, parameter in enumerate(self.parameters)}
        self._chain_positions = [positions[id(parameter)] for parameter in chain.parameters]
        self._log_std_position = None if log_std is None else positions[id(log_std)]

    @classmethod
    def for_policy(
        cls,
        policy: ActorCriticPolicy,
        parameters: Sequence[nn.Parameter],
        observations: PyTorchObs,
        action_masks: th.Tensor | None = None,
    ) -> "MLPJacobian | None":
        """:return: the MLP Jacobian of the policy's actor, or ``None`` if the policy is not an SB3 MLP actor"""
        distribution = policy.action_dist
        unmasked = (CategoricalDistribution, MultiCategoricalDistribution, BernoulliDistribution, DiagGaussianDistribution)
        maskable = (MaskableCategoricalDistribution, MaskableMultiCategoricalDistribution)
        if not (type(distribution) in unmasked or isinstance(distribution, maskable)):
            return None
        if action_masks is not None and not isinstance(distribution, maskable):
            return None
        if type(policy.mlp_extractor) is not MlpExtractor:
            return None
        chain = LinearChain.from_modules([policy.mlp_extractor.policy_net, policy.action_net])
        if chain is None:
            return None
        log_std = policy.log_std if isinstance(distribution, DiagGaussianDistribution) else None
        if {id(p) for p in parameters} != {id(p) for p in chain.parameters} | (
            {id(log_std)} if log_std is not None else set()
        ):
            return None  # e.g. a features extractor with parameters: not covered by the chain
        with th.no_grad():
            features = BasePolicy.extract_features(policy, observations, policy.pi_features_extractor)
        multi = (MultiCategoricalDistribution, MaskableMultiCategoricalDistribution)
        split_sizes = [int(size) for size in distribution.action_dims] if isinstance(distribution, multi) else None
        return cls(parameters, chain, features, distribution, log_std, split_sizes, action_masks)

    def _chain_output(self, outputs: Sequence[th.Tensor]) -> th.Tensor:
        return th.cat(list(outputs), dim=1) if self._split_sizes is not None else outputs[0]

    def jvp(self, vector: th.Tensor) -> list[th.Tensor]:
        tangents = unflatten(vector, self.parameters)
        output = self._chain.jvp(self._cache, [tangents[position] for position in self._chain_positions])
        if self._split_sizes is not None:
            return list(output.split(self._split_sizes, dim=1))
        if self._log_std_position is not None:
            return [output, tangents[self._log_std_position].expand_as(output)]
        return [output]

    def vjp(self, output_vectors: Sequence[th.Tensor]) -> th.Tensor:
        gradients: list[th.Tensor | None] = [None] * len(self.parameters)
        chain_gradients = self._chain.vjp(self._cache, self._chain_output(output_vectors))
        for position, gradient in zip(self._chain_positions, chain_gradients, strict=True):
            gradients[position] = gradient
        if self._log_std_position is not None:
            gradients[self._log_std_position] = output_vectors[1].sum(dim=0)
        return flatten(gradients)  # type: ignore[arg-type]

    def gram(self, output_gradients: Sequence[th.Tensor]) -> th.Tensor:
        gram = self._chain.gram(self._cache, self._chain_output(output_gradients))
        if self._log_std_position is not None:
            gram += output_gradients[1] @ output_gradients[1].T
        return gram
