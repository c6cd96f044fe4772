"""
Find the benchmark runs that fall late, and show their per-update logs around the fall.

A run *collapses* when its final return (10 deterministic episodes of the final model) is below ``--threshold``
(default 60 %) of its best periodic evaluation. For each such run with a per-update log (``"update_log"`` in its
JSON line, written by ``benchmarks/zoo_run.py`` since 2026-12-01), this prints, for every evaluation interval,
the medians of the measured KL against ``target_kl``, ``xᵀFx``, the policy std, the critic's explained variance
and the advantage scale (``train/advantage_std``), then every update of the interval in which the evaluation
return fell (from the last evaluation at or above the threshold to the first one below it), and draws the same
quantities against the steps, with the other runs of the same env and algorithm in grey for comparison. Usage::

    python benchmarks/investigations/diagnose_collapse.py             # the held-out results
    python benchmarks/investigations/diagnose_collapse.py --envs Hopper-v5 --algos npg --threshold 0.6
    python benchmarks/investigations/diagnose_collapse.py --results benchmarks/results/rewards.jsonl --out-dir diagnosis

Figures: ``<out-dir>/<algo>_<env>_seed<seed>.png`` (default out-dir: ``diagnosis/`` beside the results file).

With ``--compare OTHER`` it also sets each run of ``--algos`` beside the run of algorithm ``OTHER`` on the same env
and seed (both with a per-update log, collapsed or not): a summary of each (samples per update, number of updates,
the median KL per update and per 1000 samples, the KL summed over the run, std, advantage scale, the last training
episodes' return and length, the final deterministic return), the medians of each 100k steps side by
side, and a figure ``<algo>_vs_<other>_<env>_seed<seed>.png``. For instance NPG against TRPO on Hopper::

    python benchmarks/investigations/diagnose_collapse.py --envs Hopper-v5 --algos npg --compare trpo

PPO's runs compare too (``--compare ppo``); their KL is PPO's own ``approx_kl``, the mean over the update's epochs of
its estimate, which is below the KL the whole update ends at.
"""

import argparse
import itertools
import math
import pathlib
import sys
from typing import Any

import numpy as np

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCHMARKS))  # common.py, the benchmarks' helper module

from common import RESULTS, expand_envs, group_results, kl_key, read_jsonl, read_update_log  # noqa: E402

#: The quantities the diagnosis shows for each update (see :func:`quantities`).
QUANTITIES = ("KL/target", "xFx", "std", "expl. var.", "adv. std")


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


#: The quantities the comparison of two runs shows (see :func:`comparison_series`).
COMPARED = ("KL per update", "summed KL", "std", "adv. std", "training return", "training ep. length")


def summed_kl_factor(env_id: str, rows: list[dict[str, float]]) -> float:
    """
    What turns a run's logged KL into the KL summed over action dimensions (NPG's measure): 1 for NPG's
    ``train/kl_divergence`` and PPO's ``train/approx_kl`` (estimated from the log-probabilities of whole actions); for
    TRPO's ``train/kl_divergence_loss``, a mean over states *and* action dimensions of a ``Box`` action space, the number
    of action dimensions (1 for the other spaces, whose SB3 KL is one value per state).
    """
    if not rows or kl_key(rows[0]) != "train/kl_divergence_loss":
        return 1.0
    import gymnasium as gym

    env = gym.make(env_id)
    space = env.action_space
    env.close()
    return float(np.prod(space.shape)) if isinstance(space, gym.spaces.Box) else 1.0


def comparison_series(rows: list[dict[str, float]], kl_factor: float = 1.0) -> dict[str, np.ndarray]:
    """
    Per update of one run: the steps, the measured KL (times ``kl_factor``, see :func:`summed_kl_factor`), the KL
    summed over the updates so far, the policy std, the advantage scale and the last 100 training episodes' return and
    length (NaN where not logged).
    """
    kl = kl_factor * np.array([row.get(kl_key(row), math.nan) for row in rows])
    return {
        "steps": np.array([row["time/total_timesteps"] for row in rows]),
        "KL per update": kl,
        "summed KL": np.nancumsum(kl),
        "std": np.array([row.get("train/std", math.nan) for row in rows]),
        "adv. std": np.array([row.get("train/advantage_std", math.nan) for row in rows]),
        "training return": np.array([row.get("rollout/ep_rew_mean", math.nan) for row in rows]),
        "training ep. length": np.array([row.get("rollout/ep_len_mean", math.nan) for row in rows]),
    }


