"""
Conjugate gradient: ``x ~ A^-1 b`` from the products ``v -> A v`` only, so the Fisher matrix is never formed;
optionally preconditioned by a fixed symmetric positive definite ``v -> P^-1 v`` (e.g. K-FAC, :mod:`sb3_npg.kfac`).
"""

from collections.abc import Callable
from typing import NamedTuple

import torch as th


class CGSolution(NamedTuple):
    """A (damped) solve ``x ~ (F + damping * I)^-1 g`` and its residual ``g - (F + damping * I) x``."""

    direction: th.Tensor
    residual: th.Tensor


def conjugate_gradient(
    matvec: Callable[[th.Tensor], th.Tensor],
    b: th.Tensor,
    max_iter: int,
    residual_tol: float = 1e-10,
    preconditioner: Callable[[th.Tensor], th.Tensor] | None = None,
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
    :param preconditioner: ``v -> P^-1 v`` for a fixed symmetric positive definite ``P ~ A`` (``None``: plain CG).
        Preconditioned CG converges to the same ``A^-1 b`` in fewer products when ``P^-1 A`` has clustered
        eigenvalues; its first iterate is ``P^-1 b`` scaled by ``(b^T P^-1 b) / (b^T P^-1 A P^-1 b)``.
    :return: the solution and its residual ``b - A x``
    """
    x = th.zeros_like(b)
    residual = b.clone()
    preconditioned = residual.clone() if preconditioner is None else preconditioner(residual)
    direction = preconditioned.clone()
    residual_sq = residual @ residual
    residual_product = residual @ preconditioned  # r^T P^-1 r (= r^T r without a preconditioner)
    for _ in range(max_iter):
        if residual_sq < residual_tol:
            break
        a_direction = matvec(direction)
        curvature = direction @ a_direction
        if not (curvature > 0 and residual_product > 0):  # not positive definite along this direction (or NaN)
            break
        alpha = residual_product / curvature
        x.add_(direction, alpha=alpha.item())
        residual.sub_(a_direction, alpha=alpha.item())
        residual_sq = residual @ residual
        preconditioned = residual if preconditioner is None else preconditioner(residual)
        new_residual_product = residual @ preconditioned
        direction.mul_(new_residual_product / residual_product).add_(preconditioned)
        residual_product = new_residual_product
    return CGSolution(x, residual)
