"""
A callback that logs NPG's step size and the KL each update actually moved the policy by.

NPG records ``train/step_size`` (the scale ``sqrt(2 target_kl / x^T F x)``) and ``train/kl_divergence``
(the mean KL between the policies before and after the step, measured) inside ``train()``. A callback
sees them in ``self.logger.name_to_value`` from the next ``_on_rollout_start`` (``train()`` runs between
two rollouts) and in ``_on_training_end`` for the last update. This one keeps their history, logs the
ratio KL / target_kl under ``npg/kl_ratio`` (stdout, tensorboard, CSV, ... like any other key) and
prints a summary.

Run: ``python examples/step_size_callback.py`` (``SB3_NPG_EXAMPLE_QUICK=1`` for a smoke run).
"""

import os

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from sb3_npg import NPG

QUICK = os.environ.get("SB3_NPG_EXAMPLE_QUICK") == "1"


class StepSizeCallback(BaseCallback):
    """Collects ``train/step_size`` and ``train/kl_divergence`` after every NPG update."""

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.step_sizes: list[float] = []
        self.kls: list[float] = []
        self._last_update = 0

    def _read_update(self) -> None:
        values = self.logger.name_to_value
        n_updates = self.model._n_updates
        if n_updates == self._last_update or "train/step_size" not in values:
            return  # no new update since the last read (e.g. before the first train())
        self._last_update = n_updates
        self.step_sizes.append(values["train/step_size"])
        self.kls.append(values["train/kl_divergence"])
        self.logger.record("npg/kl_ratio", self.kls[-1] / self.model.target_kl)
        if self.verbose:
            print(f"update {n_updates:3d}: step size {self.step_sizes[-1]:8.4f}   KL {self.kls[-1]:.5f}")

    def _on_rollout_start(self) -> None:
        self._read_update()

    def _on_training_end(self) -> None:
        self._read_update()

    def _on_step(self) -> bool:
        return True


if __name__ == "__main__":
    model = NPG("MlpPolicy", "CartPole-v1", n_steps=512, target_kl=0.01, seed=0)
    callback = StepSizeCallback(verbose=1)
    model.learn(total_timesteps=2_048 if QUICK else 30_000, callback=callback)
    kl = np.array(callback.kls)
    ratio = kl / model.target_kl
    print(f"{len(kl)} updates; measured KL / target_kl: mean {ratio.mean():.2f}, max {ratio.max():.2f}")
    print(f"step size went from {callback.step_sizes[0]:.3f} to {callback.step_sizes[-1]:.3f}")
