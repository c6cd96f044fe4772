"""
Statistics of the MuJoCo reward benchmark with ``rliable``: interquartile means with stratified-bootstrap
confidence intervals, the probability of improvement of NPG over TRPO, and performance profiles.

Two sets of runs, reported apart:

- **held-out**: the seeds the NPG entries were not chosen on (3 and up), ``benchmarks/results/heldout/rewards.jsonl``;
- **tuning**: seeds 0-2, on which the entries were chosen (``benchmarks/results/rewards.jsonl``).

For each set, env and algorithm, the score of a run is its final return (mean of 10 deterministic episodes of the
final model, as ``benchmarks/rewards.py`` records it); only runs of today's entries count (a stale run is left
out and counted). Per env (one task) and algorithm: the IQM of the scores with its 95 % stratified-bootstrap
interval (``rliable.library.get_interval_estimates`` with ``rliable.metrics.aggregate_iqm``; with one task the
strata are the seeds, resampled with replacement; with fewer than 4 seeds the IQM trims nothing and is the
mean), and P(NPG > TRPO) (``rliable.metrics.probability_of_improvement``: the Mann-Whitney U statistic over
all NPG-TRPO seed pairs, ties counting one half) with its 95 % interval (each algorithm's seeds resampled
independently). The performance profiles (``rliable.library.create_performance_profile``: the fraction of runs
whose final return exceeds τ, with 95 % bands) are drawn per env, held-out above, tuning below.

Outputs: ``benchmarks/results/heldout/stats.md``, ``stats.json`` and ``performance_profiles.png``. Usage::

    python benchmarks/heldout_stats.py                  # after each new held-out run (2-3 minutes on 1 busy core)
    python benchmarks/heldout_stats.py --reps 2000      # quicker, coarser intervals
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
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from common import BUDGETS, RESULTS, group_results, is_current, markdown_table, read_jsonl, repository_path

MUJOCO = tuple(env for env, (group, _) in BUDGETS.items() if group == "mujoco")
TUNING_SEEDS = (0, 1, 2)
CONFIDENCE = 0.95


def rliable_problem() -> str | None:
    """Why rliable's bootstrap cannot run in this environment (``None`` if it can), with what to install."""
    try:
        from rliable import library  # noqa: F401  (imports arch's bootstrap)
    except Exception as error:  # arch 7 with pandas 3 fails with a TypeError while importing
        return f"rliable cannot be imported ({type(error).__name__}: {error}); pip install rliable 'arch<8' 'pandas<3'"
    import arch

    if int(arch.__version__.split(".")[0]) >= 8:
        return f"arch {arch.__version__} no longer takes the random_state rliable 1.2 passes; pip install 'arch<8' 'pandas<3'"
    return None


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
            cells[env][algo] = [run for run in runs if is_current(run)]
    return cells, stale


