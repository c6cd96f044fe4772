"""
NPG run with TRPO's settings (``sb3_npg.trpo_to_npg_kwargs``) against TRPO itself, update by update: is what differs
between their held-out returns in the update, or in the runs?

For each seed that both results files have with a per-update log (``update_log``, written by
``benchmarks/rewards.py``): the first update (training return of the first rollout, KL per action dimension, value
loss), per-run medians over the run (measured KL / ``target_kl``, critic explained variance, value loss and advantage
std over the second half), the training return of the last 100 updates and the final return. Then, over the seeds, a
two-sided Mann-Whitney U test of the last-100-update training returns and of the final returns (scipy).

KL conventions: NPG logs ``train/kl_divergence``, KL(old ‖ new) summed over the action dimensions; TRPO logs
``train/kl_divergence_loss``, KL(new ‖ old) averaged over them (the logs are read, and the KL column found, as
``diagnose_collapse.py`` does). The action dimension ``d`` is the ratio of the two
logged ``target_kl`` (NPG's is TRPO's times ``d`` under the mapping). Usage::

    python benchmarks/investigations/same_update.py \\
        --npg-results benchmarks/results/heldout/variants/trpo_equivalent/rewards.jsonl \\
        --trpo-results benchmarks/results/heldout/rewards.jsonl --envs Hopper-v5 Walker2d-v5 \\
        --out benchmarks/results/heldout/variants/trpo_equivalent/per_update.md
"""

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # common.py, the benchmarks' helper module
from common import kl_key, markdown_table, read_jsonl, read_update_log

#: Updates at the end of a run whose training returns (``rollout/ep_rew_mean``) are averaged
LAST_UPDATES = 100

Rows = list[dict[str, float]]


def runs_with_logs(path: pathlib.Path, algo: str, env: str) -> dict[int, tuple[dict[str, Any], Rows]]:
    """The runs of ``algo`` on ``env`` in a results file that have a per-update log, by seed, with the log's rows."""
    runs = {}
    for record in read_jsonl(path):
        if record["algo"] == algo and record["env"] == env and record.get("update_log"):
            runs[record["seed"]] = (record, read_update_log(path.parent / record["update_log"]))
    return runs


def run_summary(rows: Rows, kl_scale: float, record: dict[str, Any]) -> dict[str, float]:
    """The figures of one run: first update, per-run medians, end of training, final return."""

    def column(name: str, updates: Rows = rows) -> np.ndarray:
        return np.array([row[name] for row in updates])

    kl = column(kl_key(rows[0]))
    second_half = rows[len(rows) // 2 :]
    return {
        "first_return": rows[0]["rollout/ep_rew_mean"],
        "first_kl": kl[0] * kl_scale,
        "first_value_loss": rows[0]["train/value_loss"],
        "kl_over_target": float(np.median(kl / column("target_kl"))),
        "explained_variance": float(np.median(column("train/explained_variance"))),
        "late_value_loss": float(np.median(column("train/value_loss", second_half))),
        "late_advantage_std": float(np.median(column("train/advantage_std", second_half))),
        "last_training_return": float(column("rollout/ep_rew_mean")[-LAST_UPDATES:].mean()),
        "final_return": float(record["final_mean_return"]),
    }


def compare_env(npg_path: pathlib.Path, trpo_path: pathlib.Path, env: str) -> list[str]:
    """The Markdown section of one env: a table of both algorithms per seed, then the tests over the seeds."""
    npg_runs, trpo_runs = runs_with_logs(npg_path, "npg", env), runs_with_logs(trpo_path, "trpo", env)
    seeds = sorted(set(npg_runs) & set(trpo_runs))
    if not seeds:
        return [f"## {env}", "", "No seed with both algorithms' per-update logs.", ""]
    rows: list[list[Any]] = []
    summaries: dict[str, list[dict[str, float]]] = {"npg": [], "trpo": []}
    for seed in seeds:
        (npg_record, npg_rows), (trpo_record, trpo_rows) = npg_runs[seed], trpo_runs[seed]
        dimensions = round(npg_rows[0]["target_kl"] / trpo_rows[0]["target_kl"])
        npg = run_summary(npg_rows, 1.0 / dimensions, npg_record)
        trpo = run_summary(trpo_rows, 1.0, trpo_record)
        summaries["npg"].append(npg)
        summaries["trpo"].append(trpo)
        for name, summary in (("NPG", npg), ("TRPO", trpo)):
            rows.append(
                [
                    seed,
                    name,
                    f"{summary['first_return']:.2f}",
                    f"{summary['first_kl']:.5f}",
                    f"{summary['first_value_loss']:.4f}",
                    f"{summary['kl_over_target']:.2f}",
                    f"{summary['explained_variance']:.3f}",
                    f"{summary['late_value_loss']:.1e}",
                    f"{summary['late_advantage_std']:.3f}",
                    f"{summary['last_training_return']:.0f}",
                    f"{summary['final_return']:.0f}",
                ]
            )
    header = [
        "seed",
        "algorithm",
        "first rollout: training return",
        "first update: KL per dimension",
        "first update: value loss",
        "KL / target (median)",
        "explained variance (median)",
        "value loss, 2nd half (median)",
        "advantage std, 2nd half (median)",
        f"training return, last {LAST_UPDATES} updates",
        "final return",
    ]
    lines = [f"## {env} (action dimension {dimensions})", "", *markdown_table(header, rows), ""]
    for key, label in (
        ("last_training_return", f"training return of the last {LAST_UPDATES} updates"),
        ("final_return", "final return"),
    ):
        npg_values = [summary[key] for summary in summaries["npg"]]
        trpo_values = [summary[key] for summary in summaries["trpo"]]
        test = mannwhitneyu(npg_values, trpo_values, alternative="two-sided")
        below = sum(n < t for n, t in zip(npg_values, trpo_values, strict=True))
        lines.append(
            f"- {label}: NPG median {np.median(npg_values):.0f}, TRPO {np.median(trpo_values):.0f}; NPG below TRPO on "
            f"{below} of {len(seeds)} seeds; Mann-Whitney U {test.statistic:.0f}, two-sided p = {test.pvalue:.2f}"
        )
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npg-results", type=pathlib.Path, required=True)
    parser.add_argument("--trpo-results", type=pathlib.Path, required=True)
    parser.add_argument("--envs", nargs="+", required=True)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="Markdown file (default: print only)")
    args = parser.parse_args(argv)
    text = "\n".join(
        [
            "# NPG with TRPO's settings against TRPO, update by update",
            "",
            f"Generated by `python benchmarks/investigations/same_update.py` from `{args.npg_results}` (NPG) and",
            f"`{args.trpo_results}` (TRPO). KL per dimension: NPG's KL(old ‖ new) sum / d, TRPO's KL(new ‖ old) mean.",
            "",
            *(line for env in args.envs for line in compare_env(args.npg_results, args.trpo_results, env)),
        ]
    )
    if args.out is not None:
        args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
