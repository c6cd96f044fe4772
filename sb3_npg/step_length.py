"""
``step_length="exact"``: along the solved direction, the step scale at which the measured KL equals ``target_kl``
(:func:`search_step_scale`, one forward pass per KL evaluation), searched from the quadratic model's scale
``sqrt(2 target_kl / x^T F x)``.
"""

import math
from collections.abc import Callable
from typing import NamedTuple


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
