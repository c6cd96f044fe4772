"""
``learn()`` with torch's default intra-op threads against one thread, on an idle machine and on a shared one.

Workloads (each with its RL Zoo entry: ``sb3_npg/hyperparams/npg.yml`` and ``npg_lstm.yml`` for NPG and
RecurrentNPG, the Zoo's own ``ppo.yml`` and ``ppo_lstm.yml`` for PPO and RecurrentPPO, their ``-v4`` entries for a
``-v5`` env): NPG and PPO on CartPole-v1 and HalfCheetah-v5, MaskableNPG and MaskablePPO on
``benchmarks/maskable.py``'s ``discrete`` task (``InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55)``,
``gamma=0.4``, default hyperparameters), RecurrentNPG and RecurrentPPO on CartPoleNoVel-v1.

Thread choices:

- ``torch``: torch's default thread count (the number of cores, or ``OMP_NUM_THREADS``), which is what NPG ran with
  before it chose its own: nothing is set, and NPG is given ``num_threads=<that count>``;
- ``1``: ``torch.set_num_threads(1)`` first (and ``num_threads=1`` for NPG);
- ``npg-default`` (NPG only): nothing set, NPG's own default (``num_threads=None``).

Settings:

- ``idle``: one run alone;
- ``one-core-held``: one run while a busy-loop process (``while True: pass``, normal priority) holds a core;
- ``all-cores``: as many runs at once as the machine has cores (seeds 0, 1, ...), each timed on its own.

Every run is a fresh process (forked from the benchmark's, after the imports) that times ``learn()`` only (not
the imports nor the model's creation) with both clocks at once: wall time and the process's CPU time (all its
threads; a thread spinning at a barrier counts). A run that does not finish within the workload's timeout is killed
and recorded as ``> timeout``. Within a setting, each workload's thread choices run in a rotating order.

What the machine runs besides is not controlled here: for the ``idle`` setting, nothing else may run. Usage::

    python benchmarks/threads.py                                   # everything (about 10 minutes on 2 cores)
    python benchmarks/threads.py --workloads npg-cartpole ppo-cartpole --settings idle --steps-scale 0.25
    python benchmarks/threads.py --workloads npg-halfcheetah --repeats 5         # one workload, median of 5 runs

Results go to ``benchmarks/results/threads.json`` and, as Markdown, ``benchmarks/results/threads.md``.
"""

import argparse
import importlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from common import config_entry, machine, markdown_table, masked_task_env, write_record

SETTINGS = ("idle", "one-core-held", "all-cores")
THREADS = ("torch", "1", "npg-default")
NPG_ALGOS = ("npg", "npg_lstm", "maskable_npg")
#: Seconds a run may take to create its model before ``learn()`` (an error in the child shows as this timeout)
CREATION_TIMEOUT = 120.0
#: Imported before the runs are forked (imports only: no torch operation runs in the parent)
PRELOADED = ("rl_zoo3.import_envs", "rl_zoo3.utils", "sb3_contrib", "stable_baselines3", "sb3_npg.zoo")
# name -> (algorithm, env id, timesteps per learn(), timeout in seconds)
WORKLOADS: dict[str, tuple[str, str, int, float]] = {
    "npg-cartpole": ("npg", "CartPole-v1", 4096, 20.0),
    "ppo-cartpole": ("ppo", "CartPole-v1", 4096, 20.0),
    "npg-halfcheetah": ("npg", "HalfCheetah-v5", 4096, 20.0),
    "ppo-halfcheetah": ("ppo", "HalfCheetah-v5", 1024, 20.0),
    "maskable-npg": ("maskable_npg", "discrete", 2048, 20.0),
    "maskable-ppo": ("maskable_ppo", "discrete", 2048, 20.0),
    "recurrent-npg": ("npg_lstm", "CartPoleNoVel-v1", 2048, 20.0),
    "recurrent-ppo": ("ppo_lstm", "CartPoleNoVel-v1", 1024, 20.0),
}


