"""
Saved models: what ``NPG.save``, ``NPG.load`` and ``NPG.set_parameters`` need beyond SB3's ``save_util``.

- :func:`atomic_save_file`: ``model.save(path)`` writes a temporary file in the target's folder and renames it
  over the target only once it is complete, so an interrupted save leaves the previous file intact.
- :func:`read_save_file`: the members of an SB3 ``.zip`` save, read without unpickling anything, with a clear
  error for a missing, truncated or incomplete file.
- :func:`saved_algorithm`: which algorithm wrote a save file (or a model), told from the names of its saved
  attributes (readable JSON keys), so NPG can refuse another algorithm's file without unpickling it.
- :func:`untrusted_load_arguments`: the load of a file from a stranger (``NPG.load(..., trusted=False)``).
  SB3 stores spaces, schedules and classes as cloudpickle inside its JSON, and unpickling runs code. This builds
  a clean copy of the file with every pickled entry removed and every ``.pth`` member loaded with
  ``torch.load(weights_only=True)`` and written again, plus the ``custom_objects`` that replace what was
  pickled: the spaces from the caller's env, the policy class from the algorithm's own ``policy_aliases``,
  ``policy_kwargs`` from their readable copy (classes from a short allow-list), the learning rate as a constant.
- :func:`read_parameters` and :func:`optimizer_state_fits`: the warm start of ``set_parameters`` from PPO, A2C
  or TRPO (their optimiser holds every parameter, NPG's the value function's only).
- :func:`require_safe_torch`: the untrusted paths refuse to run on a torch whose ``weights_only`` unpickler has
  published advisories (below :data:`SAFE_TORCH_VERSION`).
- :func:`check_state_dict`: tensors that do not fit the model (shape, dtype, extra or missing keys) are refused
  before any is copied into it.

Limits on a save file, checked from the zip's central directory before any member is decompressed (a file over
them raises ``ValueError``): at most :data:`MAX_SAVE_MEMBERS` members, no two with the same name, no absolute or
``..`` names, no encrypted member, at most :data:`MAX_SAVE_BYTES` for the file and for the sum of its members'
stated sizes, and members over :data:`RATIO_CHECKED_ABOVE` bytes compressed at most :data:`MAX_COMPRESSION_RATIO`
times. A member is then decompressed to at most its stated size, and one that does not decompress to exactly that
size with its checksum is refused.
"""

import inspect
import io
import json
import os
import pathlib
import shutil
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.utils import get_device
from torch import nn
from torch.torch_version import TorchVersion

SAFE_TORCH_VERSION = "2.10"
"""The lowest torch whose ``torch.load(weights_only=True)`` has no published advisory (see :data:`TORCH_ADVISORIES`):
``load(..., trusted=False)``, ``set_parameters`` from a file and the Zoo's safe ``enjoy``/``record_video`` refuse
to run below it."""

TORCH_ADVISORIES = (
    "CVE-2025-32434 (torch <= 2.5.1: a crafted file runs code through torch.load(weights_only=True); fixed in 2.6.0)",
    "CVE-2026-24747 (torch < 2.10: memory corruption in the weights_only unpickler, code execution from a crafted checkpoint)",
)
"""The published advisories on ``torch.load(weights_only=True)`` that :data:`SAFE_TORCH_VERSION` is above."""

MAX_SAVE_MEMBERS = 64
"""Most members a save file may have (SB3 writes at most a handful: ``data``, one ``.pth`` per module and
optimiser, ``pytorch_variables.pth``, ``_stable_baselines3_version``, ``system_info.txt``)."""

MAX_SAVE_BYTES = 512 * 1024**2
"""Largest save file (512 MiB), and largest sum of its members' stated (uncompressed) sizes."""

MAX_COMPRESSION_RATIO = 100
"""Largest ratio of stated to compressed size for a member over :data:`RATIO_CHECKED_ABOVE` bytes (SB3 writes its
members uncompressed; weights compress by less than 2)."""

RATIO_CHECKED_ABOVE = 1024**2
"""Members up to this size (1 MiB) may have any compression ratio."""

SERIALIZED = ":serialized:"
"""The key SB3's JSON uses for a cloudpickled value (base64)."""

