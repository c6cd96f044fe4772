"""
The arithmetic of the selection protocol (``docs/selection.md``): which NPG entry a MuJoCo env keeps, from the tuning
runs in ``benchmarks/results/selection/rewards.jsonl``.

Per env, the runs are grouped into the shipped entry (runs without a ``variant``) and one candidate per ``variant``
(its ``KEY:VALUE`` overrides). Only tuning seeds count: 0-2 (stage 1) and 20 upwards (stage 2: 20-24). A run on seeds
3-19 (3-9 held out, 10-19 kept for later checks) is never counted: it is listed as ignored, in the record and on
stderr. Two runs of one entry on one seed, or runs of one entry with different saved hyperparameters, stop the script
(the protocol counts one run per entry and seed).

- **Stage 1** (seeds 0-2): each entry's IQM of final returns with its 95 % stratified-bootstrap interval and
  P(candidate > shipped) with its interval (rliable, as ``benchmarks/heldout_stats.py``). Stage 1 of an env is complete
  when the shipped entry and every candidate of the env in the protocol's candidate table have all three seeds. The
  candidates that go to stage 2: those whose stage-1 IQM is at least the shipped entry's, at most two, highest IQM
  first.
- **Stage 2** (seeds 20-24, with 0-2: eight tuning seeds): complete when the shipped entry and the stage-2 candidates
  have all eight. The choice: the candidate with the highest IQM over its eight seeds replaces the entry if that IQM
  is above the shipped entry's on the same seeds; otherwise (ties too) the entry stays. With no candidate at stage 2,
  the entry stays.

IQM: the 25 % trimmed mean over seeds (``rliable.metrics.aggregate_iqm``; with 3 seeds it trims nothing: the mean;
with 8 it is the mean of the middle four). Outputs ``benchmarks/results/selection/stats.md`` and ``stats.json``.
Usage::

    python benchmarks/selection_stats.py                # after each selection run lands
    python benchmarks/selection_stats.py --reps 2000    # quicker, coarser intervals
"""

import argparse
import datetime
import importlib.metadata
import json
import pathlib
import re
import sys
from collections import defaultdict
from typing import Any

import numpy as np
from common import (
    CONFIDENCE,
    REPOSITORY,
    RESULTS,
    canonical_value,
    format_interval,
    improvement_estimate,
    interval_estimates,
    markdown_table,
    read_jsonl,
    repository_path,
    rliable_problem,
    variant_of,
)

STAGE_1_SEEDS = (0, 1, 2)
STAGE_2_SEEDS = (20, 21, 22, 23, 24)
#: Seeds never run while choosing: 3-9 are held out, 10-19 kept for later checks
NOT_TUNING_SEEDS = range(3, 20)
#: At most this many candidates go to stage 2
STAGE_2_CANDIDATES = 2
#: The policy network of the RL Zoo's PPO MuJoCo entries, named ``ppo_net`` in the protocol's candidate table
PPO_NET = "dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[256, 256], vf=[256, 256]))"


def entry_name(variant: tuple[str, ...]) -> str:
    """``shipped`` for the shipped entry, else the overrides, the Zoo PPO network written ``ppo_net``."""
    if not variant:
        return "shipped"
    ppo_net = canonical_value(PPO_NET)
    names = []
    for override in variant:
        key, _, value = override.partition(":")
        names.append("ppo_net" if key == "policy_kwargs" and canonical_value(value) == ppo_net else override)
    return ", ".join(names)


def protocol_candidates(path: pathlib.Path) -> dict[str, int]:
    """The number of candidates of each env in the candidate table of the protocol (the rows not named ``shipped``)."""
    if not path.is_file():
        return {}
    counts: dict[str, int] = defaultdict(int)
    text = path.read_text().split("## Candidates", 1)[-1].split("\n## ", 1)[0]
    for env, candidate in re.findall(r"^\| (\S+-v\d+) \| ([^|]+?) \|", text, flags=re.M):
        counts[env] += candidate != "shipped"
    return dict(counts)


