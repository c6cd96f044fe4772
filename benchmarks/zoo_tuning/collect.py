"""
Collect full-budget candidate runs into ``candidate_runs.jsonl`` and the table of ``README.md``.

A candidate run is one ``benchmarks/zoo_run.py`` run with ``--hyperparams`` overrides, written to
``<logs>/<candidate>/<env>/s<seed>/result.json`` (the layout the tuning queue uses). Runs already in
``candidate_runs.jsonl`` (same candidate, env and seed) are kept as they are; new ones are appended. The
table in ``README.md`` (between its markers) is then rewritten from the whole file.

Usage::

    python benchmarks/zoo_tuning/collect.py [--logs benchmarks/logs/tune]
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/common.py

from common import append_jsonl, markdown_table, read_jsonl  # noqa: E402

RUNS = HERE / "candidate_runs.jsonl"
README = HERE / "README.md"
TABLE_START = "<!-- candidate table: collect.py -->"
TABLE_END = "<!-- end of candidate table -->"
KEPT_FIELDS = (
    "overrides",
    "final_mean_return",
    "final_std_return",
    "curve_steps",
    "curve_returns",
    "train_time_s",
    "command",
)


def new_runs(logs: Path, known: set[tuple[str, str, int]]) -> list[dict[str, Any]]:
    """The finished runs under ``logs`` that ``candidate_runs.jsonl`` does not have yet."""
    runs = []
    for path in sorted(logs.glob("*/*/s*/result.json")):
        result = json.loads(path.read_text())
        candidate = path.parents[2].name
        if (candidate, result["env"], result["seed"]) in known:
            continue
        record = {"candidate": candidate, "algo": result["algo"], "env": result["env"], "seed": result["seed"]}
        record["steps"] = result["n_timesteps"]
        record.update({field: result[field] for field in KEPT_FIELDS})
        runs.append(record)
    return runs


def _steps(steps: int) -> str:
    """1000000 -> '1e6', 50000 -> '5e4'."""
    mantissa, exponent = f"{steps:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def table(runs: list[dict[str, Any]]) -> str:
    """One row per env and set of overrides (as given), one column per seed (0, 1, 2)."""
    rows: dict[tuple[str, tuple[str, ...], int], dict[int, float]] = {}
    for run in runs:
        rows.setdefault((run["env"], tuple(run["overrides"]), run["steps"]), {})[run["seed"]] = run["final_mean_return"]
    table = []
    for (env, overrides, steps), by_seed in sorted(rows.items(), key=lambda item: item[0][0]):
        candidate = " ".join(overrides) or "(the entry as it was)"
        table.append(
            [env, candidate, _steps(steps), *(str(round(by_seed[seed])) if seed in by_seed else "-" for seed in range(3))]
        )
    columns = ["env", "candidate (`--hyperparams`)", "steps", "seed 0", "seed 1", "seed 2"]
    return "\n".join(markdown_table(columns, table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=Path, default=HERE.parent / "logs" / "tune", help="the tuning runs' folder")
    args = parser.parse_args()

    runs = read_jsonl(RUNS)
    added = new_runs(args.logs, {(run["candidate"], run["env"], run["seed"]) for run in runs})
    for run in added:
        append_jsonl(RUNS, run)
    runs += added

    readme = README.read_text()
    start, end = readme.index(TABLE_START) + len(TABLE_START), readme.index(TABLE_END)
    README.write_text(readme[:start] + "\n" + table(runs) + "\n" + readme[end:])
    print(f"{len(added)} new runs; {len(runs)} in {RUNS}")


if __name__ == "__main__":
    main()
