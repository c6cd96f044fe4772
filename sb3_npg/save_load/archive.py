"""
The save file itself: an SB3 ``.zip`` read without unpickling anything (:func:`read_save_file`, within the limits
below, with a clear error for a missing, truncated or incomplete file), its ``.pth`` members loaded with
``torch.load(weights_only=True)`` (:func:`load_tensors`), the algorithm that wrote it told from the names of its
saved attributes (:func:`saved_algorithm`, :func:`check_saved_by_npg`), and ``model.save(path)`` written atomically
(:func:`atomic_save_file`: a temporary file in the target's folder, renamed over it once complete).

Limits on a save file, checked from the zip's central directory before any member is decompressed (a file over
them raises ``ValueError``): at most :data:`MAX_SAVE_MEMBERS` members, no two with the same name, no absolute or
``..`` names, no encrypted member, at most :data:`MAX_SAVE_BYTES` for the file and for the sum of its members'
stated sizes, and members over :data:`RATIO_CHECKED_ABOVE` bytes compressed at most :data:`MAX_COMPRESSION_RATIO`
times. A member is then decompressed to at most its stated size, and one that does not decompress to exactly that
size with its checksum is refused.
"""

import io
import json
import os
import pathlib
import shutil
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

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


class UntrustedLoadError(ValueError):
    """A save file that ``load(..., trusted=False)`` cannot read without unpickling."""


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
        return zip_bytes(self.members)


def zip_bytes(members: Mapping[str, bytes]) -> io.BytesIO:
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
