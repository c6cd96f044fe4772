"""Pytest configuration: torch runs on one thread in every test process (the 2-core machine is shared)."""

import pytest
import torch as th

th.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep torch on one thread even if a test or a library changed it."""
    th.set_num_threads(1)
