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

The package, by concern (each name below is re-exported here):

- :mod:`sb3_npg.zoo.algorithms`: the Zoo names, the shipped hyperparameter files, the ``zoo`` extra's check;
- :mod:`sb3_npg.zoo.validation`: :func:`check_hyperparameters` (ranges from :mod:`sb3_npg.hyperparameters`);
- :mod:`sb3_npg.zoo.search`: the Optuna samplers and converter;
- :mod:`sb3_npg.zoo.from_trpo`: :func:`zoo_entry` and NPG from TRPO's entries;
- :mod:`sb3_npg.zoo.checkpoints`: checkpoints saved and resumed with their ``VecNormalize`` statistics;
- :mod:`sb3_npg.zoo.registration`: :func:`register` and the wrapped ``ExperimentManager`` methods;
- :mod:`sb3_npg.zoo.scripts`: :func:`run_zoo_script` and its one-line errors, :func:`hub_compatibility`;
- :mod:`sb3_npg.zoo.trust`: ``enjoy`` and ``record_video`` on agents from strangers (not re-exported).
"""

from sb3_npg.zoo.algorithms import (
    ALGO_NAME,
    ALGORITHMS,
    HYPERPARAMS_PATH,
    HYPERPARAMS_PATHS,
    INSTALL_HINT,
    RECURRENT_ALGO_NAME,
)
from sb3_npg.zoo.checkpoints import CheckpointWithStatistics, checkpoint_statistics_path, restore_checkpoint_statistics
from sb3_npg.zoo.from_trpo import (
    is_atari,
    npg_entry_from_trpo,
    reading_trpo_hyperparameters,
    trpo_hyperparams_path,
    zoo_entry,
)
from sb3_npg.zoo.registration import is_registered, register
from sb3_npg.zoo.scripts import (
    CLUSTER_HINT,
    INPUT_ERRORS,
    algo_of,
    hide_password,
    hub_compatibility,
    run_zoo_script,
    storage_error_message,
    with_default_arguments,
)
from sb3_npg.zoo.search import (
    ACTIVATIONS,
    CRITIC_LSTMS,
    LSTM_HIDDEN_SIZES,
    NET_ARCHS,
    convert_npg_params,
    sample_npg_lstm_params,
    sample_npg_params,
)
from sb3_npg.zoo.validation import SET_BY_ZOO, ZOO_KEYS, ZooConfigError, check_hyperparameters, npg_arguments

__all__ = [
    "ACTIVATIONS",
    "ALGORITHMS",
    "ALGO_NAME",
    "CLUSTER_HINT",
    "CRITIC_LSTMS",
    "HYPERPARAMS_PATH",
    "HYPERPARAMS_PATHS",
    "INPUT_ERRORS",
    "INSTALL_HINT",
    "LSTM_HIDDEN_SIZES",
    "NET_ARCHS",
    "RECURRENT_ALGO_NAME",
    "SET_BY_ZOO",
    "ZOO_KEYS",
    "CheckpointWithStatistics",
    "ZooConfigError",
    "algo_of",
    "check_hyperparameters",
    "checkpoint_statistics_path",
    "convert_npg_params",
    "hide_password",
    "hub_compatibility",
    "is_atari",
    "is_registered",
    "npg_arguments",
    "npg_entry_from_trpo",
    "reading_trpo_hyperparameters",
    "register",
    "restore_checkpoint_statistics",
    "run_zoo_script",
    "sample_npg_lstm_params",
    "sample_npg_params",
    "storage_error_message",
    "trpo_hyperparams_path",
    "with_default_arguments",
    "zoo_entry",
]
