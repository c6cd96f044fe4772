"""
Per-update KL: the KL each NPG update actually moved the policy by, against ``target_kl``, on every entry.

NPG logs ``train/kl_divergence``, the mean over the batch's states of ``KL(pi_old || pi_new)`` summed over
action dimensions, *measured after the step*. With ``step_length="quadratic"`` (the default) the step is scaled
so that the quadratic model of that KL equals ``target_kl``; with ``step_length="exact"`` the scale is searched
until the measured KL is within 5 % of it. This script trains each env's entry of the shipped
``sb3_npg/hyperparams/npg.yml`` (``n_envs``, ``normalize``, ``policy_kwargs`` and the NPG arguments; the
entry's own ``damped_step_size`` included) for its full ``n_timesteps``, once per step length, and records the
ratio KL / ``target_kl`` of every update.

Outputs, in ``benchmarks/results/kl/`` (default):

- ``<env>_<mode>_seed<s>.csv``: one row per update (KL, step size, KL evaluations, quadratic model's ratio, ...);
- ``kl_runs.jsonl``: one JSON line per finished run with the distribution of KL / ``target_kl`` (median, 5th and
  95th percentile, max, fraction within +-10 %, fraction above +10 %), the mean number of KL evaluations,
  the search failures, the time spent in ``train()`` and the last training return;
- ``kl_summary.md`` and ``kl_summary.png`` (all runs), ``<env>.png`` (per update, both modes).

Resumable: a run already in ``kl_runs.jsonl`` with today's entry is skipped; several invocations (e.g. one
per env group) can append to the same file. Usage::

    nice -n 10 python benchmarks/kl_per_update.py --envs classic box2d   # both modes, full budgets
    nice -n 10 python benchmarks/kl_per_update.py --envs mujoco          # 1e6 steps per run
    python benchmarks/kl_per_update.py --envs Pendulum-v1 -n 20000       # a shorter run (recorded as such)
    python benchmarks/kl_per_update.py --plot-only                       # redraw the table and figures
"""

import argparse
import csv
import datetime
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch as th
from common import append_jsonl, entry_model, markdown_table, npg_entry, read_jsonl
from stable_baselines3.common.logger import configure

from sb3_npg import NPG
from sb3_npg.constants import STEP_LENGTHS

HERE = pathlib.Path(__file__).resolve().parent
#: The entries of npg.yml by group (``default`` and ``atari`` are not env entries)
GROUPS = {
    "classic": ["CartPole-v1", "Pendulum-v1", "Acrobot-v1", "MountainCarContinuous-v0"],
    "box2d": ["LunarLander-v3", "LunarLanderContinuous-v3", "BipedalWalker-v3"],
    "mujoco": ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Swimmer-v5"],
}
#: The per-update columns kept from the logger
COLUMNS = (
    "train/n_updates",
    "train/kl_divergence",
    "train/step_size",
    "train/kl_evaluations",
    "train/quadratic_kl_ratio",
    "train/xFx",
    "time/total_timesteps",
    "rollout/ep_rew_mean",
)


def per_update_kl(
    env_id: str, entry: dict[str, Any], n_timesteps: int, seed: int
) -> tuple[NPG, list[dict[str, float]], float]:
    """Train; return the model, the logged rows (one per update) and the seconds spent in ``train()``."""
    model = entry_model(env_id, entry, seed)
    train_seconds = 0.0
    train = model.train

    def timed_train() -> None:
        nonlocal train_seconds
        start = time.perf_counter()
        train()
        train_seconds += time.perf_counter() - start

    model.train = timed_train  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as folder:
        model.set_logger(configure(folder, ["csv"]))
        model.learn(total_timesteps=n_timesteps)
        model.logger.dump(model.num_timesteps)  # the last update's values (learn dumps before each train())
        with open(pathlib.Path(folder) / "progress.csv") as file:
            rows = [row for row in csv.DictReader(file) if row.get("train/kl_divergence")]
    return model, [{key: float(row[key]) for key in COLUMNS if row.get(key)} for row in rows], train_seconds