def make_model(algo: str, env_id: str, seed: int, num_threads: int | None) -> Any:
    """The model of one workload: its Zoo entry (or maskable.py's task), ``num_threads`` for the NPG family."""
    from rl_zoo3 import import_envs  # noqa: F401  (registers CartPoleNoVel-v1)
    from rl_zoo3.utils import linear_schedule
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize
    from torch import nn

    from sb3_npg.zoo import ALGORITHMS

    npg_kwargs = {"num_threads": num_threads} if algo in NPG_ALGOS else {}
    if algo in ("maskable_npg", "maskable_ppo"):
        from sb3_contrib import MaskablePPO

        from sb3_npg import MaskableNPG

        algorithm = MaskableNPG if algo == "maskable_npg" else MaskablePPO
        return algorithm("MlpPolicy", masked_task_env(env_id), gamma=0.4, seed=seed, device="cpu", **npg_kwargs)
    from sb3_contrib import RecurrentPPO
    from stable_baselines3 import PPO

    found = config_entry(algo, env_id)
    if found is None:
        raise KeyError(f"no Zoo entry for {algo} on {env_id}")
    entry = dict(found[1])
    entry.pop("n_timesteps", None)
    n_envs = entry.pop("n_envs", 1)
    normalize = entry.pop("normalize", False)
    if isinstance(entry.get("policy_kwargs"), str):
        entry["policy_kwargs"] = eval(entry["policy_kwargs"], {"nn": nn})  # as RL Zoo reads it
    for key, value in entry.items():
        if isinstance(value, str) and value.startswith("lin_"):
            entry[key] = linear_schedule(float(value[len("lin_") :]))
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if normalize:
        env = VecNormalize(env, **(normalize if isinstance(normalize, dict) else {}))
    algorithm = {**ALGORITHMS, "ppo": PPO, "ppo_lstm": RecurrentPPO}[algo]
    return algorithm(env=env, seed=seed, device="cpu", **entry, **npg_kwargs)


def worker(workload: str, threads: str, seed: int, on_start: Callable[[], None]) -> dict[str, float]:
    """
    One timed ``learn()`` in this process: wall and process CPU seconds, and the thread count it ran with.

    :param on_start: called just before ``learn()``
    """
    import torch as th

    algo, env_id, steps, _ = WORKLOADS[workload]
    torch_default = th.get_num_threads()
    if threads == "1":
        th.set_num_threads(1)
    num_threads = {"torch": torch_default, "1": 1, "npg-default": None}[threads]
    warnings.filterwarnings("ignore")
    model = make_model(algo, env_id, seed, num_threads)
    ran_with = getattr(model, "learn_threads", th.get_num_threads())
    on_start()
    wall, cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "learn_threads": ran_with}


def _worker_process(connection: Any, workload: str, threads: str, seed: int) -> None:
    """The body of a forked run: :func:`worker`, its start time (``time.time()``) and result sent to ``connection``."""
    connection.send(worker(workload, threads, seed, on_start=lambda: connection.send(time.time())))
    connection.close()


def run_workers(workload: str, threads: str, n_runs: int) -> list[dict[str, Any]]:
    """
    ``n_runs`` runs at once (seeds 0, 1, ...), each in a process forked from this one (which has imported the
    libraries but run no torch operation, so each child starts with torch's default threads and no thread pool);
    a run still in ``learn()`` after the workload's timeout is killed and marked so.
    """
    timeout = WORKLOADS[workload][3]
    context = multiprocessing.get_context("fork")
    pipes = [context.Pipe(duplex=False) for _ in range(n_runs)]
    processes = [
        context.Process(target=_worker_process, args=(sender, workload, threads, seed))
        for seed, (_, sender) in enumerate(pipes)
    ]
    for process in processes:
        process.start()
    runs: list[dict[str, Any]] = []
    for process, (receiver, _) in zip(processes, pipes, strict=True):
        if not receiver.poll(CREATION_TIMEOUT):
            raise RuntimeError(f"{workload} with threads={threads}: no learn() within {CREATION_TIMEOUT} s")
        started = receiver.recv()
        if receiver.poll(max(0.0, started + timeout - time.time())):
            run = receiver.recv()
            runs.append(run if run["wall"] <= timeout else {"timed_out_after": timeout, **run})
        else:
            runs.append({"timed_out_after": timeout})
        process.kill()
        process.join()
    return runs


