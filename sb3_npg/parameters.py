"""
The actor's parameters as one flat vector: flatten and unflatten in parameter order, and the in-place writes of a
step (``theta += alpha x``; ``theta = theta_old + alpha x`` for the step-length search).

``log_std`` comes first in a Gaussian policy's ``named_parameters()``: every flat vector of NPG (gradient,
direction, Fisher products) goes through these functions, so the order is fixed in one place.
"""

from collections.abc import Sequence

import torch as th
from torch import nn


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