def comparison_summary(run: dict[str, Any], rows: list[dict[str, float]], kl_factor: float = 1.0) -> dict[str, float]:
    """
    One run's figures for the comparison: samples per update (the median step between updates), number of updates,
    median KL per update and per 1000 samples, the KL summed over the run (all KL times ``kl_factor``), the first and
    last std and advantage scale, the last training return and episode length, the final deterministic return.
    """
    series = comparison_series(rows, kl_factor)
    samples = float(np.median(np.diff(series["steps"]))) if len(rows) > 1 else float(series["steps"][0])
    kl = float(np.nanmedian(series["KL per update"]))
    return {
        "samples per update": samples,
        "updates": float(len(rows)),
        "KL per update": kl,
        "KL per 1000 samples": 1000 * kl / samples,
        "summed KL": float(series["summed KL"][-1]),
        "first std": float(series["std"][0]),
        "last std": float(series["std"][-1]),
        "first adv. std": float(series["adv. std"][0]),
        "last adv. std": float(series["adv. std"][-1]),
        "last training return": float(series["training return"][-1]),
        "last training ep. length": float(series["training ep. length"][-1]),
        "final return": float(run["final_mean_return"]),
    }


def print_comparison(pair: list[tuple[dict[str, Any], list[dict[str, float]]]]) -> None:
    """Two runs of the same env and seed: their summaries, then the medians of each 100k steps side by side."""
    (run, rows), (other, other_rows) = pair
    names = [run["algo"], other["algo"]]
    print(f"\n{names[0]} against {names[1]}, {run['env']} seed {run['seed']}:")
    factors = [summed_kl_factor(run["env"], rows), summed_kl_factor(other["env"], other_rows)]
    for algo, factor in ((run["algo"], factors[0]), (other["algo"], factors[1])):
        if factor != 1:
            print(f"  (KL summed over the action dimensions, as NPG measures it: {algo}'s logged KL times {factor:g})")
    summaries = [comparison_summary(run, rows, factors[0]), comparison_summary(other, other_rows, factors[1])]
    for key in summaries[0]:
        print(f"  {key:>26}  {summaries[0][key]:10.4g}  {summaries[1][key]:10.4g}")
    header = "  ".join(f"{name[:14]:>14}" for name in COMPARED)
    print(f"  medians per 100k steps ({names[0]} / {names[1]}):\n  {'steps':>13}  {header}  {'evaluation':>11}")
    both = [comparison_series(rows, factors[0]), comparison_series(other_rows, factors[1])]
    end = int(max(series["steps"][-1] for series in both))
    for start in range(0, end, 100_000):
        cells = []
        for name in COMPARED:
            values = []
            for series in both:
                inside = (series["steps"] > start) & (series["steps"] <= start + 100_000)
                finite = series[name][inside & np.isfinite(series[name])]
                values.append(float(np.median(finite)) if finite.size else math.nan)
            cells.append(f"{values[0]:6.3g}/{values[1]:<7.3g}")
        evaluations = []
        for candidate in (run, other):
            found = [
                r for s, r in zip(candidate["curve_steps"], candidate["curve_returns"], strict=True) if s == start + 100_000
            ]
            evaluations.append(f"{found[0]:.0f}" if found else "-")
        print(
            f"  {start // 1000:>5}k-{min(start + 100_000, end) // 1000:>5}k  {'  '.join(cells)}  {'/'.join(evaluations):>11}"
        )


