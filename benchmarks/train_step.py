"""
Train-step benchmark: NPG (each Fisher backend) against sb3-contrib TRPO at matched settings.

``npg-exact`` is ``npg-gauss_newton`` with ``step_length="exact"`` (the KL measured until it is ``target_kl``
within 5 %); its cells also give its extra time over ``npg-gauss_newton`` (paired median over rounds).

Every model gets the same rollout buffer (same env, rollout size, network, CG steps, critic epochs
and minibatch size), and ``train()`` is timed over repeated calls, interleaved round-robin so that
load on the machine hits every model alike. Prints medians and NPG/TRPO ratios, then:

* the measured KL per update (median over 20 real updates) for each backend, on CartPole-v1 and HalfCheetah-v5;
* the extra time of ``step_length="exact"`` late in training, where its search works most: both step lengths
  from the same saved state of a trained CartPole-v1 model (nearly deterministic), paired call by call;
* the peak memory of ``train()`` at 16k samples (each model in a fresh process, peak RSS growth);
* scaling tables: train-step time against batch size (1k to 16k) and network width (64 to 512);
* the fast paths that rest on torch internals (``--parts fast_paths``): NPG's ``train()`` with each one on and
  forced off (its public fallback), interleaved, as the fraction of ``train()`` each one saves.

Results go to ``benchmarks/results/train_step.json`` and, as Markdown, ``benchmarks/results/train_step.md``.

Usage::

    python benchmarks/train_step.py            # everything (about 30-60 minutes on 2 cores)
    python benchmarks/train_step.py --quick    # fewer repeats, smaller sweeps (a few minutes)
    python benchmarks/train_step.py --parts timing kl
    python benchmarks/train_step.py --parts fast_paths   # written to train_step_fast_paths.{json,md}
"""

import argparse
import copy
import resource
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from common import machine_line, markdown_table, matched_model, write_record
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

import sb3_npg.fast.critic
import sb3_npg.fast.mlp
from sb3_npg import NPG
from sb3_npg.constants import FISHER_BACKENDS, STEP_LENGTHS

ALGORITHMS = ("trpo", *(f"npg-{backend}" for backend in FISHER_BACKENDS), "npg-exact")


def make_model(algorithm: str, env_id: str, n_steps: int, width: int, **kwargs: Any) -> BaseAlgorithm:
    """A TRPO or NPG model at the matched settings (``common.matched_model``), seed 0, a ``width`` x ``width`` MLP."""
    return matched_model(algorithm, env_id, n_steps, seed=0, policy_kwargs=dict(net_arch=[width, width]), **kwargs)


def shared_rollout_models(algorithms: list[str], env_id: str, n_steps: int, width: int) -> dict[str, BaseAlgorithm]:
    """Build the models and fill one rollout buffer (collected by the first), shared by all of them."""
    models = {algorithm: make_model(algorithm, env_id, n_steps, width) for algorithm in algorithms}
    first = next(iter(models.values()))
    _, callback = first._setup_learn(n_steps)
    callback.on_training_start(locals(), globals())
    first.collect_rollouts(first.env, callback, first.rollout_buffer, n_rollout_steps=n_steps)  # type: ignore[attr-defined]
    for model in models.values():
        if model is not first:
            model._setup_learn(n_steps)
        model.rollout_buffer = first.rollout_buffer  # type: ignore[attr-defined]
    return models


