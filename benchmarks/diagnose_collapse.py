"""
Find the benchmark runs that fall late, and show their per-update logs around the fall.

A run *collapses* when its final return (10 deterministic episodes of the final model) is below ``--threshold``
(default 60 %) of its best periodic evaluation. For each such run with a per-update log (``"update_log"`` in its
JSON line, written by ``benchmarks/zoo_run.py`` since 2026-12-01), this prints, for every evaluation interval,
the medians of the measured KL against ``target_kl``, ``xᵀFx``, the policy std, the critic's explained variance
and the advantage scale (``train/advantage_std``), then every update of the interval in which the evaluation
return fell (from the last evaluation at or above the threshold to the first one below it), and draws the same
quantities against the steps, with the other runs of the same env and algorithm in grey for comparison. Usage::

    python benchmarks/diagnose_collapse.py                                  # the held-out results
    python benchmarks/diagnose_collapse.py --envs Hopper-v5 --algos npg --threshold 0.6
    python benchmarks/diagnose_collapse.py --results benchmarks/results/rewards.jsonl --out-dir /tmp/diagnosis

Figures: ``<out-dir>/<algo>_<env>_seed<seed>.png`` (default out-dir: ``diagnosis/`` beside the results file).
"""

import argparse
import csv
import gzip
import itertools
import math
import pathlib
import sys
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # rewards.py, imported as a module, imports zoo_run.py from here

from rewards import expand_envs, group_results, read_results  # noqa: E402

#: The quantities the diagnosis shows for each update (see :func:`quantities`).
QUANTITIES = ("KL/target", "xFx", "std", "expl. var.", "adv. std")


def kl_key(row: dict[str, float]) -> str:
    """The measured KL of the update: NPG's ``train/kl_divergence``, TRPO's ``train/kl_divergence_loss``."""
    return "train/kl_divergence" if "train/kl_divergence" in row else "train/kl_divergence_loss"


def quantities(row: dict[str, float]) -> dict[str, float]:
    """The diagnosed quantities of one update (NaN when the algorithm does not log one)."""
    kl = row.get(kl_key(row), math.nan)
    return {
        "KL/target": kl / row["target_kl"] if row.get("target_kl") else math.nan,
        "xFx": row.get("train/xFx", math.nan),
        "std": row.get("train/std", math.nan),
        "expl. var.": row.get("train/explained_variance", math.nan),
        "adv. std": row.get("train/advantage_std", math.nan),
    }


def read_update_log(path: pathlib.Path) -> list[dict[str, float]]:
    """The rows of a per-update log (``.csv.gz``), values as floats (an empty cell is NaN)."""
    with gzip.open(path, "rt", newline="") as file:
        return [{key: float(value) if value else math.nan for key, value in row.items()} for row in csv.DictReader(file)]


def collapse(run: dict[str, Any], threshold: float) -> dict[str, Any] | None:
    """
    Where a run fell, if its final return is below ``threshold`` times its best evaluation: the best evaluation's
    step and return, the last evaluation step at or above the threshold after the best (the fall starts there), and
    the first evaluation step below it (or the end of training if only the final evaluation is below).
    """
    steps, returns = run.get("curve_steps") or [], run.get("curve_returns") or []
    if not returns:
        return None
    best_index = int(np.argmax(returns))
    best = returns[best_index]
    if best <= 0 or run["final_mean_return"] >= threshold * best:
        return None
    below = [i for i in range(best_index + 1, len(returns)) if returns[i] < threshold * best]
    fallen = below[0] if below else None
    return {
        "best_step": steps[best_index],
        "best": best,
        "fall_start": steps[fallen - 1] if fallen is not None else steps[-1],
        "fall_end": steps[fallen] if fallen is not None else run["steps"],
    }


def interval_summary(rows: list[dict[str, float]], bounds: list[int]) -> list[tuple[int, int, dict[str, float], float]]:
    """Per evaluation interval (start, end]: the medians of the quantities and the last ``rollout/ep_rew_mean``."""
    summary = []
    for start, end in itertools.pairwise(bounds):
        inside = [row for row in rows if start < row["time/total_timesteps"] <= end]
        if not inside:
            continue
        values = [quantities(row) for row in inside]
        finite = {name: [v[name] for v in values if np.isfinite(v[name])] for name in QUANTITIES}
        medians = {name: float(np.median(finite[name])) if finite[name] else math.nan for name in QUANTITIES}
        summary.append((start, end, medians, inside[-1].get("rollout/ep_rew_mean", math.nan)))
    return summary