def plot_comparison(pair: list[tuple[dict[str, Any], list[dict[str, float]]]], path: pathlib.Path) -> None:
    """The evaluations, then each compared quantity against the steps, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.4), sharex=True)
    panels = ["evaluations", *COMPARED, "KL / target"]
    factors = [summed_kl_factor(run["env"], rows) for run, rows in pair]
    for (run, rows), factor, colour in zip(pair, factors, ("tab:red", "tab:blue"), strict=True):
        series = comparison_series(rows, factor)
        label = f"{run['algo'].upper()} (final {run['final_mean_return']:.0f})"
        for ax, name in zip(axes.flat, panels, strict=True):
            if name == "evaluations":
                ax.plot(run["curve_steps"], run["curve_returns"], "o-", color=colour, markersize=3, label=label)
            elif name == "KL / target":
                ax.plot(series["steps"], [quantities(row)["KL/target"] for row in rows], color=colour, linewidth=0.8)
            else:
                ax.plot(series["steps"], series[name], color=colour, linewidth=0.9)
            ax.set_title(name, fontsize="medium")
            ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    for name, ax in zip(panels, axes.flat, strict=True):
        logged = np.concatenate([comparison_series(rows)[name] for _, rows in pair]) if name in COMPARED else np.array([])
        if name in ("KL per update", "adv. std") and np.any(np.asarray(logged) > 0):  # not when the runs do not log it
            ax.set_yscale("log")
    for ax in axes[-1]:
        ax.set_xlabel("environment steps")
    run = pair[0][0]
    fig.suptitle(
        f"{run['env']} seed {run['seed']}: per-update logs of {pair[0][0]['algo']} and {pair[1][0]['algo']} "
        "(KL summed over action dimensions; KL / target in each algorithm's own units)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS / "heldout" / "rewards.jsonl")
    parser.add_argument("--threshold", type=float, default=0.6, help="final / best evaluation below it: a collapse")
    parser.add_argument("--envs", nargs="+", default=None, help="env ids or groups (classic, box2d, mujoco); default: all")
    parser.add_argument("--algos", nargs="+", default=None, help="default: all")
    parser.add_argument("--out-dir", type=pathlib.Path, default=None, help="default: diagnosis/ beside the results")
    parser.add_argument("--compare", default=None, help="set each run beside this algorithm's run on the same env and seed")
    args = parser.parse_args(argv)
    if not 0 < args.threshold <= 1:
        parser.error(f"--threshold must be in (0, 1], got {args.threshold}")
    envs = None if args.envs is None else expand_envs(args.envs)
    every_run = [
        run for runs in group_results(read_jsonl(args.results)).values() for run in runs if envs is None or run["env"] in envs
    ]
    runs = [run for run in every_run if args.algos is None or run["algo"] in args.algos]
    logs = {
        id(run): read_update_log(args.results.parent / run["update_log"])
        for run in every_run
        if run.get("update_log") and (args.results.parent / run["update_log"]).is_file()
    }
    out_dir = args.out_dir or args.results.parent / "diagnosis"
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
    if args.compare is not None:
        compare(runs, every_run, logs, args.compare, out_dir)
    return collapsed


def compare(
    runs: list[dict[str, Any]],
    every_run: list[dict[str, Any]],
    logs: dict[int, list[dict[str, float]]],
    other_algo: str,
    out_dir: pathlib.Path,
) -> None:
    """Each run with a log beside the ``other_algo`` run with a log on the same env and seed (see :func:`main`)."""
    pairs = [
        [(run, logs[id(run)]), (other, logs[id(other)])]
        for run in runs
        if id(run) in logs and run["algo"] != other_algo
        for other in every_run
        if id(other) in logs and other["algo"] == other_algo and (other["env"], other["seed"]) == (run["env"], run["seed"])
    ]
    if not pairs:
        print(f"no run has a per-update log beside a {other_algo} run with one on the same env and seed")
    for pair in pairs:
        print_comparison(pair)
        run = pair[0][0]
        out_dir.mkdir(parents=True, exist_ok=True)
        figure = out_dir / f"{run['algo']}_vs_{other_algo}_{run['env']}_seed{run['seed']}.png"
        plot_comparison(pair, figure)
        print(f"  wrote {figure}")


if __name__ == "__main__":
    main()