def time_train(models: dict[str, BaseAlgorithm], repeats: int) -> dict[str, dict[str, float]]:
    """
    Time ``train()`` per model, calls interleaved round-robin (after one warm-up round).

    :return: per model, the median milliseconds and the median over rounds of its time divided by TRPO's
        in the same round (a paired ratio: load on the shared machine that lasts a round cancels out); for
        ``npg-exact`` also the paired ratio to ``npg-gauss_newton`` and its mean number of KL evaluations
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    kl_evaluations: list[float] = []
    for repeat in range(repeats + 1):
        for name, model in models.items():
            start = time.perf_counter()
            model.train()
            if repeat > 0:
                times[name].append(time.perf_counter() - start)
                if name == "npg-exact":
                    kl_evaluations.append(model.logger.name_to_value["train/kl_evaluations"])
    reference = times.get("trpo")
    timings = {
        name: {
            "median_ms": 1000 * statistics.median(values),
            "ratio_to_trpo": statistics.median(v / r for v, r in zip(values, reference, strict=True)) if reference else 1.0,
        }
        for name, values in times.items()
    }
    if {"npg-exact", "npg-gauss_newton"} <= times.keys():
        pairs = zip(times["npg-exact"], times["npg-gauss_newton"], strict=True)
        timings["npg-exact"]["ratio_to_gauss_newton"] = statistics.median(exact / plain for exact, plain in pairs)
        timings["npg-exact"]["mean_kl_evaluations"] = statistics.mean(kl_evaluations)
    return timings


def timing(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Matched train-step times on HalfCheetah-v5 (64x64, 256x256) and CartPole-v1 (64x64)."""
    rows = []
    for env_id, width in (("HalfCheetah-v5", 64), ("HalfCheetah-v5", 256), ("CartPole-v1", 64)):
        timings = time_train(shared_rollout_models(list(ALGORITHMS), env_id, 2048, width), args.repeats)
        for algorithm, timed in timings.items():
            rows.append(dict(env=env_id, width=width, n_samples=2048, algorithm=algorithm, **timed))
            print(f"{env_id} {width}x{width} {algorithm:18s} {timed['median_ms']:8.1f} ms  {timed['ratio_to_trpo']:.2f}x TRPO")
    return rows


class KLRecorder(BaseCallback):
    """Records ``train/kl_divergence`` after every update (read at the start of the next rollout)."""

    def __init__(self) -> None:
        super().__init__()
        self.kls: list[float] = []

    def _on_rollout_start(self) -> None:
        value = self.model.logger.name_to_value.get("train/kl_divergence")
        if value is not None:
            self.kls.append(float(value))

    def _on_training_end(self) -> None:
        self._on_rollout_start()

    def _on_step(self) -> bool:
        return True


def kl_per_update(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Median measured KL over 20 updates for each backend (default hyperparameters, target_kl 0.01 and 0.05)."""
    rows = []
    n_updates = 6 if args.quick else 20
    for env_id, target_kl in (("CartPole-v1", 0.01), ("HalfCheetah-v5", 0.05)):
        for backend in FISHER_BACKENDS:
            model = NPG("MlpPolicy", env_id, n_steps=2048, target_kl=target_kl, fisher=backend, seed=0)
            recorder = KLRecorder()
            model.learn(n_updates * 2048, callback=recorder)
            ratio = statistics.median(recorder.kls) / target_kl
            rows.append(
                dict(env=env_id, backend=backend, target_kl=target_kl, n_updates=len(recorder.kls), median_ratio=ratio)
            )
            print(f"{env_id} {backend:12s} median KL / target_kl over {len(recorder.kls)} updates: {ratio:.3f}")
    return rows


def exact_overhead(args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    ``train()`` with ``step_length="quadratic"`` and ``"exact"`` from the same state (policy, critic optimiser and
    shuffle restored before every call) of a CartPole-v1 model trained for 5e4 steps: the paired ratio of their
    times is the cost of the search alone, at the number of KL evaluations it needs there.
    """
    model = make_model("npg-gauss_newton", "CartPole-v1", 1024, 64, target_kl=0.01, cg_damping=1e-3)
    model.learn(20_000 if args.quick else 50_000)  # the last rollout stays in the buffer
    policy_state = copy.deepcopy(model.policy.state_dict())
    optimizer_state = copy.deepcopy(model.policy.optimizer.state_dict())
    times: dict[str, list[float]] = {mode: [] for mode in STEP_LENGTHS}
    kl_evaluations = []
    for repeat in range(args.repeats + 1):
        for mode in STEP_LENGTHS:
            model.policy.load_state_dict(policy_state)
            model.policy.optimizer.load_state_dict(optimizer_state)
            model.step_length = mode
            np.random.seed(repeat)
            th.manual_seed(repeat)
            start = time.perf_counter()
            model.train()
            if repeat > 0:
                times[mode].append(time.perf_counter() - start)
                if mode == "exact":
                    kl_evaluations.append(model.logger.name_to_value["train/kl_evaluations"])
    ratio = statistics.median(e / q for e, q in zip(times["exact"], times["quadratic"], strict=True))
    row = dict(
        env="CartPole-v1",
        quadratic_ms=1000 * statistics.median(times["quadratic"]),
        exact_ms=1000 * statistics.median(times["exact"]),
        ratio=ratio,
        mean_kl_evaluations=statistics.mean(kl_evaluations),
    )
    print(f"CartPole-v1, trained: exact / quadratic train() {ratio:.3f} at {row['mean_kl_evaluations']:.1f} KL evaluations")
    return [row]


def _resident_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def peak_memory_child(algorithm: str, n_samples: int, width: int) -> None:
    """(Runs in a fresh process.) Print the peak RSS growth in MiB during one ``train()`` at ``n_samples``."""
    model = shared_rollout_models([algorithm], "HalfCheetah-v5", n_samples, width)[algorithm]
    baseline = _resident_bytes()
    peak = baseline
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _resident_bytes())
            time.sleep(0.0005)

    poller = threading.Thread(target=poll)
    poller.start()
    model.train()
    done.set()
    poller.join()
    print(max(peak, _resident_bytes()) / 2**20 - baseline / 2**20)


