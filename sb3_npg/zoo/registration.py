"""
NPG and RecurrentNPG registered in RL Zoo (:func:`register`, idempotent, and the only function with side effects).

:func:`register` adds them to ``rl_zoo3.utils.ALGOS`` and the Optuna sampler and converter tables, and wraps six
methods of ``rl_zoo3.exp_manager.ExperimentManager``, active for these two algorithms only (see
:mod:`sb3_npg.zoo`): ``read_hyperparameters`` (validation, TRPO entries, ``--num-threads``), ``setup_experiment``
(no half-written run folder), ``objective`` (the sampled ``normalize``), ``create_callbacks``, ``create_envs`` and
``learn`` (checkpoints that resume with their statistics and keep counting timesteps).
"""

import functools
import os
import shutil
from collections.abc import Callable
from typing import Any

from stable_baselines3.common.callbacks import CheckpointCallback

from sb3_npg.hyperparameters import is_integer
from sb3_npg.zoo.algorithms import ALGO_NAME, ALGORITHMS, RECURRENT_ALGO_NAME, require_zoo
from sb3_npg.zoo.checkpoints import CheckpointWithStatistics, restore_checkpoint_statistics
from sb3_npg.zoo.from_trpo import read_trpo_entry, reading_trpo_entries
from sb3_npg.zoo.search import (
    convert_npg_params,
    sample_npg_lstm_params,
    sample_npg_params,
    suggest_normalize,
    suggest_one_minus_gamma,
)
from sb3_npg.zoo.validation import check_hyperparameters, schedules_from_strings

_WRAPPED_MARKER = "_sb3_npg_wrapped"


def _wrap_read_hyperparameters(original: Callable) -> Callable:
    @functools.wraps(original)
    def read_hyperparameters(self: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from_trpo = reading_trpo_entries() and self.algo == ALGO_NAME
        hyperparams, saved_hyperparams = read_trpo_entry(self, original) if from_trpo else original(self)
        if self.algo in ALGORITHMS:
            # rl_zoo3's train sets torch.set_num_threads(--num-threads) when it is > 0; NPG's learn() would run
            # with its own default instead, so the option is passed on as the model's num_threads
            command_line_threads = getattr(getattr(self, "args", None), "num_threads", -1)
            if is_integer(command_line_threads) and command_line_threads > 0:
                hyperparams["num_threads"] = int(command_line_threads)
            entry = self.env_name.gym_id
            converted = ", converted from TRPO's" if from_trpo else ""
            where = f"{os.path.basename(str(self.config))} (entry for {entry}{converted})"
            check_hyperparameters(hyperparams, where=where, algorithm=ALGORITHMS[self.algo])
            hyperparams = schedules_from_strings(hyperparams)
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
            self.normalize = suggest_normalize(trial)
            gamma = 1 - suggest_one_minus_gamma(trial)
            self.normalize_kwargs = {**self._npg_base_normalize_kwargs, "gamma": gamma} if self.normalize else {}
        return original(self, trial)

    return objective


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
    require_zoo()
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
