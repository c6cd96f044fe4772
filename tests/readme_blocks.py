"""The README's Python code blocks, with their training budgets shortened, run one by one in fresh processes.

Used by ``tests/test_readme.py`` (in the test environment) and run as a script by ``.ci/run`` in a virtualenv
installed exactly as the README's install command says (``python tests/readme_blocks.py``), where pytest is not
installed: this module imports nothing beyond the standard library.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SHORT_BUDGET = 256
# `learn(20_000` / `learn(total_timesteps=100_000` and `n_eval_episodes=10`: the numbers that make a block slow
_BUDGET = re.compile(r"(\.learn\((?:total_timesteps=)?)[0-9_]+")
_EPISODES = re.compile(r"(n_eval_episodes=)[0-9_]+")


def python_blocks(text: str) -> list[str]:
    """The contents of the ```` ```python ```` fences of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def shorten(code: str) -> str:
    """``code`` with every ``learn()`` budget set to ``SHORT_BUDGET`` steps and every evaluation to 2 episodes."""
    return _EPISODES.sub(r"\g<1>2", _BUDGET.sub(rf"\g<1>{SHORT_BUDGET}", code))


def learn_budgets(code: str) -> list[int]:
    """The number of steps of every ``learn(...)`` call written with a literal budget."""
    return [int(number.replace("_", "")) for number in re.findall(r"\.learn\((?:total_timesteps=)?([0-9_]+)", code)]


def run_block(code: str, workdir: pathlib.Path, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run ``shorten(code)`` in a new Python process in ``workdir`` (one torch thread, as the tests run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-c", shorten(code)], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )


def main() -> int:
    blocks = python_blocks(README.read_text())
    if not blocks:
        print("README.md has no python block")
        return 1
    failed = 0
    for index, code in enumerate(blocks):
        with tempfile.TemporaryDirectory() as workdir:
            completed = run_block(code, pathlib.Path(workdir))
        status = "ok" if completed.returncode == 0 else "FAILED"
        print(f"README python block {index + 1}/{len(blocks)}: {status}")
        if completed.returncode != 0:
            failed += 1
            print(code, completed.stdout[-2000:], completed.stderr[-4000:], sep="\n")
    print(f"{len(blocks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
