"""
Masks and memory: MaskableRecurrentNPG against MaskableNPG (no memory), RecurrentNPG (no masks), sb3-contrib's
MaskablePPO (no memory) and RecurrentPPO (no masks), same budget, same environment, three seeds.

The environment is :class:`sb3_npg.envs.MaskedCueEnv` (defaults: 6 actions, 2 valid at every step, a cue at the
first step that says which valid action pays +1 at the fourth, the other -1; an invalid action costs -1 and ends the
episode). Best return 1; without memory the decision is a coin flip (expected 0).

Every algorithm gets 8 environments, rollouts of 128 steps per environment and a 32-unit network (an LSTM of 32 and
one hidden layer of 32 for the recurrent ones, one hidden layer of 32 for the others); the NPG variants
``target_kl=0.02`` (otherwise their defaults), the PPO variants their defaults (not tuned for this task, nor is NPG
beyond the one ``target_kl``). Score: mean return of ``--episodes`` deterministic episodes on an environment seeded
apart from training, with masks for the masked algorithms (:func:`sb3_npg.maskable_recurrent.evaluate_policy`, which
keeps the LSTM states) and SB3's ``evaluate_policy`` for the others (which keeps them too). Train time: wall time of
``learn()``.

Each run appends one JSON line to ``--out`` (default ``benchmarks/results/maskable_recurrent/runs.jsonl``); runs
already there are skipped; ``summary.md`` beside it is rewritten from all the runs. Usage::

    python benchmarks/maskable_recurrent.py --quick          # every algorithm on a tiny budget, nothing recorded
    nice -n 10 python benchmarks/maskable_recurrent.py --timesteps 30000 --seeds 0 1 2
    python benchmarks/maskable_recurrent.py --table
"""

import argparse
import datetime
import pathlib
import statistics
import tempfile
import time
from typing import Any

import torch as th
from common import RESULTS, append_jsonl, machine_line, markdown_table, read_jsonl
from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy as sb3_evaluate_policy

from sb3_npg import MaskableNPG, MaskableRecurrentNPG, RecurrentNPG
from sb3_npg.envs import MaskedCueEnv
from sb3_npg.maskable_recurrent import evaluate_policy

DEFAULT_OUT = RESULTS / "maskable_recurrent" / "runs.jsonl"
N_ENVS, N_STEPS, BATCH_SIZE = 8, 128, 256
LSTM = dict(lstm_hidden_size=32, net_arch=[32])
FEED_FORWARD = dict(net_arch=[32])
#: algorithm -> (class, policy, policy_kwargs, extra arguments, whether it masks)
ALGORITHMS: dict[str, tuple[Any, str, dict[str, Any], dict[str, Any], bool]] = {
    "maskable_recurrent_npg": (MaskableRecurrentNPG, "MlpLstmPolicy", LSTM, dict(target_kl=0.02), True),
    "maskable_npg": (MaskableNPG, "MlpPolicy", FEED_FORWARD, dict(target_kl=0.02), True),
    "recurrent_npg": (RecurrentNPG, "MlpLstmPolicy", LSTM, dict(target_kl=0.02), False),
    "maskable_ppo": (MaskablePPO, "MlpPolicy", FEED_FORWARD, {}, True),
    "recurrent_ppo": (RecurrentPPO, "MlpLstmPolicy", LSTM, {}, False),
}
EVAL_SEED_OFFSET = 1000


def run(algo: str, seed: int, timesteps: int, episodes: int) -> dict[str, Any]:
    """Train one algorithm on one seed and evaluate it; the JSON record of the run."""
    algorithm, policy, policy_kwargs, extra, masked = ALGORITHMS[algo]
    env = make_vec_env(MaskedCueEnv, n_envs=N_ENVS, seed=seed)
    model = algorithm(
        policy, env, n_steps=N_STEPS, batch_size=BATCH_SIZE, seed=seed, policy_kwargs=dict(policy_kwargs), **extra
    )
    start = time.perf_counter()
    model.learn(timesteps)
    train_time = time.perf_counter() - start
    eval_env = make_vec_env(MaskedCueEnv, n_envs=1, seed=seed + EVAL_SEED_OFFSET)
    evaluate = evaluate_policy if masked else sb3_evaluate_policy
    returns, _ = evaluate(model, eval_env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True)
    with tempfile.TemporaryDirectory() as folder:  # the models save and load (nothing kept)
        model.save(pathlib.Path(folder) / "model")
        algorithm.load(pathlib.Path(folder) / "model")
    return {
        "algo": algo,
        "seed": seed,
        "timesteps": timesteps,
        "episodes": episodes,
        "mean_return": float(statistics.fmean(returns)),
        "train_time": round(train_time, 1),
        "date": datetime.date.today().isoformat(),
        "machine": machine_line(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown summary: per algorithm and budget, the seeds' scores, their mean, and the mean train time."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda row: (row["timesteps"], list(ALGORITHMS).index(row["algo"]))):
        groups.setdefault((row["algo"], row["timesteps"]), []).append(row)
    lines = markdown_table(
        ["algorithm", "steps", "return per seed", "mean", "% of optimal (1)", "train time per run (s)"],
        [
            [
                algo,
                timesteps,
                " / ".join(f"{run['mean_return']:.2f}" for run in sorted(runs, key=lambda run: run["seed"])),
                f"{statistics.fmean(run['mean_return'] for run in runs):.2f}",
                f"{100 * statistics.fmean(run['mean_return'] for run in runs):.0f} %",
                f"{statistics.fmean(run['train_time'] for run in runs):.0f}",
            ]
            for (algo, timesteps), runs in groups.items()
        ],
    )
    header = [
        "# MaskableRecurrentNPG on MaskedCueEnv",
        "",
        "Written by `benchmarks/maskable_recurrent.py` from `runs.jsonl` (command, settings and score: the script's "
        "docstring).",
        "",
    ]
    machines = sorted({row["machine"] for row in rows})
    dates = sorted({row["date"] for row in rows})
    footer = ["", f"Runs of {', '.join(dates)}; machine: {'; '.join(machines)}."]
    return "\n".join(header + lines + footer) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=30_000)
    parser.add_argument("--episodes", type=int, default=100, help="deterministic evaluation episodes per run")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="every algorithm, one seed, a tiny budget; nothing recorded")
    parser.add_argument("--table", action="store_true", help="only rewrite and print the summary of the recorded runs")
    args = parser.parse_args()
    th.set_num_threads(1)

    if args.quick:
        for algo in args.algos:
            record = run(algo, seed=0, timesteps=N_ENVS * N_STEPS, episodes=2)
            print(f"{algo}: return {record['mean_return']:.2f}, {record['train_time']} s")
        return
    summary = args.out.parent / "summary.md"
    if not args.table:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        done = {(row["algo"], row["seed"], row["timesteps"]) for row in read_jsonl(args.out)} if args.out.exists() else set()
        for seed in args.seeds:
            for algo in args.algos:
                if (algo, seed, args.timesteps) in done:
                    continue
                record = run(algo, seed, args.timesteps, args.episodes)
                append_jsonl(args.out, record)
                print(f"{algo} seed {seed}: return {record['mean_return']:.2f}, {record['train_time']} s", flush=True)
    text = table(read_jsonl(args.out))
    summary.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
