"""
Which entry of a hyperparameter file an env uses (:func:`zoo_entry`), and NPG trained from RL Zoo's TRPO entries
(:func:`npg_entry_from_trpo`, :func:`reading_trpo_hyperparameters`: ``python -m sb3_npg.train --trpo-hyperparams``).
"""

import contextlib
import contextvars
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sb3_npg.trpo_compat import TRPO_STEP, kl_terms, trpo_defaults, trpo_to_npg_kwargs
from sb3_npg.zoo.algorithms import require_zoo
from sb3_npg.zoo.validation import ZOO_KEYS, ZooConfigError


def is_atari(env_id: str) -> bool:
    """Whether RL Zoo treats ``env_id`` as an Atari game (its ``atari`` entry, stochastic evaluation)."""
    require_zoo()
    import rl_zoo3.utils  # noqa: F401  (registers the ALE environments)
    from rl_zoo3.exp_manager import ExperimentManager

    return ExperimentManager.is_atari(env_id)


def zoo_entry(entries: dict[str, Any], env_id: str) -> tuple[str, dict[str, Any]] | None:
    """
    The entry of an RL Zoo hyperparameter file used for ``env_id``: its own, else its ``-v4`` sibling's (the Zoo's
    MuJoCo entries for TRPO, PPO and A2C are ``-v4`` only), else (a velocity-masked ``NoVel`` env) the full env's,
    else (an Atari game) the ``atari`` entry, as the Zoo picks it. The file's ``default`` entry is never used.

    :param entries: the file's contents (entry name -> hyperparameters)
    :param env_id: the environment to train on
    :return: the name of the entry used and the entry, or ``None`` if none applies
    """
    if env_id in entries:
        return env_id, entries[env_id]
    name, _, version = env_id.rpartition("-v")
    sibling = f"{name}-v4"
    if version != "4" and sibling in entries:
        return sibling, entries[sibling]
    full_observation = env_id.replace("NoVel-", "-")
    if full_observation != env_id and full_observation in entries:
        return full_observation, entries[full_observation]
    if "atari" in entries and is_atari(env_id):
        return "atari", entries["atari"]
    return None


def trpo_hyperparams_path() -> Path:
    """RL Zoo's own hyperparameter file for sb3-contrib's TRPO (``rl_zoo3/hyperparams/trpo.yml``)."""
    require_zoo()
    import rl_zoo3

    return Path(rl_zoo3.__file__).parent / "hyperparams" / "trpo.yml"


def npg_entry_from_trpo(entry: dict[str, Any], action_space: Any) -> dict[str, Any]:
    """
    An RL Zoo entry for TRPO -> the entry for NPG that takes TRPO's step (:func:`sb3_npg.trpo_to_npg_kwargs`).

    The keys RL Zoo consumes itself (``n_timesteps``, ``n_envs``, ``normalize``, ``env_wrapper``, ``frame_stack``,
    ...) and ``policy``, ``policy_kwargs`` are kept as they are; TRPO's arguments are converted.

    :param entry: the TRPO entry, as read from the YAML file
    :param action_space: the environment's action space
    :return: the NPG entry
    :raises ValueError: for a key that is not an argument of TRPO (named), or an action space NPG does not take
    """
    zoo_settings = {key: value for key, value in entry.items() if key in ZOO_KEYS}
    algorithm_settings = {key: value for key, value in entry.items() if key not in ZOO_KEYS}
    return {**zoo_settings, **trpo_to_npg_kwargs(algorithm_settings, action_space)}


_READING_TRPO: contextvars.ContextVar[bool] = contextvars.ContextVar("sb3_npg_from_trpo", default=False)