def summarise(ratios: np.ndarray) -> dict[str, float]:
    """The distribution of KL / target_kl over a run's updates."""
    return {
        "median": float(np.median(ratios)),
        "p5": float(np.percentile(ratios, 5)),
        "p95": float(np.percentile(ratios, 95)),
        "max": float(ratios.max()),
        "within_10pct": float(np.mean(np.abs(ratios - 1) <= 0.1)),
        "above_10pct": float(np.mean(ratios > 1.1)),
    }


def run_key(run: dict[str, Any]) -> tuple[str, str, int, int, str]:
    """What a run answers: env, step length, seed, steps, and the entry it used (a changed entry is run again)."""
    return run["env"], run["step_length"], run["seed"], run["n_timesteps"], run["entry"]


def one_run(env_id: str, mode: str, seed: int, n_timesteps: int | None, out: pathlib.Path) -> dict[str, Any]:
    """Train the entry with ``step_length=mode``, write the per-update CSV, return the run's summary line."""
    entry = npg_entry(env_id)
    steps = int(n_timesteps or entry["n_timesteps"])
    variant = {**entry, "step_length": mode}
    start = time.perf_counter()
    model, rows, train_seconds = per_update_kl(env_id, variant, steps, seed)
    with open(out / f"{env_id}_{mode}_seed{seed}.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[key for key in COLUMNS if any(key in row for row in rows)])
        writer.writeheader()
        writer.writerows(rows)
    ratios = np.array([row["train/kl_divergence"] for row in rows]) / model.target_kl
    evaluations = [row.get("train/kl_evaluations", 1.0) for row in rows]
    returns = [row["rollout/ep_rew_mean"] for row in rows if "rollout/ep_rew_mean" in row]
    return {
        "env": env_id,
        "step_length": mode,
        "seed": seed,
        "n_timesteps": steps,
        "entry": json.dumps(entry, sort_keys=True),
        "target_kl": model.target_kl,
        "damped_step_size": model.damped_step_size,
        "n_updates": len(rows),
        **summarise(ratios),
        "mean_kl_evaluations": float(np.mean(evaluations)),
        "max_kl_evaluations": float(np.max(evaluations)),
        "kl_search_failures": model.kl_search_failures,
        "skipped_updates": model.skipped_updates,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "last_ep_rew_mean": returns[-1] if returns else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/kl_per_update.py " + " ".join(sys.argv[1:]),
    }


def summary_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one line per run (latest per key), in the groups' order."""
    order = [env for members in GROUPS.values() for env in members]
    latest = {run_key(run)[:4]: run for run in runs}
    lines = [
        "KL / target_kl per update (measured on the batch after the step, summed over action dimensions), "
        "whole training runs of the `npg.yml` entries (`benchmarks/kl_per_update.py`).",
        "",
    ]
    columns = ["env", "steps", "step_length", "damped", "updates", "median", "p5", "p95", "max", "within ±10 %"]
    columns += ["above +10 %", "KL evals / update", "search failures", "train() s"]
    rows = []
    for key in sorted(
        latest,
        key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[0], k[3], k[2], STEP_LENGTHS.index(k[1])),
    ):
        run = latest[key]
        rows.append(
            [
                run["env"],
                f"{run['n_timesteps']:.0e}".replace("e+0", "e"),
                run["step_length"],
                "yes" if run["damped_step_size"] else "no",
                run["n_updates"],
                *(f"{run[name]:.2f}" for name in ("median", "p5", "p95", "max")),
                f"{100 * run['within_10pct']:.0f} %",
                f"{100 * run['above_10pct']:.0f} %",
                f"{run['mean_kl_evaluations']:.2f}",
                run["kl_search_failures"],
                f"{run['train_seconds']:.0f}",
            ]
        )
    return "\n".join(lines + markdown_table(columns, rows)) + "\n"


