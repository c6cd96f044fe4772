"""
The RL Zoo bridge: NPG as a first-class algorithm of ``rl_zoo3``.

:func:`register` (idempotent, and the only function with side effects) adds NPG under the name
``"npg"`` and RecurrentNPG (LSTM policies) under ``"npg_lstm"`` (as the Zoo names RecurrentPPO ``"ppo_lstm"``)
to everything ``rl_zoo3`` looks up by algorithm name (:data:`ALGORITHMS`):

- ``rl_zoo3.utils.ALGOS["npg"] = NPG``, ``ALGOS["npg_lstm"] = RecurrentNPG`` (training, ``enjoy``,
  ``record_video``, ``push_to_hub``);
- ``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER``: the Optuna search spaces (:func:`sample_npg_params`,
  :func:`sample_npg_lstm_params`, which adds the LSTM options);
- ``rl_zoo3.hyperparams_opt.HYPERPARAMS_CONVERTER``: sampled values back to hyperparameters, for
  ``--trial-id`` (:func:`convert_npg_params`, which also converts the LSTM options).

It also wraps six methods of ``rl_zoo3.exp_manager.ExperimentManager``, active for these two algorithms only:

- ``read_hyperparameters``: the YAML entry (after ``--hyperparams`` overrides) is checked with
  :func:`check_hyperparameters`, so an unknown key or a value out of range fails before any file is written;
  within :func:`reading_trpo_hyperparameters` (``python -m sb3_npg.train --trpo-hyperparams``) the file is read as
  TRPO's and the env's entry (:func:`zoo_entry`: a ``-v5`` env falls back to the ``-v4`` entry) converted by
  :func:`npg_entry_from_trpo` first, so that NPG takes TRPO's step;
  ``--num-threads N`` (N > 0) becomes the model's ``num_threads``, so that ``learn()`` runs with the N threads
  rl_zoo3 sets (without it, NPG's own default of 1 thread applies);
- ``setup_experiment``: if it fails, the run folder it created is removed (nothing half-written is left);
- ``objective``: the sampled ``normalize`` flag (``VecNormalize`` or not) is applied to the trial's envs,
  which the Zoo's samplers cannot do themselves (they only return model arguments);
- ``create_callbacks``: ``--save-freq`` checkpoints also save their ``VecNormalize`` statistics
  (:class:`CheckpointWithStatistics`);
- ``create_envs`` and ``learn``: ``-i <checkpoint>`` resumes with that checkpoint's statistics
  (:func:`restore_checkpoint_statistics`) and keeps counting timesteps from the checkpoint's.

Importing this module imports neither ``rl_zoo3`` nor ``optuna``; :func:`register` does, and raises an
``ImportError`` naming the extra to install when they are missing.

:func:`run_zoo_script` runs one of RL Zoo's scripts after :func:`register` (the ``python -m sb3_npg.*``
entry points), reporting input errors in one line (a storage URL that cannot be used too, its password
hidden: :func:`storage_error_message`); :func:`hub_compatibility` lets rl_zoo3's
``push_to_hub`` import with ``huggingface_sb3`` 3.x.
"""

import contextlib
import contextvars
import functools
import inspect
import numbers
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import CheckpointCallback

from sb3_npg.fisher import FISHER_BACKENDS
from sb3_npg.npg import NPG, STEP_LENGTHS
from sb3_npg.recurrent import RecurrentNPG
from sb3_npg.trpo_compat import TRPO_STEP, kl_terms, trpo_defaults, trpo_to_npg_kwargs

ALGO_NAME = "npg"
"""The algorithm's name in RL Zoo (``--algo npg``)."""

RECURRENT_ALGO_NAME = "npg_lstm"
"""RecurrentNPG's name in RL Zoo (``--algo npg_lstm``), as RecurrentPPO is ``ppo_lstm``."""

ALGORITHMS: dict[str, type[NPG]] = {ALGO_NAME: NPG, RECURRENT_ALGO_NAME: RecurrentNPG}
"""Every algorithm :func:`register` adds to RL Zoo, by its Zoo name."""

