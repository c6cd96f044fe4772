"""
Reward benchmark: NPG against TRPO, PPO and A2C through the same RL Zoo pipeline.

Every (algo, env, seed) is one ``rl_zoo3 train`` run (``benchmarks/zoo_run.py``, in its own process):
NPG with the shipped ``sb3_npg/hyperparams/npg.yml``, the others with the RL Zoo's own
hyperparameters, all for the same number of steps on a given env. After training, the saved model is
evaluated over 10 deterministic episodes (``VecNormalize`` statistics loaded as ``rl_zoo3 enjoy`` does).

Outputs (full mode, default paths):

- ``benchmarks/results/rewards.jsonl``: one JSON line per finished run (algo, env, seed, steps,
  final_mean_return, wall_time_s, train_time_s, the learning curve, hyperparameters, date, machine);
- ``benchmarks/results/curves_<group>.png``: learning curves, mean ± std over seeds;
- ``benchmarks/results/summary.md``: the results table;
- ``benchmarks/results/updates/<algo>_<env>_seed<seed>_<steps>_<date>.csv.gz``: each run's per-update log (what the
  SB3 logger holds after every policy update, see ``zoo_run.UpdateLog``), copied out of its log folder when the
  run is recorded (log folders are not kept: a run in progress or a stale one is cleared to start over) and
  named in its JSON line (``"update_log"``, relative to the results file).

Resumable: a run is appended to the results file as soon as it finishes, and runs already in the file
are skipped. Killing the script loses at most the runs in progress (their log folders are cleared and
they start over on the next call). A recorded run whose hyperparameters are no longer those of its
config entry (``npg.yml`` was retuned since) is stale: it is run again, and the old line stays in the
file; tables and figures use the current runs (a stale one only where no current one exists, marked †). Usage::

    python benchmarks/rewards.py --quick                       # minutes: 2 envs, 4 algos, 1 seed, 1e4 steps
    nice -n 10 python benchmarks/rewards.py --envs classic     # 1e5 steps, seeds 0 1 2
    nice -n 10 python benchmarks/rewards.py                    # everything (classic, box2d, mujoco)
    python benchmarks/rewards.py --plot-only                   # redraw the figures and the table
    python benchmarks/rewards.py --adopt <zoo_run.py log folder>  # record a run made outside the suite
    nice -n 10 python benchmarks/rewards.py --envs recurrent   # memory: npg_lstm, ppo_lstm, npg on NoVel envs

The ``recurrent`` group (velocity-masked envs of the RL Zoo, at RecurrentPPO's Zoo budgets) is not part of the
default run; its runs compare RecurrentNPG (``npg_lstm``, the shipped ``npg_lstm.yml``) with RecurrentPPO
(``ppo_lstm``, the Zoo's own entries) and feed-forward NPG (``npg``, the full env's ``npg.yml`` entry), and are
recorded apart, in ``benchmarks/results/recurrent/`` (``rewards.jsonl``, ``summary.md``, ``curves_recurrent.png``).

A variant of the NPG entries (``--hyperparams KEY:VALUE ...``, passed on to the Zoo as overrides, e.g.
``--hyperparams "step_length:'exact'" --algos npg``) is recorded apart, in
``benchmarks/results/variants/<overrides>/rewards.jsonl`` (e.g. ``variants/step_length=exact/``) with its own
log folders; its runs are current while their hyperparameters are today's entry with those overrides, and its
``summary.md`` and curves show it beside the shipped entry's runs (and the other algorithms') from
``benchmarks/results/rewards.jsonl``.
"""

import argparse
import collections
import datetime
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
from common import (
    BUDGETS,
    GROUPS,
    RECURRENT_GROUP,
    UPDATE_LOG,
    append_jsonl,
    expand_envs,
    group_results,
    is_current,
    label,
    machine,
    markdown_table,
    read_jsonl,
    repository_path,
    variant_of,
)

HERE = pathlib.Path(__file__).resolve().parent

ALGOS = ("npg", "trpo", "ppo", "a2c")
RECURRENT_ALGOS = ("npg_lstm", "ppo_lstm", "npg")
"""The algorithms run on the recurrent group by default: memory (NPG, PPO) and NPG without it."""
COMPARISONS = (("npg", "trpo"), ("npg_lstm", "ppo_lstm"))
"""Differences of means shown in the summary table, where both algorithms have runs."""
QUICK_ENVS = ("CartPole-v1", "Pendulum-v1")
QUICK_STEPS = 10_000

