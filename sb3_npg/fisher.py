"""
Fisher-vector products and solves for the natural policy gradient.

The Fisher information matrix F of the policy, taken as the Hessian at ``theta_old`` of the
mean over states of ``KL(pi_old(.|s) || pi_theta(.|s))`` summed over action dimensions, is never
formed. Each backend is built once per update from a batch of observations (and actions) and then
offers ``matvec(v) = F v`` and ``solve(g) ~ (F + damping * I)^-1 g``:

* ``"hessian"``: the exact Hessian of the KL by double backpropagation (what sb3-contrib's TRPO does).
  The reference implementation.
* ``"gauss_newton"``: ``F = J^T M J / N`` where ``J`` is the Jacobian of the distribution parameters
  (logits, or mean and log standard deviation) with respect to the actor parameters and ``M`` the
  analytic Fisher of the action distribution in those parameters. No second-order graph is built: one
  forward graph is reused for every product (Jacobian-vector products by the double-vjp trick). This
  is the same matrix as ``"hessian"`` at ``theta_old``, at a lower cost, and the default.
* ``"empirical"``: the seed article's ``F ~ E[grad log pi(a|s) grad log pi(a|s)^T]`` from per-sample
  score vectors of the sampled actions. When the batch is smaller than the number of actor
  parameters it is solved exactly with the Woodbury identity, otherwise by conjugate gradient.

Masked actions (sb3-contrib's maskable policies): every function that takes ``action_masks`` gives them to
each ``get_distribution`` call, so the gradient, every Fisher product and the KL use the masked distribution, the
same masks for the old and the new policy. A masked action's logit is sb3-contrib's large negative constant, so its
probability is exactly 0: the categorical Fisher ``diag(p) - p p^T`` has zero rows and columns there, its score is 0,
and a state with one valid action (a point mass) has KL 0 and adds nothing to F.

:func:`make_fisher` chooses the backend. The pieces it is built from are in small modules of their own: the KL
(:mod:`sb3_npg.kl`), the distributions' own Fisher (:mod:`sb3_npg.distributions`), the Jacobian
(:mod:`sb3_npg.jacobian`, :func:`sb3_npg.policy_gradient.policy_jacobian`) and the solver
(:mod:`sb3_npg.conjugate_gradient`).
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_npg.conjugate_gradient import CGSolution, conjugate_gradient
from sb3_npg.constants import FISHER_BACKENDS
from sb3_npg.distributions import output_fisher
from sb3_npg.jacobian import PolicyJacobian
from sb3_npg.kl import action_distribution, mean_summed_kl, old_distribution
from sb3_npg.parameters import flatten
from sb3_npg.policy_gradient import policy_jacobian


class FisherOperator(ABC):
    """
    The Fisher information matrix of the policy on one batch, as an operator.

    Built once per update at ``theta_old``; ``matvec`` gives ``F v`` (undamped) and ``solve`` gives
    ``(F + damping * I)^-1 g`` with its residual.

    :param policy: the actor-critic policy
    :param parameters: the actor parameters, the coordinates of ``v`` and ``g``
    :param observations: the batch of observations the Fisher is averaged over
    :param actions: the actions taken in those states (used by the empirical Fisher only)
    :param damping: ``damping * I`` is added to ``F`` in ``solve``
    :param jacobian: a :class:`PolicyJacobian` already built on the same batch, reused by the Jacobian
        backends instead of a new forward pass
    :param action_masks: the action masks of the batch (maskable policies), applied to every distribution
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        parameters: Sequence[nn.Parameter],
        observations: PyTorchObs,
        actions: th.Tensor,
        damping: float,
        jacobian: PolicyJacobian | None = None,
        action_masks: th.Tensor | None = None,
    ):
        self.parameters = list(parameters)
        self.damping = damping

    @abstractmethod
    def matvec(self, vector: th.Tensor) -> th.Tensor:
        """:return: ``F v`` for a flat vector ``v`` over the actor parameters."""

    def damped_matvec(self, vector: th.Tensor) -> th.Tensor:
        """:return: ``(F + damping * I) v``"""
        return self.matvec(vector) + self.damping * vector

    def solve(
        self, gradient: th.Tensor, max_iter: int, preconditioner: Callable[[th.Tensor], th.Tensor] | None = None
    ) -> CGSolution:
        """
        :param gradient: the policy gradient ``g``
        :param max_iter: the conjugate-gradient budget (ignored by exact solvers)
        :param preconditioner: ``v -> P^-1 v`` for conjugate gradient (e.g. K-FAC, :mod:`sb3_npg.kfac`), or ``None``
        :return: ``x ~ (F + damping * I)^-1 g`` and its residual
        """
        return conjugate_gradient(self.damped_matvec, gradient, max_iter, preconditioner=preconditioner)


class HessianFisher(FisherOperator):
    """The exact Hessian of the summed KL, by double backpropagation (one extra backward per product)."""

    def __init__(
        self,
        policy: ActorCriticPolicy,
        parameters: Sequence[nn.Parameter],
        observations: PyTorchObs,
        actions: th.Tensor,
        damping: float,
        jacobian: PolicyJacobian | None = None,
        action_masks: th.Tensor | None = None,
    ):
        super().__init__(policy, parameters, observations, actions, damping)
        old = old_distribution(policy, observations, action_masks)
        kl = mean_summed_kl(old, action_distribution(policy, observations, action_masks))
        self._kl_gradient = flatten(th.autograd.grad(kl, self.parameters, create_graph=True, materialize_grads=True))

    def matvec(self, vector: th.Tensor) -> th.Tensor:
        return flatten(
            th.autograd.grad(self._kl_gradient @ vector, self.parameters, retain_graph=True, materialize_grads=True)
        ).detach()