HYPERPARAMS_PATH = Path(__file__).parent / "hyperparams" / "npg.yml"
"""The shipped hyperparameters, used when no ``--conf-file`` is given."""

HYPERPARAMS_PATHS: dict[str, Path] = {
    ALGO_NAME: HYPERPARAMS_PATH,
    RECURRENT_ALGO_NAME: Path(__file__).parent / "hyperparams" / "npg_lstm.yml",
}
"""The shipped hyperparameter file of each algorithm of :data:`ALGORITHMS`."""

INSTALL_HINT = 'RL Zoo support needs the "zoo" extra: pip install -e ".[zoo]" (or pip install "sb3_npg[zoo]")'

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

# Search-space choices, shared by the sampler and the converter.
NET_ARCHS = {
    "tiny": {"pi": [64], "vf": [64]},
    "small": {"pi": [64, 64], "vf": [64, 64]},
    "medium": {"pi": [256, 256], "vf": [256, 256]},
}
ACTIVATIONS = ("tanh", "relu")
LSTM_HIDDEN_SIZES = (16, 32, 64, 128, 256)
# How the critic gets its memory: sampled as one choice, since sb3-contrib forbids shared_lstm with enable_critic_lstm.
CRITIC_LSTMS = {
    "own": {"enable_critic_lstm": True, "shared_lstm": False},
    "shared": {"enable_critic_lstm": False, "shared_lstm": True},
    "none": {"enable_critic_lstm": False, "shared_lstm": False},
}

_WRAPPED_MARKER = "_sb3_npg_wrapped"


class ZooConfigError(ValueError):
    """A hyperparameter entry for NPG that RL Zoo cannot use (unknown key, wrong type, value out of range)."""


def _require_zoo() -> None:
    """Import ``rl_zoo3`` and ``optuna``, or raise an ``ImportError`` that says how to install them."""
    try:
        import optuna  # noqa: F401
        import rl_zoo3  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error


def npg_arguments(algorithm: type[NPG] = NPG) -> frozenset[str]:
    """
    The names of the constructor arguments a YAML entry may set.

    :param algorithm: NPG or one of its subclasses (:data:`ALGORITHMS`)
    """
    return frozenset(inspect.signature(algorithm.__init__).parameters) - {"self"} - SET_BY_ZOO


# --------------------------------------------------------------------------------------------------------
# Validation of a YAML entry
# --------------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _schedule_initial_value(value: Any) -> Any:
    """``"lin_1e-3"`` (RL Zoo's linear schedule) -> ``1e-3``; anything else unchanged."""
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            return float(value[len("lin_") :])
        except ValueError:
            return value
    return value


# name -> (predicate, what is allowed)
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_timesteps": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "n_envs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "frame_stack": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "learning_rate": (
        lambda v: _is_number(_schedule_initial_value(v)) and _schedule_initial_value(v) > 0,
        "a number > 0 or a linear schedule 'lin_<number>'",
    ),
    "n_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "gamma": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "gae_lambda": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "cg_max_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "cg_damping": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "target_kl": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "n_critic_updates": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "sub_sampling_factor": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "normalize_advantage": (lambda v: isinstance(v, bool), "true or false"),
    "damped_step_size": (lambda v: isinstance(v, bool), "true or false"),
    "use_sde": (lambda v: isinstance(v, bool), "true or false"),
    "sde_sample_freq": (lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
    "stats_window_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "num_threads": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 (or null: 1 thread)"),
    "fisher": (lambda v: v in FISHER_BACKENDS, f"one of {', '.join(map(repr, FISHER_BACKENDS))}"),
    "step_length": (lambda v: v in STEP_LENGTHS, f"one of {', '.join(map(repr, STEP_LENGTHS))}"),
    "normalize": (lambda v: isinstance(v, bool | dict | str), "true, false, a dict or a 'dict(...)' string"),
    "policy": (lambda v: isinstance(v, str | type), "a policy name such as 'MlpPolicy'"),
    "policy_kwargs": (lambda v: isinstance(v, dict | str), "a dict or a 'dict(...)' string"),
}


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
            import difflib

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
        if key in _RANGES:
            valid, allowed_values = _RANGES[key]
            if not valid(value):
                raise ZooConfigError(f"{where}: invalid {key}={value!r}, must be {allowed_values}")


