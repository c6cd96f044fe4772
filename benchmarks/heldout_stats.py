"""
Statistics of the MuJoCo reward benchmark with ``rliable``: interquartile means with stratified-bootstrap
confidence intervals, the probability of improvement of NPG over each baseline (TRPO, PPO), performance profiles,
learning curves and training time per run.

Two sets of runs, reported apart:

- **held-out**: the seeds the NPG entries were not chosen on (3 and up), ``benchmarks/results/heldout/rewards.jsonl``;
- **tuning**: seeds 0-2, on which the entries were chosen (``benchmarks/results/rewards.jsonl``).

For each set, env and algorithm of ``--algos`` (default ``npg trpo ppo``), the score of a run is its final return
(mean of 10 deterministic episodes of the final model, as ``benchmarks/rewards.py`` records it); only runs of today's
entries count (a stale run is left out and counted). Per env (one task) and algorithm: the IQM of the scores with its
95 % stratified-bootstrap interval (``rliable.library.get_interval_estimates`` with ``rliable.metrics.aggregate_iqm``;
with one task the strata are the seeds, resampled with replacement; with fewer than 4 seeds the IQM trims nothing and
is the mean), and P(NPG > X) for each other algorithm X with runs (``rliable.metrics.probability_of_improvement``:
the Mann-Whitney U statistic over all NPG-X seed pairs, ties counting one half) with its 95 % interval (each
algorithm's seeds resampled independently). The tables get a column group per baseline with runs: without PPO runs
they are the NPG-against-TRPO tables. The performance profiles (``rliable.library.create_performance_profile``: the
fraction of runs whose final return exceeds τ, with 95 % bands) are drawn per env, held-out above, tuning below.

On the held-out runs: the learning curves (evaluation return against steps, per env and algorithm: the IQM over the
seeds at each evaluation step with its 95 % stratified-bootstrap band, ``get_interval_estimates`` of
``aggregate_iqm`` step by step) and each run's ``train_time_s`` with the median per env and algorithm, side by side
(the runs are made two at a time, one per core).

Outputs: ``benchmarks/results/heldout/stats.md``, ``stats.json``, ``performance_profiles.png``, ``costs.md``,
``costs.json`` (training times, learning curves) and ``learning_curves.png``. Usage::

    python benchmarks/heldout_stats.py                  # after each new held-out run (2-3 minutes on 1 busy core)
    python benchmarks/heldout_stats.py --reps 2000      # quicker, coarser intervals
    python benchmarks/heldout_stats.py --npg-results benchmarks/results/heldout/npg/rewards.jsonl
                                                        # the chosen NPG entries' held-out runs against TRPO and PPO
    python benchmarks/heldout_stats.py --npg-results benchmarks/results/heldout/variants/trpo_equivalent/rewards.jsonl \
        benchmarks/results/variants/trpo_equivalent/rewards.jsonl --out-dir benchmarks/results/heldout/variants/trpo_equivalent
                                                        # an NPG variant against the same TRPO runs

rliable 1.2 bootstraps with ``arch`` and passes it ``random_state``, which arch 8 no longer accepts, and
arch 7 does not import with pandas 3: the ``benchmarks`` extra pins ``arch<8`` and ``pandas<3``. The bootstrap
draws from numpy's global generator (rliable's ``random_state`` does not reach the resampling), seeded here
before every estimate (``--bootstrap-seed``), so the same results give the same intervals.
"""

import argparse
import datetime
import importlib.metadata
import json
import pathlib
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from common import (
    BUDGETS,
    CONFIDENCE,
    RESULTS,
    format_interval,
    group_results,
    improvement_estimate,
    interval_estimates,
    is_current,
    label,
    markdown_table,
    read_jsonl,
    repository_path,
    rliable_problem,
)

MUJOCO = tuple(env for env, (group, _) in BUDGETS.items() if group == "mujoco")
TUNING_SEEDS = (0, 1, 2)
#: The color of each algorithm in the figures
COLORS = {
    "npg": "tab:red",
    "trpo": "tab:blue",
    "ppo": "tab:green",
    "a2c": "tab:orange",
    "npg_lstm": "tab:red",
    "ppo_lstm": "tab:green",
}


