"""
Wall time of the whole ``learn()``: NPG against sb3-contrib TRPO and SB3 PPO, and against the environment's own cost.

Every algorithm gets the same settings (``MlpPolicy`` 64x64, ``n_steps``, ``n_envs``, 10 critic epochs of
minibatches of 128, 10 CG steps for NPG and TRPO) and a fresh copy of the same VecEnv stack (``make_vec_env``'s
``Monitor``, plus ``VecNormalize`` where ``npg.yml`` normalises). Each ``learn()`` is split into rollout time
(from ``on_rollout_start`` to ``on_rollout_end``) and the rest (``train()`` and logging).

``limit`` is that VecEnv stack stepped for the same number of steps with random actions and no policy: what a
rollout costs when the policy, the buffer and the bookkeeping are free. ``npg-sb3-rollout`` is NPG with SB3's own
``collect_rollouts`` (no fast rollout path), to show what the fast path saves.

Runs are interleaved round-robin (every algorithm once per round, in a rotating order) so that load on the
machine hits them alike; each ratio is the median over rounds of the ratio within a round. ``--clock process``
times with the process's CPU time instead of wall time: on a machine shared with other jobs it counts what the
run computed, not the time it waited for a core (the default, ``wall``, is what a user waits on an idle machine).

Run it with the ``sb3_npg`` to measure importable (e.g. ``PYTHONPATH=.`` from a checkout); the header of the
results names the one used. Usage::

    python benchmarks/learn_speed.py                      # every config, 3 rounds of 8192 steps
    python benchmarks/learn_speed.py --configs HalfCheetah-v5:2 CartPole-v1:8 --rounds 5 --steps 16384
    python benchmarks/learn_speed.py --clock process      # CPU time of the process (a loaded machine)

Results go to ``benchmarks/results/learn_speed.json`` and, as Markdown, ``benchmarks/results/learn_speed.md``.
"""

import argparse
import os
import statistics
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch as th
from common import machine_line, markdown_table, matched_model, write_record
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

ALGORITHMS = ("limit", "npg", "npg-sb3-rollout", "trpo", "ppo")
# env id -> (VecNormalize as in npg.yml, extra settings shared by every algorithm)
ENVS: dict[str, tuple[bool, dict[str, Any]]] = {
    "CartPole-v1": (False, {}),
    "Pendulum-v1": (False, {"use_sde": True, "sde_sample_freq": 4}),
    "HalfCheetah-v5": (True, {}),
}
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
#: The clock every run is timed with (set from ``--clock``)
clock = CLOCKS["wall"]
DEFAULT_CONFIGS = ("CartPole-v1:1", "CartPole-v1:8", "Pendulum-v1:1", "Pendulum-v1:2", "HalfCheetah-v5:1", "HalfCheetah-v5:2")


class RolloutTimer(BaseCallback):
    """Sums the time spent between ``on_rollout_start`` and ``on_rollout_end``."""

    def __init__(self) -> None:
        super().__init__()
        self.rollout_seconds = 0.0
        self._start = 0.0

    def _on_rollout_start(self) -> None:
        self._start = clock()

    def _on_rollout_end(self) -> None:
        self.rollout_seconds += clock() - self._start

    def _on_step(self) -> bool:
        return True


def make_env(env_id: str, n_envs: int, seed: int) -> VecEnv:
    """The VecEnv stack every algorithm and the limit get."""
    normalize, _ = ENVS[env_id]
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    return VecNormalize(env) if normalize else env


