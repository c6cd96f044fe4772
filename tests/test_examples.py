"""Every script in ``examples/`` runs to completion with a tiny budget (``SB3_NPG_EXAMPLE_QUICK=1``)."""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_examples_found() -> None:
    names = {path.stem for path in EXAMPLES}
    expected = {
        "quickstart",
        "continuous_vecnormalize",
        "save_load_continue",
        "step_size_callback",
        "rl_zoo",
        "fisher_backends",
        "maskable",
        "recurrent",
        "maskable_recurrent",
    }
    assert expected <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_runs(example: pathlib.Path, tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "SB3_NPG_EXAMPLE_QUICK": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    completed = subprocess.run(
        [sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, f"{example.name} failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