# --------------------------------------------------------------------------------------------------------
# Optuna search space
# --------------------------------------------------------------------------------------------------------


def _suggest_one_minus_gamma(trial: Any) -> float:
    return trial.suggest_float("one_minus_gamma", 1e-4, 0.1, log=True)


def _suggest_normalize(trial: Any) -> bool:
    return trial.suggest_categorical("normalize", [False, True])


def sample_npg_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict[str, Any]) -> dict[str, Any]:
    """
    RL Zoo sampler for NPG: one point of the search space, as NPG constructor arguments.

    Searched: ``target_kl`` (the KL summed over action dimensions, so the range reaches 0.3 for
    many-dimensional Box actions), ``cg_damping``, ``cg_max_steps``, ``n_steps``, ``batch_size``
    (the critic's minibatch, capped at ``n_steps``), ``gamma``, ``gae_lambda``, ``learning_rate``
    (the critic's), ``n_critic_updates``, ``net_arch``, ``activation_fn`` and ``normalize``
    (``VecNormalize``; applied to the trial's envs by the wrapped ``ExperimentManager.objective``,
    not returned here).

    :param trial: the Optuna trial
    :param n_actions: dimension of a Box action space (unused: the KL is already summed over dimensions)
    :param n_envs: number of parallel environments (unused)
    :param additional_args: RL Zoo's extra arguments (unused)
    :return: keyword arguments for ``NPG``
    """
    params = {
        "n_steps_pow": trial.suggest_int("n_steps_pow", 5, 12),
        "batch_size_pow": trial.suggest_int("batch_size_pow", 5, 10),
        "one_minus_gamma": _suggest_one_minus_gamma(trial),
        "one_minus_gae_lambda": trial.suggest_float("one_minus_gae_lambda", 1e-3, 0.2, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "n_critic_updates": trial.suggest_int("n_critic_updates", 5, 30),
        "cg_max_steps": trial.suggest_int("cg_max_steps", 5, 30),
        "cg_damping": trial.suggest_float("cg_damping", 1e-3, 0.5, log=True),
        "target_kl": trial.suggest_float("target_kl", 1e-3, 0.3, log=True),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCHS)),
        "activation_fn": trial.suggest_categorical("activation_fn", list(ACTIVATIONS)),
        "normalize": _suggest_normalize(trial),
    }
    hyperparams = convert_npg_params(params)
    # Display the real values in the study
    for key in ("gamma", "gae_lambda", "n_steps", "batch_size"):
        trial.set_user_attr(key, hyperparams[key])
    del hyperparams["normalize"]
    return hyperparams


def sample_npg_lstm_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict[str, Any]) -> dict[str, Any]:
    """
    RL Zoo sampler for RecurrentNPG (``npg_lstm``): :func:`sample_npg_params`'s search space plus the LSTM options.

    Added: ``lstm_hidden_size``, ``n_lstm_layers`` (1 or 2) and ``critic_lstm``, how the critic gets its memory:
    ``"own"`` (``enable_critic_lstm=True``: a second LSTM, trained by the critic's regression), ``"shared"``
    (``shared_lstm=True``: the actor's LSTM, an actor parameter moved by the natural-gradient step only) or ``"none"``
    (the critic sees the current observation only). One choice, since sb3-contrib refuses ``shared_lstm`` with
    ``enable_critic_lstm``.

    :param trial: the Optuna trial
    :param n_actions: dimension of a Box action space (unused)
    :param n_envs: number of parallel environments (unused)
    :param additional_args: RL Zoo's extra arguments (unused)
    :return: keyword arguments for ``RecurrentNPG``
    """
    hyperparams = sample_npg_params(trial, n_actions, n_envs, additional_args)
    lstm_params = {
        "lstm_hidden_size": trial.suggest_categorical("lstm_hidden_size", list(LSTM_HIDDEN_SIZES)),
        "n_lstm_layers": trial.suggest_int("n_lstm_layers", 1, 2),
        "critic_lstm": trial.suggest_categorical("critic_lstm", list(CRITIC_LSTMS)),
    }
    hyperparams["policy_kwargs"].update(convert_npg_params(lstm_params)["policy_kwargs"])
    return hyperparams


