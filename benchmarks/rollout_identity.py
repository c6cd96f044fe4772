"""
Does NPG's rollout fast path train exactly as SB3's ``collect_rollouts`` does, over a whole training run?

``tests/test_rollout.py`` checks it on toy environments for two rollouts. This script checks it at the scale of the
reward benchmark: for each env and seed, NPG is trained twice from the same seed with the shipped ``npg.yml`` entry
(``VecNormalize`` where the entry normalises), once with its fast rollout path and once with SB3's
``OnPolicyAlgorithm.collect_rollouts``, and the two runs are compared bit for bit: every policy parameter, the
``VecNormalize`` statistics, the training episodes' returns and lengths, and the timestep count. The runs are not
evaluated: if they are identical, any reward measured with one path is the reward of the other. Entries whose
policy takes the numpy pass of diagonal Gaussian MLPs (a ``Box`` action space without gSDE: the MuJoCo entries,
LunarLanderContinuous-v3, BipedalWalker-v3) are not expected to be identical: that pass matches SB3's to float32
rounding only (docs/performance.md); the default envs do not take it.

Usage::

    python benchmarks/rollout_identity.py       # CartPole-v1, Pendulum-v1, Acrobot-v1, seed 0, 1e5 steps
    python benchmarks/rollout_identity.py --envs CartPole-v1 --seeds 0 1 -n 20000

Results go to ``benchmarks/results/rollout_identity.json`` and ``.md`` (``--output`` changes the file name stem).
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch as th
from common import (
    SHIPPED_HYPERPARAMS,
    NPGWithSB3Rollout,
    entry_model,
    machine_line,
    markdown_table,
    npg_entries,
    npg_entry,
    write_record,
)
from stable_baselines3.common.vec_env import VecNormalize

from sb3_npg import NPG
from sb3_npg.fast.lean_forward import LeanForward

DEFAULT_ENVS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1")


def train(model_class: type[NPG], env_id: str, seed: int, n_timesteps: int) -> tuple[NPG, float]:
    """:return: a model trained with the env's ``npg.yml`` entry (``common.entry_model``), and the seconds ``learn`` took"""
    model = entry_model(env_id, npg_entry(env_id), seed, model_class)
    start = time.perf_counter()
    model.learn(n_timesteps)
    return model, time.perf_counter() - start


def compare(fast: NPG, sb3: NPG) -> dict[str, bool]:
    """Which parts of the two trained models are bit-identical."""
    same = {
        "parameters": all(th.equal(a, b) for a, b in zip(fast.policy.parameters(), sb3.policy.parameters(), strict=True)),
        "timesteps": fast.num_timesteps == sb3.num_timesteps,
        "episodes": [(info["r"], info["l"]) for info in fast.ep_info_buffer]
        == [(info["r"], info["l"]) for info in sb3.ep_info_buffer],
    }
    fast_env, sb3_env = fast.get_env(), sb3.get_env()
    if isinstance(fast_env, VecNormalize) and isinstance(sb3_env, VecNormalize):
        same["normalization"] = all(
            np.array_equal(getattr(fast_env.obs_rms, name), getattr(sb3_env.obs_rms, name)) for name in ("mean", "var")
        ) and np.array_equal(fast_env.ret_rms.var, sb3_env.ret_rms.var)
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), help="env ids with an npg.yml entry")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("-n", "--n-timesteps", type=int, default=100_000)
    parser.add_argument("--output", default="rollout_identity", help="file name stem under benchmarks/results/")
    args = parser.parse_args()
    if args.n_timesteps < 1:
        raise ValueError(f"--n-timesteps must be >= 1, got {args.n_timesteps}")
    unknown = [env_id for env_id in args.envs if env_id not in npg_entries()]
    if unknown:
        raise ValueError(f"--envs: {unknown} have no entry in {SHIPPED_HYPERPARAMS / 'npg.yml'}")
    th.set_num_threads(1)
    warnings.filterwarnings("ignore")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    records = []
    for env_id in args.envs:
        for seed in args.seeds:
            fast, fast_seconds = train(NPG, env_id, seed, args.n_timesteps)
            sb3, sb3_seconds = train(NPGWithSB3Rollout, env_id, seed, args.n_timesteps)
            returns = [info["r"] for info in fast.ep_info_buffer]
            record = {
                "env": env_id,
                "seed": seed,
                "n_timesteps": fast.num_timesteps,
                "fast_path_taken": LeanForward.for_policy(fast.policy) is not None,
                "identical": compare(fast, sb3),
                "last_100_training_returns_mean": float(np.mean(returns)) if returns else None,
                "learn_seconds": {"fast_path": round(fast_seconds, 2), "sb3_rollout": round(sb3_seconds, 2)},
            }
            records.append(record)
            print(json.dumps(record), file=sys.stderr, flush=True)
    header = (
        f"Command: `python benchmarks/rollout_identity.py {' '.join(sys.argv[1:])}`, {started} to "
        f"{time.strftime('%H:%M UTC', time.gmtime())}, {machine_line()}, load average at the end {os.getloadavg()[0]:.1f}."
    )
    columns = ["env", "seed", "steps", "fast path taken", "bit-identical (parameters, episodes, timesteps, normalization)"]
    columns += ["mean training return, last 100 episodes", "learn() s, fast / SB3's rollout"]
    rows = []
    for r in records:
        identical = ", ".join(f"{part} {'yes' if same else '**no**'}" for part, same in r["identical"].items())
        seconds = r["learn_seconds"]
        rows.append(
            [
                r["env"],
                r["seed"],
                r["n_timesteps"],
                "yes" if r["fast_path_taken"] else "**no**",
                identical,
                f"{r['last_100_training_returns_mean']:.1f}",
                f"{seconds['fast_path']} / {seconds['sb3_rollout']}",
            ]
        )
    table = "\n".join([header, "", *markdown_table(columns, rows)]) + "\n"
    write_record(args.output, {"header": header, "records": records}, table)
    print(table)


if __name__ == "__main__":
    main()
