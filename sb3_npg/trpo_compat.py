"""
sb3-contrib TRPO's hyperparameters as NPG's: :func:`trpo_to_npg_kwargs`, so that a TRPO configuration carries over.

SB3's ``kl_divergence`` returns one term per action dimension for diagonal Gaussian, gSDE and Bernoulli
distributions, and TRPO averages over them as over the batch (``.mean()``). Its Fisher (the Hessian of that averaged
KL) is therefore ``F / d`` and its ``target_kl`` a per-dimension budget, where ``F`` is the Fisher of NPG's KL (summed
over action dimensions, averaged over states) and ``d`` the number of terms: the action dimension for ``Box`` (gSDE
included) and ``MultiBinary``, 1 for ``Discrete`` and ``MultiDiscrete`` (whose KL SB3 already sums). TRPO solves
``(F/d + λI) s = g`` and scales ``s`` by ``sqrt(2 ε / sᵀ(F/d + λI)s)``; with ``s = d x`` that is NPG's step with
``(F + dλ I) x = g``, the damped quadratic form and ``target_kl = d ε``. The mapping lives here, in one place.
"""

import inspect
from typing import Any

import numpy as np
from gymnasium import spaces
from sb3_contrib import TRPO
from stable_baselines3 import A2C, PPO

from sb3_npg.npg import NPG

SCALED_BY_KL_TERMS = ("target_kl", "cg_damping")
"""TRPO's arguments multiplied by the number of KL terms per sample ``d`` (:func:`kl_terms`)."""

LINE_SEARCH_ARGUMENTS = ("line_search_shrinking_factor", "line_search_max_iter")
"""TRPO's backtracking line search: NPG has none, these are dropped."""

TRPO_STEP = {"damped_step_size": True, "step_length": "quadratic"}
"""NPG's arguments that make its step TRPO's full step: scaled by the damped quadratic form, no KL search."""

RUN_ARGUMENTS = (
    "policy",
    "env",
    "policy_kwargs",
    "rollout_buffer_class",
    "rollout_buffer_kwargs",
    "stats_window_size",
    "tensorboard_log",
    "verbose",
    "seed",
    "device",
    "_init_setup_model",
)
"""TRPO's arguments that set up the run rather than the update: passed on unchanged when given, never filled in."""


def trpo_defaults() -> dict[str, Any]:
    """
    The installed sb3-contrib TRPO's defaults, read from its constructor's signature (so they follow its version).

    :return: argument name -> default, for every argument of ``TRPO.__init__`` that has one
    """
    parameters = inspect.signature(TRPO.__init__).parameters
    return {name: p.default for name, p in parameters.items() if name != "self" and p.default is not inspect.Parameter.empty}


def same_name_arguments() -> tuple[str, ...]:
    """
    TRPO's update arguments that NPG takes under the same name and meaning, carried over with TRPO's value (its
    default when absent): ``learning_rate``, ``n_steps``, ``batch_size``, ``gamma``, ``gae_lambda``, ``cg_max_steps``,
    ``n_critic_updates``, ``normalize_advantage``, ``sub_sampling_factor``, ``use_sde``, ``sde_sample_freq`` with
    the installed versions.
    """
    npg_arguments = inspect.signature(NPG.__init__).parameters
    special = {*SCALED_BY_KL_TERMS, *LINE_SEARCH_ARGUMENTS, *RUN_ARGUMENTS}
    return tuple(name for name in trpo_defaults() if name not in special and name in npg_arguments)


def kl_terms(action_space: spaces.Space) -> int:
    """
    How many terms SB3's ``kl_divergence`` returns per sample for ``action_space`` (TRPO averages over them).

    :param action_space: the environment's action space
    :return: the action dimension for ``Box`` (gSDE included) and ``MultiBinary``, 1 for ``Discrete`` and
        ``MultiDiscrete``
    :raises ValueError: for an action space TRPO and NPG do not take
    """
    if isinstance(action_space, spaces.Box | spaces.MultiBinary):
        return int(np.prod(action_space.shape))
    if isinstance(action_space, spaces.Discrete | spaces.MultiDiscrete):
        return 1
    raise ValueError(
        f"Invalid action_space={action_space!r}: TRPO and NPG take Box, Discrete, MultiDiscrete or MultiBinary actions"
    )


