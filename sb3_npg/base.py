"""
What NPG, MaskableNPG and RecurrentNPG share around the algorithm: :class:`NPGBase`, SB3's ``OnPolicyAlgorithm`` with

- ``learn``'s error handling: it runs with ``num_threads`` torch threads (:func:`torch_threads`, the caller's count
  given back), closes the progress bar when training fails and names the timestep of a NaN/inf from the environment;
- the NaN/inf environment check (:mod:`sb3_npg.env_checks`) put on the environment at construction
  (:meth:`NPGBase._add_finite_check`) and by ``set_env``, and taken off by ``get_env``;
- ``save`` (atomic), ``load`` (``trusted=False`` without unpickling, limits on the file) and ``set_parameters``
  (checked tensors, warm start from another algorithm), on the helpers of :mod:`sb3_npg.save_load`.

The algorithm itself (construction, ``train()``) is :class:`sb3_npg.npg.NPG`.
"""

import contextlib
import copy
import io
import pathlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback, ProgressBarCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from sb3_npg.constants import DEFAULT_NUM_THREADS
from sb3_npg.env_checks import FiniteCheck, NonFiniteError, with_finite_check
from sb3_npg.fast.threads import timed_threads
from sb3_npg.hyperparameters import NUM_THREADS_ALLOWED, valid_num_threads
from sb3_npg.save_load.archive import (
    UntrustedLoadError,
    atomic_save_file,
    check_saved_by_npg,
    loads_recurrent_policies,
    read_save_file,
)
from sb3_npg.save_load.parameters import check_state_dict, optimizer_state_fits, read_parameters
from sb3_npg.save_load.untrusted import require_safe_torch, trust_hint, trusted_load, untrusted_load_arguments

SelfNPG = TypeVar("SelfNPG", bound="NPGBase")


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """
    Run the block with ``num_threads`` torch intra-op threads, then give the caller's count back (also on an error).

    :param num_threads: the thread count inside the block (``torch.set_num_threads``)
    """
    previous = th.get_num_threads()
    if num_threads == previous:
        yield
        return
    th.set_num_threads(num_threads)
    try:
        yield
    finally:
        th.set_num_threads(previous)


def _with_progress_bar(callback: MaybeCallback, progress: ProgressBarCallback | None) -> MaybeCallback:
    """``callback`` with ``progress`` added (as SB3's ``learn(progress_bar=True)`` adds its own), or unchanged."""
    if progress is None:
        return callback
    if isinstance(callback, list):
        callback = CallbackList(callback)
    if not isinstance(callback, BaseCallback):
        callback = ConvertCallback(callback)
    return CallbackList([callback, progress])