def convert_npg_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """
    Sampled values (as stored in an Optuna study) -> RL Zoo hyperparameters for NPG and RecurrentNPG.

    Used by the samplers and by ``--trial-id``; ``normalize`` is kept, RL Zoo applies it to the envs.

    :param sampled_params: ``trial.params`` of a study made with :func:`sample_npg_params` or
        :func:`sample_npg_lstm_params`
    :return: hyperparameters (``policy_kwargs`` holds the network and activation classes, and the LSTM options)
    """
    from torch import nn

    params = dict(sampled_params)
    hyperparams: dict[str, Any] = {}
    if "one_minus_gamma" in params:
        hyperparams["gamma"] = 1 - params.pop("one_minus_gamma")
    if "one_minus_gae_lambda" in params:
        hyperparams["gae_lambda"] = 1 - params.pop("one_minus_gae_lambda")
    for name in ("n_steps", "batch_size"):
        if f"{name}_pow" in params:
            hyperparams[name] = 2 ** params.pop(f"{name}_pow")
    if "n_steps" in hyperparams and "batch_size" in hyperparams:
        # A minibatch above the rollout (n_steps * n_envs >= n_steps) is the whole rollout: sampled as at most n_steps
        hyperparams["batch_size"] = min(hyperparams["batch_size"], hyperparams["n_steps"])
    policy_kwargs: dict[str, Any] = {}
    if "net_arch" in params:
        policy_kwargs["net_arch"] = NET_ARCHS[params.pop("net_arch")]
    if "activation_fn" in params:
        policy_kwargs["activation_fn"] = {"tanh": nn.Tanh, "relu": nn.ReLU}[params.pop("activation_fn")]
    for name in ("lstm_hidden_size", "n_lstm_layers"):
        if name in params:
            policy_kwargs[name] = params.pop(name)
    if "critic_lstm" in params:
        policy_kwargs.update(CRITIC_LSTMS[params.pop("critic_lstm")])
    if policy_kwargs:
        hyperparams["policy_kwargs"] = policy_kwargs
    hyperparams.update(params)
    return hyperparams


# --------------------------------------------------------------------------------------------------------
# Which entry of a hyperparameter file an env uses; NPG from a TRPO entry
# --------------------------------------------------------------------------------------------------------


def is_atari(env_id: str) -> bool:
    """Whether RL Zoo treats ``env_id`` as an Atari game (its ``atari`` entry, stochastic evaluation)."""
    _require_zoo()
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
    _require_zoo()
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


_FROM_TRPO: contextvars.ContextVar[bool] = contextvars.ContextVar("sb3_npg_from_trpo", default=False)


@contextlib.contextmanager
def reading_trpo_hyperparameters(enabled: bool = True) -> Iterator[None]:
    """
    While active (and ``enabled``), RL Zoo's ``--algo npg`` reads its hyperparameter file as TRPO's: the env's entry
    (:func:`zoo_entry`) is converted by :func:`npg_entry_from_trpo`, printed, then goes through RL Zoo as if
    ``npg.yml`` held it (``--hyperparams`` applied on top, the result printed and saved in ``config.yml``).
    ``python -m sb3_npg.train --trpo-hyperparams`` runs in it.

    :param enabled: whether to read TRPO's entries (``False``: no effect)
    """
    token = _FROM_TRPO.set(enabled)
    try:
        yield
    finally:
        _FROM_TRPO.reset(token)


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


def _read_trpo_entry(manager: Any, original: Callable) -> tuple[dict[str, Any], dict[str, Any]]:
    """RL Zoo's ``read_hyperparameters`` on the converted TRPO entry (see :func:`reading_trpo_hyperparameters`)."""
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


# --------------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------------