def time_limit(env: VecEnv, total_timesteps: int, seed: int) -> float:
    """Seconds to step ``env`` for ``total_timesteps`` with random actions (drawn beforehand) and no policy."""
    env.action_space.seed(seed)
    actions = np.stack([np.stack([env.action_space.sample() for _ in range(env.num_envs)]) for _ in range(256)])
    env.reset()
    start = clock()
    for step in range(total_timesteps // env.num_envs):
        env.step(actions[step % len(actions)])
    return clock() - start


def time_run(algorithm: str, env_id: str, n_envs: int, total_timesteps: int, seed: int) -> dict[str, float]:
    """One run: total seconds, and for the algorithms the rollout seconds."""
    env = make_env(env_id, n_envs, seed)
    try:
        if algorithm == "limit":
            seconds = time_limit(env, total_timesteps, seed)
            return {"total": seconds, "rollout": seconds}
        # the matched settings (common.matched_model), 2048 samples per rollout, default 64x64 networks
        model = matched_model(algorithm, env, 2048 // n_envs, seed=seed, device="cpu", **ENVS[env_id][1])
        timer = RolloutTimer()
        start = clock()
        model.learn(total_timesteps, callback=timer)
        return {"total": clock() - start, "rollout": timer.rollout_seconds}
    finally:
        env.close()


def run(configs: list[str], rounds: int, total_timesteps: int) -> list[dict[str, Any]]:
    """Time every algorithm on every config, interleaved; :return: one record per config."""
    records = []
    for config in configs:
        env_id, n_envs_text = config.split(":")
        n_envs = int(n_envs_text)
        times: dict[str, list[dict[str, float]]] = {algorithm: [] for algorithm in ALGORITHMS}
        for round_index in range(rounds):
            order = ALGORITHMS[round_index % len(ALGORITHMS) :] + ALGORITHMS[: round_index % len(ALGORITHMS)]
            for algorithm in order:
                times[algorithm].append(time_run(algorithm, env_id, n_envs, total_timesteps, seed=round_index))
                print(f"{config} round {round_index} {algorithm}: {times[algorithm][-1]}", file=sys.stderr, flush=True)
        record: dict[str, Any] = {"config": config, "env_id": env_id, "n_envs": n_envs, "runs": times}
        for algorithm in ALGORITHMS:
            record[f"{algorithm}_total"] = statistics.median(run["total"] for run in times[algorithm])
            record[f"{algorithm}_rollout"] = statistics.median(run["rollout"] for run in times[algorithm])
        for algorithm in ("npg", "npg-sb3-rollout", "ppo"):
            record[f"{algorithm}_over_trpo"] = paired_ratio(times[algorithm], times["trpo"])
        for algorithm in ("npg", "npg-sb3-rollout", "trpo", "ppo"):
            record[f"{algorithm}_over_limit"] = paired_ratio(times[algorithm], times["limit"])
            record[f"{algorithm}_rollout_over_limit"] = paired_ratio(times[algorithm], times["limit"], "rollout")
        records.append(record)
    return records


def paired_ratio(numerator: list[dict[str, float]], denominator: list[dict[str, float]], part: str = "total") -> float:
    """Median over rounds of the ratio of two runs of the same round."""
    return statistics.median(a[part] / b[part] for a, b in zip(numerator, denominator, strict=True))


def markdown(records: list[dict[str, Any]], header: str) -> str:
    """The results as Markdown tables."""
    lines = [
        header,
        "",
        f"`learn()` {'wall' if clock is CLOCKS['wall'] else 'process CPU'} time, median over rounds (rollout part in "
        "parentheses); ratios are paired medians.",
        "",
    ]
    columns = ["config", "limit (env only)", "NPG", "NPG, SB3's rollout", "TRPO", "PPO", "NPG / TRPO", "NPG / limit"]
    columns += ["NPG SB3-rollout / limit", "TRPO / limit", "NPG rollout / limit"]
    rows = []
    for r in records:
        cells = [f"{r['config']} ({r['env_id']}, {r['n_envs']} env{'s' if r['n_envs'] > 1 else ''})"]
        cells.append(f"{r['limit_total']:.2f} s")
        for algorithm in ("npg", "npg-sb3-rollout", "trpo", "ppo"):
            cells.append(f"{r[f'{algorithm}_total']:.2f} s ({r[f'{algorithm}_rollout']:.2f} s)")
        cells += [
            f"**{r['npg_over_trpo']:.2f}**",
            f"**{r['npg_over_limit']:.2f}**",
            f"{r['npg-sb3-rollout_over_limit']:.2f}",
            f"{r['trpo_over_limit']:.2f}",
            f"{r['npg_rollout_over_limit']:.2f}",
        ]
        rows.append(cells)
    return "\n".join(lines + markdown_table(columns, rows)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="ENV_ID:N_ENVS, e.g. CartPole-v1:8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8192, help="timesteps per learn() call")
    parser.add_argument("--output", default="learn_speed", help="file name stem under benchmarks/results/")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall time, or the process's CPU time")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    for config in args.configs:
        if config.split(":")[0] not in ENVS:
            raise ValueError(f"--configs: unknown env in {config!r}; known: {sorted(ENVS)}")
    th.set_num_threads(1)
    warnings.filterwarnings("ignore")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    records = run(args.configs, args.rounds, args.steps)
    finished = time.strftime("%H:%M UTC", time.gmtime())
    header = (
        f"Command: `python benchmarks/learn_speed.py {' '.join(sys.argv[1:])}`, {started} to {finished}, {machine_line()}, "
        f"{args.steps} steps per learn(), {args.rounds} rounds, {args.clock} clock, "
        f"load average at the end {os.getloadavg()[0]:.1f}."
    )
    table = markdown(records, header)
    write_record(args.output, {"header": header, "records": records}, table)
    print(table)


if __name__ == "__main__":
    main()
