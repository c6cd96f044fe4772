"""
Whole-run equivalence: NPG with TRPO's settings (``sb3_npg.trpo_to_npg_kwargs``) beside sb3-contrib's TRPO, both
built from the RL Zoo's TRPO entry for the env (its ``-v4`` entry on ``-v5``, with ``VecNormalize`` as the Zoo's
``normalize: true``), from one seed, rollout after rollout.

TRPO's conjugate gradient starts from ``1e-4 * randn`` (a draw from torch's generator) where NPG's starts from 0;
here it starts from 0 too (``torch.randn_like`` returns zeros while TRPO trains), so that both draw the same random
numbers: the action noise of every rollout, and numpy's permutations of the critic's minibatches. What is left
between them is float rounding (another CG code, the KL's direction, float32 sums in another order), which MuJoCo's
dynamics amplify. Per rollout: the largest difference of the (normalised) observations and the mean training return
of the episodes that ended in it; per update: TRPO's line search (full step or not) and the relative differences of
the logged value loss and policy std. Usage::

    python benchmarks/trpo_equivalence.py                          # Hopper-v5 and Walker2d-v5, seeds 0 and 1, 30 updates
    python benchmarks/trpo_equivalence.py --envs Hopper-v5 --seeds 0 --updates 10 --output trpo_equivalence_quick

Writes ``results/<output>.json`` and ``.md`` (default ``trpo_equivalence``).
"""

import argparse
import datetime
from typing import Any

import numpy as np
import torch as th
import yaml
from common import machine, machine_line, markdown_table, write_record
from sb3_contrib import TRPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from sb3_npg import NPG, trpo_to_npg_kwargs
from sb3_npg.zoo.from_trpo import trpo_hyperparams_path, zoo_entry

#: Keys of a Zoo entry that set up the run, not TRPO's constructor
ZOO_RUN_KEYS = ("normalize", "n_envs", "n_timesteps", "policy")