def _wrap_read_hyperparameters(original: Callable) -> Callable:
    @functools.wraps(original)
    def read_hyperparameters(self: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from_trpo = _FROM_TRPO.get() and self.algo == ALGO_NAME
        hyperparams, saved_hyperparams = _read_trpo_entry(self, original) if from_trpo else original(self)
        if self.algo in ALGORITHMS:
            # rl_zoo3's train sets torch.set_num_threads(--num-threads) when it is > 0; NPG's learn() would run
            # with its own default instead, so the option is passed on as the model's num_threads
            command_line_threads = getattr(getattr(self, "args", None), "num_threads", -1)
            if _is_int(command_line_threads) and command_line_threads > 0:
                hyperparams["num_threads"] = int(command_line_threads)
            entry = self.env_name.gym_id
            converted = ", converted from TRPO's" if from_trpo else ""
            where = f"{os.path.basename(str(self.config))} (entry for {entry}{converted})"
            check_hyperparameters(hyperparams, where=where, algorithm=ALGORITHMS[self.algo])
        return hyperparams, saved_hyperparams

    return read_hyperparameters


def _wrap_setup_experiment(original: Callable) -> Callable:
    @functools.wraps(original)
    def setup_experiment(self: Any) -> Any:
        if self.algo not in ALGORITHMS:
            return original(self)
        # The outermost folder of the run's path that this call will create (log folder, algo folder or run folder)
        created: str | None = None
        path = os.path.abspath(self.save_path)
        while not os.path.exists(path):
            created, path = path, os.path.dirname(path)
        try:
            return original(self)
        except BaseException:
            # Nothing half-written: remove what this call created
            if created is not None and os.path.isdir(created):
                shutil.rmtree(created, ignore_errors=True)
            raise

    return setup_experiment


def _wrap_objective(original: Callable) -> Callable:
    @functools.wraps(original)
    def objective(self: Any, trial: Any) -> float:
        if self.algo in ALGORITHMS:
            if not hasattr(self, "_npg_base_normalize_kwargs"):
                self._npg_base_normalize_kwargs = {k: v for k, v in self.normalize_kwargs.items() if k != "gamma"}
            # Same names and distributions as in sample_npg_params: Optuna returns the same values there.
            self.normalize = _suggest_normalize(trial)
            gamma = 1 - _suggest_one_minus_gamma(trial)
            self.normalize_kwargs = {**self._npg_base_normalize_kwargs, "gamma": gamma} if self.normalize else {}
        return original(self, trial)

    return objective


# --------------------------------------------------------------------------------------------------------
# Checkpoints that can be resumed: VecNormalize statistics saved with each one, timesteps that keep counting
# --------------------------------------------------------------------------------------------------------

_CHECKPOINT_NAME = re.compile(r"^(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip$")


def checkpoint_statistics_path(checkpoint: str | Path) -> Path | None:
    """
    Where the ``VecNormalize`` statistics of a checkpoint are saved (SB3's ``CheckpointCallback`` naming).

    :param checkpoint: a model checkpoint, ``<folder>/<prefix>_<steps>_steps.zip``
    :return: ``<folder>/<prefix>_vecnormalize_<steps>_steps.pkl``, or ``None`` if ``checkpoint`` is not named
        like a checkpoint (a final or best model: RL Zoo pairs those with ``<env>/vecnormalize.pkl`` itself)
    """
    path = Path(checkpoint)
    match = _CHECKPOINT_NAME.match(path.name)
    if match is None:
        return None
    return path.with_name(f"{match['prefix']}_vecnormalize_{match['steps']}_steps.pkl")


def _checkpoints_with_statistics(folder: Path) -> list[str]:
    """The checkpoints in ``folder`` that have their statistics beside them, oldest first."""
    found = []
    for checkpoint in folder.glob("*_steps.zip"):
        statistics = checkpoint_statistics_path(checkpoint)
        if statistics is not None and statistics.is_file():
            found.append((int(_CHECKPOINT_NAME.match(checkpoint.name)["steps"]), checkpoint.name))  # type: ignore[index]
    return [name for _, name in sorted(found)]


class CheckpointWithStatistics(CheckpointCallback):
    """
    SB3's ``CheckpointCallback`` that saves the ``VecNormalize`` statistics *before* the model.

    A checkpoint ``<prefix>_<steps>_steps.zip`` then always has its ``<prefix>_vecnormalize_<steps>_steps.pkl``,
    even when the run is killed while saving (SB3 writes them after the model). Without ``VecNormalize`` it
    saves the model only.
    """

    def _on_step(self) -> bool:
        vec_normalize = self.model.get_vec_normalize_env()
        if self.n_calls % self.save_freq == 0 and vec_normalize is not None:
            checkpoint = os.path.join(self.save_path, f"{self.name_prefix}_{self.num_timesteps}_steps.zip")
            vec_normalize.save(str(checkpoint_statistics_path(checkpoint)))
        return super()._on_step()


def restore_checkpoint_statistics(env: Any, checkpoint: str | Path) -> None:
    """
    Give ``env``'s ``VecNormalize`` the statistics saved with ``checkpoint``.

    Does nothing when ``env`` is not normalized or ``checkpoint`` is not named like a checkpoint.

    :param env: a ``VecEnv``, possibly wrapped
    :param checkpoint: the model checkpoint being resumed (``<prefix>_<steps>_steps.zip``)
    :raises FileNotFoundError: the checkpoint's statistics are missing (the message lists the checkpoints
        of its folder that have them)
    """
    from stable_baselines3.common.vec_env import VecNormalize, unwrap_vec_normalize

    vec_normalize = unwrap_vec_normalize(env)
    statistics = checkpoint_statistics_path(checkpoint)
    if vec_normalize is None or statistics is None:
        return
    if not statistics.is_file():
        resumable = _checkpoints_with_statistics(statistics.parent)
        hint = f"resume from one that has them ({', '.join(resumable)})" if resumable else "no checkpoint there has them"
        raise FileNotFoundError(
            f"{checkpoint} has no VecNormalize statistics beside it ({statistics.name} is missing; "
            f"the run saved none or was killed while saving): {hint}"
        )
    print(f"Loading the checkpoint's VecNormalize statistics from {statistics}")
    saved = VecNormalize.load(str(statistics), vec_normalize.venv)
    vec_normalize.obs_rms = saved.obs_rms
    vec_normalize.ret_rms = saved.ret_rms


def _wrap_create_callbacks(original: Callable) -> Callable:
    @functools.wraps(original)
    def create_callbacks(self: Any) -> None:
        original(self)
        if self.algo in ALGORITHMS:
            for index, callback in enumerate(self.callbacks):
                if type(callback) is CheckpointCallback:
                    self.callbacks[index] = CheckpointWithStatistics(
                        save_freq=callback.save_freq,
                        save_path=callback.save_path,
                        name_prefix=callback.name_prefix,
                        save_replay_buffer=callback.save_replay_buffer,
                        verbose=callback.verbose,
                    )

    return create_callbacks


def _wrap_create_envs(original: Callable) -> Callable:
    @functools.wraps(original)
    def create_envs(self: Any, *args: Any, **kwargs: Any) -> Any:
        env = original(self, *args, **kwargs)
        if self.algo in ALGORITHMS and self.continue_training:
            try:
                restore_checkpoint_statistics(env, self.trained_agent)
            except BaseException:
                env.close()
                raise
        return env

    return create_envs


def _wrap_learn(original: Callable) -> Callable:
    @functools.wraps(original)
    def learn(self: Any, model: Any) -> None:
        if self.algo not in ALGORITHMS or not self.continue_training:
            return original(self, model)
        # Resuming (-i): RL Zoo calls model.learn(n_timesteps), which counts from 0 again; keep counting from
        # the loaded model's num_timesteps instead (-n is then the number of timesteps to add).
        model.learn = functools.partial(type(model).learn, model, reset_num_timesteps=False)
        try:
            return original(self, model)
        finally:
            del model.learn

    return learn


def register() -> None:
    """
    Make ``--algo npg`` and ``--algo npg_lstm`` work in RL Zoo (training, tuning, ``--trial-id``, enjoy, videos, Hub).
    Idempotent.

    :raises ImportError: if ``rl_zoo3`` or ``optuna`` is not installed (install the ``zoo`` extra)
    """
    _require_zoo()
    import rl_zoo3
    import rl_zoo3.utils
    from rl_zoo3 import exp_manager, hyperparams_opt

    samplers = {ALGO_NAME: sample_npg_params, RECURRENT_ALGO_NAME: sample_npg_lstm_params}
    for name, algorithm in ALGORITHMS.items():
        rl_zoo3.utils.ALGOS[name] = algorithm
        # rl_zoo3 re-exports the same dict object; keep both views in sync if that ever changes
        rl_zoo3.ALGOS[name] = algorithm
        hyperparams_opt.HYPERPARAMS_SAMPLER[name] = samplers[name]
        hyperparams_opt.HYPERPARAMS_CONVERTER[name] = convert_npg_params

    manager = exp_manager.ExperimentManager
    for name, wrap in (
        ("read_hyperparameters", _wrap_read_hyperparameters),
        ("setup_experiment", _wrap_setup_experiment),
        ("objective", _wrap_objective),
        ("create_callbacks", _wrap_create_callbacks),
        ("create_envs", _wrap_create_envs),
        ("learn", _wrap_learn),
    ):
        method = getattr(manager, name)
        if not getattr(method, _WRAPPED_MARKER, False):
            wrapped = wrap(method)
            setattr(wrapped, _WRAPPED_MARKER, True)
            setattr(manager, name, wrapped)


def is_registered() -> bool:
    """Whether :func:`register` has run in this process (without importing RL Zoo if it has not)."""
    import sys

    utils = sys.modules.get("rl_zoo3.utils")
    return utils is not None and all(getattr(utils, "ALGOS", {}).get(name) is cls for name, cls in ALGORITHMS.items())


def with_default_arguments(argv: list[str], defaults: dict[str, list[str]]) -> list[str]:
    """
    Prepend default options to a command line unless the user gave them.

    :param argv: the command line arguments (without the program name)
    :param defaults: option spellings (comma-separated, e.g. ``"-f,--folder"``) -> the arguments to add
    :return: the command line with the missing defaults first
    """
    prefix: list[str] = []
    for spellings, arguments in defaults.items():
        names = spellings.split(",")
        given = any(arg == name or arg.startswith(name + "=") for arg in argv for name in names)
        if not given:
            prefix.extend(arguments)
    return prefix + list(argv)


def algo_of(argv: list[str], default: str = ALGO_NAME) -> str:
    """
    The value of ``--algo`` in a command line.

    :param argv: the command line arguments
    :param default: returned when ``--algo`` is absent
    :return: the algorithm name
    """
    for index, arg in enumerate(argv):
        if arg == "--algo" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--algo="):
            return arg.split("=", 1)[1]
    return default


# --------------------------------------------------------------------------------------------------------
# Running RL Zoo's own scripts
# --------------------------------------------------------------------------------------------------------

# Errors that come from the user's input (command line, YAML, files): reported in one line, no traceback.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, AssertionError, FileNotFoundError, KeyError)


CLUSTER_HINT = 'pip install "sb3_npg[cluster]" (psycopg2) and write postgresql+psycopg2://...'
"""How to get the PostgreSQL driver, named when the driver of a ``--storage`` URL is missing."""


def hide_password(url: str) -> str:
    """
    ``url`` with its password replaced by ``***`` (``postgresql://user:***@host/db``).

    Everything between the user name and the last ``@`` is hidden, so a password with an unescaped ``@``
    does not leak either; a URL without a password is returned unchanged.

    :param url: a SQLAlchemy database URL
    :return: the URL to show
    """
    return re.sub(r"^([\w+.-]+://[^:/@]*):.*@", r"\1:***@", url)


def storage_error_message(error: BaseException, argv: list[str]) -> str | None:
    """
    The one-line message for an error of the Optuna database named by ``--storage``, else ``None``.

    Recognised: an error of the database driver (wrong password, nothing listening at the host and port, no
    such database, the server gone), a URL SQLAlchemy cannot parse or whose dialect it does not know, and a
    URL whose driver is not installed. Journal files (``--storage <path>.log``) are not database URLs and
    are left alone.

    :param error: the exception raised by RL Zoo's script
    :param argv: the script's command line, where ``--storage`` is looked up
    :return: the message, naming the URL without its password, or ``None`` when ``error`` is not a storage error
    """
    url = None
    for index, arg in enumerate(argv):
        if arg == "--storage" and index + 1 < len(argv):
            url = argv[index + 1]
        elif arg.startswith("--storage="):
            url = arg.split("=", 1)[1]
    if url is None or url.endswith(".log"):
        return None
    from sqlalchemy import create_engine
    from sqlalchemy import exc as sqlalchemy_errors

    where = f"the Optuna storage {hide_password(url)}"
    cause: BaseException | None = error
    while cause is not None:  # Optuna re-raises some driver errors as its own StorageInternalError
        if isinstance(cause, sqlalchemy_errors.DBAPIError):
            return f"{where}: {' '.join(str(cause.orig).split())}"
        if isinstance(cause, sqlalchemy_errors.ArgumentError):
            return f"{where}: {' '.join(str(cause).split())}"
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, ImportError):
        try:  # the engine imports the URL's driver (and connects only when used)
            create_engine(url).dispose()
        except ImportError as missing:
            return f"{where} needs a database driver that is not installed ({missing}); {CLUSTER_HINT}"
    return None


