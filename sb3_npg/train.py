"""
``python -m sb3_npg.train`` / ``sb3-npg-train``: RL Zoo's own ``train`` with NPG registered.

Every ``rl_zoo3.train`` option works (``-n``, ``--seed``, ``-f``, ``--eval-freq``, ``-optimize``,
``--storage``, ``--study-name``, ``--trial-id``, ``--hyperparams``, ...). The defaults differ in two places:
``--algo`` is ``npg``, and without ``--conf-file`` the shipped ``sb3_npg/hyperparams/npg.yml`` is used
(``sb3_npg/hyperparams/npg_lstm.yml`` for ``--algo npg_lstm``, RecurrentNPG).

One option is added, :data:`TRPO_FLAG` (``--trpo-hyperparams``): NPG is trained from a TRPO entry, by default RL
Zoo's own ``trpo.yml`` (``--conf-file`` names another TRPO file), converted by :func:`sb3_npg.trpo_to_npg_kwargs`
so that each update is TRPO's full step (see :func:`sb3_npg.zoo.reading_trpo_hyperparameters`).
"""

import sys

from sb3_npg.zoo import (
    ALGO_NAME,
    HYPERPARAMS_PATHS,
    algo_of,
    reading_trpo_hyperparameters,
    run_zoo_script,
    trpo_hyperparams_path,
)

PROG = "python -m sb3_npg.train"

TRPO_FLAG = "--trpo-hyperparams"
"""Train NPG from the hyperparameter file's TRPO entry (RL Zoo's ``trpo.yml`` unless ``--conf-file`` is given)."""

TRPO_FLAG_HELP = (
    f"{TRPO_FLAG}: train NPG from a TRPO entry (RL Zoo's trpo.yml, or --conf-file), converted so that each update is "
    "TRPO's full step; --hyperparams overrides apply to the converted values"
)


def main(argv: list[str] | None = None) -> int:
    """
    Train (or tune) an agent with RL Zoo.

    :param argv: command line arguments (``None``: ``sys.argv[1:]``)
    :return: exit status: 0; 1 for an error while RL Zoo trains, as ``rl_zoo3 train`` (a bad hyperparameter file, an
        env without an entry); 2 for a bad command line
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    from_trpo = TRPO_FLAG in argv
    argv = [arg for arg in argv if arg != TRPO_FLAG]
    if from_trpo and algo_of(argv) != ALGO_NAME:
        print(f"{PROG}: error: {TRPO_FLAG} trains NPG (--algo {ALGO_NAME}), not --algo {algo_of(argv)}", file=sys.stderr)
        return 2
    if {"-h", "--help"} & set(argv):
        print(f"{PROG} adds one option to RL Zoo's train: {TRPO_FLAG_HELP}\n")
    defaults = {"--algo": ["--algo", ALGO_NAME]}
    if from_trpo:
        defaults["-conf,--conf-file"] = ["--conf-file", str(trpo_hyperparams_path())]
    elif algo_of(argv) in HYPERPARAMS_PATHS:
        defaults["-conf,--conf-file"] = ["--conf-file", str(HYPERPARAMS_PATHS[algo_of(argv)])]
    with reading_trpo_hyperparameters(from_trpo):
        return run_zoo_script(PROG, "rl_zoo3.train", "train", argv, defaults)


if __name__ == "__main__":
    sys.exit(main())
