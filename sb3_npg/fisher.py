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

Along the solved direction, :func:`search_step_scale` finds the step scale at which the measured KL equals
``target_kl`` (``step_length="exact"``), one forward pass per KL evaluation.
"""

import contextlib
import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch as th
from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution, MaskableMultiCategoricalDistribution
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
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_npg.mlp import LinearChain

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


def categorical_parts(distribution: Distribution) -> list[th.distributions.Categorical] | None:
    """
    The torch categoricals behind an SB3 or sb3-contrib (maskable) categorical distribution: one for ``Discrete``,
    one per dimension for ``MultiDiscrete`` and for the maskable ``MultiBinary`` (two outcomes each);
    ``None`` for other distributions.
    """
    if isinstance(distribution, CategoricalDistribution | MaskableCategoricalDistribution):
        return [distribution.distribution]
    if isinstance(distribution, MultiCategoricalDistribution):
        return list(distribution.distribution)
    if isinstance(distribution, MaskableMultiCategoricalDistribution):
        return list(distribution.distributions)
    return None


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


def has_running_statistics(module: nn.Module) -> bool:
    """Whether ``module`` has a layer with running statistics (``BatchNorm*``, ``InstanceNorm*`` that tracks them)."""
    return any(
        getattr(layer, "track_running_stats", False) and getattr(layer, "running_mean", None) is not None
        for layer in module.modules()
    )


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


def set_parameters_along_(
    parameters: Sequence[nn.Parameter], origin: Sequence[th.Tensor], vector: th.Tensor, alpha: float
) -> None:
    """
    In place: ``parameters = origin + alpha * vector`` with ``vector`` flat, in parameter order.

    Each call starts again from ``origin`` (no drift from successive additions); at the first scale it gives the
    same values as :func:`add_to_parameters_` on parameters equal to ``origin``.
    """
    with th.no_grad():
        for parameter, start, chunk in zip(parameters, origin, unflatten(vector, parameters), strict=True):
            parameter.copy_(start).add_(chunk, alpha=alpha)


class StepSearch(NamedTuple):
    """
    The result of :func:`search_step_scale`.

    :param scale: the chosen scale, ``0.0`` if no evaluated scale kept the KL at or below ``(1 + tolerance) target``
    :param kl: the KL measured at ``scale`` (``0.0`` for scale ``0.0``)
    :param evaluations: the number of KL evaluations made (forward passes)
    :param initial_kl: the KL at the initial scale (``inf`` if not finite)
    :param converged: whether ``kl`` is within ``target * (1 +- tolerance)``
    """

    scale: float
    kl: float
    evaluations: int
    initial_kl: float
    converged: bool


def search_step_scale(
    kl_at: Callable[[float], float],
    initial_scale: float,
    target: float,
    tolerance: float = 0.05,
    max_evaluations: int = 6,
) -> StepSearch:
    """
    Find a scale ``alpha > 0`` with ``|kl_at(alpha) / target - 1| <= tolerance``, within ``max_evaluations`` calls.

    ``kl_at(alpha)``, the KL of the step ``alpha * x`` along a fixed direction, is 0 at 0 and ``~ c alpha^2`` near
    0: close to a straight line in ``(log alpha, log KL)``. The search starts at ``initial_scale`` (the quadratic
    model's root), steps by the power law of exponent 2 while it has one point, then by the secant through its
    two latest points in log-log space, falling back to bisection in ``log alpha`` when a guess leaves the
    bracket of scales known to be below and above the target (each step moves ``alpha`` by at most a factor 10).
    A non-finite KL counts as above the target.

    If no evaluation lands within the tolerance, the largest scale whose KL was below it is kept (never one
    above ``(1 + tolerance) target``); if every evaluation was above, the scale is ``0.0``: no step.

    :param kl_at: ``alpha -> KL`` of the step scaled by ``alpha`` (each call is one evaluation)
    :param initial_scale: the first scale tried, ``> 0``
    :param target: the KL to reach, ``> 0``
    :param tolerance: the relative tolerance on the KL
    :param max_evaluations: the budget of calls to ``kl_at``
    :return: the chosen scale, its KL, the number of evaluations, the KL at ``initial_scale`` and whether it converged
    """
    log_target = math.log(target)
    below: tuple[float, float] | None = None  # (scale, KL): the largest scale with KL < (1 - tolerance) target
    above: float | None = None  # the smallest scale with KL > (1 + tolerance) target, or not finite
    points: list[tuple[float, float]] = []  # (log scale, log KL) of the finite, positive KLs, in order
    initial_kl = math.inf
    scale = initial_scale
    for evaluation in range(1, max_evaluations + 1):
        kl = kl_at(scale)
        if not math.isfinite(kl):
            kl = math.inf
        if evaluation == 1:
            initial_kl = kl
        if abs(kl / target - 1) <= tolerance:
            return StepSearch(scale, kl, evaluation, initial_kl, True)
        if kl < target:
            if below is None or scale > below[0]:
                below = (scale, kl)
        elif above is None or scale < above:
            above = scale
        if 0 < kl < math.inf:
            points.append((math.log(scale), math.log(kl)))

        # Next guess in log alpha: secant (or power law 2) towards log target, kept inside the bracket
        log_scale = math.log(scale)
        slope = 2.0
        if len(points) >= 2 and points[-1][0] != points[-2][0]:
            secant = (points[-1][1] - points[-2][1]) / (points[-1][0] - points[-2][0])
            slope = secant if math.isfinite(secant) and secant > 0 else slope
        if points and points[-1][0] == log_scale:
            guess = log_scale + (log_target - points[-1][1]) / slope
        else:  # a KL of 0 (far below) or not finite (far above) at this scale
            guess = log_scale + (math.log(10.0) if kl < target else -math.log(10.0))
        guess = min(max(guess, log_scale - math.log(10.0)), log_scale + math.log(10.0))
        low = math.log(below[0]) if below is not None else -math.inf
        high = math.log(above) if above is not None else math.inf
        if not low < guess < high:
            if below is not None and above is not None:
                guess = (low + high) / 2
            else:  # a one-sided bracket that the guess left (a secant of odd slope): a factor 2 beyond its end
                guess = low + math.log(2.0) if below is not None else high - math.log(2.0)
        scale = math.exp(guess)
    if below is None:
        return StepSearch(0.0, 0.0, max_evaluations, initial_kl, False)
    return StepSearch(below[0], below[1], max_evaluations, initial_kl, False)


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


def distribution_outputs(distribution: Distribution) -> list[th.Tensor]:
    """
    The parameters of an SB3 action distribution, differentiable with respect to the actor, each ``(batch, k)``.

    * categorical, multi-categorical (one tensor per part; masked ones included) and Bernoulli: logits;
    * diagonal Gaussian, squashed Gaussian and gSDE: mean and log standard deviation.
    """
    parts = categorical_parts(distribution)
    if parts is not None:
        return [part.logits for part in parts]
    if isinstance(distribution, BernoulliDistribution):
        return [distribution.distribution.logits]
    if isinstance(distribution, DiagGaussianDistribution | StateDependentNoiseDistribution):
        return [distribution.distribution.loc, distribution.distribution.scale.log()]
    raise NotImplementedError(f"No analytic Fisher for {type(distribution).__name__}")


class OutputFisher(NamedTuple):
    """
    The Fisher of an action distribution in its parameters (see :func:`distribution_outputs`), per sample.

    :param metric: ``u -> M u``
    :param scores: ``d log pi(a|s) / d outputs`` of the taken actions (only when actions were given)
    """

    metric: Callable[[Sequence[th.Tensor]], list[th.Tensor]]
    scores: list[th.Tensor] | None


def _categorical_metric(probabilities: th.Tensor, tangent: th.Tensor) -> th.Tensor:
    """``(diag(p) - p p^T) u`` row by row: the Fisher of a categorical distribution in its logits."""
    weighted = probabilities * tangent
    return weighted - probabilities * weighted.sum(dim=-1, keepdim=True)


def _categorical_score(probabilities: th.Tensor, actions: th.Tensor) -> th.Tensor:
    """``d log p_a / d logits = onehot(a) - p``"""
    return nn.functional.one_hot(actions.long(), probabilities.shape[-1]).to(probabilities.dtype) - probabilities


def output_fisher(distribution: Distribution, actions: th.Tensor | None = None) -> OutputFisher:
    """
    The analytic Fisher of an SB3 action distribution at its current parameters, and the scores of ``actions``.

    * categorical (and each part of a multi-categorical, masked ones included): ``M = diag(p) - p p^T``, score
      ``onehot(a) - p`` (both 0 at a masked action, whose probability is 0);
    * Bernoulli: ``M = diag(p (1 - p))``, score ``a - p``;
    * diagonal Gaussian, squashed Gaussian and gSDE, in mean and log standard deviation:
      ``M = diag(1 / sigma^2)`` and ``2``, scores ``(y - mu) / sigma^2`` and ``(y - mu)^2 / sigma^2 - 1``
      (``y`` the action before squashing).

    :param distribution: the distribution returned by ``policy.get_distribution``
    :param actions: actions taken; when given, their scores are computed too
    :return: metric and scores
    """
    metric: Callable[[Sequence[th.Tensor]], list[th.Tensor]]
    scores = None
    categoricals = categorical_parts(distribution)
    if categoricals is not None:
        parts = [part.probs.detach() for part in categoricals]
        metric = lambda tangent: [_categorical_metric(p, u) for p, u in zip(parts, tangent, strict=True)]  # noqa: E731
        if actions is not None:
            part_actions = [actions.reshape(-1)] if len(parts) == 1 else actions.reshape(-1, len(parts)).unbind(dim=1)
            scores = [_categorical_score(p, a) for p, a in zip(parts, part_actions, strict=True)]
    elif isinstance(distribution, BernoulliDistribution):
        probabilities = distribution.distribution.probs.detach()
        metric = lambda tangent: [probabilities * (1 - probabilities) * tangent[0]]  # noqa: E731
        if actions is not None:
            scores = [actions - probabilities]
    elif isinstance(distribution, DiagGaussianDistribution | StateDependentNoiseDistribution):
        mean = distribution.distribution.loc.detach()
        std = distribution.distribution.scale.detach()
        precision = std**-2
        metric = lambda tangent: [precision * tangent[0], 2.0 * tangent[1]]  # noqa: E731
        if actions is not None:
            bijector = getattr(distribution, "bijector", None)
            deviation = (actions if bijector is None else bijector.inverse(actions)) - mean
            scores = [deviation * precision, deviation**2 * precision - 1]
    else:
        raise NotImplementedError(f"No analytic Fisher for {type(distribution).__name__}")
    return OutputFisher(metric, scores)


def _detached(distribution: Distribution) -> Distribution:
    """A copy of an SB3 distribution (see :func:`distribution_outputs` for the kinds) with no autograd graph."""
    if isinstance(distribution, MaskableMultiCategoricalDistribution):
        # The masked logits are kept as they are (masked entries at the large negative constant)
        detached_parts = copy.copy(distribution)
        detached_parts.distributions = [type(part)(logits=part.logits.detach()) for part in distribution.distributions]
        return detached_parts
    detached = copy.copy(distribution)
    inner = distribution.distribution
    if isinstance(distribution, MultiCategoricalDistribution):
        parts = distribution.distribution
        detached.distribution = [th.distributions.Categorical(logits=part.logits.detach()) for part in parts]
    elif isinstance(inner, th.distributions.Normal):
        detached.distribution = th.distributions.Normal(inner.loc.detach(), inner.scale.detach())
    elif isinstance(inner, th.distributions.Categorical | th.distributions.Bernoulli):
        detached.distribution = type(inner)(logits=inner.logits.detach())
    else:
        raise NotImplementedError(f"No analytic Fisher for {type(distribution).__name__}")
    return detached


class PolicyJacobian(ABC):
    """
    The Jacobian ``J`` of the distribution outputs (see :func:`distribution_outputs`) with respect to the
    actor parameters, on a batch, as products only.

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
        super().__init__(parameters, _detached(distribution))
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

    def solve(self, gradient: th.Tensor, max_iter: int) -> CGSolution:
        n_samples = self.jacobian.n_samples
        if n_samples >= gradient.numel() or self.damping <= 0:
            return super().solve(gradient, max_iter)
        gram = self.jacobian.gram(self._scores)
        gram.diagonal().add_(n_samples * self.damping)
        correction = self.transposed_score_products(th.linalg.solve(gram, self.score_products(gradient)))
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
    jacobian: PolicyJacobian | None = None,
    action_masks: th.Tensor | None = None,
) -> FisherOperator:
    """
    Build the Fisher operator of ``backend`` (one of :data:`FISHER_BACKENDS`) on a batch.

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
