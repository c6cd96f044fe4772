"""
What RL Zoo knows sb3_npg's algorithms by: their Zoo names (:data:`ALGORITHMS`), their shipped hyperparameter files
(:data:`HYPERPARAMS_PATHS`) and the check that the ``zoo`` extra is installed (:func:`require_zoo`).
"""

from pathlib import Path

from sb3_npg.npg import NPG
from sb3_npg.recurrent import RecurrentNPG

ALGO_NAME = "npg"
"""The algorithm's name in RL Zoo (``--algo npg``)."""

RECURRENT_ALGO_NAME = "npg_lstm"
"""RecurrentNPG's name in RL Zoo (``--algo npg_lstm``), as RecurrentPPO is ``ppo_lstm``."""

ALGORITHMS: dict[str, type[NPG]] = {ALGO_NAME: NPG, RECURRENT_ALGO_NAME: RecurrentNPG}
"""Every algorithm :func:`register` adds to RL Zoo, by its Zoo name."""

HYPERPARAMS_PATH = Path(__file__).parents[1] / "hyperparams" / "npg.yml"
"""The shipped hyperparameters, used when no ``--conf-file`` is given."""

HYPERPARAMS_PATHS: dict[str, Path] = {
    ALGO_NAME: HYPERPARAMS_PATH,
    RECURRENT_ALGO_NAME: Path(__file__).parents[1] / "hyperparams" / "npg_lstm.yml",
}
"""The shipped hyperparameter file of each algorithm of :data:`ALGORITHMS`."""

INSTALL_HINT = 'RL Zoo support needs the "zoo" extra: pip install -e ".[zoo]" (or pip install "sb3_npg[zoo]")'


def require_zoo() -> None:
    """Import ``rl_zoo3`` and ``optuna``, or raise an ``ImportError`` that says how to install them."""
    try:
        import optuna  # noqa: F401
        import rl_zoo3  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
