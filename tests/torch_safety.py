"""
Which untrusted-file tests run on the installed torch: on a torch below ``SAFE_TORCH_VERSION`` (2.10) the untrusted
paths refuse, so the tests of the safe path are skipped and those of the refusal run (and the other way round).
"""

import pytest
import torch as th

from sb3_npg.save_load import SAFE_TORCH_VERSION, untrusted_files_supported

SAFE_TORCH = untrusted_files_supported()
"""Whether the installed torch runs the untrusted paths (``load(trusted=False)``, ``set_parameters``, safe enjoy)."""

needs_safe_torch = pytest.mark.skipif(
    not SAFE_TORCH,
    reason=f"torch {th.__version__} < {SAFE_TORCH_VERSION}: the untrusted paths refuse (the *_below_safe_torch tests)",
)
below_safe_torch = pytest.mark.skipif(
    SAFE_TORCH, reason=f"torch {th.__version__} >= {SAFE_TORCH_VERSION}: the untrusted paths run (tested by the other tests)"
)

TRUSTED_MODES = (True, False) if SAFE_TORCH else (True,)
"""The ``trusted`` values ``load`` reads a file with on the installed torch (below the safe torch, ``trusted=False``
refuses: the *_below_safe_torch tests)."""

UNTRUSTED_LOAD = pytest.param(False, marks=needs_safe_torch)
"""``trusted=False`` as a parameter of a load test: skipped below the safe torch, where the refusal is tested instead."""

OWN_AGENT_FLAGS = [] if SAFE_TORCH else ["--trusted"]
"""Flags for enjoy on an agent a test trained itself: below the safe torch the safe path refuses, the agent is trusted."""
