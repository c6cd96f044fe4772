"""
Validation of an RL Zoo hyperparameter entry for NPG, before anything is created (:func:`check_hyperparameters`).

The allowed values are those of :data:`sb3_npg.hyperparameters.HYPERPARAMETERS` (the ranges NPG's constructor
checks); on top, a YAML entry is checked for what only YAML gets wrong: the type (an integer, not ``2.5``), RL Zoo's
``lin_<number>`` schedules, its own keys (``n_envs``, ``normalize``, ...) and unknown or misspelled keys.
"""

import difflib
import inspect
from typing import Any

from sb3_npg.hyperparameters import HYPERPARAMETERS, Hyperparameter
from sb3_npg.npg import NPG

# Keys of a YAML entry that RL Zoo consumes itself (they never reach the NPG constructor).
ZOO_KEYS = frozenset(
    {
        "n_timesteps",
        "n_envs",
        "normalize",
        "frame_stack",
        "env_wrapper",
        "vec_env_wrapper",
        "callback",
        "env_kwargs",
        "monitor_kwargs",
    }
)
# NPG arguments that RL Zoo passes itself, from its command line: in a YAML entry they are an error.
SET_BY_ZOO = frozenset({"env", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model"})


class ZooConfigError(ValueError):
    """A hyperparameter entry for NPG that RL Zoo cannot use (unknown key, wrong type, value out of range)."""


def npg_arguments(algorithm: type[NPG] = NPG) -> frozenset[str]:
    """
    The names of the constructor arguments a YAML entry may set.

    :param algorithm: NPG or one of its subclasses (:data:`ALGORITHMS`)
    """
    return frozenset(inspect.signature(algorithm.__init__).parameters) - {"self"} - SET_BY_ZOO


def _schedule_initial_value(value: Any) -> Any:
    """``"lin_1e-3"`` (RL Zoo's linear schedule) -> ``1e-3``; anything else unchanged."""
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            return float(value[len("lin_") :])
        except ValueError:
            return value
    return value


ZOO_SETTINGS: dict[str, Hyperparameter] = {
    "n_timesteps": Hyperparameter("timesteps to train for", lambda v: v > 0, "> 0", kind="a number"),
    "n_envs": Hyperparameter("parallel environments", lambda v: v >= 1, ">= 1", kind="an integer"),
    "frame_stack": Hyperparameter("observations stacked", lambda v: v >= 1, ">= 1", kind="an integer"),
    "normalize": Hyperparameter(
        "VecNormalize or not, or its arguments",
        lambda v: isinstance(v, bool | dict | str),
        "true, false, a dict or a 'dict(...)' string",
    ),
    "policy": Hyperparameter("the policy", lambda v: isinstance(v, str | type), "a policy name such as 'MlpPolicy'"),
    "policy_kwargs": Hyperparameter(
        "the policy's arguments", lambda v: isinstance(v, dict | str), "a dict or a 'dict(...)' string"
    ),
}
"""The values of the keys of a YAML entry that RL Zoo consumes itself (or that only YAML writes as strings)."""

SCHEDULES = frozenset({"learning_rate", "target_kl"})
"""Hyperparameters that may be RL Zoo's linear schedule ``lin_<initial value>`` (from it to 0 over the run)."""


def _allowed_in_yaml(key: str, value: Any) -> str | None:
    """``None`` if ``value`` is allowed for ``key`` in a YAML entry, else what is allowed (after ``"must be "``)."""
    definition = ZOO_SETTINGS.get(key) or HYPERPARAMETERS.get(key)
    if definition is None:
        return None
    allowed = definition.describe(with_type=True)
    if key in SCHEDULES:
        value = _schedule_initial_value(value)
        allowed += " or a linear schedule 'lin_<number>'"
    return None if definition.has_type(value) and definition.in_range(value) else allowed


def schedules_from_strings(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """
    ``hyperparams`` with a ``target_kl`` of ``"lin_<number>"`` made RL Zoo's linear schedule (``rl_zoo3.utils.
    linear_schedule``): RL Zoo turns such strings into schedules for its own keys only (``learning_rate``,
    ``clip_range``, ...). Call after :func:`check_hyperparameters`.
    """
    target_kl = hyperparams.get("target_kl")
    if not (isinstance(target_kl, str) and target_kl.startswith("lin_")):
        return hyperparams
    from rl_zoo3.utils import linear_schedule

    return {**hyperparams, "target_kl": linear_schedule(_schedule_initial_value(target_kl))}


def check_hyperparameters(hyperparams: dict[str, Any], where: str = "hyperparameters", algorithm: type[NPG] = NPG) -> None:
    """
    Check one RL Zoo hyperparameter entry for NPG (or RecurrentNPG), before anything is created.

    :param hyperparams: the entry as read from the YAML file (after ``--hyperparams`` overrides)
    :param where: where the entry comes from, for the error message (e.g. ``"npg.yml[CartPole-v1]"``)
    :param algorithm: the class the entry is for (its constructor's arguments are the allowed keys)
    :raises ZooConfigError: one line, naming the first offending key
    """
    allowed = npg_arguments(algorithm) | ZOO_KEYS
    for key in hyperparams:
        if key in SET_BY_ZOO:
            raise ZooConfigError(f"{where}: '{key}' cannot be set in a hyperparameter file (RL Zoo passes it itself)")
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ZooConfigError(f"{where}: unknown NPG hyperparameter '{key}'{hint}")
    policies = list(algorithm.policy_aliases)
    if "policy" not in hyperparams:
        raise ZooConfigError(f"{where}: missing required key 'policy' (e.g. policy: '{policies[0]}')")
    if isinstance(hyperparams["policy"], str) and hyperparams["policy"] not in policies:
        raise ZooConfigError(
            f"{where}: invalid policy={hyperparams['policy']!r}, "
            f"{algorithm.__name__} takes one of {', '.join(map(repr, policies))}"
        )
    for key, value in hyperparams.items():
        allowed_values = _allowed_in_yaml(key, value)
        if allowed_values is not None:
            raise ZooConfigError(f"{where}: invalid {key}={value!r}, must be {allowed_values}")
