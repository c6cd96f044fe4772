"""
The load of a file from a stranger (``NPG.load(..., trusted=False)``): :func:`untrusted_load_arguments`.

SB3 stores spaces, schedules and classes as cloudpickle inside its JSON, and unpickling runs code. This builds a clean
copy of the file with every pickled entry removed and every ``.pth`` member loaded with
``torch.load(weights_only=True)`` and written again, plus the ``custom_objects`` that replace what was pickled: the
spaces from the caller's env, the policy class from the algorithm's own ``policy_aliases``, ``policy_kwargs`` from
their readable copy (classes from a short allow-list), the learning rate as a constant.

:func:`require_safe_torch`: the untrusted paths refuse to run on a torch whose ``weights_only`` unpickler has
published advisories (below :data:`SAFE_TORCH_VERSION`).
"""

import inspect
import io
import json
import warnings
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from torch import nn
from torch.torch_version import TorchVersion

from sb3_npg.save_load.archive import SaveFile, UntrustedLoadError, is_pickled, load_tensors, zip_bytes

SAFE_TORCH_VERSION = "2.10"
"""The lowest torch whose ``torch.load(weights_only=True)`` has no published advisory (see :data:`TORCH_ADVISORIES`):
``load(..., trusted=False)``, ``set_parameters`` from a file and the Zoo's safe ``enjoy``/``record_video`` refuse
to run below it."""


TORCH_ADVISORIES = (
    "CVE-2025-32434 (torch <= 2.5.1: a crafted file runs code through torch.load(weights_only=True); fixed in 2.6.0)",
    "CVE-2026-24747 (torch < 2.10: memory corruption in the weights_only unpickler, code execution from a crafted checkpoint)",
)
"""The published advisories on ``torch.load(weights_only=True)`` that :data:`SAFE_TORCH_VERSION` is above."""


NEVER_SAVED = frozenset(
    {
        "policy",
        "device",
        "env",
        "replay_buffer",
        "rollout_buffer",
        "_vec_normalize_env",
        "_episode_storage",
        "_logger",
        "_custom_logger",
    }
)
"""Attributes SB3's ``save`` leaves out (``_excluded_save_params``): in a file they can only be planted (``env`` would
make SB3's ``load`` call ``gym.make`` on the file's string); the untrusted load drops them."""

SCHEDULE_ARGUMENTS = {"learning_rate": "learning rate", "target_kl": "target_kl"}
"""Constructor arguments that may be saved as a pickled schedule (with their name in the warning): the untrusted load
puts the constructor's default in their place, with a warning (``custom_objects`` chooses another value)."""


# Objects a pickled ``policy_kwargs`` may hold that the untrusted load rebuilds from their readable ``str()``.
ALLOWED_POLICY_OBJECTS: dict[str, Any] = {
    str(obj): obj
    for obj in (
        nn.Tanh,
        nn.ReLU,
        nn.ELU,
        nn.LeakyReLU,
        nn.GELU,
        nn.SiLU,
        nn.Mish,
        nn.SELU,
        nn.ReLU6,
        nn.Sigmoid,
        nn.Softplus,
        nn.Softsign,
        nn.Hardswish,
        nn.Identity,
        th.optim.Adam,
        th.optim.AdamW,
        th.optim.RMSprop,
        th.optim.SGD,
        FlattenExtractor,
        NatureCNN,
        CombinedExtractor,
    )
}


def trusted_load(algorithm_name: str) -> str:
    """How to load a file whose source is trusted, as a clause (``"load it with NPG.load(path, trusted=True) ..."``)."""
    return f"load it with {algorithm_name}.load(path, trusted=True) (sb3_npg.enjoy / record_video: --trusted)"


def trust_hint(algorithm_name: str) -> str:
    """The sentence that tells how to load a file the safe path cannot read, if its source is trusted."""
    return f"If you trust this file (it runs code when unpickled), {trusted_load(algorithm_name)}."


class UnsafeTorchError(UntrustedLoadError):
    """The installed torch's ``weights_only`` unpickler has published advisories: files from strangers are refused."""


def untrusted_files_supported(torch_version: str | None = None) -> bool:
    """
    Whether a torch version is one the untrusted paths run on (at least :data:`SAFE_TORCH_VERSION`).

    :param torch_version: a torch version string (``None``: the installed torch's)
    """
    return TorchVersion(th.__version__ if torch_version is None else torch_version) >= SAFE_TORCH_VERSION


