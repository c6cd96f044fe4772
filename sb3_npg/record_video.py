"""
``python -m sb3_npg.record_video``: RL Zoo's ``record_video`` with NPG registered.

RL Zoo builds that script's parser under ``if __name__ == "__main__"`` only, so it is run as ``__main__``.
Defaults: ``--algo npg``, ``-f logs``; e.g.
``python -m sb3_npg.record_video --env CartPole-v1 -n 1000 -o videos/``.
As for ``sb3_npg.enjoy``, the agent's files are read without running their code unless ``--trusted`` is given.
"""

import contextlib
import sys

from sb3_npg.zoo import ALGO_NAME, run_zoo_script
from sb3_npg.zoo.trust import split_trusted_flag, untrusted_zoo_files


def main(argv: list[str] | None = None) -> int:
    """
    Record a video of a trained agent.

    :param argv: command line arguments (``None``: ``sys.argv[1:]``)
    :return: exit status
    """
    defaults = {"--algo": ["--algo", ALGO_NAME], "-f,--folder": ["-f", "logs"]}
    argv, trusted = split_trusted_flag(argv)
    with contextlib.nullcontext() if trusted else untrusted_zoo_files():
        return run_zoo_script("python -m sb3_npg.record_video", "rl_zoo3.record_video", None, argv, defaults)


if __name__ == "__main__":
    sys.exit(main())
