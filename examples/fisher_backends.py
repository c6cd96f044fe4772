"""
The three Fisher backends side by side: same env, same seed, same hyperparameters.

``fisher=`` picks how NPG computes Fisher-vector products ``F v`` for the conjugate-gradient solve:

- ``"gauss_newton"`` (default): ``F = Jᵀ M J`` with the analytic Fisher ``M`` of the action distribution;
  no second-order graph, the fastest;
- ``"hessian"``: the Hessian of the KL by double backpropagation (what sb3-contrib's TRPO does); the
  same matrix as ``gauss_newton`` at θ_old, so the first update's ``xFx`` matches it;
- ``"empirical"``: the seed article's ``E[∇log π ∇log πᵀ]`` over the sampled actions (an estimate of F;
  solved exactly with the Woodbury identity when the batch is smaller than the number of parameters).

For each backend this trains NPG, times ``train()`` (the update: gradient, solve, step, critic), and
prints the first update's ``xFx`` and step size, the mean measured KL over ``target_kl`` and the final return.

Run: ``python examples/fisher_backends.py`` (``SB3_NPG_EXAMPLE_QUICK=1`` for a smoke run).
"""

import os
import time

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_npg import NPG

QUICK = os.environ.get("SB3_NPG_EXAMPLE_QUICK") == "1"
ENV_ID = "Acrobot-v1"
BACKENDS = ("gauss_newton", "hessian", "empirical")


class UpdateStats(BaseCallback):
    """Wall time of each ``train()`` (from the end of a rollout to the start of the next) and its logged values."""

    def __init__(self) -> None:
        super().__init__()
        self.train_times: list[float] = []
        self.updates: list[dict[str, float]] = []
        self._rollout_end = 0.0

    def _on_rollout_end(self) -> None:
        self._rollout_end = time.perf_counter()

    def _on_rollout_start(self) -> None:
        if self._rollout_end:
            self._record()

    def _on_training_end(self) -> None:
        self._record()

    def _record(self) -> None:
        self.train_times.append(time.perf_counter() - self._rollout_end)
        values = self.logger.name_to_value
        self.updates.append({key: values[f"train/{key}"] for key in ("xFx", "step_size", "kl_divergence")})

    def _on_step(self) -> bool:
        return True


if __name__ == "__main__":
    th.set_num_threads(1)  # timings are comparable on one thread
    print(f"{ENV_ID}, seed 0 | {'backend':>12} | ms/update | first xFx | first step | KL/target | final return")
    for backend in BACKENDS:
        model = NPG("MlpPolicy", ENV_ID, n_steps=1024, target_kl=0.01, fisher=backend, seed=0)
        stats = UpdateStats()
        model.learn(total_timesteps=1_024 if QUICK else 50_000, callback=stats)
        mean_return, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=2 if QUICK else 10)
        first = stats.updates[0]
        kl_ratio = np.mean([u["kl_divergence"] for u in stats.updates]) / model.target_kl
        print(
            f"{'':>18} | {backend:>12} | {1000 * np.median(stats.train_times):9.1f} | {first['xFx']:9.5f} "
            f"| {first['step_size']:10.4f} | {kl_ratio:9.2f} | {mean_return:12.1f}"
        )
