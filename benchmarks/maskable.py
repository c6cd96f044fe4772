"""
Masked benchmark: MaskableNPG against MaskablePPO (and NPG without masks) on the same budget, three seeds.

Tasks:

- ``discrete``: sb3-contrib's ``InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55)`` with ``gamma=0.4``, as in
  sb3-contrib's MaskablePPO performance test (``test_identity``); score: mean return of 20 deterministic masked
  episodes (100 steps, 1 per correct action; sb3-contrib's test asks for 90 after 3000 steps).
- ``multidiscrete``: ``InvalidActionEnvMultiDiscrete(dims=[4, 6], n_invalid_actions=5)`` (sb3-contrib's MaskablePPO
  example), ``gamma=0.4``; same score.
- ``tictactoe``: PettingZoo's ``tictactoe_v3`` against a uniformly random opponent (who starts is drawn per game),
  the game's own ``action_mask``; reward +1 win, -1 loss (an illegal move loses, PettingZoo's rule), 0 draw.
  Score: win rate over ``--games`` deterministic games (masked, except for ``npg``, which is trained and
  played without masks), with the loss rate by illegal moves.

Algorithms: ``maskable_npg`` (:class:`sb3_npg.MaskableNPG`, default hyperparameters), ``maskable_ppo``
(sb3-contrib's ``MaskablePPO``, default hyperparameters), ``npg`` (:class:`sb3_npg.NPG` without masks, tictactoe
only) and ``random`` (a uniformly random valid action, tictactoe only, no training); the InvalidAction
tasks use ``gamma=0.4`` for both, as sb3-contrib's test does.

Each run appends one JSON line to ``--out`` (default ``benchmarks/results/maskable.jsonl``); runs already there are
skipped. ``--table`` prints the markdown table. Usage::

    nice -n 10 python benchmarks/maskable.py --tasks discrete multidiscrete --timesteps 10000
    nice -n 10 python benchmarks/maskable.py --tasks tictactoe --timesteps 100000 --algos maskable_npg maskable_ppo npg
    python benchmarks/maskable.py --table
"""

import argparse
import datetime
import json
import statistics
import time
from typing import Any

import numpy as np
import torch as th
from common import RESULTS, VersusRandom, append_jsonl, machine_line, markdown_table, masked_task_env, read_jsonl
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.evaluation import evaluate_policy

from sb3_npg import NPG, MaskableNPG

DEFAULT_OUT = str(RESULTS / "maskable.jsonl")


class RandomValidPlayer:
    """The reference player: a uniformly random valid action (``predict`` as a model's, masks required)."""

    def __init__(self, seed: int):
        self.generator = np.random.default_rng(seed)

    def learn(self, total_timesteps: int) -> None:
        """Nothing to learn."""

    def predict(self, observation, deterministic: bool = False, action_masks=None):
        return self.generator.choice(np.flatnonzero(action_masks)), None


def make_model(algo: str, task: str, seed: int):
    if algo == "random":
        return RandomValidPlayer(seed)
    env = masked_task_env(task)
    kwargs: dict[str, Any] = {"gamma": 0.4} if task != "tictactoe" else {}
    if algo == "maskable_npg":
        return MaskableNPG("MlpPolicy", env, seed=seed, **kwargs)
    if algo == "maskable_ppo":
        return MaskablePPO("MlpPolicy", env, seed=seed, **kwargs)
    if algo == "npg":
        return NPG("MlpPolicy", env, seed=seed, **kwargs)
    raise ValueError(f"Unknown algo {algo!r}")


def play_games(model, n_games: int, use_masking: bool, seed: int) -> dict[str, float]:
    """Deterministic games against the random opponent: win, draw, loss and illegal-move rates."""
    env = VersusRandom("tictactoe_v3")
    outcomes = {"win": 0, "draw": 0, "loss": 0, "illegal": 0}
    observation, _ = env.reset(seed=10_000 + seed)
    for _ in range(n_games):
        done = False
        while not done:
            if use_masking:
                action, _ = model.predict(observation, deterministic=True, action_masks=env.action_masks())
            else:
                action, _ = model.predict(observation, deterministic=True)
            observation, reward, done, _, info = env.step(action)
        outcomes["win" if reward > 0 else "loss" if reward < 0 else "draw"] += 1
        outcomes["illegal"] += info["illegal"]
        observation, _ = env.reset()
    return {f"{name}_rate": count / n_games for name, count in outcomes.items()}


def run(algo: str, task: str, seed: int, timesteps: int, games: int) -> dict[str, Any]:
    th.set_num_threads(1)
    model = make_model(algo, task, seed)
    start = time.perf_counter()
    model.learn(timesteps)
    train_time = time.perf_counter() - start
    result: dict[str, Any] = {"algo": algo, "task": task, "seed": seed, "timesteps": timesteps}
    if task == "tictactoe":
        result.update(play_games(model, games, use_masking=algo != "npg", seed=seed))
        result["games"] = games
    else:
        env = masked_task_env(task)
        env.reset(seed=10_000 + seed)
        mean, std = evaluate_policy(model, env, n_eval_episodes=20, deterministic=True, warn=False)
        result.update(mean_return=float(mean), std_return=float(std))
    result.update(
        train_time_s=round(train_time, 1),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine_line(),
    )
    return result


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (task, algo), the per-seed scores and their mean."""
    table_rows = []
    keys = sorted({(row["task"], row["algo"], row["timesteps"]) for row in rows})
    for task, algo, steps in keys:
        runs = sorted(
            (row for row in rows if (row["task"], row["algo"], row["timesteps"]) == (task, algo, steps)),
            key=lambda r: r["seed"],
        )
        if task == "tictactoe":
            scores = [row["win_rate"] for row in runs]
            per_seed = " / ".join(f"{score:.3f}" for score in scores)
            illegal = f"{statistics.mean(row['illegal_rate'] for row in runs):.3f}"
        else:
            scores = [row["mean_return"] for row in runs]
            per_seed = " / ".join(f"{score:.1f}" for score in scores)
            illegal = "-"
        times = statistics.mean(row["train_time_s"] for row in runs)
        table_rows.append([task, algo, steps, per_seed, f"{statistics.mean(scores):.3g}", illegal, f"{times:.0f}"])
    columns = ["task", "algorithm", "steps", "score per seed", "mean", "games lost by an illegal move", "train time (s)"]
    return "\n".join(markdown_table(columns, table_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["discrete", "multidiscrete"])
    parser.add_argument("--algos", nargs="+", default=["maskable_npg", "maskable_ppo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=10_000)
    parser.add_argument("--games", type=int, default=200, help="tictactoe: games played per model")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--table", action="store_true", help="only print the table of the recorded runs")
    args = parser.parse_args()
    if args.table:
        print(table(read_jsonl(args.out)))
        return
    done = {(row["algo"], row["task"], row["seed"], row["timesteps"]) for row in read_jsonl(args.out)}
    for task in args.tasks:
        for algo in args.algos:
            for seed in args.seeds:
                if (algo, task, seed, args.timesteps) in done:
                    continue
                result = run(algo, task, seed, args.timesteps, args.games)
                print(json.dumps(result), flush=True)
                append_jsonl(args.out, result)


if __name__ == "__main__":
    main()
