"""Pytest configuration: one torch thread per test process (the machine is shared), and shared fixtures."""

import pytest
import torch as th

th.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep torch on one thread even if a test or library changed it."""
    th.set_num_threads(1)