NPG_KEYS = frozenset({"cg_max_steps", "cg_damping", "fisher"})
"""Saved attributes every NPG model (and subclass) has; TRPO has the first two, no other algorithm all three."""

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

# Saved attributes that identify other algorithms, checked in this order (A2C's are a subset of the others').
FOREIGN_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("RecurrentPPO", frozenset({"clip_range", "_last_lstm_states"})),
    ("PPO", frozenset({"clip_range", "n_epochs"})),
    ("TRPO", frozenset({"line_search_shrinking_factor"})),
    ("ARS", frozenset({"n_delta"})),
    ("TQC", frozenset({"top_quantiles_to_drop_per_net"})),
    ("SAC", frozenset({"target_entropy"})),
    ("TD3", frozenset({"policy_delay", "target_policy_noise"})),
    ("DQN", frozenset({"exploration_fraction"})),
    ("A2C", frozenset({"n_steps", "normalize_advantage"})),
)

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


class UntrustedLoadError(ValueError):
    """A save file that ``load(..., trusted=False)`` cannot read without unpickling."""


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
    :param trusted_alternative: how to read a file the user trusts, as a clause that ends the message's sentence
        (e.g. ``"pass --trusted"``; a final period is dropped)
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


@dataclass(frozen=True)
class SaveFile:
    """
    The members of an SB3 save file, read as bytes (nothing unpickled).

    :param name: the path (or ``"<stream>"``), for messages
    :param members: member name -> its bytes
    :param data: the ``data`` member parsed as JSON (pickled entries left as SB3 wrote them)
    """

    name: str
    members: dict[str, bytes]
    data: dict[str, Any]

    def stream(self) -> io.BytesIO:
        """The file again, as an in-memory zip archive with the same members."""
        return _zip_bytes(self.members)


