"""
What NPG needs of SB3's (and sb3-contrib's maskable) action distributions: their outputs (the parameters the
Fisher is taken in: logits, or mean and log standard deviation), the analytic Fisher metric ``M`` and the scores of
the actions in those outputs (:func:`output_fisher`), and a detached copy safe to keep across an update.

Masked actions: a masked action's logit is sb3-contrib's large negative constant, so its probability is exactly 0:
the categorical Fisher ``diag(p) - p p^T`` has zero rows and columns there, its score is 0, and a state with one
valid action (a point mass) adds nothing to F.
"""

import copy
from collections.abc import Callable, Sequence
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
)
from torch import nn


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


def detached_distribution(distribution: Distribution) -> Distribution:
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