def require_safe_torch(what: str, trusted_alternative: str, torch_version: str | None = None) -> None:
    """
    Refuse an untrusted path on a torch below :data:`SAFE_TORCH_VERSION`, before any file is read.

    :param what: what is refused, for the message (e.g. ``"NPG.load(path, trusted=False)"``)
    :param trusted_alternative: how to read a file the user trusts, as a clause that ends the message's sentence (a
        final period is dropped)
    :param torch_version: the torch version to judge (``None``: the installed torch's)
    :raises UnsafeTorchError: (a ``ValueError``) naming the version found, the advisories and the fixes
    """
    version = th.__version__ if torch_version is None else torch_version
    if not untrusted_files_supported(version):
        raise UnsafeTorchError(
            f"{what} refused: torch {version} is installed, and reading a file from a stranger rests on its "
            f"torch.load(weights_only=True), which has published advisories below torch {SAFE_TORCH_VERSION}: "
            f"{'; '.join(TORCH_ADVISORIES)}. Upgrade torch (pip install 'torch>={SAFE_TORCH_VERSION}'), or, for a "
            f"file you trust, {trusted_alternative.rstrip('.')}."
        )


def _check_space(name: str, stored: dict[str, Any], space: spaces.Space, file_name: str) -> None:
    """Compare the readable fields SB3 stores next to a pickled space with the env's space."""
    problems = []
    if stored.get(":type:") != str(type(space)):
        problems.append(f"type {stored.get(':type:')} (env: {type(space)})")
    shape = stored.get("_shape")
    if isinstance(shape, list) and space.shape is not None and tuple(shape) != tuple(space.shape):
        problems.append(f"shape {tuple(shape)} (env: {space.shape})")
    dtype = stored.get("dtype")
    if isinstance(dtype, str) and space.dtype is not None and dtype != str(space.dtype):
        problems.append(f"dtype {dtype} (env: {space.dtype})")
    if isinstance(space, spaces.Discrete) and "n" in stored and str(stored["n"]) != str(int(space.n)):
        problems.append(f"n={stored['n']} (env: {int(space.n)})")
    if problems:
        raise ValueError(f"The {name} saved in '{file_name}' does not match the env's: {', '.join(problems)}")


def _policy_class(algorithm: type[BaseAlgorithm], stored: dict[str, Any], file_name: str) -> type:
    """The saved policy class, found among ``algorithm.policy_aliases`` from the readable module and method names."""
    module = stored.get("__module__")
    # methods defined in the class body are stored as "<function ClassName.method at 0x...>"
    functions = [value for value in stored.values() if isinstance(value, str) and value.startswith("<function ")]
    class_names = {function.split()[1].rsplit(".", 1)[0] for function in functions}
    for policy_class in algorithm.policy_aliases.values():
        if policy_class.__module__ == module and policy_class.__qualname__ in class_names:
            return policy_class
    raise UntrustedLoadError(
        f"The policy class saved in '{file_name}' ({module}.{'/'.join(sorted(class_names)) or '?'}) is not one of "
        f"{algorithm.__name__}'s policies ({', '.join(algorithm.policy_aliases)}); pass it as "
        "custom_objects={'policy_class': ...} if you know it."
    )


def _policy_kwargs(stored: dict[str, Any], file_name: str) -> dict[str, Any]:
    """Rebuild pickled ``policy_kwargs`` from their readable copy: JSON values, and classes of the allow-list."""
    policy_kwargs = {}
    for key, value in stored.items():
        if key.startswith(":") and key.endswith(":"):
            continue
        if isinstance(value, str) and value in ALLOWED_POLICY_OBJECTS:
            policy_kwargs[key] = ALLOWED_POLICY_OBJECTS[value]
        elif isinstance(value, str) and (key.endswith("_kwargs") or (value.startswith("<") and value.endswith(">"))):
            raise UntrustedLoadError(
                f"policy_kwargs['{key}'] saved in '{file_name}' is {value!r}, which cannot be rebuilt without unpickling "
                f"(known: torch activations and optimisers, SB3's features extractors); pass the policy kwargs as "
                "custom_objects={'policy_kwargs': dict(...)}."
            )
        else:
            policy_kwargs[key] = value
    return policy_kwargs


def _resaved_tensors(member: str, content: bytes, file_name: str) -> bytes:
    """A ``.pth`` member loaded by :func:`load_tensors` and saved again (so no later load can see other objects)."""
    buffer = io.BytesIO()
    th.save(load_tensors(member, content, file_name), buffer)
    return buffer.getvalue()


