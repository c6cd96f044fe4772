"""
``python -m sb3_npg.push_to_hub``: RL Zoo's ``push_to_hub`` (evaluate, package and upload to the Hugging Face Hub).

Run as ``__main__`` (RL Zoo builds its parser there) with NPG registered; default ``--algo npg``. Needs
``huggingface-cli login`` first, e.g.
``python -m sb3_npg.push_to_hub --env CartPole-v1 -f logs -orga <user> -m "NPG CartPole"``.
"""

import sys

from sb3_npg.zoo import ALGO_NAME, hub_compatibility, run_zoo_script


def main(argv: list[str] | None = None) -> int:
    """
    Package a trained agent and push it to the Hub.

    :param argv: command line arguments (``None``: ``sys.argv[1:]``)
    :return: exit status
    """
    defaults = {"--algo": ["--algo", ALGO_NAME]}
    hub_compatibility()
    return run_zoo_script("python -m sb3_npg.push_to_hub", "rl_zoo3.push_to_hub", None, argv, defaults)


if __name__ == "__main__":
    sys.exit(main())