def run(workloads: list[str], settings: list[str], repeats: int = 1) -> list[dict[str, Any]]:
    """
    Every workload in every setting with every thread choice, ``repeats`` times (the thread choices' order rotated
    each time); :return: one record per (setting, workload, threads), with the runs of all repeats.
    """
    records: dict[tuple[str, str, str], dict[str, Any]] = {}
    for setting in settings:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if setting == "one-core-held" else None
        try:
            for repeat in range(repeats):
                for index, workload in enumerate(workloads):
                    choices = THREADS if WORKLOADS[workload][0] in NPG_ALGOS else THREADS[:2]
                    first = (index + repeat) % len(choices)
                    for threads in choices[first:] + choices[:first]:
                        n_runs = (os.cpu_count() or 1) if setting == "all-cores" else 1
                        runs = run_workers(workload, threads, n_runs)
                        record = records.setdefault(
                            (setting, workload, threads),
                            {"setting": setting, "workload": workload, "threads": threads, "runs": []},
                        )
                        record["runs"].extend(runs)
                        print(f"{setting} {workload} threads={threads}: {runs}", file=sys.stderr, flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    return list(records.values())


def summary(runs: list[dict[str, Any]], clock: str) -> float | None:
    """The median over the runs of one clock, ``None`` if any run timed out."""
    if any("timed_out_after" in run for run in runs):
        return None
    return statistics.median(run[clock] for run in runs)


def cell(runs: list[dict[str, Any]]) -> str:
    """``wall s / CPU s`` of the median run, or ``> timeout``."""
    wall, cpu = summary(runs, "wall"), summary(runs, "cpu")
    if wall is None or cpu is None:
        return f"> {runs[0].get('timed_out_after', max(r.get('timed_out_after', 0) for r in runs)):.0f} s"
    return f"{wall:.1f} / {cpu:.1f}"


def markdown(records: list[dict[str, Any]], header: str, settings: list[str]) -> str:
    """The results as one Markdown table: a row per workload and thread choice, a column per setting."""
    by_key = {(r["setting"], r["workload"], r["threads"]): r["runs"] for r in records}
    rows = sorted({(r["workload"], r["threads"]) for r in records}, key=lambda k: (list(WORKLOADS).index(k[0]), k[1]))
    lines = [
        header,
        "",
        "`learn()` wall seconds / process CPU seconds (median over the repeats, and over the concurrent runs for all-cores); "
        "`over best` is the wall time over the fastest thread choice of the same workload and setting.",
        "",
    ]
    rows_out = []
    for workload, threads in rows:
        _, env_id, steps, _ = WORKLOADS[workload]
        cells = [f"{workload} ({env_id}, {steps} steps)", threads]
        for setting in settings:
            runs = by_key.get((setting, workload, threads))
            if runs is None:
                cells += ["", ""]
                continue
            walls = {t: summary(r, "wall") for (s, w, t), r in by_key.items() if s == setting and w == workload}
            finished = [w for w in walls.values() if w is not None]
            own = walls[threads]
            cells.append(cell(runs))
            cells.append(f"{own / min(finished):.2f}" if own is not None and finished else "-")
        rows_out.append(cells)
    header_cells = ["workload", "threads", *(cell for setting in settings for cell in (setting, "over best"))]
    return "\n".join(lines + markdown_table(header_cells, rows_out)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every workload's timesteps")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each cell (the median is shown)")
    parser.add_argument("--output", default="threads", help="file name stem under benchmarks/results/")
    args = parser.parse_args()
    if args.steps_scale <= 0:
        raise ValueError(f"--steps-scale must be > 0, got {args.steps_scale}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    for name, (algo, env_id, steps, timeout) in WORKLOADS.items():
        WORKLOADS[name] = (algo, env_id, max(1, round(steps * args.steps_scale)), timeout)
    import torch as th

    for module in PRELOADED:  # once here rather than in every forked run
        importlib.import_module(module)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()[0]
    records = run(args.workloads, args.settings, args.repeats)
    finished = time.strftime("%H:%M UTC", time.gmtime())
    found = {**machine(), "torch_threads": th.get_num_threads()}
    header = (
        f"Command: `python benchmarks/threads.py {' '.join(sys.argv[1:])}`, {started} to {finished}, "
        f"{found['kind']}, torch {found['torch']} (default {found['torch_threads']} threads), "
        f"SB3 {found['sb3']}, Python {found['python']}, sb3_npg commit {found['sb3_npg_commit']}; "
        f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end."
    )
    table = markdown(records, header, args.settings)
    write_record(args.output, {"header": header, "machine": found, "workloads": WORKLOADS, "records": records}, table)
    print(table)


if __name__ == "__main__":
    main()
