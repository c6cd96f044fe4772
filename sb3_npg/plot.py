"""
``python -m sb3_npg.plot``: learning curves (PNG) from RL Zoo log folders.

Reads what ``python -m sb3_npg.train`` writes under ``<log folder>/<algo>/<env>_<run id>/``: the
``Monitor`` files of the training episodes (``*.monitor.csv``) or, with ``--eval``, the evaluations of
``--eval-freq`` (``evaluations.npz``). One curve per run, e.g.::

    python -m sb3_npg.plot -f logs --env CartPole-v1 Pendulum-v1 -o curves.png

Unlike ``rl_zoo3.plots.plot_train`` (which needs seaborn and opens a window), this writes a file and
needs matplotlib only.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def _runs(log_folder: Path, algo: str, env_id: str) -> list[Path]:
    """The run folders ``<env>_<id>`` of one environment, in run-id order."""
    algo_folder = log_folder / algo
    if not algo_folder.is_dir():
        return []
    runs = []
    for entry in algo_folder.iterdir():
        prefix, _, run_id = entry.name.rpartition("_")
        if entry.is_dir() and prefix == env_id and run_id.isdigit():
            runs.append((int(run_id), entry))
    return [path for _, path in sorted(runs)]


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean over the last ``window`` values (over fewer at the start)."""
    cumulative = np.concatenate([[0.0], np.cumsum(values, dtype=float)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def training_curve(run: Path, window: int) -> tuple[np.ndarray, np.ndarray] | None:
    """
    Episode returns of the training envs against the timestep at which each episode ended.

    :param run: a run folder holding ``*.monitor.csv`` files
    :param window: rolling-mean window, in episodes
    :return: (timesteps, smoothed returns), or ``None`` without episodes
    """
    from stable_baselines3.common.monitor import LoadMonitorResultsError, load_results

    try:
        episodes = load_results(str(run))
    except LoadMonitorResultsError:
        return None
    if len(episodes) == 0:
        return None
    timesteps = np.cumsum(episodes["l"].to_numpy())
    returns = episodes["r"].to_numpy()
    return timesteps, _rolling_mean(returns, window)


def evaluation_curve(run: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """
    Mean evaluation return against timesteps, from ``evaluations.npz``.

    :param run: a run folder
    :return: (timesteps, mean returns), or ``None`` without evaluations
    """
    path = run / "evaluations.npz"
    if not path.is_file():
        return None
    data = np.load(path)
    if len(data["timesteps"]) == 0:
        return None
    return data["timesteps"], data["results"].mean(axis=1)


def plot(
    log_folder: str | Path,
    env_ids: list[str],
    output: str | Path,
    algo: str = "npg",
    evaluations: bool = False,
    window: int = 20,
) -> int:
    """
    Draw the learning curves of every run of ``env_ids`` into one PNG (one panel per environment).

    :param log_folder: the ``-f`` folder of the training runs
    :param env_ids: environment ids
    :param output: the image file to write
    :param algo: the algorithm's folder name
    :param evaluations: plot ``evaluations.npz`` instead of the training episodes
    :param window: rolling-mean window (training episodes)
    :return: the number of curves drawn
    :raises FileNotFoundError: when no run of any of the environments has data
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    log_folder = Path(log_folder)
    figure, axes = plt.subplots(1, len(env_ids), figsize=(6 * len(env_ids), 4.5), squeeze=False)
    n_curves = 0
    for axis, env_id in zip(axes[0], env_ids, strict=True):
        for run in _runs(log_folder, algo, env_id):
            curve = evaluation_curve(run) if evaluations else training_curve(run, window)
            if curve is not None:
                axis.plot(*curve, label=run.name)
                n_curves += 1
        axis.set_title(f"{algo.upper()} on {env_id}")
        axis.set_xlabel("Timesteps")
        axis.set_ylabel("Mean evaluation return" if evaluations else f"Training return ({window}-episode mean)")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize="small")
    if n_curves == 0:
        plt.close(figure)
        what = "evaluations.npz" if evaluations else "monitor files"
        raise FileNotFoundError(f"no {what} for {', '.join(env_ids)} under {log_folder / algo}")
    figure.tight_layout()
    os.makedirs(Path(output).parent, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return n_curves


def main(argv: list[str] | None = None) -> int:
    """
    Command line: ``python -m sb3_npg.plot -f logs --env CartPole-v1 -o curves.png``.

    :param argv: command line arguments (``None``: ``sys.argv[1:]``)
    :return: exit status (0, or 2 when there is nothing to plot)
    """
    parser = argparse.ArgumentParser("python -m sb3_npg.plot", description="Learning curves from RL Zoo logs")
    parser.add_argument("-f", "--log-folder", default="logs", help="log folder of the training runs (default: logs)")
    parser.add_argument("--env", nargs="+", required=True, help="environment id(s), one panel each")
    parser.add_argument("--algo", default="npg", help="algorithm folder (default: npg)")
    parser.add_argument("-o", "--output", default="learning_curve.png", help="PNG file to write")
    parser.add_argument("--eval", action="store_true", help="plot evaluations.npz (from --eval-freq) instead of training")
    parser.add_argument("-w", "--window", type=int, default=20, help="rolling-mean window in episodes (default: 20)")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error("--window must be >= 1")
    try:
        n_curves = plot(args.log_folder, args.env, args.output, args.algo, args.eval, args.window)
    except FileNotFoundError as error:
        print(f"python -m sb3_npg.plot: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {n_curves} curve(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
