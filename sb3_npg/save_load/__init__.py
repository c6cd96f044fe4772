"""
Saved models: what ``NPG.save``, ``NPG.load`` and ``NPG.set_parameters`` need beyond SB3's ``save_util``, in three
modules: :mod:`~sb3_npg.save_load.archive` (the zip, its limits, atomic saves), :mod:`~sb3_npg.save_load.untrusted`
(loading without unpickling, the torch version it needs) and :mod:`~sb3_npg.save_load.parameters` (``set_parameters``'
checks). The names below are importable from ``sb3_npg.save_load`` itself (SECURITY.md names them there).

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

from sb3_npg.save_load.archive import (
    FOREIGN_SIGNATURES,
    MAX_COMPRESSION_RATIO,
    MAX_SAVE_BYTES,
    MAX_SAVE_MEMBERS,
    NPG_KEYS,
    RATIO_CHECKED_ABOVE,
    SERIALIZED,
    SaveFile,
    UntrustedLoadError,
    atomic_save_file,
    check_saved_by_npg,
    checked_members,
    existing_save_file,
    is_pickled,
    load_tensors,
    loads_recurrent_policies,
    read_save_file,
    save_target,
    saved_algorithm,
    saved_policy_is_recurrent,
    zip_bytes,
)
from sb3_npg.save_load.parameters import check_state_dict, optimizer_state_fits, read_parameters
from sb3_npg.save_load.untrusted import (
    ALLOWED_POLICY_OBJECTS,
    NEVER_SAVED,
    SAFE_TORCH_VERSION,
    TORCH_ADVISORIES,
    UnsafeTorchError,
    require_safe_torch,
    trust_hint,
    untrusted_files_supported,
    untrusted_load_arguments,
)

__all__ = [
    "ALLOWED_POLICY_OBJECTS",
    "FOREIGN_SIGNATURES",
    "MAX_COMPRESSION_RATIO",
    "MAX_SAVE_BYTES",
    "MAX_SAVE_MEMBERS",
    "NEVER_SAVED",
    "NPG_KEYS",
    "RATIO_CHECKED_ABOVE",
    "SAFE_TORCH_VERSION",
    "SERIALIZED",
    "TORCH_ADVISORIES",
    "SaveFile",
    "UnsafeTorchError",
    "UntrustedLoadError",
    "atomic_save_file",
    "check_saved_by_npg",
    "check_state_dict",
    "checked_members",
    "existing_save_file",
    "is_pickled",
    "load_tensors",
    "loads_recurrent_policies",
    "optimizer_state_fits",
    "read_parameters",
    "read_save_file",
    "require_safe_torch",
    "save_target",
    "saved_algorithm",
    "saved_policy_is_recurrent",
    "trust_hint",
    "untrusted_files_supported",
    "untrusted_load_arguments",
    "zip_bytes",
]