class NPGBase(OnPolicyAlgorithm):
    """
    SB3's ``OnPolicyAlgorithm`` with what NPG's algorithms share: ``learn``'s thread count and error handling, the
    NaN/inf environment check, and NPG's ``save``, ``load`` and ``set_parameters`` (see the module docstring).
    Subclasses set ``num_threads`` and call :meth:`_add_finite_check` once the environment is set.
    """

    num_threads: int | None
    batch_size: int

    def _warn_truncated_minibatch(self, buffer_size: int) -> None:
        """
        Warn, as SB3's PPO and sb3-contrib's TRPO do, when the rollout is not a multiple of ``batch_size``: the last
        critic minibatch of every epoch is then smaller. A ``batch_size`` above the rollout size is allowed (as in
        PPO, A2C and TRPO): the critic's minibatch is then the whole rollout.
        """
        if buffer_size % self.batch_size == 0:
            return
        if self.batch_size > buffer_size:
            consequence = f"the critic's minibatch is the whole rollout ({buffer_size} samples)"
        else:
            consequence = (
                f"after every {buffer_size // self.batch_size} untruncated mini-batches, "
                f"there will be a truncated mini-batch of size {buffer_size % self.batch_size}"
            )
        warnings.warn(
            f"You have specified a mini-batch size of {self.batch_size}, but because the rollout buffer is of size "
            f"`n_steps * n_envs = {buffer_size}`, {consequence}.\n"
            "We recommend using a `batch_size` that is a factor of `n_steps * n_envs`.\n"
            f"Info: (n_steps={self.n_steps} and n_envs={buffer_size // self.n_steps})",
            UserWarning,
            stacklevel=4,
        )

    def _add_finite_check(self) -> None:
        """Put NPG's NaN/inf check (:func:`~sb3_npg.env_checks.with_finite_check`) on the environment, if there is one."""
        if self.env is not None:
            self.env = with_finite_check(self.env)

    @property
    def learn_threads(self) -> int:
        """The torch intra-op thread count ``learn()`` runs with: ``num_threads``, or 1 when it is ``None``."""
        return DEFAULT_NUM_THREADS if self.num_threads is None else self.num_threads

    def learn(
        self: SelfNPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "NPG",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfNPG:
        """
        Train; see SB3's ``OnPolicyAlgorithm.learn``.

        It runs with :attr:`learn_threads` torch threads and gives the caller's ``torch.get_num_threads()`` back
        when it returns or raises; with ``num_threads=None`` a large network's batch products may run at the
        caller's count when timed faster (:mod:`sb3_npg.fast.threads`). An error raised by the environment reaches
        the caller unchanged and leaves the model ready for another ``learn`` (after ``set_env`` with a working
        environment); the progress bar is closed. A NaN or inf from the environment raises
        :class:`~sb3_npg.env_checks.NonFiniteError` naming the quantity and the timestep.
        """
        # The progress bar is created here, not by SB3, so that it can be closed when training fails
        progress = ProgressBarCallback() if progress_bar else None
        try:
            # timed_threads first: it takes the caller's thread count, for the large products it may run with
            with timed_threads(enabled=self.num_threads is None), torch_threads(self.learn_threads):
                return super().learn(
                    total_timesteps=total_timesteps,
                    callback=_with_progress_bar(callback, progress),
                    log_interval=log_interval,
                    tb_log_name=tb_log_name,
                    reset_num_timesteps=reset_num_timesteps,
                    progress_bar=False,
                )
        except BaseException as error:
            if isinstance(error, NonFiniteError):
                # num_timesteps counts the steps before the one that failed
                error.set_timestep(self.num_timesteps + (self.n_envs if error.during == "step" else 0))
            if progress is not None and getattr(progress, "pbar", None) is not None:
                progress.on_training_end()  # SB3 closes it only when training ends normally
            raise

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """
        Set the environment to learn from (see SB3's ``BaseAlgorithm.set_env``), with NPG's NaN/inf check.

        :param env: the new environment (same spaces and number of environments)
        :param force_reset: reset the environment before the next ``learn``
        """
        super().set_env(env, force_reset=force_reset)
        self.env = with_finite_check(self.env)  # type: ignore[arg-type]

    def get_env(self) -> VecEnv | None:
        """
        The environment as given (see SB3's ``BaseAlgorithm.get_env``): the ``VecEnv`` itself when NPG's NaN/inf
        check sits on top of it (with wrappers such as ``VecNormalize``, the check sits below them, inside).
        """
        env = super().get_env()
        return env.venv if isinstance(env, FiniteCheck) else env

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfNPG],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        trusted: bool = True,
        **kwargs: Any,
    ) -> SelfNPG:
        """
        Load a model saved with ``model.save(path)``; see SB3's ``BaseAlgorithm.load``.

        A missing file raises ``FileNotFoundError``; a file that is not a complete SB3 save (not a zip archive,
        truncated, or without its model data) or that another algorithm saved raises ``ValueError``, naming the
        path (for another algorithm's policy, use ``set_parameters``).

        :param trusted: ``True`` (SB3's behaviour): the file's pickled objects (spaces, schedules, classes) are
            unpickled, which runs whatever code the file holds: only for files you trust.
            ``False``: nothing is unpickled. The spaces come from ``env`` (required, or ``observation_space`` and
            ``action_space`` in ``custom_objects``), the policy class from ``policy_aliases``, pickled
            ``policy_kwargs`` from their readable copy (torch activations/optimisers and SB3's features
            extractors only; else pass ``custom_objects={"policy_kwargs": ...}``), the weights from
            ``torch.load(weights_only=True)``; other pickled entries keep the constructor's values. A file that
            cannot be read that way raises ``ValueError``. Refused (``ValueError``, before the file is read) on
            a torch below ``SAFE_TORCH_VERSION`` (2.10), whose ``weights_only`` unpickler has published
            advisories (see SECURITY.md).

        A save file over the limits of :mod:`sb3_npg.save_load` (member count and names, stated sizes,
        compression ratio) is refused before anything is decompressed; tensors that do not fit the policy raise
        ``ValueError`` naming the parameter.
        """
        if not valid_num_threads(kwargs.get("num_threads")):
            raise ValueError(f"Invalid num_threads={kwargs['num_threads']!r}: {NUM_THREADS_ALLOWED}")
        if not trusted:
            require_safe_torch(f"{cls.__name__}.load(path, trusted=False)", trusted_load(cls.__name__))
        save_file = read_save_file(path)
        check_saved_by_npg(save_file, cls.__name__, recurrent=loads_recurrent_policies(cls))
        if trusted:
            stream = save_file.stream()
        else:
            try:
                stream, custom_objects = untrusted_load_arguments(cls, save_file, env, device, custom_objects)
            except UntrustedLoadError as error:
                raise UntrustedLoadError(f"{str(error).rstrip('.')}. {trust_hint(cls.__name__)}") from error
        return super().load(
            stream,
            env=env,
            device=device,
            custom_objects=custom_objects,
            print_system_info=print_system_info,
            force_reset=force_reset,
            **kwargs,
        )

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        Save the model (SB3's format; ``.zip`` added to a path without suffix), see SB3's ``BaseAlgorithm.save``.

        A path is written atomically: a temporary file in the same folder, renamed over ``path`` once complete,
        so a save interrupted by an exception (or a crash) leaves the file that was there intact.
        """
        if isinstance(path, io.BufferedIOBase):
            super().save(path, exclude=exclude, include=include)
            return
        with atomic_save_file(path) as file:
            super().save(file, exclude=exclude, include=include)

    def set_parameters(
        self,
        load_path_or_dict: str | pathlib.Path | io.BufferedIOBase | dict[str, Any] | BaseAlgorithm,  # type: ignore[override]
        exact_match: bool = True,
        device: th.device | str = "auto",
        trusted: bool = False,
    ) -> None:
        """
        Load parameters from a save file, a dict (``get_parameters()``) or a model; see SB3's ``set_parameters``.

        Parameters from another algorithm (PPO, A2C, TRPO, ... with the same policy architecture) warm-start NPG:
        the policy weights are loaded, the optimiser state is not (NPG's critic optimiser holds the value
        parameters only) and a ``UserWarning`` says so. ``.pth`` members are read with ``weights_only=True``.
        Tensors that do not fit the model (shape, dtype, extra or missing keys with ``exact_match``) raise
        :class:`~sb3_npg.save_load.ParameterMismatchError` naming the parameter: a ``RuntimeError`` as torch's
        ``load_state_dict(strict=True)`` raises (and SB3's ``set_parameters``), and a ``ValueError``; on any error the
        model keeps the parameters it had.

        :param load_path_or_dict: a save file (path or binary file object), a dict of state dicts, or a model
        :param exact_match: the policy state dict must have exactly the policy's parameters
        :param device: where to load the tensors
        :param trusted: ``False``: a file is refused on a torch below ``SAFE_TORCH_VERSION`` (2.10), whose
            ``weights_only`` unpickler has published advisories (see SECURITY.md); ``True`` reads it there too (for
            a file you trust). Either way the file is read with ``weights_only=True``; dicts and models are not files.
        """
        if not trusted and not isinstance(load_path_or_dict, dict | BaseAlgorithm):
            require_safe_torch(
                f"{type(self).__name__}.set_parameters(path)", "pass trusted=True: model.set_parameters(path, trusted=True)"
            )
        params, algorithm = read_parameters(load_path_or_dict, device)
        objects = set(self._get_torch_save_params()[0])
        for name, state in params.items():
            if name not in objects:
                raise ValueError(f"'{name}' is not one of the model's parameter sets ({', '.join(sorted(objects))})")
            module = recursive_getattr(self, name)
            if isinstance(module, nn.Module):
                check_state_dict(name, state, module, exact_match)
        previous = {name: copy.deepcopy(recursive_getattr(self, name).state_dict()) for name in objects}
        try:
            self._load_parameters(params, algorithm, exact_match, device)
        except BaseException:
            for name, state in previous.items():
                recursive_getattr(self, name).load_state_dict(state)
            raise

    def _load_parameters(
        self, params: dict[str, Any], algorithm: str | None, exact_match: bool, device: th.device | str
    ) -> None:
        """Load checked parameters: all of them from NPG (or a dict) when the optimiser state fits, else the policy's."""
        optimizer_state = params.get("policy.optimizer")
        if algorithm in (None, "NPG") and (
            optimizer_state is None or optimizer_state_fits(optimizer_state, self.policy.optimizer)
        ):
            super().set_parameters(params, exact_match=exact_match, device=device)
            return
        if "policy" not in params:
            raise ValueError(f"No policy weights to load from {algorithm or 'these parameters'} (keys: {sorted(params)})")
        self.policy.load_state_dict(params["policy"], strict=exact_match)
        warnings.warn(
            f"Loaded the policy weights of {algorithm or 'another algorithm'} (its optimiser state does not fit NPG's, "
            "whose critic optimiser holds the value parameters only): NPG's optimiser keeps its own state.",
            UserWarning,
            stacklevel=3,
        )
