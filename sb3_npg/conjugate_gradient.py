"""
Conjugate gradient: ``x ~ A^-1 b`` from the products ``v -> A v`` only, so the Fisher matrix is never formed.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch as th


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
