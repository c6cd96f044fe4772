"""
Saved models: what ``NPG.save``, ``NPG.load`` and ``NPG.set_parameters`` need beyond SB3's ``save_util``, in three
modules: :mod:`~sb3_npg.save_load.archive` (the zip, its limits, atomic saves), :mod:`~sb3_npg.save_load.untrusted`
(loading without unpickling, the torch version it needs) and :mod:`~sb3_npg.save_load.parameters` (``set_parameters``'
checks). The version requirement, the limits and the errors are importable from ``sb3_npg.save_load`` itself (SECURITY.md
names them there).

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
  before any is copied into it, with a :class:`ParameterMismatchError` (a ``RuntimeError`` as torch's, and a
  ``ValueError``).

The limits on a save file (member count and names, stated sizes, compression ratio) are in
:mod:`~sb3_npg.save_load.archive`.
"""

from sb3_npg.save_load.archive import (
    MAX_COMPRESSION_RATIO,
    MAX_SAVE_BYTES,
    MAX_SAVE_MEMBERS,
    RATIO_CHECKED_ABOVE,
    UntrustedLoadError,
)
from sb3_npg.save_load.parameters import ParameterMismatchError
from sb3_npg.save_load.untrusted import (
    SAFE_TORCH_VERSION,
    TORCH_ADVISORIES,
    UnsafeTorchError,
    require_safe_torch,
    untrusted_files_supported,
)

__all__ = [
    "MAX_COMPRESSION_RATIO",
    "MAX_SAVE_BYTES",
    "MAX_SAVE_MEMBERS",
    "RATIO_CHECKED_ABOVE",
    "SAFE_TORCH_VERSION",
    "TORCH_ADVISORIES",
    "ParameterMismatchError",
    "UnsafeTorchError",
    "UntrustedLoadError",
    "require_safe_torch",
    "untrusted_files_supported",
]