def scores_by_cell(
    results: list[dict[str, Any]], envs: Sequence[str], algos: Sequence[str], seeds: set[int] | None
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], int]:
    """
    The runs of each env and algorithm (one per seed, today's entries only, restricted to ``seeds`` if given), sorted
    by seed, and how many stale runs were left out.
    """
    grouped = group_results(results)
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
    stale = 0
    for env in envs:
        cells[env] = {}
        for algo in algos:
            # a variant's runs (labelled ``npg[KEY:VALUE,...]``, their overrides per env) count as their algorithm's
            runs = [
                run
                for (group_env, group_label), group in grouped.items()
                if group_env == env and group_label.split("[")[0] == algo
                for run in group
                if seeds is None or run["seed"] in seeds
            ]
            stale += sum(not is_current(run) for run in runs)
            cells[env][algo] = sorted((run for run in runs if is_current(run)), key=lambda run: run["seed"])
            seeds_run = [run["seed"] for run in cells[env][algo]]
            if len(set(seeds_run)) < len(seeds_run):
                variants = sorted({label(run) for run in cells[env][algo]})
                raise ValueError(
                    f"{env}: runs of several {algo} entries on the same seeds ({variants}); give one entry's runs"
                )
    return cells, stale


def improvement_key(algo: str, baseline: str) -> str:
    """The key of P(``algo`` > ``baseline``) in the records: ``p_npg_over_trpo``, ``p_npg_over_ppo``, ..."""
    return f"p_{algo}_over_{baseline}"


def set_statistics(
    cells: dict[str, dict[str, list[dict[str, Any]]]], algos: Sequence[str], reps: int, bootstrap_seed: int
) -> dict[str, dict[str, Any]]:
    """
    Per env: each algorithm's seeds, returns, IQM and its interval; and, for the first algorithm of ``algos`` against
    each other one, P(first > other) with its interval when both have runs (``None`` otherwise). Scores are arrays of
    shape (seeds, 1 task), as rliable takes them.
    """
    from rliable import metrics

    first, *baselines = algos
    stats: dict[str, dict[str, Any]] = {}
    for env, by_algo in cells.items():
        scores = {algo: np.array([[run["final_mean_return"]] for run in runs]) for algo, runs in by_algo.items() if runs}
        points, intervals = interval_estimates(scores, metrics.aggregate_iqm, reps, bootstrap_seed) if scores else ({}, {})
        entry: dict[str, Any] = {
            algo: {
                "n": len(runs),
                "seeds": [run["seed"] for run in runs],
                "final_returns": [run["final_mean_return"] for run in runs],
                "iqm": points.get(algo),
                "iqm_ci": list(intervals[algo]) if algo in intervals else None,
            }
            for algo, runs in by_algo.items()
        }
        for baseline in baselines:
            key = improvement_key(first, baseline)
            if {first, baseline} <= scores.keys():
                entry[key], entry[f"{key}_ci"] = improvement_estimate(scores[first], scores[baseline], reps, bootstrap_seed)
            else:
                entry[key] = entry[f"{key}_ci"] = None
        stats[env] = entry
    return stats