def _constructor_default(algorithm: type[BaseAlgorithm], name: str) -> Any:
    """The default of argument ``name`` in the first constructor along ``algorithm``'s MRO that declares it (a subclass
    may take it through ``**kwargs`` and pass it on, as MaskableRecurrentNPG does)."""
    for cls in algorithm.__mro__:
        parameter = inspect.signature(cls).parameters.get(name) if "__init__" in vars(cls) else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise TypeError(f"{algorithm.__name__} has no default for {name}")


def untrusted_load_arguments(
    algorithm: type[BaseAlgorithm],
    save_file: SaveFile,
    env: Any,
    device: th.device | str,
    custom_objects: dict[str, Any] | None,
) -> tuple[io.BytesIO, dict[str, Any]]:
    """
    A clean copy of a save file and the ``custom_objects`` to load it with SB3's ``load``, without unpickling.

    Every pickled entry of the JSON is removed (the model keeps its constructor's value for it) or replaced:
    ``observation_space``/``action_space`` by the env's (checked against the readable type, shape and dtype),
    ``policy_class`` by the class of ``algorithm.policy_aliases`` with the saved module and name,
    ``policy_kwargs`` by their readable copy (classes from :data:`ALLOWED_POLICY_OBJECTS`), ``learning_rate`` and
    ``target_kl`` (schedules, :data:`SCHEDULE_ARGUMENTS`) by the constructor's defaults, with a warning.
    ``custom_objects`` from the caller take precedence.
    Every ``.pth`` member is loaded with ``torch.load(weights_only=True)`` and written again.

    :param algorithm: the class being loaded (NPG or a subclass)
    :param save_file: the file, read by :func:`read_save_file`
    :param env: the env the model will run on, or ``None`` if ``custom_objects`` holds both spaces
    :param device: the device, for the model that finds the env's (wrapped) spaces
    :param custom_objects: replacements from the caller
    :return: the clean file and the ``custom_objects`` for SB3's ``load``
    :raises UntrustedLoadError: (a ``ValueError``) if the file cannot be read without unpickling
    :raises ValueError: if the saved spaces do not match the env's
    """
    data, name = save_file.data, save_file.name
    replacements: dict[str, Any] = dict(custom_objects or {})
    for space_key in ("observation_space", "action_space"):
        if space_key not in data:
            raise UntrustedLoadError(f"'{name}' has no {space_key}")

    if "policy_class" not in replacements and is_pickled(data.get("policy_class")):
        replacements["policy_class"] = _policy_class(algorithm, data["policy_class"], name)
    if "policy_kwargs" not in replacements and is_pickled(data.get("policy_kwargs")):
        replacements["policy_kwargs"] = _policy_kwargs(data["policy_kwargs"], name)
    for schedule_key, said_as in SCHEDULE_ARGUMENTS.items():
        if schedule_key not in replacements and is_pickled(data.get(schedule_key)):
            default = _constructor_default(algorithm, schedule_key)
            warnings.warn(
                f"The {said_as} saved in '{name}' is a pickled schedule: using {default} "
                f"(pass custom_objects={{'{schedule_key}': ...}} to choose it)",
                UserWarning,
            )
            replacements[schedule_key] = default

    missing_spaces = {"observation_space", "action_space"} - replacements.keys()
    if missing_spaces and env is None:
        raise UntrustedLoadError(
            f"Loading '{name}' with trusted=False needs env= (or custom_objects with observation_space and "
            "action_space): the file's spaces are pickled."
        )
    if missing_spaces:
        # The constructor wraps the env as SB3's load will (DummyVecEnv, VecTransposeImage for images).
        policy: Any = replacements.get("policy_class", data.get("policy_class"))
        wrapped = algorithm(policy=policy, env=env, device=device, _init_setup_model=False)  # type: ignore[call-arg]
        for space_key in sorted(missing_spaces):
            space = getattr(wrapped, space_key)
            if is_pickled(data[space_key]):
                _check_space(space_key, data[space_key], space, name)
            replacements[space_key] = space

    clean_data = {
        key: (None if key in replacements else value)
        for key, value in data.items()
        if not is_pickled(value) and key not in NEVER_SAVED
    }
    clean_data.update({key: None for key in replacements if key in data})
    clean_members = {"data": json.dumps(clean_data).encode()}
    for member, content in save_file.members.items():
        if member.endswith(".pth"):
            clean_members[member] = _resaved_tensors(member, content, name)
        elif member in ("_stable_baselines3_version", "system_info.txt"):
            clean_members[member] = content
    return zip_bytes(clean_members), replacements