RunKey = tuple[str, str, int, int]  # algo, env, seed, steps


def run_key(result: dict[str, Any]) -> RunKey:
    """The (algo, env, seed, budget) a recorded run answers; the Zoo trains whole rollouts, so steps >= budget."""
    budget = result.get("n_timesteps")
    if budget is None:  # lines written before the budget was recorded: the budget rounded up to a whole rollout
        steps = result["steps"]
        budget = next((b for b in (*(b for _, b in BUDGETS.values()), QUICK_STEPS) if 0 <= steps - b < 20_000), steps)
    return result["algo"], result["env"], result["seed"], int(budget)


def keep_update_log(run_dir: pathlib.Path, result: dict[str, Any], results_path: pathlib.Path) -> None:
    """
    Copy a finished run's per-update log (``common.UPDATE_LOG``) into ``updates/`` beside the results file, named
    after the run and its date so that a rerun never overwrites it, and point ``result["update_log"]`` at the copy
    (relative to the results file); a run without one (recorded before the log existed) gets ``None``.
    """
    source = run_dir / UPDATE_LOG
    if not source.is_file():
        result["update_log"] = None
        return
    algo, env, seed, steps = run_key(result)
    stamp = datetime.datetime.fromisoformat(result["date"]).astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    relative = pathlib.Path("updates", f"{algo}_{env}_seed{seed}_{steps}_{stamp}.csv.gz")
    (results_path.parent / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, results_path.parent / relative)
    result["update_log"] = relative.as_posix()


def steps_so_far(run_dir: pathlib.Path) -> int:
    """Environment steps of the finished episodes recorded in a run's monitor files (0 if none yet)."""
    total = 0
    for monitor in run_dir.glob("*/*/*.monitor.csv"):
        try:
            with open(monitor) as file:
                lines = file.read().splitlines()[2:]  # a JSON header line, then "r,l,t"
            total += sum(int(line.split(",")[1]) for line in lines if line.count(",") >= 2)
        except (OSError, ValueError, IndexError):
            continue
    return total