def performance_profiles(
    sets: dict[str, dict[str, dict[str, list[dict[str, Any]]]]],
    algos: Sequence[str],
    path: pathlib.Path,
    reps: int,
    bootstrap_seed: int,
) -> None:
    """
    One panel per set (rows) and env (columns): ``rliable.library.create_performance_profile`` of the final returns
    (fraction of runs above τ, 95 % band), τ over the range of the env's returns in both sets.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library, plot_utils

    envs = list(next(iter(sets.values())))
    fig, axes = plt.subplots(len(sets), len(envs), figsize=(4.6 * len(envs), 3.6 * len(sets)), squeeze=False)
    for column, env in enumerate(envs):
        returns = [run["final_mean_return"] for cells in sets.values() for runs in cells[env].values() for run in runs]
        low, high = (min(returns), max(returns)) if returns else (0.0, 1.0)
        taus = np.linspace(low - 0.05 * (high - low + 1), high + 0.05 * (high - low + 1), 101)
        for row, (name, cells) in enumerate(sets.items()):
            ax = axes[row][column]
            names = {algo: f"{algo.upper()} (n={len(cells[env][algo])})" for algo in algos if cells[env][algo]}
            scores = {names[algo]: np.array([[run["final_mean_return"]] for run in cells[env][algo]]) for algo in names}
            if scores:
                np.random.seed(bootstrap_seed)
                profiles, bands = library.create_performance_profile(
                    scores, taus, reps=reps, confidence_interval_size=CONFIDENCE
                )
                plot_utils.plot_performance_profiles(
                    profiles,
                    taus,
                    performance_profile_cis=bands,
                    ax=ax,
                    colors={name: COLORS.get(algo, "k") for algo, name in names.items()},
                    xlabel=r"final return $\tau$",
                    ylabel=r"fraction of runs $> \tau$" if column == 0 else "",
                    labelsize="medium",
                    ticklabelsize="small",
                )
                ax.legend(fontsize="small")  # the profiles' lines, labelled with the algorithm and its seeds
            ax.set_title(f"{env}, {name} seeds", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_statistics(
    cells: dict[str, dict[str, list[dict[str, Any]]]], reps: int, bootstrap_seed: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """
    Per env and algorithm with runs: the evaluation steps every run has, and at each of them the IQM over the seeds of
    the evaluation return with its 95 % stratified-bootstrap interval (``rliable.library.get_interval_estimates`` of
    ``rliable.metrics.aggregate_iqm`` applied step by step to scores of shape (seeds, 1 task, steps): one bootstrap
    draw of the seeds serves every step, as rliable draws its sample-efficiency curves).
    """
    from rliable import library, metrics

    curves: dict[str, dict[str, dict[str, Any]]] = {}
    for env, by_algo in cells.items():
        curves[env] = {}
        for algo, runs in by_algo.items():
            runs = [run for run in runs if run.get("curve_steps")]
            if not runs:
                continue
            steps = sorted(set.intersection(*(set(run["curve_steps"]) for run in runs)))
            scores = np.array(
                [[[dict(zip(run["curve_steps"], run["curve_returns"], strict=True))[step] for step in steps]] for run in runs]
            )
            np.random.seed(bootstrap_seed)
            points, intervals = library.get_interval_estimates(
                {algo: scores},
                lambda frames: np.array([metrics.aggregate_iqm(frames[..., step]) for step in range(frames.shape[-1])]),
                reps=reps,
                confidence_interval_size=CONFIDENCE,
            )
            curves[env][algo] = {
                "seeds": [run["seed"] for run in runs],
                "steps": steps,
                "iqm": [float(value) for value in points[algo]],
                "iqm_ci_low": [float(value) for value in intervals[algo][0]],
                "iqm_ci_high": [float(value) for value in intervals[algo][1]],
            }
    return curves


def plot_learning_curves(curves: dict[str, dict[str, dict[str, Any]]], path: pathlib.Path, title: str) -> None:
    """One panel per env: each algorithm's IQM of the evaluation return against steps, with its 95 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 3.6), squeeze=False)
    for ax, (env, by_algo) in zip(axes[0], curves.items(), strict=True):
        for algo, curve in by_algo.items():
            color = COLORS.get(algo, "k")
            ax.plot(curve["steps"], curve["iqm"], color=color, label=f"{algo.upper()} (n={len(curve['seeds'])})")
            ax.fill_between(curve["steps"], curve["iqm_ci_low"], curve["iqm_ci_high"], color=color, alpha=0.2)
        ax.set_title(env, fontsize="medium")
        ax.set_xlabel("steps")
        ax.grid(alpha=0.3)
        if by_algo:
            ax.legend(fontsize="small")
    axes[0][0].set_ylabel("evaluation return (IQM, 95 % band)")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_times(cells: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per env and algorithm with timed runs: each run's ``train_time_s`` by seed, their median and their number."""
    times: dict[str, dict[str, dict[str, Any]]] = {}
    for env, by_algo in cells.items():
        times[env] = {}
        for algo, runs in by_algo.items():
            timed = {run["seed"]: run["train_time_s"] for run in runs if run.get("train_time_s") is not None}
            if timed:
                times[env][algo] = {"n": len(timed), "median_s": statistics.median(timed.values()), "by_seed": timed}
    return times


def costs_markdown(record: dict[str, Any]) -> str:
    """``costs.md``: the training time per run of each algorithm side by side, and the learning curves' figure."""
    first, *baselines = record["algos"]
    others = [algo for algo in baselines if any(algo in by_algo for by_algo in record["train_time"].values())]
    columns = ["env", *(f"{algo.upper()} median s (runs)" for algo in (first, *others))]
    columns += [f"{first.upper()} / {algo.upper()}" for algo in others]
    rows = []
    for env, by_algo in record["train_time"].items():
        cells = [
            f"{by_algo[algo]['median_s']:.0f} ({by_algo[algo]['n']})" if algo in by_algo else "-" for algo in (first, *others)
        ]
        cells += [
            f"{by_algo[first]['median_s'] / by_algo[algo]['median_s']:.2f}" if {first, algo} <= by_algo.keys() else "-"
            for algo in others
        ]
        rows.append([env, *cells])
    lines = [
        f"# What a {record['budget']}-step run costs and how it learns",
        "",
        f"Generated by `{record['command']}` on {record['date']} from the held-out runs of",
        f"{', '.join(f'`{source}`' for source in record['sources'])} (seeds {record['seeds']}, today's entries only).",
        "",
        "## Training time per run",
        "",
        "`train_time_s` of each run (wall seconds of `learn()`, as `benchmarks/rewards.py` records it), median over the",
        "seeds. The runs were made two at a time, one per core of a 2-core CPU machine, with one torch thread each:",
        "a run's time is the time under that load. Pauses of the queue are not subtracted (`benchmarks/train_time.py`",
        "does that for NPG against TRPO).",
        "",
        *markdown_table(columns, rows),
        "",
        "Per seed (seed: train_time_s):",
        "",
    ]
    for env, by_algo in record["train_time"].items():
        for algo, cell in by_algo.items():
            lines.append(
                f"- {env} {algo.upper()}: " + ", ".join(f"{seed}: {time:.0f}" for seed, time in cell["by_seed"].items())
            )
    lines += [
        "",
        "## Learning curves",
        "",
        "Evaluation return against steps (the Zoo's evaluation during training, as `benchmarks/rewards.py` records it),",
        "per env and algorithm: the IQM over the seeds at each evaluation step with its 95 % stratified-bootstrap",
        f"interval (rliable {record['rliable']} `get_interval_estimates` of `aggregate_iqm`, step by step, {record['reps']}",
        f"replications, percentile intervals, numpy seed {record['bootstrap_seed']}; with fewer than 4 seeds the IQM is",
        "the mean).",
        "",
        "![learning curves](learning_curves.png)",
        "",
    ]
    return "\n".join(lines)


def algos_with_runs(report: dict[str, Any]) -> list[str]:
    """The algorithms of ``report`` that have a run in some set and env, in the order of ``--algos`` (the first always)."""
    first, *others = report["algos"]
    ran = {algo for data in report["sets"].values() for entry in data["envs"].values() for algo in others if entry[algo]["n"]}
    return [first, *(algo for algo in others if algo in ran)]


def markdown(report: dict[str, Any]) -> str:
    """
    The tables of ``stats.md``: one per set, a row per env; a column group per baseline (its IQM, the first
    algorithm's IQM minus it, P(first > it)) for the baselines with runs.
    """
    first, *baselines = algos_with_runs(report)
    name, names = first.upper(), [baseline.upper() for baseline in baselines]
    stale = ", ".join(f"{set_name} {data['stale_runs_left_out']}" for set_name, data in report["sets"].items())
    other = names[0] if len(names) == 1 else "B"  # the baseline in the sentence defining P(first > baseline)
    of_baselines = f"{other}: {', '.join(names)}; " if len(names) > 1 else ""
    lines = [
        "# Final returns: IQM, 95 % intervals" + "".join(f", P({name} > {baseline})" for baseline in names),
        "",
        f"Generated by `{report['command']}` on {report['date']} from the JSON lines named below (today's entries",
        f"only; stale runs left out: {stale}). Score of a run: mean return of 10 deterministic episodes of the final",
        f"model at {report['budget']} steps. rliable {report['rliable']}: stratified bootstrap over seeds,",
        f"{report['reps']} replications, percentile intervals, numpy seed {report['bootstrap_seed']}. IQM: the 25 % trimmed",
        f"mean over seeds (with fewer than 4 seeds it trims nothing: the mean). P({name} > {other}): the probability",
        f"that an {name} seed ends above a {other} seed ({of_baselines}Mann-Whitney U / (n_{name} n_{other}), ties one half).",
        "",
    ]
    columns = ["env", f"{name} IQM [95 % CI]"]
    for other in names:
        columns += [f"{other} IQM [95 % CI]", f"{name} - {other} (IQM)", f"P({name} > {other}) [95 % CI]"]
    columns.append("seeds " + " / ".join([name, *names]))
    for set_name, data in report["sets"].items():
        rows = []
        for env, entry in data["envs"].items():
            own = entry[first]
            cells = [format_interval(own["iqm"], own["iqm_ci"], own["n"] == 1)]
            for baseline in baselines:
                other = entry[baseline]
                both = own["iqm"] is not None and other["iqm"] is not None
                key = improvement_key(first, baseline)
                cells += [
                    format_interval(other["iqm"], other["iqm_ci"], other["n"] == 1),
                    f"{own['iqm'] - other['iqm']:+.0f}" if both else "-",
                    format_interval(entry[key], entry[f"{key}_ci"], own["n"] == other["n"] == 1, 2),
                ]
            cells.append(" / ".join(str(entry[algo]["n"]) for algo in (first, *baselines)))
            rows.append([env, *cells])
        lines += [f"## {set_name.capitalize()} seeds ({data['source']})", "", *markdown_table(columns, rows)]
        lines += ["", "Per seed (seed: final return):", ""]
        for env, entry in data["envs"].items():
            for algo in report["algos"]:
                cell = entry.get(algo)
                if cell and cell["n"]:
                    values = ", ".join(f"{s}: {r:.0f}" for s, r in zip(cell["seeds"], cell["final_returns"], strict=True))
                    lines.append(f"- {env} {algo.upper()}: {values}")
        lines.append("")
    lines += ["![performance profiles](performance_profiles.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--heldout", type=pathlib.Path, default=RESULTS / "heldout" / "rewards.jsonl")
    parser.add_argument("--tuning", type=pathlib.Path, default=RESULTS / "rewards.jsonl")
    parser.add_argument("--tuning-seeds", nargs="+", type=int, default=list(TUNING_SEEDS), help="default: %(default)s")
    parser.add_argument("--envs", nargs="+", default=list(MUJOCO), help="default: %(default)s")
    parser.add_argument(
        "--algos",
        nargs="+",
        default=["npg", "trpo", "ppo"],
        help="the first against each other one; the tables show the ones with runs (default: %(default)s)",
    )
    parser.add_argument("--reps", type=int, default=10_000, help="bootstrap replications (default: %(default)s)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="numpy seed of every bootstrap (default: 0)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=None, help="default: the held-out results file's folder")
    parser.add_argument(
        "--npg-results",
        nargs="+",
        type=pathlib.Path,
        default=None,
        metavar="FILE",
        help="NPG runs of a variant (results files of `rewards.py --hyperparams ...`, held-out and tuning seeds) in\n"
        "place of the shipped entries' NPG runs; the other algorithms' runs stay",
    )
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    problem = rliable_problem()
    if problem is not None:
        raise SystemExit(problem)
    tuning_seeds = set(args.tuning_seeds)
    npg_files = args.npg_results or []
    heldout_seeds = {run["seed"] for path in (args.heldout, *npg_files) for run in read_jsonl(path)} - tuning_seeds
    sources = {"held-out": (args.heldout, heldout_seeds), "tuning": (args.tuning, tuning_seeds)}
    sets, report_sets = {}, {}
    for name, (path, seeds) in sources.items():
        runs = read_jsonl(path)
        if args.npg_results is not None:
            runs = [run for run in runs if run["algo"] != "npg"] + [
                run for file in args.npg_results for run in read_jsonl(file)
            ]
        cells, stale = scores_by_cell(runs, args.envs, args.algos, seeds)
        sets[name] = cells
        report_sets[name] = {
            "source": repository_path(path),
            "stale_runs_left_out": stale,
            "envs": set_statistics(cells, args.algos, args.reps, args.bootstrap_seed),
        }
    budgets = {
        run["n_timesteps"]
        for cells in sets.values()
        for by_algo in cells.values()
        for runs in by_algo.values()
        for run in runs
    }
    out_dir = args.out_dir or args.heldout.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(["python benchmarks/heldout_stats.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rliable": importlib.metadata.version("rliable"),
        "reps": args.reps,
        "bootstrap_seed": args.bootstrap_seed,
        "confidence": CONFIDENCE,
        "algos": args.algos,
        "budget": " / ".join(f"{budget:.0e}".replace("e+0", "e") for budget in sorted(budgets)),
        "sets": report_sets,
    }
    (out_dir / "stats.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "stats.md").write_text(markdown(report))
    performance_profiles(sets, args.algos, out_dir / "performance_profiles.png", min(args.reps, 2000), args.bootstrap_seed)
    curves = curve_statistics(sets["held-out"], args.reps, args.bootstrap_seed)
    costs = {
        **{
            key: report[key]
            for key in ("command", "date", "rliable", "reps", "bootstrap_seed", "confidence", "algos", "budget")
        },
        "sources": [repository_path(path) for path in (args.heldout, *npg_files)],
        "seeds": sorted(heldout_seeds),
        "train_time": train_times(sets["held-out"]),
        "learning_curves": curves,
    }
    (out_dir / "costs.json").write_text(json.dumps(costs, indent=1) + "\n")
    (out_dir / "costs.md").write_text(costs_markdown(costs))
    plot_learning_curves(curves, out_dir / "learning_curves.png", f"held-out seeds {sorted(heldout_seeds)}")
    print((out_dir / "stats.md").read_text())
    print((out_dir / "costs.md").read_text())
    return report


if __name__ == "__main__":
    main()