def print_run(run: dict[str, Any], fall: dict[str, Any], rows: list[dict[str, float]] | None) -> None:
    """The run's evaluations, then its per-interval medians and the updates of the fall (if it has a log)."""
    curve = ", ".join(f"{s // 1000}k: {r:.0f}" for s, r in zip(run["curve_steps"], run["curve_returns"], strict=True))
    print(f"\n{run['algo']} {run['env']} seed {run['seed']}: final {run['final_mean_return']:.0f}, best {fall['best']:.0f}")
    print(f"  evaluations: {curve}")
    if rows is None:
        print("  no per-update log (recorded before zoo_run.py wrote one)")
        return
    bounds = [0, *run["curve_steps"]]
    if bounds[-1] < rows[-1]["time/total_timesteps"]:
        bounds.append(int(rows[-1]["time/total_timesteps"]))
    header = "  ".join(f"{name:>10}" for name in QUANTITIES)
    print(f"  medians per evaluation interval:\n  {'steps':>17}  {header}  {'ep_rew_mean':>11}")
    for start, end, medians, episode_return in interval_summary(rows, bounds):
        values = "  ".join(f"{medians[name]:10.4g}" for name in QUANTITIES)
        print(f"  {start // 1000:>7}k-{end // 1000:>7}k  {values}  {episode_return:11.0f}")
    print(f"  every update from {fall['fall_start'] // 1000}k to {fall['fall_end'] // 1000}k steps (the fall):")
    print(f"  {'steps':>17}  {header}  {'ep_rew_mean':>11}")
    for row in rows:
        if fall["fall_start"] < row["time/total_timesteps"] <= fall["fall_end"]:
            values = "  ".join(f"{value:10.4g}" for value in quantities(row).values())
            print(f"  {int(row['time/total_timesteps']):>17}  {values}  {row.get('rollout/ep_rew_mean', math.nan):11.0f}")


def plot_run(
    run: dict[str, Any],
    fall: dict[str, Any],
    rows: list[dict[str, float]],
    others: list[list[dict[str, float]]],
    path: pathlib.Path,
) -> None:
    """The evaluation curve and the training return, then each quantity against the steps; other runs in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.4), sharex=True)
    panels = [("return", None), *((name, name) for name in QUANTITIES)]
    for ax, (title, name) in zip(axes.flat, panels, strict=True):
        for other in others:
            steps = [row["time/total_timesteps"] for row in other]
            values = [row.get("rollout/ep_rew_mean", math.nan) if name is None else quantities(row)[name] for row in other]
            ax.plot(steps, values, color="0.75", linewidth=0.8)
        steps = [row["time/total_timesteps"] for row in rows]
        values = [row.get("rollout/ep_rew_mean", math.nan) if name is None else quantities(row)[name] for row in rows]
        ax.plot(steps, values, color="tab:red", linewidth=1.0, label="training episodes" if name is None else None)
        if name is None:
            ax.plot(run["curve_steps"], run["curve_returns"], "o-", color="k", markersize=3, label="evaluations")
            ax.legend(fontsize="small")
        if name == "KL/target":
            ax.axhline(1.0, color="k", linestyle=":", linewidth=0.8)
        if name == "xFx":
            ax.set_yscale("log")
        ax.axvspan(fall["fall_start"], fall["fall_end"], color="tab:red", alpha=0.1)
        ax.axvline(fall["best_step"], color="k", linestyle="--", linewidth=0.8)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("environment steps")
    fig.suptitle(
        f"{run['algo'].upper()} {run['env']} seed {run['seed']}: final {run['final_mean_return']:.0f}, best evaluation "
        f"{fall['best']:.0f} (dashed); shaded: the fall; grey: the other runs with a log",
        fontsize="medium",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--results", type=pathlib.Path, default=HERE / "results" / "heldout" / "rewards.jsonl")
    parser.add_argument("--threshold", type=float, default=0.6, help="final / best evaluation below it: a collapse")
    parser.add_argument("--envs", nargs="+", default=None, help="env ids or groups (classic, box2d, mujoco); default: all")
    parser.add_argument("--algos", nargs="+", default=None, help="default: all")
    parser.add_argument("--out-dir", type=pathlib.Path, default=None, help="default: diagnosis/ beside the results")
    args = parser.parse_args(argv)
    if not 0 < args.threshold <= 1:
        parser.error(f"--threshold must be in (0, 1], got {args.threshold}")
    envs = None if args.envs is None else expand_envs(args.envs)
    runs = [
        run
        for runs in group_results(read_results(args.results)).values()
        for run in runs
        if (envs is None or run["env"] in envs) and (args.algos is None or run["algo"] in args.algos)
    ]
    logs = {
        id(run): read_update_log(args.results.parent / run["update_log"])
        for run in runs
        if run.get("update_log") and (args.results.parent / run["update_log"]).is_file()
    }
    print(f"{'algo':>5} {'env':<24} {'seed':>4} {'final':>7} {'best':>7} {'final/best':>10}  per-update log")
    collapsed = []
    for run in runs:
        best = max(run.get("curve_returns") or [math.nan])
        fall = collapse(run, args.threshold)
        flag = "  COLLAPSE" if fall else ""
        print(
            f"{run['algo']:>5} {run['env']:<24} {run['seed']:>4} {run['final_mean_return']:7.0f} {best:7.0f} "
            f"{run['final_mean_return'] / best if best > 0 else math.nan:10.2f}  {'yes' if id(run) in logs else 'no'}{flag}"
        )
        if fall:
            collapsed.append({"run": run, **fall})
    out_dir = args.out_dir or args.results.parent / "diagnosis"
    for found in collapsed:
        run = found["run"]
        rows = logs.get(id(run))
        print_run(run, found, rows)
        if rows is not None:
            others = [
                logs[id(o)]
                for o in runs
                if o is not run and id(o) in logs and (o["env"], o["algo"]) == (run["env"], run["algo"])
            ]
            out_dir.mkdir(parents=True, exist_ok=True)
            figure = out_dir / f"{run['algo']}_{run['env']}_seed{run['seed']}.png"
            plot_run(run, found, rows, others, figure)
            print(f"  wrote {figure}")
    if not collapsed:
        print(f"\nno run ends below {args.threshold:.0%} of its best evaluation")
    return collapsed


if __name__ == "__main__":
    main()