class JacobianFisher(FisherOperator):
    """
    A Fisher built from the Jacobian ``J`` of the distribution outputs (see :func:`policy_jacobian`) and the
    analytic Fisher and scores of the action distribution at ``theta_old`` (see :func:`output_fisher`).
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        parameters: Sequence[nn.Parameter],
        observations: PyTorchObs,
        actions: th.Tensor,
        damping: float,
        jacobian: PolicyJacobian | None = None,
        action_masks: th.Tensor | None = None,
    ):
        super().__init__(policy, parameters, observations, actions, damping)
        self.jacobian = jacobian or policy_jacobian(policy, self.parameters, observations, action_masks)
        with th.no_grad():
            self._output_fisher = output_fisher(self.jacobian.distribution, actions)


class GaussNewtonFisher(JacobianFisher):
    """
    ``F = J^T M J / N`` with the analytic Fisher ``M`` of the action distribution: exact at ``theta_old``,
    with no second-order graph (hand-derived products for MLP actors, one reused autograd graph otherwise).
    """

    def matvec(self, vector: th.Tensor) -> th.Tensor:
        return self.jacobian.vjp(self._output_fisher.metric(self.jacobian.jvp(vector))) / self.jacobian.n_samples


class EmpiricalFisher(JacobianFisher):
    """
    The seed article's ``F = E[grad log pi(a|s) grad log pi(a|s)^T]`` from the sampled actions.

    The per-sample scores are ``G_i = J_i^T c_i`` with ``c_i`` the score in the distribution outputs,
    so ``F v = G^T (G v) / N`` costs one jvp and one vjp. When the batch is smaller than the number of
    parameters the damped system is solved exactly from the ``N x N`` Gram matrix (Woodbury):
    ``(damping I + G^T G / N)^-1 g = (g - G^T (N damping I + G G^T)^-1 G g) / damping``.
    """

    @property
    def _scores(self) -> list[th.Tensor]:
        assert self._output_fisher.scores is not None  # actions are always given
        return self._output_fisher.scores

    def score_products(self, vector: th.Tensor) -> th.Tensor:
        """:return: ``G v``, the per-sample directional derivatives of ``log pi(a|s)``"""
        products = [
            (score * tangent).sum(dim=-1) for score, tangent in zip(self._scores, self.jacobian.jvp(vector), strict=True)
        ]
        return th.stack(products).sum(dim=0)

    def transposed_score_products(self, weights: th.Tensor) -> th.Tensor:
        """:return: ``G^T w``"""
        return self.jacobian.vjp([score * weights.unsqueeze(-1) for score in self._scores])

    def matvec(self, vector: th.Tensor) -> th.Tensor:
        return self.transposed_score_products(self.score_products(vector)) / self.jacobian.n_samples

    def solve(
        self, gradient: th.Tensor, max_iter: int, preconditioner: Callable[[th.Tensor], th.Tensor] | None = None
    ) -> CGSolution:
        n_samples = self.jacobian.n_samples
        if n_samples >= gradient.numel() or self.damping <= 0:
            return super().solve(gradient, max_iter, preconditioner)
        gram = self.jacobian.gram(self._scores)
        gram.diagonal().add_(n_samples * self.damping)
        correction = self.transposed_score_products(th.linalg.solve(gram, self.score_products(gradient)))
        direction = (gradient - correction) / self.damping
        return CGSolution(direction, th.zeros_like(gradient))


#: The operator class of each backend name of :data:`~sb3_npg.constants.FISHER_BACKENDS`
FISHER_CLASSES: dict[str, type[FisherOperator]] = dict(
    zip(FISHER_BACKENDS, (GaussNewtonFisher, HessianFisher, EmpiricalFisher), strict=True)
)


def make_fisher(
    backend: str,
    policy: ActorCriticPolicy,
    parameters: Sequence[nn.Parameter],
    observations: PyTorchObs,
    actions: th.Tensor,
    damping: float,
    jacobian: PolicyJacobian | None = None,
    action_masks: th.Tensor | None = None,
) -> FisherOperator:
    """
    Build the Fisher operator of ``backend`` (one of :data:`~sb3_npg.constants.FISHER_BACKENDS`) on a batch.

    :param backend: ``"gauss_newton"``, ``"hessian"`` or ``"empirical"``
    :param policy: the actor-critic policy, at ``theta_old``
    :param parameters: the actor parameters
    :param observations: the batch of observations
    :param actions: the actions taken (for the empirical Fisher)
    :param damping: the damping added in ``solve``
    :param jacobian: a :class:`PolicyJacobian` of the same batch to reuse (Jacobian backends; built with the same
        ``action_masks``)
    :param action_masks: the action masks of the batch (maskable policies), or ``None``
    :return: the operator
    """
    return FISHER_CLASSES[backend](policy, parameters, observations, actions, damping, jacobian, action_masks)