def peak_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    Peak RSS growth during one train() at 16k samples on HalfCheetah-v5 (64x64), each model in a fresh process,
    RSS polled every 0.5 ms (glibc returns large freed blocks to the system, so RSS follows the tensors).
    """
    rows = []
    n_samples = 4096 if args.quick else 16384
    for algorithm in ALGORITHMS:
        output = subprocess.run(
            [sys.executable, __file__, "--memory-child", algorithm, str(n_samples)], capture_output=True, text=True, check=True
        ).stdout
        mib = float(output.strip().splitlines()[-1])
        rows.append(dict(algorithm=algorithm, n_samples=n_samples, peak_mib=mib))
        print(f"peak memory of train() at {n_samples} samples, {algorithm:18s} {mib:8.1f} MiB")
    return rows


def scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train-step time against batch size (width 64) and against width (2048 samples), HalfCheetah-v5."""
    rows = []
    batch_sizes = (1024, 4096) if args.quick else (1024, 2048, 4096, 8192, 16384)
    widths = (64, 256) if args.quick else (64, 128, 256, 512)
    repeats = max(2, args.repeats // 3)
    sweep = [(n, 64) for n in batch_sizes] + [(2048, w) for w in widths if w != 64 or 2048 not in batch_sizes]
    for n_samples, width in sweep:
        timings = time_train(shared_rollout_models(list(ALGORITHMS), "HalfCheetah-v5", n_samples, width), repeats)
        for algorithm, timed in timings.items():
            rows.append(dict(n_samples=n_samples, width=width, algorithm=algorithm, **timed))
        print(
            f"{n_samples} samples, {width}x{width}: " + ", ".join(f"{a} {t['median_ms']:.0f} ms" for a, t in timings.items())
        )
    return rows


# Each fast path resting on a torch internal, and how to force its public fallback (the feature test answering no)
FAST_PATHS = {
    "functional fused Adam (critic)": (sb3_npg.fast.critic, "functional_adam_supported"),
    "fused tanh/relu derivative kernels (MLP products)": (sb3_npg.fast.mlp, "fused_activation_kernels_supported"),
}


def fast_paths(args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    NPG's ``train()`` (default backend) with every fast path on, and with each one forced to its public fallback,
    timed interleaved on the same buffer: the saving is the median over rounds of ``1 - on / off``.
    """
    rows = []
    for env_id, width in (("HalfCheetah-v5", 64), ("HalfCheetah-v5", 256), ("CartPole-v1", 64)):
        model = shared_rollout_models(["npg-gauss_newton"], env_id, 2048, width)["npg-gauss_newton"]
        variants = {"all on": None, **{name: name for name in FAST_PATHS}}
        times: dict[str, list[float]] = {variant: [] for variant in variants}
        for repeat in range(args.repeats + 1):
            for variant, disabled in variants.items():
                module, feature_test = FAST_PATHS[disabled] if disabled else (None, "")
                original = getattr(module, feature_test) if module else None
                if module:
                    setattr(module, feature_test, lambda: False)
                try:
                    start = time.perf_counter()
                    model.train()
                    elapsed = time.perf_counter() - start
                finally:
                    if module:
                        setattr(module, feature_test, original)
                if repeat > 0:
                    times[variant].append(elapsed)
        for name in FAST_PATHS:
            saving = statistics.median(1 - on / off for on, off in zip(times["all on"], times[name], strict=True))
            rows.append(
                dict(
                    env=env_id,
                    width=width,
                    fast_path=name,
                    on_ms=1000 * statistics.median(times["all on"]),
                    off_ms=1000 * statistics.median(times[name]),
                    saving=saving,
                )
            )
            print(f"{env_id} {width}x{width} {name}: saves {100 * saving:.1f}% of train()")
    return rows


def _time_table(rows: list[dict[str, Any]], first_column: str) -> list[str]:
    """Markdown rows: one line per (``first_column``, width), one cell per algorithm with its ratio to TRPO."""
    table = []
    for key, width in dict.fromkeys((row[first_column], row["width"]) for row in rows):
        cells = {row["algorithm"]: row for row in rows if (row[first_column], row["width"]) == (key, width)}
        table.append([key, f"{width}x{width}", *(_time_cell(cells[a]) if a in cells else "-" for a in ALGORITHMS)])
    return [*markdown_table([first_column, "network", *ALGORITHMS], table), ""]


def _time_cell(row: dict[str, Any]) -> str:
    """``<ms> (<ratio to TRPO>x)``, and for ``npg-exact`` its extra time over ``npg-gauss_newton`` and KL evaluations."""
    cell = f"{row['median_ms']:.0f} ms ({row['ratio_to_trpo']:.2f}x)"
    if "ratio_to_gauss_newton" in row:
        cell += (
            f", {100 * (row['ratio_to_gauss_newton'] - 1):+.0f} % over gauss_newton, {row['mean_kl_evaluations']:.1f} KL evals"
        )
    return cell


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    lines = [f"Command: `{results['command']}`  ", f"Date: {results['date']}  ", f"Machine: {results['machine']}", ""]
    if "timing" in results:
        lines += _time_table(results["timing"], "env")
    if "kl" in results:
        lines += markdown_table(
            ["env", "target_kl", "backend", "updates", "median KL / target_kl"],
            ([r["env"], r["target_kl"], r["backend"], r["n_updates"], f"{r['median_ratio']:.3f}"] for r in results["kl"]),
        )
        lines.append("")
    if "exact" in results:
        lines += markdown_table(
            ["state", "quadratic train()", "exact train()", "exact / quadratic (paired)", "KL evaluations"],
            (
                [
                    f"{r['env']}, trained 5e4 steps",
                    f"{r['quadratic_ms']:.0f} ms",
                    f"{r['exact_ms']:.0f} ms",
                    f"{r['ratio']:.3f}",
                    f"{r['mean_kl_evaluations']:.1f}",
                ]
                for r in results["exact"]
            ),
        )
        lines.append("")
    if "memory" in results:
        lines += markdown_table(
            ["algorithm", "samples", "peak RSS growth in train()"],
            ([r["algorithm"], r["n_samples"], f"{r['peak_mib']:.0f} MiB"] for r in results["memory"]),
        )
        lines.append("")
    if "scaling" in results:
        lines += _time_table(results["scaling"], "n_samples")
    if "fast_paths" in results:
        lines += markdown_table(
            ["env", "network", "fast path", "train() on", "forced off", "saving"],
            (
                [
                    r["env"],
                    f"{r['width']}x{r['width']}",
                    r["fast_path"],
                    f"{r['on_ms']:.0f} ms",
                    f"{r['off_ms']:.0f} ms",
                    f"{100 * r['saving']:.1f}%",
                ]
                for r in results["fast_paths"]
            ),
        )
        lines.append("")
    return "\n".join(lines)


PARTS = {
    "timing": timing,
    "kl": kl_per_update,
    "exact": exact_overhead,
    "memory": peak_memory,
    "scaling": scaling,
    "fast_paths": fast_paths,
}
DEFAULT_PARTS = ["timing", "kl", "exact", "memory", "scaling"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sweeps")
    parser.add_argument("--repeats", type=int, default=None, help="timed train() calls per model (default 21, quick 5)")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=DEFAULT_PARTS)
    parser.add_argument("--memory-child", nargs=2, metavar=("ALGORITHM", "N_SAMPLES"), help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help="results file name without extension (default: train_step[_quick])")
    args = parser.parse_args()
    th.set_num_threads(1)
    warnings.filterwarnings("ignore")
    if args.memory_child:
        peak_memory_child(args.memory_child[0], int(args.memory_child[1]), 64)
        return
    args.repeats = args.repeats or (5 if args.quick else 21)

    results: dict[str, Any] = {
        "command": "python " + " ".join(["benchmarks/train_step.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_line(),
    }
    for part in args.parts:
        results[part] = PARTS[part](args)
    default_name = "train_step_quick" if args.quick else "train_step"
    if args.parts == ["fast_paths"]:  # its own record: the full results stay
        default_name += "_fast_paths"
    write_record(args.output or default_name, results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
