"""
Stop training at the first NaN or infinite value that an environment returns.

:class:`NPG <sb3_npg.npg.NPG>` puts a :class:`FiniteCheck` (the test of SB3's ``VecCheckNan``, raising) around
every environment it is given, below its wrappers (:func:`with_finite_check`): observations, rewards and terminal
observations are checked as the environment returns them, and the policy's actions before they are sent. The
first non-finite value raises :class:`NonFiniteError`, before it reaches a ``VecNormalize`` running mean, the
rollout buffer or a gradient, so the weights never become NaN; ``NPG.learn`` adds the timestep to the message.
"""

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn


def all_finite(value: Any) -> bool:
    """
    Whether every number in ``value`` is finite: the test of :meth:`FiniteCheck._check` with no message to build,
    fast for the arrays a ``VecEnv`` returns (``False`` for values that are not arrays: :meth:`FiniteCheck._check`
    looks closer).

    :param value: an array, or a dict of arrays (a ``Dict`` observation)
    """
    if type(value) is np.ndarray:
        if value.dtype.kind in "fc":
            # count_nonzero (no ufunc reduction) is the fastest all() of the small arrays of a step
            return _count_nonzero(_isfinite(value)) == value.size
        return True  # integers and booleans are always finite
    if isinstance(value, dict):
        return all(all_finite(item) for item in value.values())
    return False


_isfinite = np.isfinite
_count_nonzero = np.count_nonzero


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


class FiniteCheck(VecEnv):
    """
    A transparent ``VecEnv`` around ``venv`` that raises :class:`NonFiniteError` at the first NaN or inf.

    Checks the observations (after ``reset`` and ``step``), the rewards, the ``terminal_observation`` of finished
    episodes (SB3 bootstraps truncated ones from it) and the actions, with the test of SB3's ``VecCheckNan``
    (``np.isnan``, ``np.isinf``); integer and boolean arrays cannot hold NaN and are skipped. Everything else is
    passed to ``venv``, as a ``VecEnvWrapper`` passes it: every ``VecEnv`` method (``has_attr``, ``get_attr``,
    ``set_attr``, ``env_method``, ``env_is_wrapped``, ``seed``, ``set_options``, ``render``, ``get_images``,
    ``close``), ``unwrapped``, and the attributes ``venv`` has (``envs``, ``remotes``, ...) behave exactly as on ``venv``.
    ``has_attr`` in particular must reach ``venv``'s own: ``VecEnv``'s default calls ``get_attr``, and an attribute
    missing in a ``SubprocVecEnv`` worker kills the worker (sb3-contrib's masking check asks ``has_attr``); where
    ``venv`` has no ``has_attr`` (SB3 below 2.6, whose sb3-contrib asks ``get_attr``), the check has none either.

    It is not a ``VecEnvWrapper`` (nor a ``VecCheckNan``, which is one) on purpose: SB3's
    ``sync_envs_normalization`` (``EvalCallback`` with ``VecNormalize``) walks the wrappers of the training and
    evaluation environments in step and fails on a wrapper that only the training environment has; it stops
    at the first ``VecEnv`` that is not a wrapper, which is where :func:`with_finite_check` puts this one.

    :param venv: the vectorized environment to check
    """

    def __init__(self, venv: VecEnv) -> None:
        # No VecEnv.__init__: the check keeps no copy of venv's state (num_envs, spaces, render_mode, metadata,
        # reset_infos, the seeds and options of the next reset), it reads venv's own through __getattr__
        self.venv = venv

    # all_finite answers for the arrays of every step; _check, which names what it found, runs only when it fails

    def step_async(self, actions: np.ndarray) -> None:
        if not all_finite(actions):
            self._check("action", actions, during="step")
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        observations, rewards, dones, infos = self.venv.step_wait()
        if not (all_finite(observations) and all_finite(rewards)):
            self._check("observation", observations, during="step")
            self._check("reward", rewards, during="step")
        for index, info in enumerate(infos):
            if "terminal_observation" in info and not all_finite(info["terminal_observation"]):
                self._check("terminal observation", info["terminal_observation"], during="step", env_index=index)
        return observations, rewards, dones, infos

    def reset(self) -> VecEnvObs:
        observations = self.venv.reset()
        if not all_finite(observations):
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
        found = " and ".join(kind for kind, test in (("inf", np.isinf), ("nan", np.isnan)) if test(array).any())
        if env_index is not None:
            env_indices = [env_index]
        else:
            env_indices = np.flatnonzero(~finite.reshape(self.num_envs, -1).all(axis=1)).tolist()
        raise NonFiniteError(quantity, found, env_indices, during)

    # Everything else is the checked environment's

    def close(self) -> None:
        self.venv.close()

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        return self.venv.seed(seed)

    def set_options(self, options: list[dict] | dict | None = None) -> None:
        self.venv.set_options(options)

    def render(self, mode: str | None = None) -> np.ndarray | None:
        return self.venv.render(mode=mode)

    def get_images(self) -> Sequence[np.ndarray | None]:
        return self.venv.get_images()

    @property
    def has_attr(self) -> Callable[[str], bool]:
        """``venv``'s own ``has_attr``; like ``venv``, none (``AttributeError``) where its SB3 has none (below 2.6)."""
        return self.venv.has_attr

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self.venv.get_attr(attr_name, indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self.venv.set_attr(attr_name, value, indices)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        return self.venv.env_method(method_name, *method_args, indices=indices, **method_kwargs)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return self.venv.env_is_wrapped(wrapper_class, indices=indices)

    @property
    def unwrapped(self) -> VecEnv:
        """The base ``VecEnv``, as for a ``VecEnvWrapper`` (``VecEnv.unwrapped`` would give this check)."""
        return self.venv.unwrapped

    def __getattr__(self, name: str) -> Any:
        """Attributes of the checked environment (``num_envs``, ``metadata``, ``envs`` of a ``DummyVecEnv``, ...)."""
        if name == "venv":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.venv, name)


def with_finite_check(env: VecEnv) -> VecEnv:
    """
    Put a :class:`FiniteCheck` directly around the base ``VecEnv`` of ``env`` (below every ``VecEnvWrapper``).

    There it sees the values the environments return, before a ``VecNormalize`` folds them into its running
    statistics (a NaN there would stay for good) or rescales them. Idempotent.

    :param env: a ``VecEnv``, possibly wrapped (its innermost wrapper is changed in place)
    :return: ``env`` itself if it is a wrapper, else ``FiniteCheck(env)``
    """
    if not isinstance(env, VecEnvWrapper):
        return env if isinstance(env, FiniteCheck) else FiniteCheck(env)
    innermost = env
    while isinstance(innermost.venv, VecEnvWrapper):
        innermost = innermost.venv
    if not isinstance(innermost.venv, FiniteCheck):
        innermost.venv = FiniteCheck(innermost.venv)
    return env
