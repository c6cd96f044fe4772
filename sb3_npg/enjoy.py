"""
``python -m sb3_npg.enjoy`` / ``sb3-npg-enjoy``: RL Zoo's ``enjoy`` (watch or evaluate a trained agent) with NPG.

Every ``rl_zoo3.enjoy`` option works; the defaults differ: ``--algo npg`` and ``-f logs`` (the folder
``python -m sb3_npg.train`` writes to), e.g. ``python -m sb3_npg.enjoy --env CartPole-v1 --no-render -n 5000``.

The agent's files are read without running their code (a downloaded agent is a stranger's code otherwise):
the model with ``NPG.load(..., trusted=False)``, ``config.yml``/``args.yml``/``vecnormalize.pkl`` checked first
(:mod:`sb3_npg.zoo.trust`). ``--trusted`` loads them as rl_zoo3 does (unpickling, unsafe YAML), for agents you trust.
"""

import contextlib
import sys

from sb3_npg.zoo import ALGO_NAME, run_zoo_script
from sb3_npg.zoo.trust import split_trusted_flag, untrusted_zoo_files


def main(argv: list[str] | None = None) -> int:
    """
    Load the latest (or ``--exp-id``) trained agent and run it.

    :param argv: command line arguments (``None``: ``sys.argv[1:]``)
    :return: exit status (0, or 1 as ``rl_zoo3 enjoy`` when the model or its folder is not found or is refused)
    """
    defaults = {"--algo": ["--algo", ALGO_NAME], "-f,--folder": ["-f", "logs"]}
    argv, trusted = split_trusted_flag(argv)
    with contextlib.nullcontext() if trusted else untrusted_zoo_files():
        return run_zoo_script("python -m sb3_npg.enjoy", "rl_zoo3.enjoy", "enjoy", argv, defaults)


if __name__ == "__main__":
    sys.exit(main())
