"""
``python -m sb3_npg.load_from_hub``: RL Zoo's ``load_from_hub`` with NPG registered.

Downloads ``<organization>/npg-<env>`` into the Zoo's log layout, ready for ``python -m sb3_npg.enjoy``, e.g.
``python -m sb3_npg.load_from_hub --env CartPole-v1 -orga <user> -f logs``.
"""

import sys

from sb3_npg.zoo import ALGO_NAME, run_zoo_script


def main(argv: list[str] | None = None) -> int:
    """
    Download a trained agent from the Hub.

    :param argv: command line arguments (``None``: ``sys.argv[1:]``)
    :return: exit status
    """
    defaults = {"--algo": ["--algo", ALGO_NAME]}
    return run_zoo_script("python -m sb3_npg.load_from_hub", "rl_zoo3.load_from_hub", None, argv, defaults)


if __name__ == "__main__":
    sys.exit(main())