def _check_arguments(trpo_kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming every key of ``trpo_kwargs`` that NPG cannot take over from TRPO."""
    trpo_arguments = set(inspect.signature(TRPO.__init__).parameters) - {"self"}
    other_algorithms = (set(inspect.signature(PPO.__init__).parameters) | set(inspect.signature(A2C.__init__).parameters)) - (
        trpo_arguments
    )
    unknown = [name for name in trpo_kwargs if name not in trpo_arguments]
    if unknown:
        described = [f"'{name}'" + (" (a PPO/A2C argument)" if name in other_algorithms else "") for name in unknown]
        raise ValueError(
            f"Invalid TRPO arguments {', '.join(described)}: sb3-contrib's TRPO does not take them, "
            f"so they have no NPG counterpart (TRPO's arguments: {', '.join(sorted(trpo_arguments))})"
        )
    handled = {*same_name_arguments(), *SCALED_BY_KL_TERMS, *LINE_SEARCH_ARGUMENTS, *RUN_ARGUMENTS}
    unmapped = [name for name in trpo_kwargs if name not in handled]
    if unmapped:  # an argument of a newer TRPO than this mapping knows
        raise ValueError(f"TRPO arguments {', '.join(map(repr, unmapped))} have no NPG counterpart")


def _readable(value: float) -> float:
    """``value`` to 12 significant digits, so that ``0.1 * 3`` reads ``0.3`` in a saved configuration."""
    return float(f"{value:.12g}")


def trpo_to_npg_kwargs(trpo_kwargs: dict[str, Any], action_space: spaces.Space) -> dict[str, Any]:
    """
    sb3-contrib TRPO's constructor arguments -> NPG's, such that NPG's update equals TRPO's whenever TRPO's line
    search accepts the full step.

    NPG has no line search: a step TRPO would have shrunk (by ``line_search_shrinking_factor`` per try, because
    the measured KL exceeded ``target_kl`` or the surrogate objective did not improve) is taken in full.
    With ``d`` = :func:`kl_terms` (the action dimension for ``Box``, gSDE included, and ``MultiBinary``; 1 for
    ``Discrete`` and ``MultiDiscrete``):

    - ``target_kl`` -> ``target_kl * d``
    - ``cg_damping`` -> ``cg_damping * d``
    - TRPO's step -> ``damped_step_size=True``, ``step_length="quadratic"``
    - ``line_search_shrinking_factor``, ``line_search_max_iter`` -> dropped (no line search)
    - ``learning_rate``, ``n_steps``, ``batch_size``, ``gamma``, ``gae_lambda``, ``cg_max_steps``,
      ``n_critic_updates``, ``normalize_advantage``, ``sub_sampling_factor``, ``use_sde``, ``sde_sample_freq``
      -> the same value
    - ``policy``, ``env``, ``policy_kwargs``, ``rollout_buffer_class``, ``rollout_buffer_kwargs``,
      ``stats_window_size``, ``tensorboard_log``, ``verbose``, ``seed``, ``device`` -> the same value, when given

    Every update argument is in the result, with TRPO's default (read from the installed TRPO's signature) where
    ``trpo_kwargs`` does not give it, so the result does not depend on NPG's defaults. ``sub_sampling_factor > 1``
    is carried over but does not give the same step: TRPO sub-samples the gradient and the line search too, NPG the
    Fisher products only.

    :param trpo_kwargs: keyword arguments of ``sb3_contrib.TRPO`` (not modified)
    :param action_space: the environment's action space (it gives ``d``)
    :return: keyword arguments of :class:`sb3_npg.NPG`
    :raises ValueError: for arguments TRPO does not take (PPO's ``clip_range``, ``n_epochs``, ``ent_coef``, ...),
        all named, and for an action space TRPO and NPG do not take
    """
    _check_arguments(trpo_kwargs)
    terms = kl_terms(action_space)
    settings = {**trpo_defaults(), **trpo_kwargs}
    npg_kwargs = {name: settings[name] for name in same_name_arguments()}
    for name in SCALED_BY_KL_TERMS:
        npg_kwargs[name] = _readable(settings[name] * terms)
    npg_kwargs.update(TRPO_STEP)
    npg_kwargs.update({name: trpo_kwargs[name] for name in RUN_ARGUMENTS if name in trpo_kwargs})
    return npg_kwargs
