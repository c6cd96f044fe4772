"""
``python -m sb3_npg.train`` / ``sb3-npg-train``: RL Zoo's own ``train`` with NPG registered.

Every ``rl_zoo3.train`` option works (``-n``, ``--seed``, ``-f``, ``--eval-freq``, ``-optimize``,
``--storage``, ``--study-name``, ``--trial-id``, ``--hyperparams``, ...). The defaults differ in two places:
``--algo`` is ``npg``, and without ``--conf-file`` the shipped ``sb3_npg/hyperparams/npg.yml`` is used
(``sb3_npg/hyperparams/npg_lstm.yml`` for ``--algo npg_lstm``, RecurrentNPG).
"""

import sys

from sb3_npg.zoo import ALGO_NAME, HYPERPARAMS_PATHS, algo_of, run_zoo_script


def main(argv: list[str] | None = None) -> int:
    """
    Train (or tune) an agent with RL Zoo.

    :param argv: command line arguments (``None``: ``sys.argv[1:]``)
    :return: exit status (0, or 2 for a bad command line or hyperparameter file)
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = {"--algo": ["--algo", ALGO_NAME]}
    if algo_of(argv) in HYPERPARAMS_PATHS:
        defaults["-conf,--conf-file"] = ["--conf-file", str(HYPERPARAMS_PATHS[algo_of(argv)])]
    return run_zoo_script("python -m sb3_npg.train", "rl_zoo3.train", "train", argv, defaults)


if __name__ == "__main__":
    sys.exit(main())
