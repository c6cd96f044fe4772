"""
Stop training at the first NaN or infinite value that an environment returns.

:class:`NPG <sb3_npg.npg.NPG>` wraps every environment it is given with :class:`FiniteCheck` (SB3's
``VecCheckNan``, raising) by :func:`with_finite_check`: observations, rewards and terminal observations are checked
as the environment returns them, and the policy's actions before they are sent. The first non-finite value raises
:class:`NonFiniteError`, before it reaches a ``VecNormalize`` running mean, the rollout buffer or a gradient, so the
weights never become NaN; ``NPG.learn`` adds the timestep to the message.
"""

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecCheckNan, VecEnv, VecEnvWrapper, is_vecenv_wrapped
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn


class NonFiniteError(ValueError):
    """
    An environment returned (or the policy produced) NaN or inf.

    :param quantity: what held the value: ``"observation"``, ``"reward"``, ``"terminal observation"`` or ``"action"``
    :param found: what was found, ``"nan"``, ``"inf"`` or both (``"inf and nan"``)
    :param env_indices: the indices of the environments concerned
    :param during: ``"step"`` or ``"reset"``
    """

    def __init__(self, quantity: str, found: str, env_indices: list[int], during: str) -> None:
        self.quantity = quantity
        self.found = found
        self.env_indices = env_indices
        self.during = during
        self.timestep: int | None = None
        super().__init__(self._message())

    def _message(self) -> str:
        source = "the policy produced" if self.quantity == "action" else "the environment returned"
        envs = ", ".join(map(str, self.env_indices))
        where = f"at timestep {self.timestep}" if self.timestep is not None else f"during {self.during}"
        if self.timestep is not None and self.during == "reset":
            where = f"at reset, after timestep {self.timestep}"
        return f"Training stopped: {source} {self.found} in the {self.quantity} (env index {envs}) {where}"

    def set_timestep(self, timestep: int) -> None:
        """
        Name the timestep in the message.

        :param timestep: the model's ``num_timesteps`` after the step that returned the value (for a step),
            or before the reset (for a reset)
        """
        self.timestep = timestep
        self.args = (self._message(),)


class FiniteCheck(VecCheckNan):
    """
    ``VecCheckNan`` that raises :class:`NonFiniteError` (a ``ValueError``) at the first NaN or inf.

    Checks the observations (after ``reset`` and ``step``), the rewards, the ``terminal_observation`` of finished
    episodes (used to bootstrap truncated ones) and the actions. Integer and boolean arrays cannot hold NaN and are
    skipped; a float array costs one ``np.isfinite`` call, and ``VecCheckNan.check_array_value`` tells NaN from inf.

    :param venv: the vectorized environment to check
    """

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv, raise_exception=True, warn_once=False, check_inf=True)

    def step_async(self, actions: np.ndarray) -> None:
        self._check("action", actions, during="step")
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        observations, rewards, dones, infos = self.venv.step_wait()
        self._check("observation", observations, during="step")
        self._check("reward", rewards, during="step")
        for index, info in enumerate(infos):
            if "terminal_observation" in info:
                self._check("terminal observation", info["terminal_observation"], during="step", env_index=index)
        return observations, rewards, dones, infos

    def reset(self) -> VecEnvObs:
        observations = self.venv.reset()
        self._check("observation", observations, during="reset")
        return observations

    def _check(self, quantity: str, value: Any, during: str, env_index: int | None = None) -> None:
        """Raise :class:`NonFiniteError` if ``value`` (an array, or a dict of arrays) holds NaN or inf."""
        if isinstance(value, dict):
            for key, item in value.items():
                self._check(f"{quantity} '{key}'", item, during, env_index)
            return
        array = np.asarray(value)
        if array.dtype.kind not in "fc":  # integers and booleans are always finite
            return
        finite = np.isfinite(array)
        if finite.all():
            return
        found = " and ".join(kind for _, kind in self.check_array_value(quantity, array))
        if env_index is not None:
            env_indices = [env_index]
        else:
            env_indices = np.flatnonzero(~finite.reshape(self.num_envs, -1).all(axis=1)).tolist()
        raise NonFiniteError(quantity, found, env_indices, during)


def with_finite_check(env: VecEnv) -> VecEnv:
    """
    Insert a :class:`FiniteCheck` directly above the base ``VecEnv`` of ``env`` (below every ``VecEnvWrapper``).

    There it sees the values the environments return, before a ``VecNormalize`` folds them into its running
    statistics (a NaN there would stay for good) or rescales them. Idempotent.

    :param env: a ``VecEnv``, possibly wrapped (its innermost wrapper is changed in place)
    :return: ``env`` itself if it is a wrapper, else ``FiniteCheck(env)``
    """
    if is_vecenv_wrapped(env, FiniteCheck):
        return env
    if not isinstance(env, VecEnvWrapper):
        return FiniteCheck(env)
    innermost = env
    while isinstance(innermost.venv, VecEnvWrapper):
        innermost = innermost.venv
    innermost.venv = FiniteCheck(innermost.venv)
    return env
