"""
Training time per 1e6-step run, NPG against TRPO, from the reward benchmark's records: what the same returns cost.

Only runs made two at a time, one per core, NPG and TRPO side by side (the reward queue's two lanes), are comparable:
pick them with ``--since`` (the runs recorded on or after a date) and the results files they went to. For each env:
the runs' seeds, NPG's and TRPO's ``train_time_s`` (``learn()`` only, as ``benchmarks/rewards.py`` records it: wall
seconds) per run, their medians and the ratio of the medians, and the final returns beside them. Where both runs
were stopped for a while (another benchmark's quiet measurement), ``--pauses`` names the file of those pauses (lines
``<ISO time> paused ...`` and ``<ISO time> resumed ...``), and the time a run spent stopped is subtracted from its
``train_time_s`` (its training taken as the ``run_time_s`` before its record's ``date``). Usage::

    python benchmarks/train_time.py --since 2026-12-02 --pauses benchmarks/results/heldout/pauses.txt \\
        --results benchmarks/results/heldout/rewards.jsonl benchmarks/results/heldout/same_load/rewards.jsonl

Writes ``benchmarks/results/heldout/train_time.md`` (``--out``) and prints it.
"""

import argparse
import datetime
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

from common import RESULTS, markdown_table, read_jsonl

ALGORITHMS = ("npg", "trpo")


def read_pauses(path: pathlib.Path | None) -> list[tuple[datetime.datetime, datetime.datetime]]:
    """The (start, end) of each pause in a pauses file (``<ISO time> paused ...`` then ``<ISO time> resumed ...``)."""
    if path is None:
        return []
    pauses, start = [], None
    for line in path.read_text().splitlines():
        stamp, _, rest = line.partition(" ")
        time = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc)
        if rest.startswith("paused"):
            start = time
        elif rest.startswith("resumed") and start is not None:
            pauses.append((start, time))
            start = None
    return pauses


def paused_seconds(record: dict[str, Any], pauses: Sequence[tuple[datetime.datetime, datetime.datetime]]) -> float:
    """How long the run of ``record`` was stopped: its overlap with the pauses (the run ends at its ``date``)."""
    end = datetime.datetime.fromisoformat(record["date"])
    start = end - datetime.timedelta(seconds=record["run_time_s"])
    return sum(max(0.0, (min(end, pause_end) - max(start, pause_start)).total_seconds()) for pause_start, pause_end in pauses)


def comparable_runs(
    paths: Sequence[pathlib.Path], since: str, pauses: Sequence[tuple[datetime.datetime, datetime.datetime]] = ()
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """
    The runs of each env and algorithm recorded on or after ``since`` (an ISO date), sorted by seed, each with
    ``paused_s`` (its time in the pauses) and ``train_s`` (``train_time_s`` without it).
    """
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in paths:
        for record in read_jsonl(path):
            if record["algo"] in ALGORITHMS and record["date"][: len(since)] >= since:
                paused = paused_seconds(record, pauses)
                record = {**record, "paused_s": paused, "train_s": record["train_time_s"] - paused}
                runs.setdefault(record["env"], {}).setdefault(record["algo"], []).append(record)
    for by_algorithm in runs.values():
        for records in by_algorithm.values():
            records.sort(key=lambda record: record["seed"])
    return runs


def time_table(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """One Markdown row per env that has both algorithms: times per run by seed, medians, ratio, final returns."""

    def per_run(records: list[dict[str, Any]], key: str) -> str:
        return ", ".join(f"{record['seed']}: {record[key]:.0f}" for record in records)

    rows = []
    for env, by_algorithm in sorted(runs.items()):
        if not all(algorithm in by_algorithm for algorithm in ALGORITHMS):
            continue
        npg, trpo = by_algorithm["npg"], by_algorithm["trpo"]
        npg_median = statistics.median(record["train_s"] for record in npg)
        trpo_median = statistics.median(record["train_s"] for record in trpo)
        rows.append(
            [
                env,
                per_run(npg, "train_s"),
                per_run(trpo, "train_s"),
                f"{npg_median:.0f} / {trpo_median:.0f}",
                f"{npg_median / trpo_median:.2f}",
                per_run(npg, "final_mean_return"),
                per_run(trpo, "final_mean_return"),
                f"{sum(record['paused_s'] for record in npg + trpo):.0f}",
            ]
        )
    header = [
        "env",
        "NPG train s per run (seed: s)",
        "TRPO train s per run (seed: s)",
        "median NPG / TRPO",
        "ratio",
        "NPG final return",
        "TRPO final return",
        "paused s (subtracted)",
    ]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", nargs="+", type=pathlib.Path, required=True, help="JSON-lines results files")
    parser.add_argument("--since", required=True, help="ISO date (or date and time): the runs recorded from then on")
    parser.add_argument("--pauses", type=pathlib.Path, default=None, help="file of pauses to subtract (see above)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "heldout" / "train_time.md")
    args = parser.parse_args(argv)
    runs = comparable_runs(args.results, args.since, read_pauses(args.pauses))
    sources = ", ".join(f"`{path}`" for path in args.results)
    text = "\n".join(
        [
            "# Training time per run, NPG against TRPO, two runs at a time",
            "",
            f"Generated by `python benchmarks/train_time.py --since {args.since}"
            + (f" --pauses {args.pauses}`" if args.pauses else "`")
            + f" from {sources}: the runs recorded",
            f"from {args.since} on, made two at a time (one per core, NPG and TRPO side by side). `learn()` wall seconds",
            "per 1e6-step run (`train_time_s`, less the time the run was paused), by seed; final return: 10",
            "deterministic episodes of the final model.",
            "",
            *time_table(runs),
            "",
        ]
    )
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