def run_zoo_script(
    prog: str,
    module: str,
    function: str | None,
    argv: list[str] | None,
    defaults: dict[str, list[str]] | None = None,
) -> int:
    """
    Register NPG, then run one of RL Zoo's command-line scripts with ``argv``.

    :param prog: program name shown in messages (e.g. ``"python -m sb3_npg.train"``)
    :param module: the RL Zoo module (``"rl_zoo3.train"``)
    :param function: the function to call in it, or ``None`` for scripts whose parser only exists under
        ``if __name__ == "__main__"`` (run as ``__main__`` with :mod:`runpy`)
    :param argv: the command line arguments (``None``: ``sys.argv[1:]``)
    :param defaults: options added when absent, see :func:`with_default_arguments`
    :return: the exit status: 0, or 2 for an input error or an unusable ``--storage`` database (reported in one
        line on stderr; set the environment variable ``SB3_NPG_DEBUG=1`` for the traceback)
    """
    import importlib
    import runpy
    import sys

    register()
    argv = list(sys.argv[1:] if argv is None else argv)
    if defaults:
        argv = with_default_arguments(argv, defaults)
    saved_argv = sys.argv
    sys.argv = [prog, *argv]
    try:
        if function is None:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
        else:
            getattr(importlib.import_module(module), function)()
    except INPUT_ERRORS as error:
        if os.environ.get("SB3_NPG_DEBUG"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, KeyError):
            message = f"missing key {message}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except Exception as error:
        storage_message = storage_error_message(error, argv)
        if storage_message is None or os.environ.get("SB3_NPG_DEBUG"):
            raise
        print(f"{prog}: error: {storage_message}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    return 0


def hub_compatibility() -> None:
    """
    Let ``rl_zoo3.push_to_hub`` import with ``sb3-team-hf-integration`` >= 3 (``huggingface_sb3``).

    rl_zoo3 2.9.2 imports ``huggingface_sb3.push_to_hub.generate_metadata``, which version 3 renamed to
    ``_generate_metadata`` (returning a ``ModelCardData`` instead of a dict). Adds the old name back
    (returning a dict) when it is missing; does nothing otherwise.
    """
    import importlib

    # (the package's attribute "push_to_hub" is a function of that module, hence import_module)
    hf_push_to_hub = importlib.import_module("huggingface_sb3.push_to_hub")
    if hasattr(hf_push_to_hub, "generate_metadata") or not hasattr(hf_push_to_hub, "_generate_metadata"):
        return

    def generate_metadata(model_name: str, env_id: str, mean_reward: float, std_reward: float) -> dict[str, Any]:
        card_data = hf_push_to_hub._generate_metadata(model_name, env_id, mean_reward, std_reward)
        return card_data.to_dict() if hasattr(card_data, "to_dict") else dict(card_data)

    hf_push_to_hub.generate_metadata = generate_metadata  # type: ignore[attr-defined]