def plot_env(env_id: str, runs: list[dict[str, Any]], out: pathlib.Path) -> None:
    """KL / target_kl per update of each mode's run on one env (seed 0 if present), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    colors = {"quadratic": "tab:red", "exact": "tab:blue"}
    for run in sorted(runs, key=lambda r: STEP_LENGTHS.index(r["step_length"])):
        path = out / f"{env_id}_{run['step_length']}_seed{run['seed']}.csv"
        with open(path) as file:
            ratios = np.array([float(row["train/kl_divergence"]) for row in csv.DictReader(file)]) / run["target_kl"]
        label = f"{run['step_length']}: median {run['median']:.2f}, max {run['max']:.2f}"
        ax.plot(np.arange(1, len(ratios) + 1), ratios, lw=0.8, marker=".", ms=2, color=colors[run["step_length"]], label=label)
    ax.axhspan(0.9, 1.1, color="grey", alpha=0.2, label="±10 %")
    ax.set_yscale("log")
    ax.set_title(f"NPG on {env_id}: KL / target_kl per update")
    ax.set_xlabel("update")
    ax.set_ylabel("measured KL / target_kl")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(out / f"{env_id}.png", dpi=110)
    plt.close(fig)


def plot_summary(runs: list[dict[str, Any]], out: pathlib.Path) -> None:
    """Per env and mode: the 5th-95th percentile range, median and max of KL / target_kl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [env for members in GROUPS.values() for env in members]
    latest = {run_key(run)[:2]: run for run in runs if run["seed"] == 0}
    envs = [env for env in order if any(key[0] == env for key in latest)]
    if not envs:
        return
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(envs)), 3.8))
    for offset, mode, color in ((-0.15, "quadratic", "tab:red"), (0.15, "exact", "tab:blue")):
        for index, env in enumerate(envs):
            run = latest.get((env, mode))
            if run is None:
                continue
            x = index + offset
            ax.vlines(x, run["p5"], run["p95"], color=color, lw=4, alpha=0.6)
            ax.plot(x, run["median"], "o", color=color, ms=5)
            ax.plot(x, run["max"], "v", color=color, ms=5)
        ax.plot([], [], "o", color=color, label=f"{mode}: median, p5-p95 bar, max ▼")
    ax.axhspan(0.9, 1.1, color="grey", alpha=0.2, label="±10 %")
    ax.set_yscale("log")
    ax.set_xticks(range(len(envs)), envs, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("measured KL / target_kl")
    ax.set_title("KL per update on the npg.yml entries, seed 0, full budgets")
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "kl_summary.png", dpi=110)
    plt.close(fig)


def report(out: pathlib.Path) -> None:
    """Rewrite the table and the figures from the runs file."""
    runs = read_jsonl(out / "kl_runs.jsonl")
    if not runs:
        return
    (out / "kl_summary.md").write_text(summary_table(runs))
    full_budget = [run for run in runs if run["n_timesteps"] == int(npg_entry(run["env"])["n_timesteps"])]
    for env_id in {run["env"] for run in full_budget}:
        latest = {run_key(run)[1]: run for run in full_budget if run["env"] == env_id and run["seed"] == 0}
        if latest:
            plot_env(env_id, list(latest.values()), out)
    plot_summary(full_budget, out)
    print(summary_table(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(GROUPS), help=f"env ids or groups {list(GROUPS)}")
    parser.add_argument("--modes", nargs="+", choices=STEP_LENGTHS, default=list(STEP_LENGTHS))
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="default: each entry's n_timesteps")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results" / "kl")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    envs = [env for name in args.envs for env in GROUPS.get(name, [name])]
    runs_path = args.out / "kl_runs.jsonl"
    if not args.plot_only:
        for env_id in envs:
            for seed in args.seeds:
                for mode in args.modes:
                    entry = json.dumps(npg_entry(env_id), sort_keys=True)
                    steps = int(args.n_timesteps or npg_entry(env_id)["n_timesteps"])
                    if (env_id, mode, seed, steps, entry) in {run_key(run) for run in read_jsonl(runs_path)}:
                        print(f"{env_id} {mode} seed {seed}: already in {runs_path}")
                        continue
                    run = one_run(env_id, mode, seed, args.n_timesteps, args.out)
                    append_jsonl(runs_path, run)
                    print(
                        f"{env_id} {mode} seed {seed}: {run['n_updates']} updates, KL / target_kl median {run['median']:.2f}, "
                        f"p95 {run['p95']:.2f}, max {run['max']:.2f}, within 10 % {100 * run['within_10pct']:.0f} %, "
                        f"{run['mean_kl_evaluations']:.2f} KL evaluations / update, train() {run['train_seconds']:.0f} s",
                        flush=True,
                    )
    report(args.out)


if __name__ == "__main__":
    main()
