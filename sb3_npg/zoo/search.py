"""
RL Zoo's Optuna search spaces for NPG and RecurrentNPG (:func:`sample_npg_params`, :func:`sample_npg_lstm_params`)
and the conversion of sampled values back to hyperparameters (:func:`convert_npg_params`, for ``--trial-id``).
"""

from typing import Any

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


#: ``preconditioner`` as stored in a study (Optuna's categorical choices) -> NPG's argument
PRECONDITIONER_CHOICES: dict[str, str | None] = {"none": None, "kfac": "kfac"}


def suggest_one_minus_gamma(trial: Any) -> float:
    """The sampled ``1 - gamma`` (also the ``VecNormalize`` discount of the trial, see :mod:`sb3_npg.zoo.registration`)."""
    return trial.suggest_float("one_minus_gamma", 1e-4, 0.1, log=True)


def suggest_normalize(trial: Any) -> bool:
    """The sampled ``normalize`` flag (applied to the trial's envs by the wrapped ``ExperimentManager.objective``)."""
    return trial.suggest_categorical("normalize", [False, True])


def sample_npg_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict[str, Any]) -> dict[str, Any]:
    """
    RL Zoo sampler for NPG: one point of the search space, as NPG constructor arguments.

    Searched: ``target_kl`` (the KL summed over action dimensions, so the range reaches 0.3 for
    many-dimensional Box actions), ``cg_damping``, ``cg_max_steps``, ``n_steps``, ``batch_size``
    (the critic's minibatch, capped at ``n_steps``), ``gamma``, ``gae_lambda``, ``learning_rate``
    (the critic's), ``n_critic_updates``, ``preconditioner`` (``None`` or ``"kfac"``; K-FAC's direct step,
    ``cg_max_steps=1``, is not in the range), ``net_arch``, ``activation_fn`` and ``normalize``
    (``VecNormalize``; applied to the trial's envs by the wrapped ``ExperimentManager.objective``,
    not returned here).

    :param trial: the Optuna trial
    :param n_actions: dimension of a Box action space (unused: the KL is already summed over dimensions)
    :param n_envs: number of parallel environments (unused)
    :param additional_args: RL Zoo's extra arguments (unused)
    :return: keyword arguments for ``NPG``
    """
    return _sample_npg_params(trial, with_preconditioner=True)


def _sample_npg_params(trial: Any, with_preconditioner: bool) -> dict[str, Any]:
    """:func:`sample_npg_params`' search space, with ``preconditioner`` or without it (K-FAC does not cover LSTMs)."""
    params = {
        "n_steps_pow": trial.suggest_int("n_steps_pow", 5, 12),
        "batch_size_pow": trial.suggest_int("batch_size_pow", 5, 10),
        "one_minus_gamma": suggest_one_minus_gamma(trial),
        "one_minus_gae_lambda": trial.suggest_float("one_minus_gae_lambda", 1e-3, 0.2, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "n_critic_updates": trial.suggest_int("n_critic_updates", 5, 30),
        "cg_max_steps": trial.suggest_int("cg_max_steps", 5, 30),
        "cg_damping": trial.suggest_float("cg_damping", 1e-3, 0.5, log=True),
        "target_kl": trial.suggest_float("target_kl", 1e-3, 0.3, log=True),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCHS)),
        "activation_fn": trial.suggest_categorical("activation_fn", list(ACTIVATIONS)),
        "normalize": suggest_normalize(trial),
    }
    if with_preconditioner:
        params["preconditioner"] = trial.suggest_categorical("preconditioner", list(PRECONDITIONER_CHOICES))
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
    hyperparams = _sample_npg_params(trial, with_preconditioner=False)
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
    if "preconditioner" in params:
        hyperparams["preconditioner"] = PRECONDITIONER_CHOICES[params.pop("preconditioner")]
    if "critic_lstm" in params:
        policy_kwargs.update(CRITIC_LSTMS[params.pop("critic_lstm")])
    if policy_kwargs:
        hyperparams["policy_kwargs"] = policy_kwargs
    hyperparams.update(params)
    return hyperparams