def interval_estimates(
    score_dict: dict[str, Any], metric: Any, reps: int, bootstrap_seed: int
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """``rliable.library.get_interval_estimates`` of a scalar ``metric``, seeded; returns points and (low, high)."""
    from rliable import library

    np.random.seed(bootstrap_seed)  # rliable resamples with numpy's global generator
    points, intervals = library.get_interval_estimates(
        score_dict, lambda *scores: np.array([metric(*scores)]), reps=reps, confidence_interval_size=CONFIDENCE
    )
    return (
        {key: float(value[0]) for key, value in points.items()},
        {key: (float(value[0][0]), float(value[1][0])) for key, value in intervals.items()},
    )


def set_statistics(
    cells: dict[str, dict[str, list[dict[str, Any]]]], reps: int, bootstrap_seed: int
) -> dict[str, dict[str, Any]]:
    """
    Per env: each algorithm's seeds, returns, IQM and its interval; and P(NPG > TRPO) with its interval when both
    have runs. Scores are arrays of shape (seeds, 1 task), as rliable takes them.
    """
    from rliable import metrics

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
        if {"npg", "trpo"} <= scores.keys():
            pair = {"npg,trpo": (scores["npg"], scores["trpo"])}
            point, interval = interval_estimates(pair, metrics.probability_of_improvement, reps, bootstrap_seed)
            entry["p_npg_over_trpo"] = point["npg,trpo"]
            entry["p_npg_over_trpo_ci"] = list(interval["npg,trpo"])
        else:
            entry["p_npg_over_trpo"] = entry["p_npg_over_trpo_ci"] = None
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
    colors = {"npg": "tab:red", "trpo": "tab:blue", "ppo": "tab:green", "a2c": "tab:orange"}
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
                    colors={name: colors.get(algo, "k") for algo, name in names.items()},
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


def format_interval(point: float | None, interval: list[float] | None, single: bool, digits: int = 0) -> str:
    """``**point** [low, high]``; ``-`` without runs; no interval from ``single`` seeds (resampling one value)."""
    if point is None or interval is None:
        return "-"
    if single:
        return f"**{point:.{digits}f}** (one seed: no interval)"
    return f"**{point:.{digits}f}** [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def markdown(report: dict[str, Any]) -> str:
    """The tables of ``stats.md``: one per set, a row per env."""
    stale = ", ".join(f"{name} {data['stale_runs_left_out']}" for name, data in report["sets"].items())
    lines = [
        "# MuJoCo final returns: IQM, 95 % intervals, P(NPG > TRPO)",
        "",
        f"Generated by `{report['command']}` on {report['date']} from the JSON lines named below (today's entries",
        f"only; stale runs left out: {stale}). Score of a run: mean return of 10 deterministic episodes of the final",
        f"model at 1e6 steps. rliable {report['rliable']}: stratified bootstrap over seeds, {report['reps']} replications,",
        f"percentile intervals, numpy seed {report['bootstrap_seed']}. IQM: the 25 % trimmed mean over seeds (with fewer",
        "than 4 seeds it trims nothing: the mean). P(NPG > TRPO): the probability that an NPG seed ends above a TRPO",
        "seed (Mann-Whitney U / (n_NPG n_TRPO), ties one half).",
        "",
    ]
    columns = ["env", "NPG IQM [95 % CI]", "TRPO IQM [95 % CI]", "NPG - TRPO (IQM)", "P(NPG > TRPO) [95 % CI]"]
    columns.append("seeds NPG / TRPO")
    for name, data in report["sets"].items():
        rows = []
        for env, entry in data["envs"].items():
            npg, trpo = entry.get("npg", {}), entry.get("trpo", {})
            both = npg.get("iqm") is not None and trpo.get("iqm") is not None
            cells = [
                format_interval(npg.get("iqm"), npg.get("iqm_ci"), npg.get("n") == 1),
                format_interval(trpo.get("iqm"), trpo.get("iqm_ci"), trpo.get("n") == 1),
                f"{npg['iqm'] - trpo['iqm']:+.0f}" if both else "-",
                format_interval(entry["p_npg_over_trpo"], entry["p_npg_over_trpo_ci"], npg.get("n") == trpo.get("n") == 1, 2),
                f"{npg.get('n', 0)} / {trpo.get('n', 0)}",
            ]
            rows.append([env, *cells])
        lines += [f"## {name.capitalize()} seeds ({data['source']})", "", *markdown_table(columns, rows)]
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
    parser.add_argument("--algos", nargs="+", default=["npg", "trpo"], help="default: %(default)s")
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
    heldout_seeds = {r["seed"] for r in read_jsonl(args.heldout)} - tuning_seeds
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
            "envs": set_statistics(cells, args.reps, args.bootstrap_seed),
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
        "sets": report_sets,
    }
    (out_dir / "stats.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "stats.md").write_text(markdown(report))
    performance_profiles(sets, args.algos, out_dir / "performance_profiles.png", min(args.reps, 2000), args.bootstrap_seed)
    print((out_dir / "stats.md").read_text())
    return report


if __name__ == "__main__":
    main()
