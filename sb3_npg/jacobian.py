"""
The Jacobian ``J`` of the action distribution's outputs (see :func:`~sb3_npg.distributions.distribution_outputs`)
with respect to the actor parameters, on a batch, as products only (``J v``, ``J^T u`` and the per-sample Gram
matrix): the interface (:class:`PolicyJacobian`) and the reference backend for any policy (:class:`AutogradJacobian`).

SB3's MLP actors take hand-derived products instead (:class:`~sb3_npg.fast.mlp_jacobian.MLPJacobian`), chosen by
:func:`~sb3_npg.policy_gradient.policy_jacobian`.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_npg.distributions import detached_distribution, distribution_outputs
from sb3_npg.kl import action_distribution
from sb3_npg.parameters import flatten, unflatten


class PolicyJacobian(ABC):
    """
    The Jacobian ``J`` of the distribution outputs (see :func:`~sb3_npg.distributions.distribution_outputs`) with
    respect to the actor parameters, on a batch, as products only.

    :param parameters: the actor parameters, the coordinates of the flat vectors
    :param distribution: the action distribution at ``theta_old`` on the batch (from the same forward
        pass, safe to keep across an update)
    """

    def __init__(self, parameters: Sequence[nn.Parameter], distribution: Distribution):
        self.parameters = list(parameters)
        self.distribution = distribution
        self.n_samples = distribution_outputs(distribution)[0].shape[0]

    @abstractmethod
    def jvp(self, vector: th.Tensor) -> list[th.Tensor]:
        """:return: ``J v``, one tensor per distribution output"""

    @abstractmethod
    def vjp(self, output_vectors: Sequence[th.Tensor]) -> th.Tensor:
        """:return: ``J^T u`` as a flat vector over the actor parameters"""

    @abstractmethod
    def gram(self, output_gradients: Sequence[th.Tensor]) -> th.Tensor:
        """:return: ``G G^T`` where row i of ``G`` is ``J_i^T u_i`` (the per-sample gradients)"""


class AutogradJacobian(PolicyJacobian):
    """
    Any policy: one forward graph, reused for every product.

    ``J v`` is the derivative of ``J^T w`` (linear in a dummy ``w``) in the direction ``v`` (the double-vjp
    trick); ``J^T u`` is an ordinary backward pass. No second-order graph of the KL is built.
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        parameters: Sequence[nn.Parameter],
        observations: PyTorchObs,
        action_masks: th.Tensor | None = None,
    ):
        distribution = action_distribution(policy, observations, action_masks)
        self._outputs = distribution_outputs(distribution)
        # The graph stays with the outputs; the distribution kept (e.g. as the old policy for the KL after the
        # step) must not hold it alive once this Jacobian is dropped
        super().__init__(parameters, detached_distribution(distribution))
        self._dummies: list[th.Tensor] = []
        self._transposed: Sequence[th.Tensor] = ()

    def jvp(self, vector: th.Tensor) -> list[th.Tensor]:
        if not self._dummies:  # the graph of J^T w, built on the first jvp (a vjp alone does not need it)
            self._dummies = [th.zeros_like(output, requires_grad=True) for output in self._outputs]
            self._transposed = th.autograd.grad(
                self._outputs, self.parameters, grad_outputs=self._dummies, create_graph=True, materialize_grads=True
            )
        return list(
            th.autograd.grad(
                self._transposed,
                self._dummies,
                grad_outputs=unflatten(vector, self.parameters),
                retain_graph=True,
                materialize_grads=True,
            )
        )

    def vjp(self, output_vectors: Sequence[th.Tensor]) -> th.Tensor:
        return flatten(
            th.autograd.grad(
                self._outputs, self.parameters, grad_outputs=list(output_vectors), retain_graph=True, materialize_grads=True
            )
        )

    def gram(self, output_gradients: Sequence[th.Tensor]) -> th.Tensor:
        # Forms the N x P matrix of per-sample gradients with one batched backward pass
        eye = th.eye(self.n_samples, dtype=output_gradients[0].dtype, device=output_gradients[0].device)
        rows = th.autograd.grad(
            self._outputs,
            self.parameters,
            grad_outputs=[eye.unsqueeze(-1) * u.unsqueeze(0) for u in output_gradients],
            retain_graph=True,
            is_grads_batched=True,
            materialize_grads=True,
        )
        per_sample = th.cat([row.reshape(self.n_samples, -1) for row in rows], dim=1)
        return per_sample @ per_sample.T
