"""
Per-update KL plot: the KL each NPG update actually moved the policy by, against ``target_kl``.

NPG logs ``train/kl_divergence``, the mean over the batch's states of ``KL(pi_old || pi_new)`` summed over
action dimensions, *measured after the step*. The step is scaled so that the quadratic model of that KL
equals ``target_kl``; this script shows how close the real KL stays to it over a whole training run.

The model is built from the env's entry in the shipped ``sb3_npg/hyperparams/npg.yml`` (``n_envs``,
``normalize``, ``policy_kwargs`` and the NPG arguments), trained with a CSV logger, and the
``train/kl_divergence`` column is plotted per update, with NPG's own (undamped) step; if the entry uses
TRPO's damped step (``damped_step_size: True``) that run is added to the figure. Outputs
``benchmarks/results/kl_<env>.png`` and ``kl_<env>.csv`` (``kl_<env>_damped.csv``). Usage::

    nice -n 10 python benchmarks/kl_per_update.py                       # CartPole-v1 and HalfCheetah-v5, 1e5 steps
    python benchmarks/kl_per_update.py --envs Pendulum-v1 -n 20000
"""

import argparse
import csv
import pathlib
import tempfile
from typing import Any

import numpy as np
import torch as th
import yaml
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import get_linear_fn
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

import sb3_npg
from sb3_npg import NPG

HERE = pathlib.Path(__file__).resolve().parent
ZOO_ONLY = {"n_timesteps", "n_envs", "normalize", "policy"}


def npg_entry(env_id: str) -> dict[str, Any]:
    """The env's entry of the shipped ``npg.yml`` (YAML anchors resolved)."""
    with open(pathlib.Path(sb3_npg.__file__).parent / "hyperparams" / "npg.yml") as file:
        entries = yaml.safe_load(file)
    return dict(entries.get(env_id, entries["default"]))


def build(env_id: str, entry: dict[str, Any], seed: int) -> NPG:
    """NPG and its (possibly normalised) vectorised env, as RL Zoo would build them from ``entry``."""
    normalize = entry.get("normalize", False)
    env = make_vec_env(env_id, n_envs=int(entry.get("n_envs", 1)), seed=seed)
    if normalize:
        kwargs = eval(normalize) if isinstance(normalize, str) else {}
        env = VecNormalize(env, gamma=entry.get("gamma", 0.99), **kwargs)
    arguments = {key: value for key, value in entry.items() if key not in ZOO_ONLY}
    if isinstance(arguments.get("policy_kwargs"), str):
        arguments["policy_kwargs"] = eval(arguments["policy_kwargs"], {"nn": nn, "dict": dict})
    for key, value in list(arguments.items()):
        if isinstance(value, str) and value.startswith("lin_"):
            initial = float(value.split("_")[1])
            arguments[key] = get_linear_fn(initial, 0.0, 1.0)
    return NPG(entry.get("policy", "MlpPolicy"), env, seed=seed, device="cpu", **arguments)


def per_update_kl(env_id: str, entry: dict[str, Any], n_timesteps: int, seed: int) -> tuple[NPG, list[dict[str, float]]]:
    """Train and return the logged rows (one per update) with the measured KL and step size."""
    model = build(env_id, entry, seed)
    with tempfile.TemporaryDirectory() as folder:
        model.set_logger(configure(folder, ["csv"]))
        model.learn(total_timesteps=n_timesteps)
        with open(pathlib.Path(folder) / "progress.csv") as file:
            rows = [row for row in csv.DictReader(file) if row.get("train/kl_divergence")]
    keys = ("train/n_updates", "train/kl_divergence", "train/step_size", "time/total_timesteps", "rollout/ep_rew_mean")
    return model, [{key: float(row[key]) for key in keys if row.get(key)} for row in rows]


def plot(env_id: str, model: NPG, runs: dict[str, list[dict[str, float]]], path: pathlib.Path) -> None:
    """Measured KL per update of each run (label -> rows), against ``target_kl``; the title gives the first run's spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    kls = {label: np.array([row["train/kl_divergence"] for row in rows]) for label, rows in runs.items()}
    for (label, kl), color in zip(kls.items(), ("tab:red", "tab:blue"), strict=False):
        ax.plot(np.arange(1, len(kl) + 1), kl, marker=".", lw=1, color=color, label=label)
    ax.axhline(model.target_kl, color="black", ls="--", label=f"target_kl = {model.target_kl:g}")
    kl = next(iter(kls.values()))
    ax.set_ylim(0, max(max(k.max() for k in kls.values()), model.target_kl) * 1.3)
    dims = model.action_space.shape[0] if model.action_space.shape else 1
    space = f"{dims}-D Box" if model.action_space.shape else type(model.action_space).__name__
    ax.set_title(f"NPG on {env_id} ({space} actions): KL per update\nmean {kl.mean() / model.target_kl:.2f}x target, "
                 f"range {kl.min() / model.target_kl:.2f}x to {kl.max() / model.target_kl:.2f}x")  # fmt: skip
    ax.set_xlabel("update")
    ax.set_ylabel("mean KL(old || new), summed over action dims")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "HalfCheetah-v5"])
    parser.add_argument("-n", "--n-timesteps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for env_id in args.envs:
        entry = npg_entry(env_id)
        # NPG's own step (undamped xFx: KL-exact by construction); an entry with TRPO's damped step is run too
        variants = {"measured KL after the step": {**entry, "damped_step_size": False}}
        if entry.get("damped_step_size"):
            variants["the same with the entry's damped_step_size=True"] = entry
        runs: dict[str, list[dict[str, float]]] = {}
        for (label, variant), suffix in zip(variants.items(), ("", "_damped"), strict=False):
            model, rows = per_update_kl(env_id, variant, args.n_timesteps, args.seed)
            runs[label] = rows
            with open(args.out / f"kl_{env_id}{suffix}.csv", "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=sorted({key for row in rows for key in row}))
                writer.writeheader()
                writer.writerows(rows)
            kl = np.array([row["train/kl_divergence"] for row in rows]) / model.target_kl
            print(
                f"{env_id} ({'damped' if suffix else 'undamped'} step): {len(rows)} updates, "
                f"KL / target_kl mean {kl.mean():.3f}, min {kl.min():.3f}, max {kl.max():.3f}"
            )
        plot(env_id, model, runs, args.out / f"kl_{env_id}.png")


if __name__ == "__main__":
    main()