class Runner:
    """Launches ``zoo_run.py`` processes and keeps track of them so that they can be stopped together."""

    def __init__(self, log_root: pathlib.Path, eval_freq: int, verbose: int, variant: tuple[str, ...] = ()) -> None:
        self.log_root = log_root
        self.variant = variant
        self.eval_freq = eval_freq
        self.verbose = verbose
        self.processes: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def run_dir(self, key: RunKey) -> pathlib.Path:
        algo, env, seed, steps = key
        return self.log_root / algo / env / f"seed{seed}_{steps}"

    def __call__(self, key: RunKey) -> dict[str, Any]:
        algo, env, seed, steps = key
        run_dir = self.run_dir(key)
        finished = run_dir / "result.json"
        if finished.is_file():  # finished, but the previous call was killed before recording it (unless stale)
            result = {**json.loads(finished.read_text()), "n_timesteps": steps, **self._variant_field()}
            if is_current(result):
                return result
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts over
        run_dir.mkdir(parents=True)
        command = [sys.executable, str(HERE / "zoo_run.py"), "--algo", algo, "--env", env, "--seed", str(seed)]
        command += ["--n-timesteps", str(steps), "--log-folder", str(run_dir), "--eval-freq", str(self.eval_freq)]
        command += ["--hyperparams", *self.variant] if self.variant else []
        start = time.perf_counter()
        with open(run_dir / "output.log", "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            with self.lock:
                self.processes.add(process)
            returncode = process.wait()
            with self.lock:
                self.processes.discard(process)
        if returncode != 0 or not finished.is_file():
            tail = (run_dir / "output.log").read_text().strip().splitlines()[-5:]
            raise RuntimeError(f"{algo} {env} seed {seed} failed (exit {returncode}):\n  " + "\n  ".join(tail))
        result = json.loads(finished.read_text())
        result["wall_time_s"] = round(time.perf_counter() - start, 2)
        result["n_timesteps"] = steps
        result.update(self._variant_field())
        return result

    def _variant_field(self) -> dict[str, list[str]]:
        return {"variant": list(self.variant)} if self.variant else {}

    def stop(self) -> None:
        with self.lock:
            for process in self.processes:
                process.terminate()


def run_all(
    keys: list[RunKey], results_path: pathlib.Path, runner: Runner, jobs: int, info: dict[str, Any]
) -> tuple[int, list[str]]:
    """Run every key not yet in the results file, ``jobs`` at a time; returns (runs done, failures)."""
    from tqdm import tqdm

    recorded = read_jsonl(results_path)
    done = {run_key(r) for r in recorded if is_current(r) and variant_of(r) == runner.variant}
    stale = {run_key(r) for r in recorded} - done
    pending = [key for key in keys if key not in done]
    print(f"{len(keys)} runs, {len(keys) - len(pending)} already in {results_path}, {len(pending)} to do")
    if stale & set(pending):
        print(f"{len(stale & set(pending))} of them recorded with other hyperparameters than today's entry: run again")
    failures: list[str] = []
    if not pending:
        return 0, failures
    bar = tqdm(total=sum(key[3] for key in pending), unit="step", unit_scale=True, dynamic_ncols=True, smoothing=0.0)
    running: dict[Future, RunKey] = {}
    queue = collections.deque(pending)
    finished = 0
    completed_steps = 0

    def describe() -> str:
        return ", ".join(f"{a}/{e}/s{s}" for a, e, s, _ in running.values())

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while queue or running:
                while queue and len(running) < jobs:
                    key = queue.popleft()
                    running[pool.submit(runner, key)] = key
                bar.set_postfix_str(describe())
                completed, _ = wait(running, timeout=10, return_when=FIRST_COMPLETED)
                # steps of finished episodes of the runs in progress (monitor files), so long runs show progress
                in_progress = sum(min(steps_so_far(runner.run_dir(key)), key[3]) for key in running.values())
                bar.n = completed_steps + in_progress
                bar.refresh()
                for future in completed:
                    key = running.pop(future)
                    completed_steps += key[3]
                    bar.n = completed_steps
                    try:
                        result = future.result()
                    except Exception as error:
                        failures.append(str(error))
                        bar.write(f"FAILED {error}")
                        continue
                    result.setdefault("wall_time_s", None)
                    result.update(info, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
                    keep_update_log(runner.run_dir(key), result, results_path)
                    append_jsonl(results_path, result)
                    finished += 1
                    bar.write(
                        f"{key[0]:>5} {key[1]:<25} seed {key[2]}: {result['final_mean_return']:9.1f}"
                        f"  ({result['train_time_s']:.0f} s training)"
                    )
        except BaseException:
            queue.clear()
            runner.stop()
            raise
        finally:
            bar.close()
    return finished, failures


def adopt_run(run_dir: pathlib.Path, results_path: pathlib.Path, variant: tuple[str, ...] = ()) -> list[str]:
    """
    Record a finished ``zoo_run.py`` run made outside the suite, if it used today's entry (with the ``variant``'s
    overrides); returns failures.
    """
    finished = run_dir / "result.json"
    if not finished.is_file():
        return [f"{run_dir}: no result.json (not a finished zoo_run.py run)"]
    result = json.loads(finished.read_text())
    if variant:
        result["variant"] = list(variant)
    if not is_current(result):
        return [f"{run_dir}: its hyperparameters are not today's {result['algo']} entry for {result['env']}"]
    if any(run_key(r) == run_key(result) and label(r) == label(result) and is_current(r) for r in read_jsonl(results_path)):
        return [f"{run_dir}: {run_key(result)} is already recorded"]
    finished_at = datetime.datetime.fromtimestamp(finished.stat().st_mtime, datetime.timezone.utc)
    result.update(machine=machine(), date=finished_at.isoformat(timespec="seconds"), wall_time_s=None)
    result["adopted_from"] = repository_path(run_dir)
    keep_update_log(run_dir, result, results_path)
    append_jsonl(results_path, result)
    print(f"adopted {run_key(result)}: {result['final_mean_return']:.1f}")
    return []


def algo_order(algo: str) -> tuple[int, str]:
    """Sort key of the algorithms in tables and figures: NPG and its baselines, then the recurrent ones, then variants."""
    known = (*ALGOS, *RECURRENT_ALGOS[:2])
    return (known.index(algo) if algo in known else len(known), algo)


def plot_curves(results: list[dict[str, Any]], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """One figure per env group: for each env and algo, mean ± std over seeds of the evaluation return."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = group_results(results)
    envs = [env for env in BUDGETS if any(key[0] == env for key in grouped)]
    envs += sorted({env for env, _ in grouped} - set(envs))
    colors = {
        "npg": "tab:red",
        "trpo": "tab:blue",
        "ppo": "tab:green",
        "a2c": "tab:orange",
        "npg_lstm": "tab:purple",
        "ppo_lstm": "tab:olive",
    }
    figures = []
    for group in (*GROUPS, RECURRENT_GROUP, "other"):
        members = [env for env in envs if BUDGETS.get(env, ("other", 0))[0] == group]
        if not members:
            continue
        fig, axes = plt.subplots(1, len(members), figsize=(4.2 * len(members), 3.4), squeeze=False)
        for ax, env in zip(axes[0], members, strict=True):
            for algo in sorted({a for e, a in grouped if e == env}, key=algo_order):
                runs = [r for r in grouped[(env, algo)] if r["curve_steps"]]
                if not runs:
                    continue
                grid = np.array(runs[0]["curve_steps"], dtype=float)
                curves = np.array([np.interp(grid, r["curve_steps"], r["curve_returns"]) for r in runs])
                mean, std = curves.mean(axis=0), curves.std(axis=0)
                color = colors.get(algo)
                ax.plot(grid, mean, color=color, label=f"{algo.upper()} (n={len(runs)})")
                ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2)
            ax.set_title(env)
            ax.set_xlabel("environment steps")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("evaluation return")
        axes[0][-1].legend(loc="lower right", fontsize="small")
        fig.tight_layout()
        path = out_dir / f"curves_{group}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures.append(path)
    return figures


def summary_table(results: list[dict[str, Any]]) -> str:
    """
    Markdown table: mean ± std over seeds of the final return, per-seed values, NPG - TRPO (and NPG variants - NPG);
    with recurrent runs, NPG_LSTM - PPO_LSTM (each difference of :data:`COMPARISONS` whose two algorithms have runs).
    """
    grouped = group_results(results)
    envs = [env for env in BUDGETS if any(key[0] == env for key in grouped)]
    envs += sorted({env for env, _ in grouped} - set(envs))
    algos = sorted({a for _, a in grouped}, key=algo_order)
    variants = [a for a in algos if a.startswith("npg[")]
    comparisons = [pair for pair in COMPARISONS if set(pair) <= set(algos)] or [COMPARISONS[0]]
    header = ["env", "steps", *(a.upper() for a in algos)]
    header += [f"{a.upper()} - {b.upper()}" for a, b in comparisons] + [f"{a.upper()} - NPG" for a in variants]
    rows = []
    any_stale = False
    for env in envs:
        steps = sorted({run_key(r)[3] for a in algos for r in grouped.get((env, a), [])})
        cells, means = [], {}
        for algo in algos:
            runs = grouped.get((env, algo), [])
            if not runs:
                cells.append("-")
                continue
            values = [r["final_mean_return"] for r in runs]
            means[algo] = float(np.mean(values))
            per_seed = " / ".join(f"{r['final_mean_return']:.0f}{'' if is_current(r) else '†'}" for r in runs)
            any_stale = any_stale or not all(is_current(r) for r in runs)
            cells.append(f"**{np.mean(values):.0f}** ± {np.std(values):.0f} <br><sub>{per_seed}</sub>")
        cells += [f"{means[a] - means[b]:+.0f}" if {a, b} <= means.keys() else "-" for a, b in comparisons]
        cells += [f"{means[a] - means['npg']:+.0f}" if {"npg", a} <= means.keys() else "-" for a in variants]
        rows.append([env, "/".join(f"{s:.0e}".replace("e+0", "e") for s in steps), *cells])
    lines = markdown_table(header, rows)
    times = []
    for algo in algos:
        per_algo = [r["train_time_s"] for (e, a), runs in grouped.items() if a == algo for r in runs if e in envs]
        if per_algo:
            times.append(f"{algo.upper()} {np.mean(per_algo):.0f} s")
    lines.append("")
    if any_stale:
        lines.append("† run with hyperparameters that its config entry no longer has (not rerun yet).")
        lines.append("")
    lines.append("Mean train time per run (all envs above): " + ", ".join(times) + ".")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_ENVS)}, seed 0, {QUICK_STEPS} steps")
    parser.add_argument(
        "--algos",
        nargs="+",
        default=None,
        help=f"default: {' '.join(ALGOS)} ({' '.join(RECURRENT_ALGOS)} on the recurrent group)",
    )
    parser.add_argument(
        "--envs", nargs="+", default=None, help=f"env ids or groups {(*GROUPS, RECURRENT_GROUP)} (default: all but recurrent)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (quick: 0)")
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="override every env's budget")
    parser.add_argument("--eval-freq", type=int, default=-1, help="steps between curve evaluations (-1: budget / 10)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each uses one thread)")
    parser.add_argument("--results", type=pathlib.Path, default=None, help="JSON-lines results file")
    parser.add_argument("--log-root", type=pathlib.Path, default=None, help="RL Zoo log folders of the runs")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figures and the table")
    parser.add_argument(
        "--adopt",
        nargs="+",
        type=pathlib.Path,
        default=[],
        metavar="RUN_DIR",
        help="record finished zoo_run.py runs made outside the suite (e.g. tuning runs) whose hyperparameters\n"
        "are today's entry, instead of training them again",
    )
    parser.add_argument(
        "--hyperparams",
        nargs="+",
        default=[],
        metavar="KEY:VALUE",
        help="a variant: overrides of the entries, passed to the Zoo (e.g. \"step_length:'exact'\"), recorded in\n"
        "results/variants/<overrides>/ and shown beside the shipped entries' runs",
    )
    args = parser.parse_args()

    variant = tuple(args.hyperparams)
    # e.g. variants/step_length=exact: no quotes, colons or slashes in the folder name
    variant_dir = pathlib.Path("variants", ",".join(variant).translate(str.maketrans({"'": "", '"': "", ":": "=", "/": "-"})))
    envs = expand_envs(args.envs or (QUICK_ENVS if args.quick else GROUPS))
    recurrent = all(BUDGETS.get(env, ("other", 0))[0] == RECURRENT_GROUP for env in envs)
    algos = args.algos or list(RECURRENT_ALGOS if recurrent else ALGOS)
    out_dir = HERE / "logs" / "quick" if args.quick else HERE / "results" / (RECURRENT_GROUP if recurrent else "")
    results_path = args.results or out_dir / (variant_dir if variant else "") / "rewards.jsonl"
    out_dir = results_path.parent
    log_root = args.log_root or HERE / "logs" / ("quick" if args.quick else "runs") / (variant_dir if variant else "")
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    unknown = [env for env in envs if env not in BUDGETS and args.n_timesteps is None]
    if unknown:
        parser.error(f"no default budget for {unknown}: pass --n-timesteps")

    failures: list[str] = []
    for run_dir in args.adopt:
        failures += adopt_run(run_dir, results_path, variant)
    if not args.plot_only and not args.adopt:
        budget = {env: args.n_timesteps or (QUICK_STEPS if args.quick else BUDGETS[env][1]) for env in envs}
        keys = [(algo, env, seed, budget[env]) for env in envs for seed in seeds for algo in algos]
        runner = Runner(log_root, args.eval_freq, verbose=0, variant=variant)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on `kill` as on Ctrl-C
        try:
            _, failures = run_all(keys, results_path, runner, args.jobs, {"machine": machine()})
        except (KeyboardInterrupt, SystemExit):
            print(f"\nInterrupted: finished runs are in {results_path}; run the same command again to resume.")
            return 130

    results = read_jsonl(results_path)
    if results and variant:  # beside the shipped entries' runs (and the other algorithms') on the same envs
        shipped = read_jsonl(HERE / ("logs/quick" if args.quick else "results") / "rewards.jsonl")
        results += [r for r in shipped if r["env"] in {v["env"] for v in results}]
    if results:
        out_dir.mkdir(parents=True, exist_ok=True)
        for figure in plot_curves(results, out_dir):
            print(f"wrote {figure}")
        table = summary_table(results)
        (out_dir / "summary.md").write_text(table)
        print(table)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