def tuning_runs(
    runs: list[dict[str, Any]],
) -> tuple[dict[str, dict[tuple[str, ...], dict[int, dict[str, Any]]]], list[dict[str, Any]]]:
    """
    The NPG runs on tuning seeds by env, entry (its variant) and seed, and the runs left out (other seeds, other
    algorithms), each with why. Raises ``ValueError`` on two runs of one entry and seed, or one entry with two
    different saved hyperparameter sets.
    """
    grouped: dict[str, dict[tuple[str, ...], dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    ignored = []
    for run in runs:
        where = {"algo": run["algo"], "env": run["env"], "seed": run["seed"], "variant": list(variant_of(run))}
        if run["algo"] != "npg":
            ignored.append({**where, "why": "not an NPG run"})
        elif run["seed"] in NOT_TUNING_SEEDS:
            ignored.append({**where, "why": "seeds 3-19 are not tuning seeds (3-9 held out, 10-19 kept for later checks)"})
        elif run["seed"] < 0:
            ignored.append({**where, "why": "not a tuning seed"})
        else:
            entry = grouped[run["env"]][variant_of(run)]
            if run["seed"] in entry:
                raise ValueError(f"two runs of {run['env']} {entry_name(variant_of(run))} on seed {run['seed']}: keep one")
            entry[run["seed"]] = run
    for env, entries in grouped.items():
        for variant, by_seed in entries.items():
            saved = {json.dumps(run.get("hyperparams"), sort_keys=True) for run in by_seed.values()}
            if len(saved) > 1:
                raise ValueError(f"{env} {entry_name(variant)}: runs with different saved hyperparameters ({sorted(saved)})")
    return grouped, ignored


def stage_statistics(
    entries: dict[tuple[str, ...], dict[int, dict[str, Any]]], seeds: tuple[int, ...], reps: int, bootstrap_seed: int
) -> dict[tuple[str, ...], dict[str, Any]]:
    """
    Each entry's runs on ``seeds`` (those it has): seeds, final returns, IQM with its interval, and for a candidate
    P(candidate > shipped) with its interval over the seeds both have (``None`` without shipped runs on them).
    """
    from rliable import metrics

    found = {
        variant: {seed: by_seed[seed]["final_mean_return"] for seed in seeds if seed in by_seed}
        for variant, by_seed in entries.items()
    }
    found = {variant: returns for variant, returns in found.items() if returns}
    scores = {entry_name(variant): np.array([[value] for value in returns.values()]) for variant, returns in found.items()}
    points, intervals = interval_estimates(scores, metrics.aggregate_iqm, reps, bootstrap_seed) if scores else ({}, {})
    stats = {}
    shipped = found.get((), {})
    for variant, returns in found.items():
        name = entry_name(variant)
        cell: dict[str, Any] = {
            "seeds": list(returns),
            "final_returns": list(returns.values()),
            "iqm": points[name],
            "iqm_ci": list(intervals[name]),
            "p_over_shipped": None,
            "p_over_shipped_ci": None,
            "p_seeds": [],
        }
        common_seeds = [seed for seed in returns if seed in shipped]
        if variant and common_seeds:
            point, interval = improvement_estimate(
                np.array([[returns[s]] for s in common_seeds]),
                np.array([[shipped[s]] for s in common_seeds]),
                reps,
                bootstrap_seed,
            )
            cell.update(p_over_shipped=point, p_over_shipped_ci=interval, p_seeds=common_seeds)
        stats[variant] = cell
    return stats


def env_selection(
    entries: dict[tuple[str, ...], dict[int, dict[str, Any]]], expected: int | None, reps: int, bootstrap_seed: int
) -> dict[str, Any]:
    """One env's stages and choice (see the module's docstring), as a JSON-ready record."""
    stage_1 = stage_statistics(entries, STAGE_1_SEEDS, reps, bootstrap_seed)
    complete_1 = [variant for variant, cell in stage_1.items() if cell["seeds"] == list(STAGE_1_SEEDS)]
    candidates_1 = [variant for variant in complete_1 if variant]
    stage_1_complete = () in complete_1 and expected is not None and len(candidates_1) >= expected
    shipped_1 = stage_1[()]["iqm"] if () in complete_1 else None
    at_least_shipped = sorted(
        (variant for variant in candidates_1 if shipped_1 is not None and stage_1[variant]["iqm"] >= shipped_1),
        key=lambda variant: -stage_1[variant]["iqm"],
    )
    to_stage_2 = at_least_shipped[:STAGE_2_CANDIDATES]
    notes = []
    if len(at_least_shipped) > STAGE_2_CANDIDATES and (
        stage_1[at_least_shipped[STAGE_2_CANDIDATES]]["iqm"] == stage_1[to_stage_2[-1]]["iqm"]
    ):
        notes.append("a tie at the last stage-2 place: the protocol does not say which candidate goes on")
    eight = STAGE_1_SEEDS + STAGE_2_SEEDS
    stage_2 = stage_statistics(entries, eight, reps, bootstrap_seed)
    stage_2 = {variant: cell for variant, cell in stage_2.items() if set(cell["seeds"]) & set(STAGE_2_SEEDS)}
    extra = sorted({seed for by_seed in entries.values() for seed in by_seed if seed > max(STAGE_2_SEEDS)})
    if extra:
        notes.append(f"runs on seeds {extra} (beyond stage 2) are listed but not part of the choice")
    stage_2_complete = stage_1_complete and all(
        variant in stage_2 and stage_2[variant]["seeds"] == list(eight) for variant in ((), *to_stage_2)
    )
    choice: dict[str, Any] | None = None
    if stage_1_complete and not to_stage_2:
        choice = {"entry": "shipped", "why": "no candidate's stage-1 IQM reached the shipped entry's: the entry stays"}
    elif stage_2_complete:
        best = max(to_stage_2, key=lambda variant: stage_2[variant]["iqm"])
        tied = [variant for variant in to_stage_2 if stage_2[variant]["iqm"] == stage_2[best]["iqm"]]
        if len(tied) > 1:
            notes.append(f"candidates tied at the highest eight-seed IQM: {[entry_name(variant) for variant in tied]}")
        best_iqm, shipped_iqm = stage_2[best]["iqm"], stage_2[()]["iqm"]
        if best_iqm > shipped_iqm:
            why = f"its eight-seed IQM {best_iqm:.1f} is above the shipped entry's {shipped_iqm:.1f}"
            choice = {"entry": entry_name(best), "variant": list(best), "why": why}
        else:
            why = f"the best candidate ({entry_name(best)}) has IQM {best_iqm:.1f}, not above the shipped entry's"
            choice = {"entry": "shipped", "why": f"{why} {shipped_iqm:.1f}: the entry stays"}

    def named(stage: dict[tuple[str, ...], dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"entry": entry_name(variant), "variant": list(variant), **cell} for variant, cell in stage.items()]

    return {
        "expected_candidates": expected,
        "stage_1": named(stage_1),
        "stage_1_complete": stage_1_complete,
        "to_stage_2": [entry_name(variant) for variant in to_stage_2],
        "stage_2": named(stage_2),
        "stage_2_complete": stage_2_complete,
        "choice": choice,
        "notes": notes,
    }


def stage_table(cells: list[dict[str, Any]], to_stage_2: list[str] | None, with_stage_2: bool) -> list[str]:
    """
    A stage's table: a row per entry (the shipped entry first); with ``to_stage_2`` (``None`` while stage 1 is
    incomplete: "pending") and ``with_stage_2``, a column saying which candidates go on.
    """
    columns = ["entry", "seeds", "final returns", "IQM [95 % CI]", "P(> shipped) [95 % CI]"]
    if with_stage_2:
        columns.append("to stage 2")
    rows = []
    for cell in sorted(cells, key=lambda cell: cell["variant"] != []):
        row = [
            f"`{cell['entry']}`" if cell["variant"] else "shipped",
            ", ".join(str(seed) for seed in cell["seeds"]),
            ", ".join(f"{value:.0f}" for value in cell["final_returns"]),
            format_interval(cell["iqm"], cell["iqm_ci"], len(cell["seeds"]) == 1),
            format_interval(cell["p_over_shipped"], cell["p_over_shipped_ci"], len(cell["p_seeds"]) == 1, 2)
            if cell["variant"]
            else "",
        ]
        if with_stage_2 and to_stage_2 is not None:
            row.append(("yes" if cell["entry"] in to_stage_2 else "no") if cell["variant"] else "")
        elif with_stage_2:
            row.append("pending" if cell["variant"] else "")
        rows.append(row)
    return markdown_table(columns, rows)


def markdown(record: dict[str, Any]) -> str:
    """``stats.md``: per env, the stage-1 table, the stage-2 table and the choice, then the runs left out."""
    lines = [
        "# Selection of the MuJoCo entries: the protocol's numbers",
        "",
        f"Generated by `{record['command']}` on {record['date']} from `{record['source']}`, by the rules of",
        "[docs/selection.md](../../../docs/selection.md). Score of a run: its final return (mean of 10 deterministic",
        "episodes of the final model at 1e6 steps). IQM: the 25 % trimmed mean over seeds (with 3 seeds the mean).",
        f"rliable {record['rliable']}: stratified bootstrap over seeds, {record['reps']} replications, percentile",
        f"intervals, numpy seed {record['bootstrap_seed']}. P(> shipped): the probability that a candidate's seed ends",
        "above a seed of the shipped entry (Mann-Whitney U over the seeds both have, ties one half).",
        "",
    ]
    for env, data in record["envs"].items():
        expected = data["expected_candidates"]
        status = "complete" if data["stage_1_complete"] else "not complete"
        known = f"{expected} candidates in the protocol" if expected is not None else "the env has no row in the protocol"
        stage_1 = stage_table(data["stage_1"], data["to_stage_2"] if data["stage_1_complete"] else None, True)
        lines += [f"## {env}", "", f"Stage 1 (seeds 0-2), {status} ({known}):", "", *stage_1]
        lines.append("")
        if data["stage_1_complete"]:
            lines += [f"To stage 2: {', '.join(f'`{name}`' for name in data['to_stage_2']) or 'none'}.", ""]
        if data["stage_2"]:
            status = "complete" if data["stage_2_complete"] else "not complete"
            lines += [f"Stage 2 (seeds 0-2 and 20-24), {status}:", "", *stage_table(data["stage_2"], None, False), ""]
        choice = data["choice"]
        lines += [f"Choice: **{choice['entry']}**; {choice['why']}." if choice else "Choice: not yet (stages incomplete).", ""]
        lines += [f"Note: {note}." for note in data["notes"]] + ([""] if data["notes"] else [])
    if record["ignored_runs"]:
        lines += ["## Runs left out (never counted)", ""]
        lines += [
            f"- {run['algo']} {run['env']} seed {run['seed']} {entry_name(tuple(run['variant']))}: {run['why']}"
            for run in record["ignored_runs"]
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS / "selection" / "rewards.jsonl")
    parser.add_argument(
        "--protocol", type=pathlib.Path, default=REPOSITORY / "docs" / "selection.md", help="its candidate table"
    )
    parser.add_argument("--envs", nargs="+", default=None, help="default: the envs with runs")
    parser.add_argument("--reps", type=int, default=10_000, help="bootstrap replications (default: %(default)s)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="numpy seed of every bootstrap (default: 0)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=None, help="default: the results file's folder")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    problem = rliable_problem()
    if problem is not None:
        raise SystemExit(problem)
    grouped, ignored = tuning_runs(read_jsonl(args.results))
    for run in ignored:
        print(f"selection_stats: left out {run['algo']} {run['env']} seed {run['seed']}: {run['why']}", file=sys.stderr)
    expected = protocol_candidates(args.protocol)
    envs = args.envs or sorted(grouped)
    record = {
        "command": " ".join(["python benchmarks/selection_stats.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": repository_path(args.results),
        "rliable": importlib.metadata.version("rliable"),
        "reps": args.reps,
        "bootstrap_seed": args.bootstrap_seed,
        "confidence": CONFIDENCE,
        "envs": {env: env_selection(grouped.get(env, {}), expected.get(env), args.reps, args.bootstrap_seed) for env in envs},
        "ignored_runs": ignored,
    }
    out_dir = args.out_dir or args.results.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stats.json").write_text(json.dumps(record, indent=1) + "\n")
    (out_dir / "stats.md").write_text(markdown(record))
    print((out_dir / "stats.md").read_text())
    return record


if __name__ == "__main__":
    main()
