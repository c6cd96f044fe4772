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
"""

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
    kl_divergence,
    sum_independent_dims,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

FISHER_BACKENDS = ("gauss_newton", "hessian", "empirical")


def flatten(tensors: Sequence[th.Tensor]) -> th.Tensor:
    """Concatenate tensors (one per parameter) into one flat vector, in parameter order."""
    return th.cat([tensor.reshape(-1) for tensor in tensors])


def unflatten(vector: th.Tensor, like: Sequence[th.Tensor]) -> list[th.Tensor]:
    """Split a flat vector into views shaped like ``like`` (the inverse of :func:`flatten`)."""
    return [chunk.view_as(reference) for chunk, reference in zip(vector.split([t.numel() for t in like]), like, strict=True)]


def add_to_parameters_(parameters: Sequence[nn.Parameter], vector: th.Tensor, alpha: float = 1.0) -> None:
    """In place: ``parameters += alpha * vector`` with ``vector`` flat, in parameter order."""
    with th.no_grad():
        for parameter, chunk in zip(parameters, unflatten(vector, parameters), strict=True):
            parameter.add_(chunk, alpha=alpha)


def mean_summed_kl(old_distribution: Distribution, new_distribution: Distribution) -> th.Tensor:
    """
    ``E_s[KL(pi_old(.|s) || pi_new(.|s))]`` with the KL summed over independent action dimensions.

    SB3's ``kl_divergence`` returns one value per action dimension for Gaussian and Bernoulli
    distributions; summing them gives the KL of the joint action distribution.
    """
    kl = kl_divergence(old_distribution, new_distribution)
    if kl.dim() > 1:
        kl = sum_independent_dims(kl)
    return kl.mean()


def old_distribution(policy: ActorCriticPolicy, observations: PyTorchObs) -> Distribution:
    """
    The policy's action distribution on ``observations``, detached and safe to keep across an update.

    SB3 policies return the same ``Distribution`` object on every call and only swap its underlying
    torch distribution, so the object is copied before the weights change.
    """
    with th.no_grad():
        return copy.copy(policy.get_distribution(observations))


class CGSolution(NamedTuple):
    """A (damped) solve ``x ~ (F + damping * I)^-1 g`` and its residual ``g - (F + damping * I) x``."""

    direction: th.Tensor
    residual: th.Tensor


def conjugate_gradient(
    matvec: Callable[[th.Tensor], th.Tensor], b: th.Tensor, max_iter: int, residual_tol: float = 1e-10
) -> CGSolution:
    """
    Solve ``A x = b`` for a symmetric positive definite ``A`` given only ``v -> A v``.

    Unlike sb3-contrib's ``conjugate_gradient_solver`` this starts from ``x = 0`` (so the result
    does not depend on the random state and lies in the Krylov space of ``b``) and returns the
    residual, from which the caller gets ``x^T A x = x^T (b - r)`` without another product.

    :param matvec: function computing ``A v``
    :param b: right-hand side
    :param max_iter: maximum number of iterations (each costs one product)
    :param residual_tol: stop when the squared residual norm falls below this
    :return: the solution and its residual ``b - A x``
    """
    x = th.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_sq = residual @ residual
    for _ in range(max_iter):
        if residual_sq < residual_tol:
            break
        a_direction = matvec(direction)
        curvature = direction @ a_direction
        if not curvature > 0:  # not positive definite along this direction (or NaN): stop here
            break
        alpha = residual_sq / curvature
        x.add_(direction, alpha=alpha.item())
        residual.sub_(a_direction, alpha=alpha.item())
        new_residual_sq = residual @ residual
        direction.mul_(new_residual_sq / residual_sq).add_(residual)
        residual_sq = new_residual_sq
    return CGSolution(x, residual)


class OutputFisher(NamedTuple):
    """
    The action distribution expressed through its parameter tensors ("outputs"), with its Fisher.

    :param outputs: distribution parameters, each ``(batch, k)``, differentiable w.r.t. the actor
    :param metric: ``u -> M u``, the Fisher of the distribution in those parameters, per sample
    :param scores: per-sample ``d log pi(a|s) / d outputs`` (only when actions were given)
    """

    outputs: list[th.Tensor]
    metric: Callable[[list[th.Tensor]], list[th.Tensor]]
    scores: list[th.Tensor] | None


def _categorical_metric(probabilities: th.Tensor, tangent: th.Tensor) -> th.Tensor:
    """``(diag(p) - p p^T) u`` row by row: the Fisher of a categorical distribution in its logits."""
    weighted = probabilities * tangent
    return weighted - probabilities * weighted.sum(dim=-1, keepdim=True)


def output_fisher(distribution: Distribution, actions: th.Tensor | None = None) -> OutputFisher:
    """
    Distribution parameters and their analytic Fisher for every SB3 action distribution.

    * categorical (and each part of a multi-categorical): logits, ``M = diag(p) - p p^T``;
    * Bernoulli: logits, ``M = diag(p (1 - p))``;
    * diagonal Gaussian, squashed Gaussian and gSDE: mean and log standard deviation,
      ``M = diag(1 / sigma^2)`` on the mean and ``2`` on the log standard deviation.

    :param distribution: the distribution returned by ``policy.get_distribution``
    :param actions: actions taken; when given, the per-sample scores are computed too
    :return: outputs, metric and scores
    """
    metric: Callable[[list[th.Tensor]], list[th.Tensor]]
    # log_prob is a function of ``primary``; ``outputs`` are the same up to an elementwise change of variables
    # whose derivative is ``chain`` (the Gaussian's log standard deviation), so scores = chain * d log_prob / d primary.
    chain: list[th.Tensor | None]
    if isinstance(distribution, CategoricalDistribution | BernoulliDistribution):
        logits = distribution.distribution.logits
        probabilities = distribution.distribution.probs.detach()
        outputs = primary = [logits]
        chain = [None]
        if isinstance(distribution, CategoricalDistribution):
            metric = lambda tangent: [_categorical_metric(probabilities, tangent[0])]  # noqa: E731
        else:
            metric = lambda tangent: [probabilities * (1 - probabilities) * tangent[0]]  # noqa: E731
    elif isinstance(distribution, MultiCategoricalDistribution):
        outputs = primary = [part.logits for part in distribution.distribution]
        chain = [None] * len(outputs)
        part_probabilities = [part.probs.detach() for part in distribution.distribution]
        metric = lambda tangent: [  # noqa: E731
            _categorical_metric(p, u) for p, u in zip(part_probabilities, tangent, strict=True)
        ]
    elif isinstance(distribution, DiagGaussianDistribution | StateDependentNoiseDistribution):
        normal = distribution.distribution
        primary = [normal.loc, normal.scale]
        outputs = [normal.loc, normal.scale.log()]
        chain = [None, normal.scale.detach()]
        precision = normal.scale.detach() ** -2
        metric = lambda tangent: [precision * tangent[0], 2.0 * tangent[1]]  # noqa: E731
    else:
        raise NotImplementedError(f"No analytic Fisher for {type(distribution).__name__}")
    scores = None
    if actions is not None:
        log_prob = distribution.log_prob(actions)
        primary_scores = th.autograd.grad(log_prob.sum(), primary, retain_graph=True)
        scores = [
            score.detach() if factor is None else score.detach() * factor
            for score, factor in zip(primary_scores, chain, strict=True)
        ]
    return OutputFisher(outputs, metric, scores)


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
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        parameters: Sequence[nn.Parameter],
        observations: PyTorchObs,
        actions: th.Tensor,
        damping: float,
    ):
        self.parameters = list(parameters)
        self.damping = damping

    @abstractmethod
    def matvec(self, vector: th.Tensor) -> th.Tensor:
        """:return: ``F v`` for a flat vector ``v`` over the actor parameters."""

    def damped_matvec(self, vector: th.Tensor) -> th.Tensor:
        """:return: ``(F + damping * I) v``"""
        return self.matvec(vector) + self.damping * vector

    def solve(self, gradient: th.Tensor, max_iter: int) -> CGSolution:
        """
        :param gradient: the policy gradient ``g``
        :param max_iter: the conjugate-gradient budget (ignored by exact solvers)
        :return: ``x ~ (F + damping * I)^-1 g`` and its residual
        """
        return conjugate_gradient(self.damped_matvec, gradient, max_iter)


class HessianFisher(FisherOperator):
    """The exact Hessian of the summed KL, by double backpropagation (one extra backward per product)."""

    def __init__(
        self,
        policy: ActorCriticPolicy,
        parameters: Sequence[nn.Parameter],
        observations: PyTorchObs,
        actions: th.Tensor,
        damping: float,
    ):
        super().__init__(policy, parameters, observations, actions, damping)
        old = old_distribution(policy, observations)
        kl = mean_summed_kl(old, policy.get_distribution(observations))
        self._kl_gradient = flatten(th.autograd.grad(kl, self.parameters, create_graph=True, materialize_grads=True))

    def matvec(self, vector: th.Tensor) -> th.Tensor:
        return flatten(
            th.autograd.grad(self._kl_gradient @ vector, self.parameters, retain_graph=True, materialize_grads=True)
        ).detach()


class JacobianFisher(FisherOperator):
    """
    Shared machinery for Fishers of the form ``J^T M J / N`` on one reused forward graph.

    ``J v`` is the derivative of ``J^T w`` (linear in a dummy ``w``) in the direction ``v``;
    ``J^T u`` is an ordinary backward pass. Neither builds a second-order graph of the KL.
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        parameters: Sequence[nn.Parameter],
        observations: PyTorchObs,
        actions: th.Tensor,
        damping: float,
        with_scores: bool = False,
    ):
        super().__init__(policy, parameters, observations, actions, damping)
        distribution = policy.get_distribution(observations)
        self._output_fisher = output_fisher(distribution, actions if with_scores else None)
        self._outputs = self._output_fisher.outputs
        self.n_samples = self._outputs[0].shape[0]
        self._dummies = [th.zeros_like(output, requires_grad=True) for output in self._outputs]
        self._transposed = th.autograd.grad(
            self._outputs, self.parameters, grad_outputs=self._dummies, create_graph=True, materialize_grads=True
        )

    def jvp(self, vector: th.Tensor) -> list[th.Tensor]:
        """:return: ``J v``, one tensor per distribution output"""
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
        """:return: ``J^T u`` as a flat vector over the actor parameters"""
        return flatten(
            th.autograd.grad(
                self._outputs, self.parameters, grad_outputs=output_vectors, retain_graph=True, materialize_grads=True
            )
        )