def _zip_bytes(members: Mapping[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, mode="w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)
    buffer.seek(0)
    return buffer


def existing_save_file(path: pathlib.Path) -> pathlib.Path:
    """The path of an existing SB3 save file (``.zip`` added as ``model.save`` does), or ``FileNotFoundError``."""
    if not path.exists() and path.suffix != ".zip" and path.with_suffix(path.suffix + ".zip").exists():
        path = path.with_suffix(path.suffix + ".zip")
    if not path.is_file():
        raise FileNotFoundError(f"No saved NPG model at '{path}'")
    return path


def _unsafe_member_name(member: str) -> bool:
    """Whether a member name is absolute, has a drive, a backslash or a ``..`` part (SB3 writes none of these)."""
    parts = member.split("/")
    return member.startswith("/") or "\\" in member or ":" in member or any(part in ("", ".", "..") for part in parts)


def checked_members(archive: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    """
    The members of a save file's zip archive, checked against the limits from the central directory alone
    (nothing decompressed): see the module docstring.

    :param archive: the open archive
    :param name: the file's name, for messages
    :raises ValueError: naming the member and the limit it breaks
    """
    members = archive.infolist()
    if len(members) > MAX_SAVE_MEMBERS:
        raise ValueError(f"'{name}' has {len(members)} members: a saved model has at most {MAX_SAVE_MEMBERS}")
    seen: set[str] = set()
    for info in members:
        if _unsafe_member_name(info.filename):
            raise ValueError(f"'{name}' has a member named {info.filename!r}: not a saved model's (absolute, '..' or '\\')")
        if info.filename in seen:
            raise ValueError(f"'{name}' has two members named {info.filename!r}: not a saved model")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise ValueError(f"'{name}': member {info.filename!r} is encrypted, which a saved model never is")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_CHECKED_ABOVE and ratio > MAX_COMPRESSION_RATIO:
            raise ValueError(
                f"'{name}': member {info.filename!r} states {info.file_size} bytes compressed {ratio:.0f} times, more than "
                f"the {MAX_COMPRESSION_RATIO} times allowed above {RATIO_CHECKED_ABOVE} bytes (a zip bomb?)"
            )
    total = sum(info.file_size for info in members)
    if total > MAX_SAVE_BYTES:
        raise ValueError(f"'{name}' states {total} bytes of members, more than the {MAX_SAVE_BYTES} allowed (a zip bomb?)")
    return members


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    """A member decompressed to at most one byte past its stated size; it must be exactly that size, checksum good."""
    try:
        with archive.open(info) as member:
            content = member.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error) as error:
        raise ValueError(
            f"'{name}': member {info.filename!r} is damaged or does not decompress to its stated {info.file_size} bytes "
            f"({error})"
        ) from error
    if len(content) != info.file_size:
        raise ValueError(f"'{name}': member {info.filename!r} decompresses to more than its stated {info.file_size} bytes")
    return content


def read_save_file(path: str | pathlib.Path | io.BufferedIOBase) -> SaveFile:
    """
    Read an SB3 save file into memory without unpickling anything.

    :param path: a path (``.zip`` may be left out, as for ``model.save``) or a binary file object
    :return: its members and its ``data`` JSON
    :raises FileNotFoundError: if the path does not exist
    :raises ValueError: if it is not a complete, readable SB3 save file, or breaks the limits of the module
        docstring (checked before anything is decompressed)
    """
    if isinstance(path, str | pathlib.Path):
        file_path = existing_save_file(pathlib.Path(path))
        name = str(file_path)
        if file_path.stat().st_size > MAX_SAVE_BYTES:
            raise ValueError(f"'{name}' has {file_path.stat().st_size} bytes, more than the {MAX_SAVE_BYTES} of a saved model")
        content = file_path.read_bytes()
    else:
        name, content = "<stream>", path.read(MAX_SAVE_BYTES + 1)
        if len(content) > MAX_SAVE_BYTES:
            raise ValueError(f"'{name}' has more than the {MAX_SAVE_BYTES} bytes of a saved model")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            infos = checked_members(archive, name)
            missing = {"data", "policy.pth"} - {info.filename for info in infos}
            if missing:
                raise ValueError(f"'{name}' is not a complete saved model: missing {', '.join(sorted(missing))}")
            members = {info.filename: _read_member(archive, info, name) for info in infos}
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"'{name}' is not a readable saved model (corrupt or not a zip archive): {error}") from error
    try:
        data = json.loads(members["data"])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"'{name}' is not a readable saved model: its 'data' member is not JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"'{name}' is not a readable saved model: its 'data' member is not a JSON object")
    return SaveFile(name, members, data)


def is_pickled(value: Any) -> bool:
    """Whether a value of SB3's data JSON is a cloudpickled object (unpickling it would run its code)."""
    return isinstance(value, dict) and SERIALIZED in value


def saved_algorithm(attributes: Mapping[str, Any]) -> str:
    """
    The algorithm that saved a file or built a model, told from its attribute names (nothing unpickled).

    :param attributes: the ``data`` JSON of a save file, or ``vars(model)``
    :return: ``"NPG"`` for NPG and its subclasses, else the other algorithm's name (or ``"an unknown algorithm"``)
    """
    names = attributes.keys()
    if names >= NPG_KEYS:
        return "NPG"
    for algorithm, signature in FOREIGN_SIGNATURES:
        if signature <= names:
            policy_class = attributes.get("policy_class")
            module = policy_class.get("__module__", "") if isinstance(policy_class, dict) else ""
            if algorithm == "PPO" and "maskable" in str(module):
                return "MaskablePPO"
            return algorithm
    return "an unknown algorithm"


def saved_policy_is_recurrent(save_file: SaveFile) -> bool:
    """
    Whether the policy of a save file has an LSTM (sb3-contrib's ``RecurrentActorCriticPolicy``: ``RecurrentNPG``),
    told from the parameter names of its ``policy.pth`` (read with ``torch.load(weights_only=True)``).

    :param save_file: the file read by :func:`read_save_file`
    """
    content = save_file.members.get("policy.pth")
    if content is None:
        return False
    try:
        state = load_tensors("policy.pth", content, save_file.name)
    except UntrustedLoadError:  # not plain weights: left to the load itself (refused when untrusted)
        return False
    return isinstance(state, Mapping) and any(str(name).startswith("lstm_actor.") for name in state)


def loads_recurrent_policies(algorithm: type[BaseAlgorithm]) -> bool:
    """Whether ``algorithm``'s policies have an LSTM (sb3-contrib's ``RecurrentActorCriticPolicy``)."""
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

    return any(issubclass(policy, RecurrentActorCriticPolicy) for policy in algorithm.policy_aliases.values())


def check_saved_by_npg(save_file: SaveFile, algorithm_name: str, recurrent: bool = False) -> None:
    """
    Refuse another algorithm's save file before loading it as NPG (its hyperparameters and optimiser do not fit),
    and an LSTM policy's file loaded by a feed-forward NPG class or the other way round.

    :param save_file: the file read by :func:`read_save_file`
    :param algorithm_name: the loading class's name, for the message
    :param recurrent: whether the loading class's policies have an LSTM (``RecurrentNPG``)
    :raises ValueError: naming the algorithm found and pointing to ``set_parameters``, or to the class to load with
    """
    found = saved_algorithm(save_file.data)
    if found != "NPG":
        raise ValueError(
            f"'{save_file.name}' was saved by {found}, not NPG: {algorithm_name}.load cannot rebuild another "
            f"algorithm's model (its hyperparameters and optimiser state do not fit). To start {algorithm_name} from "
            "its policy, create the model with the same policy_kwargs and load the weights: "
            f'model = {algorithm_name}("MlpPolicy", env, policy_kwargs=...); model.set_parameters(path)'
        )
    if saved_policy_is_recurrent(save_file) != recurrent:
        saved_by, load_with = (
            ("RecurrentNPG (an LSTM policy)", "RecurrentNPG.load")
            if not recurrent
            else ("NPG (a policy without LSTM)", "NPG.load")
        )
        raise ValueError(
            f"'{save_file.name}' was saved by {saved_by}: {algorithm_name}.load cannot rebuild it, use {load_with}"
        )


# --------------------------------------------------------------------------------------------------------
# Atomic save
# --------------------------------------------------------------------------------------------------------


def save_target(path: str | pathlib.Path) -> pathlib.Path:
    """The file ``model.save(path)`` writes: ``.zip`` added to a path without suffix, as SB3 does."""
    target = pathlib.Path(path)
    if target.suffix == "":
        target = pathlib.Path(f"{target}.zip")
    if target.is_dir():
        raise IsADirectoryError(f"Cannot save the model to '{target}': it is a folder")
    return target


@contextmanager
def atomic_save_file(path: str | pathlib.Path) -> Iterator[io.BufferedWriter]:
    """
    A binary file to write a save into; on success it replaces ``path``, on an exception it is removed.

    The temporary file is in the target's folder (a rename within one file system is atomic), flushed to disk
    before the rename, and takes the permissions of the file it replaces.

    :param path: where the save goes (``.zip`` added when there is no suffix, missing folders created)
    """
    target = save_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if target.exists():
            shutil.copymode(target, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------------
# Untrusted load
# --------------------------------------------------------------------------------------------------------


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


def load_tensors(member: str, content: bytes, file_name: str, map_location: th.device | str = "cpu") -> Any:
    """
    Load a ``.pth`` member with ``torch.load(weights_only=True)``: tensors and plain containers only.

    :raises UntrustedLoadError: if the restricted unpickler refuses it (it names other objects, or is damaged)
    """
    try:
        return th.load(io.BytesIO(content), map_location=map_location, weights_only=True)
    except Exception as error:  # any failure of the restricted unpickler means: not plain weights
        raise UntrustedLoadError(
            f"'{member}' in '{file_name}' is not plain weights (torch.load(weights_only=True) refused it: "
            f"{' '.join(str(error).split())[:300]})"
        ) from error


def _resaved_tensors(member: str, content: bytes, file_name: str) -> bytes:
    """A ``.pth`` member loaded by :func:`load_tensors` and saved again (so no later load can see other objects)."""
    buffer = io.BytesIO()
    th.save(load_tensors(member, content, file_name), buffer)
    return buffer.getvalue()


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
    ``policy_kwargs`` by their readable copy (classes from :data:`ALLOWED_POLICY_OBJECTS`), ``learning_rate``
    (a schedule) by the constructor's default. ``custom_objects`` from the caller take precedence.
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
    if "learning_rate" not in replacements and is_pickled(data.get("learning_rate")):
        learning_rate = inspect.signature(algorithm).parameters["learning_rate"].default
        warnings.warn(
            f"The learning rate saved in '{name}' is a pickled schedule: using {learning_rate} "
            "(pass custom_objects={'learning_rate': ...} to choose it)",
            UserWarning,
        )
        replacements["learning_rate"] = learning_rate

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
    return _zip_bytes(clean_members), replacements


# --------------------------------------------------------------------------------------------------------
# Warm start from another algorithm
# --------------------------------------------------------------------------------------------------------


def read_parameters(source: Any, device: th.device | str) -> tuple[dict[str, Any], str | None]:
    """
    The state dicts to load into a model, and the algorithm they come from when it can be told.

    :param source: a save file (path or binary file object), a model, or a dict as returned by ``get_parameters``
    :param device: where to put the tensors
    :return: name -> state dict, and ``"NPG"``/another algorithm's name/``None`` (a plain dict)
    """
    if isinstance(source, dict):
        return source, None
    if isinstance(source, BaseAlgorithm):
        return source.get_parameters(), saved_algorithm(vars(source))
    save_file = read_save_file(source)
    params = {}
    for member, content in save_file.members.items():
        if member.endswith(".pth") and member not in ("pytorch_variables.pth", "tensors.pth"):
            params[member[: -len(".pth")]] = load_tensors(member, content, save_file.name, get_device(device))
    return params, saved_algorithm(save_file.data)


def optimizer_state_fits(state: Mapping[str, Any], optimizer: th.optim.Optimizer) -> bool:
    """
    Whether an optimiser state dict was made for these parameters: same groups, same parameter counts,
    and per-parameter state tensors (e.g. Adam's moments) of the parameters' shapes.

    :param state: the saved optimiser state dict
    :param optimizer: the optimiser it would be loaded into
    """
    saved_groups = state.get("param_groups")
    if not isinstance(saved_groups, list) or len(saved_groups) != len(optimizer.param_groups):
        return False
    pairs = list(zip(saved_groups, optimizer.param_groups, strict=True))
    if any(len(saved["params"]) != len(group["params"]) for saved, group in pairs):
        return False
    shapes = {
        index: parameter.shape
        for saved, group in pairs
        for index, parameter in zip(saved["params"], group["params"], strict=True)
    }
    for index, parameter_state in state.get("state", {}).items():
        for value in parameter_state.values():
            if isinstance(value, th.Tensor) and value.dim() > 0 and value.shape != shapes.get(index):
                return False
    return True


def check_state_dict(name: str, state: Any, module: nn.Module, exact_match: bool) -> None:
    """
    Refuse a state dict that does not fit a module, before any tensor is copied into it: every tensor must have
    the shape and dtype of the module's entry of the same name; with ``exact_match``, no key may be missing or extra.

    :param name: the module's name in the model (``"policy"``), for messages
    :param state: the state dict to load
    :param module: the module it would be loaded into
    :param exact_match: whether the keys must be exactly the module's
    :raises ValueError: naming the first parameter that does not fit
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"The '{name}' parameters are a {type(state).__name__}, not a state dict")
    expected = module.state_dict()
    for key, value in state.items():
        if key not in expected:
            if exact_match:
                raise ValueError(f"Parameter '{name}.{key}' is not one of the model's (exact_match=True)")
            continue
        if not isinstance(value, th.Tensor):
            raise ValueError(f"Parameter '{name}.{key}' is a {type(value).__name__}, not a tensor")
        wanted = expected[key]
        if value.shape != wanted.shape:
            raise ValueError(f"Parameter '{name}.{key}' has shape {tuple(value.shape)}, the model's {tuple(wanted.shape)}")
        if value.dtype != wanted.dtype:
            raise ValueError(f"Parameter '{name}.{key}' has dtype {value.dtype}, the model's {wanted.dtype}")
    missing = sorted(set(expected) - set(state))
    if exact_match and missing:
        raise ValueError(f"Parameter '{name}.{missing[0]}' is missing ({len(missing)} missing; exact_match=True)")