@contextlib.contextmanager
def reading_trpo_hyperparameters(enabled: bool = True) -> Iterator[None]:
    """
    While active (and ``enabled``), RL Zoo's ``--algo npg`` reads its hyperparameter file as TRPO's: the env's entry
    (:func:`zoo_entry`) is converted by :func:`npg_entry_from_trpo`, printed, then goes through RL Zoo as if
    ``npg.yml`` held it (``--hyperparams`` applied on top, the result printed and saved in ``config.yml``).
    ``python -m sb3_npg.train --trpo-hyperparams`` runs in it.

    :param enabled: whether to read TRPO's entries (``False``: no effect)
    """
    token = _READING_TRPO.set(enabled)
    try:
        yield
    finally:
        _READING_TRPO.reset(token)


def reading_trpo_entries() -> bool:
    """Whether :func:`reading_trpo_hyperparameters` is active (and enabled) in this context."""
    return _READING_TRPO.get()


def _action_space(env_id: str, env_kwargs: dict[str, Any]) -> Any:
    """The action space of ``env_id`` made with ``env_kwargs`` (before RL Zoo's wrappers)."""
    import gymnasium as gym

    env = gym.make(env_id, **env_kwargs)
    try:
        return env.action_space
    finally:
        env.close()


def _describe_conversion(trpo_entry: dict[str, Any], npg_entry: dict[str, Any]) -> list[str]:
    """What the conversion changed, filled in (TRPO's defaults) and dropped, a few lines."""
    trpo_settings = {**trpo_defaults(), **trpo_entry}
    lines, defaults = [], []
    for key, value in npg_entry.items():
        if key in TRPO_STEP:
            lines.append(f"  {key}: {value!r} (TRPO's step)")
        elif trpo_settings[key] != value:
            source = "" if key in trpo_entry else " (TRPO's default)"
            lines.append(f"  {key}: {trpo_settings[key]!r}{source} -> {value!r}")
        elif key not in trpo_entry:
            defaults.append(f"{key}={value!r}")
    if defaults:
        lines.append(f"  TRPO's defaults: {', '.join(defaults)}")
    dropped = [f"{key}={trpo_entry[key]!r}" for key in trpo_entry if key not in npg_entry]
    if dropped:
        lines.append(f"  dropped (NPG has no line search): {', '.join(dropped)}")
    return lines


def read_trpo_entry(manager: Any, original: Callable) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    RL Zoo's ``read_hyperparameters`` on the converted TRPO entry (see :func:`reading_trpo_hyperparameters`).

    :param manager: the ``ExperimentManager``
    :param original: its unwrapped ``read_hyperparameters``
    :return: what ``original`` returns on the converted entry
    """
    import yaml

    config = str(manager.config)
    env_id = manager.env_name.gym_id
    with open(config) as file:
        entries = yaml.safe_load(file)
    found = zoo_entry(entries, env_id)
    if found is None:
        raise ZooConfigError(
            f"{config} has no TRPO entry for {env_id} (nor for its -v4 sibling): --trpo-hyperparams needs one "
            f"(the file's 'default' entry is not used); name a TRPO file that has one with --conf-file, "
            f"or train from npg.yml without --trpo-hyperparams"
        )
    name, entry = found
    action_space = _action_space(env_id, {**entry.get("env_kwargs", {}), **(manager.env_kwargs or {})})
    try:
        converted = npg_entry_from_trpo(entry, action_space)
    except ValueError as error:
        raise ZooConfigError(f"{os.path.basename(config)} (TRPO entry {name}): {error}") from error
    print(
        f"NPG from the TRPO entry {name} of {config}, converted for {env_id} "
        f"(KL terms per sample d = {kl_terms(action_space)}: target_kl and cg_damping times d):"
    )
    print("\n".join(_describe_conversion(entry, converted)))
    with tempfile.TemporaryDirectory() as folder:
        converted_config = os.path.join(folder, f"npg_from_trpo_{env_id}.yml")
        with open(converted_config, "w") as file:
            yaml.safe_dump({env_id: converted}, file)
        manager.config = converted_config
        try:
            return original(manager)
        finally:
            manager.config = config