class GaussNewtonFisher(JacobianFisher):
    """``F = J^T M J / N`` with the analytic Fisher ``M`` of the action distribution: exact at ``theta_old``."""

    def matvec(self, vector: th.Tensor) -> th.Tensor:
        return self.vjp(self._output_fisher.metric(self.jvp(vector))) / self.n_samples


class EmpiricalFisher(JacobianFisher):
    """
    The seed article's ``F = E[grad log pi(a|s) grad log pi(a|s)^T]`` from the sampled actions.

    The per-sample scores are ``G = C J`` row by row, with ``C`` the scores in the distribution
    outputs, so ``F v = G^T (G v) / N`` costs one jvp and one vjp. When the batch is smaller than the
    number of parameters, ``G`` is formed and the damped system is solved exactly (Woodbury):
    ``(damping I + G^T G / N)^-1 g = (g - G^T (N damping I + G G^T)^-1 G g) / damping``.
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        parameters: Sequence[nn.Parameter],
        observations: PyTorchObs,
        actions: th.Tensor,
        damping: float,
    ):
        super().__init__(policy, parameters, observations, actions, damping, with_scores=True)
        assert self._output_fisher.scores is not None
        self._scores = self._output_fisher.scores

    def score_products(self, vector: th.Tensor) -> th.Tensor:
        """:return: ``G v``, the per-sample directional derivatives of ``log pi(a|s)``"""
        return sum(  # type: ignore[return-value]
            (score * tangent).sum(dim=-1) for score, tangent in zip(self._scores, self.jvp(vector), strict=True)
        )

    def transposed_score_products(self, weights: th.Tensor) -> th.Tensor:
        """:return: ``G^T w``"""
        return self.vjp([score * weights.unsqueeze(-1) for score in self._scores])

    def matvec(self, vector: th.Tensor) -> th.Tensor:
        return self.transposed_score_products(self.score_products(vector)) / self.n_samples

    def per_sample_scores(self) -> th.Tensor:
        """:return: ``G``, one row ``grad log pi(a_i|s_i)`` per sample (``N x P``)"""
        eye = th.eye(self.n_samples, dtype=self._scores[0].dtype, device=self._scores[0].device)
        rows = th.autograd.grad(
            self._outputs,
            self.parameters,
            grad_outputs=[eye.unsqueeze(-1) * score.unsqueeze(0) for score in self._scores],
            retain_graph=True,
            is_grads_batched=True,
            materialize_grads=True,
        )
        return th.cat([row.reshape(self.n_samples, -1) for row in rows], dim=1)

    def solve(self, gradient: th.Tensor, max_iter: int) -> CGSolution:
        n_parameters = gradient.numel()
        if self.n_samples >= n_parameters or self.damping <= 0:
            return super().solve(gradient, max_iter)
        scores = self.per_sample_scores()
        gram = scores @ scores.T
        gram.diagonal().add_(self.n_samples * self.damping)
        correction = scores.T @ th.linalg.solve(gram, scores @ gradient)
        direction = (gradient - correction) / self.damping
        return CGSolution(direction, th.zeros_like(gradient))


FISHER_CLASSES: dict[str, type[FisherOperator]] = {
    "gauss_newton": GaussNewtonFisher,
    "hessian": HessianFisher,
    "empirical": EmpiricalFisher,
}


def make_fisher(
    backend: str,
    policy: ActorCriticPolicy,
    parameters: Sequence[nn.Parameter],
    observations: PyTorchObs,
    actions: th.Tensor,
    damping: float,
) -> FisherOperator:
    """
    Build the Fisher operator of ``backend`` (one of :data:`FISHER_BACKENDS`) on a batch.

    :param backend: ``"gauss_newton"``, ``"hessian"`` or ``"empirical"``
    :param policy: the actor-critic policy, at ``theta_old``
    :param parameters: the actor parameters
    :param observations: the batch of observations
    :param actions: the actions taken (for the empirical Fisher)
    :param damping: the damping added in ``solve``
    :return: the operator
    """
    return FISHER_CLASSES[backend](policy, parameters, observations, actions, damping)
