"""
Checkpoints that can be resumed: ``--save-freq`` checkpoints saved with their ``VecNormalize`` statistics
(:class:`CheckpointWithStatistics`), and those statistics restored when ``-i <checkpoint>`` resumes
(:func:`restore_checkpoint_statistics`).
"""

import os
import re
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import CheckpointCallback

_CHECKPOINT_NAME = re.compile(r"^(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip$")


def checkpoint_statistics_path(checkpoint: str | Path) -> Path | None:
    """
    Where the ``VecNormalize`` statistics of a checkpoint are saved (SB3's ``CheckpointCallback`` naming).

    :param checkpoint: a model checkpoint, ``<folder>/<prefix>_<steps>_steps.zip``
    :return: ``<folder>/<prefix>_vecnormalize_<steps>_steps.pkl``, or ``None`` if ``checkpoint`` is not named
        like a checkpoint (a final or best model: RL Zoo pairs those with ``<env>/vecnormalize.pkl`` itself)
    """
    path = Path(checkpoint)
    match = _CHECKPOINT_NAME.match(path.name)
    if match is None:
        return None
    return path.with_name(f"{match['prefix']}_vecnormalize_{match['steps']}_steps.pkl")


def _checkpoints_with_statistics(folder: Path) -> list[str]:
    """The checkpoints in ``folder`` that have their statistics beside them, oldest first."""
    found = []
    for checkpoint in folder.glob("*_steps.zip"):
        statistics = checkpoint_statistics_path(checkpoint)
        if statistics is not None and statistics.is_file():
            found.append((int(_CHECKPOINT_NAME.match(checkpoint.name)["steps"]), checkpoint.name))  # type: ignore[index]
    return [name for _, name in sorted(found)]


class CheckpointWithStatistics(CheckpointCallback):
    """
    SB3's ``CheckpointCallback`` that saves the ``VecNormalize`` statistics *before* the model.

    A checkpoint ``<prefix>_<steps>_steps.zip`` then always has its ``<prefix>_vecnormalize_<steps>_steps.pkl``,
    even when the run is killed while saving (SB3 writes them after the model). Without ``VecNormalize`` it
    saves the model only.
    """

    def _on_step(self) -> bool:
        vec_normalize = self.model.get_vec_normalize_env()
        if self.n_calls % self.save_freq == 0 and vec_normalize is not None:
            checkpoint = os.path.join(self.save_path, f"{self.name_prefix}_{self.num_timesteps}_steps.zip")
            vec_normalize.save(str(checkpoint_statistics_path(checkpoint)))
        return super()._on_step()


def restore_checkpoint_statistics(env: Any, checkpoint: str | Path) -> None:
    """
    Give ``env``'s ``VecNormalize`` the statistics saved with ``checkpoint``.

    Does nothing when ``env`` is not normalized or ``checkpoint`` is not named like a checkpoint.

    :param env: a ``VecEnv``, possibly wrapped
    :param checkpoint: the model checkpoint being resumed (``<prefix>_<steps>_steps.zip``)
    :raises FileNotFoundError: the checkpoint's statistics are missing (the message lists the checkpoints
        of its folder that have them)
    """
    from stable_baselines3.common.vec_env import VecNormalize, unwrap_vec_normalize

    vec_normalize = unwrap_vec_normalize(env)
    statistics = checkpoint_statistics_path(checkpoint)
    if vec_normalize is None or statistics is None:
        return
    if not statistics.is_file():
        resumable = _checkpoints_with_statistics(statistics.parent)
        hint = f"resume from one that has them ({', '.join(resumable)})" if resumable else "no checkpoint there has them"
        raise FileNotFoundError(
            f"{checkpoint} has no VecNormalize statistics beside it ({statistics.name} is missing; "
            f"the run saved none or was killed while saving): {hint}"
        )
    print(f"Loading the checkpoint's VecNormalize statistics from {statistics}")
    saved = VecNormalize.load(str(statistics), vec_normalize.venv)
    vec_normalize.obs_rms = saved.obs_rms
    vec_normalize.ret_rms = saved.ret_rms