class Trace(BaseCallback):
    """Each rollout's observations and finished-episode returns, and the logs of each update, as they happen."""

    def __init__(self) -> None:
        super().__init__()
        self.observations: list[np.ndarray] = []
        self.returns: list[float] = []
        self.logs: list[dict[str, Any]] = []
        self._episode_returns: list[float] = []

    def _on_step(self) -> bool:
        self._episode_returns += [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
        return True

    def _on_rollout_start(self) -> None:
        if self.model._n_updates > len(self.logs):
            self.logs.append(dict(self.model.logger.name_to_value))

    def _on_rollout_end(self) -> None:
        self.observations.append(self.model.rollout_buffer.observations.copy())
        self.returns.append(float(np.mean(self._episode_returns)) if self._episode_returns else float("nan"))
        self._episode_returns = []


def trpo_entry(env_id: str) -> dict[str, Any]:
    """The RL Zoo's TRPO entry used for ``env_id``."""
    found = zoo_entry(yaml.safe_load(trpo_hyperparams_path().read_text()), env_id)
    if found is None:
        raise KeyError(f"RL Zoo's trpo.yml has no entry for {env_id}")
    return dict(found[1])


def train(algorithm: str, env_id: str, entry: dict[str, Any], seed: int, n_updates: int) -> Trace:
    """Train TRPO (its CG started at 0) or NPG with TRPO's settings from ``entry``, ``n_updates`` updates."""
    env = make_vec_env(env_id, n_envs=entry.get("n_envs", 1), seed=seed)
    if entry.get("normalize"):
        env = VecNormalize(env, gamma=entry.get("gamma", 0.99))
    kwargs = {key: value for key, value in entry.items() if key not in ZOO_RUN_KEYS}
    trace = Trace()
    steps = n_updates * kwargs["n_steps"] * env.num_envs
    if algorithm == "trpo":
        model: TRPO | NPG = TRPO(entry["policy"], env, seed=seed, **kwargs)
        randn_like = th.randn_like
        th.randn_like = lambda tensor, **_: th.zeros_like(tensor)  # type: ignore[assignment]
        try:
            model.learn(steps, callback=trace)
        finally:
            th.randn_like = randn_like
    else:
        model = NPG(env=env, **trpo_to_npg_kwargs({"policy": entry["policy"], "seed": seed, **kwargs}, env.action_space))
        model.learn(steps, callback=trace)
    trace.logs.append(dict(model.logger.name_to_value))  # the last update's
    return trace


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def compare(env_id: str, seed: int, n_updates: int) -> dict[str, Any]:
    entry = trpo_entry(env_id)
    trpo, npg = train("trpo", env_id, entry, seed, n_updates), train("npg", env_id, entry, seed, n_updates)
    rollouts = [
        {
            "rollout": k + 1,
            "max_observation_difference": float(np.abs(a - b).max()),
            "trpo_return": trpo.returns[k],
            "npg_return": npg.returns[k],
        }
        for k, (a, b) in enumerate(zip(trpo.observations, npg.observations, strict=True))
    ]
    updates = [
        {
            "update": k + 1,
            "trpo_full_step": bool(t["train/is_line_search_success"] == 1.0),
            "value_loss_relative_difference": relative(n["train/value_loss"], t["train/value_loss"]),
            "std_relative_difference": relative(n["train/std"], t["train/std"]) if "train/std" in t else None,
        }
        for k, (t, n) in enumerate(zip(trpo.logs, npg.logs, strict=True))
    ]
    return {"env": env_id, "seed": seed, "trpo_entry": entry, "rollouts": rollouts, "updates": updates}


def first_apart(rollouts: list[dict[str, Any]], threshold: float) -> int | None:
    """The first rollout whose observations differ by more than ``threshold``, or ``None``."""
    return next((r["rollout"] for r in rollouts if r["max_observation_difference"] > threshold), None)


def markdown(runs: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Whole-run equivalence: NPG with TRPO's settings beside TRPO",
        "",
        f"Command: `{command}`. Date: {datetime.date.today().isoformat()}. Machine: {machine_line()}.",
        "",
        "Both from the RL Zoo's TRPO entry (VecNormalize, 2 envs), one seed; TRPO's CG started at 0 as NPG's.",
        "",
    ]
    summary = []
    for run in runs:
        rollouts, updates = run["rollouts"], run["updates"]
        full = sum(u["trpo_full_step"] for u in updates)
        summary.append(
            [
                run["env"],
                run["seed"],
                len(updates),
                f"{full} / {len(updates)}",
                first_apart(rollouts, 1e-3) or "none",
                first_apart(rollouts, 0.1) or "none",
                f"{max(r['max_observation_difference'] for r in rollouts[:8]):.1e}",
            ]
        )
    header = [
        "env",
        "seed",
        "updates",
        "TRPO full steps",
        "first rollout apart > 1e-3",
        "first rollout apart > 0.1",
        "max obs. difference, rollouts 1-8",
    ]
    lines += markdown_table(header, summary)
    for run in runs:
        lines += ["", f"## {run['env']}, seed {run['seed']}", ""]
        rows = [
            [
                r["rollout"],
                f"{r['max_observation_difference']:.2e}",
                f"{r['trpo_return']:.1f}",
                f"{r['npg_return']:.1f}",
            ]
            for r in run["rollouts"]
        ]
        lines += markdown_table(["rollout", "max obs. difference", "TRPO training return", "NPG training return"], rows)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["Hopper-v5", "Walker2d-v5"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--output", default="trpo_equivalence")
    args = parser.parse_args()
    th.set_num_threads(1)
    runs = [compare(env_id, seed, args.updates) for env_id in args.envs for seed in args.seeds]
    command = "python benchmarks/trpo_equivalence.py" + (
        f" --envs {' '.join(args.envs)} --seeds {' '.join(map(str, args.seeds))} --updates {args.updates}"
    )
    text = markdown(runs, command)
    write_record(args.output, {"machine": machine(), "command": command, "runs": runs}, text)
    print(text)


if __name__ == "__main__":
    main()
