"""
What the benchmark scripts share, defined once: where results go, the machine and code a number was measured with,
Markdown tables, JSON and JSON-lines records, and the models and environments the comparisons build.

The scripts import it as ``common`` (each runs as ``python benchmarks/<script>.py``, which puts ``benchmarks/`` on
the import path; the investigations under ``benchmarks/investigations/`` add it themselves).
"""

import json
import os
import pathlib
import platform
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import yaml
from sb3_contrib import TRPO
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import get_linear_fn
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch import nn

import sb3_npg
from sb3_npg import NPG
from sb3_npg.fisher import FISHER_BACKENDS

BENCHMARKS = pathlib.Path(__file__).resolve().parent
#: The committed records of the maintained benchmarks
RESULTS = BENCHMARKS / "results"
#: The hyperparameter files shipped with sb3_npg (``npg.yml``, ``npg_lstm.yml``)
SHIPPED_HYPERPARAMS = pathlib.Path(sb3_npg.__file__).resolve().parent / "hyperparams"
#: The keys of a Zoo entry that configure the environment or the run, not the algorithm
ZOO_ONLY = ("n_timesteps", "n_envs", "normalize", "policy")


# Where a number was measured


def sb3_npg_checkout() -> tuple[pathlib.Path, str | None]:
    """The folder of the ``sb3_npg`` imported, and the commit of its checkout (``None`` for an installed package)."""
    package_dir = pathlib.Path(sb3_npg.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return package_dir, commit


def machine() -> dict[str, Any]:
    """
    Where the numbers were measured, and with which code. Every benchmark runs torch on one thread (each script sets
    it; the reward runs get ``--num-threads 1``).
    """
    import stable_baselines3
    import torch

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sb3": stable_baselines3.__version__,
        "numpy": np.__version__,
        "torch_threads": 1,
        "sb3_npg_commit": sb3_npg_checkout()[1],
    }


def machine_line() -> str:
    """:func:`machine` in one line, for the header of a Markdown record (with the ``sb3_npg`` folder measured)."""
    found = machine()
    package_dir, commit = sb3_npg_checkout()
    code = f"sb3_npg from {package_dir}" + (f" (commit {commit[:10]})" if commit else "")
    return (
        f"{platform.machine()}, {found['cpu_count']} cores, torch {found['torch']} ({found['torch_threads']} thread), "
        f"SB3 {found['sb3']}, Python {found['python']}, {code}"
    )


# Records


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table: the header, the separator, one line per row (cells as ``str`` gives them)."""
    lines = ["| " + " | ".join(str(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def write_record(stem: str, record: dict[str, Any], markdown: str, folder: pathlib.Path = RESULTS) -> None:
    """Write ``<folder>/<stem>.json`` (the record) and ``<folder>/<stem>.md`` (its tables)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(record, indent=1))
    (folder / f"{stem}.md").write_text(markdown)


def read_jsonl(path: pathlib.Path | str) -> list[dict[str, Any]]:
    """All complete lines of a JSON-lines file (a line cut by a kill is ignored; no file: no lines)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_jsonl(path: pathlib.Path | str, record: dict[str, Any]) -> None:
    """Append one record as a JSON line, flushed to disk before returning (a kill loses no finished run)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")
        file.flush()
        os.fsync(file.fileno())


# Models and environments


class NPGWithSB3Rollout(NPG):
    """NPG collecting its rollouts with SB3's ``OnPolicyAlgorithm.collect_rollouts`` (no fast rollout path)."""

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        return OnPolicyAlgorithm.collect_rollouts(self, *args, **kwargs)


#: The algorithms :func:`matched_model` builds (besides ``npg-<backend>`` for each Fisher backend)
MATCHED_ALGORITHMS = ("ppo", "trpo", "npg", "npg-sb3-rollout", "npg-exact")


def matched_model(algorithm: str, env: VecEnv | str, n_steps: int, **kwargs: Any) -> BaseAlgorithm:
    """
    A model at the matched settings of the speed comparisons: ``MlpPolicy``, ``n_steps`` samples per env per rollout,
    minibatches of 128, 10 critic epochs (PPO: 10 epochs) and 10 CG steps (NPG and TRPO).

    :param algorithm: ``ppo``, ``trpo``, ``npg``, ``npg-sb3-rollout`` (:class:`NPGWithSB3Rollout`), ``npg-exact``
        (``step_length="exact"``) or ``npg-<backend>`` (``fisher=<backend>``)
    :param env: the environment, or an env id (one env)
    :param n_steps: samples per env per rollout
    :param kwargs: further arguments of the algorithm (override the matched ones)
    """
    settings: dict[str, Any] = {"n_steps": n_steps, "batch_size": 128, **kwargs}
    if algorithm == "ppo":
        return PPO("MlpPolicy", env, **{"n_epochs": 10, **settings})
    settings = {"cg_max_steps": 10, "n_critic_updates": 10, **settings}
    if algorithm == "trpo":
        return TRPO("MlpPolicy", env, **settings)
    if algorithm == "npg":
        return NPG("MlpPolicy", env, **settings)
    if algorithm == "npg-sb3-rollout":
        return NPGWithSB3Rollout("MlpPolicy", env, **settings)
    if algorithm == "npg-exact":
        return NPG("MlpPolicy", env, step_length="exact", **settings)
    if algorithm.removeprefix("npg-") in FISHER_BACKENDS:
        return NPG("MlpPolicy", env, fisher=algorithm.removeprefix("npg-"), **settings)
    known = [*MATCHED_ALGORITHMS, *(f"npg-{backend}" for backend in FISHER_BACKENDS)]
    raise ValueError(f"Invalid algorithm={algorithm!r}: must be one of {known}")


def npg_entries() -> dict[str, dict[str, Any]]:
    """The entries of the shipped ``npg.yml`` (YAML anchors resolved), by env id (and ``default``, ``atari``)."""
    return yaml.safe_load((SHIPPED_HYPERPARAMS / "npg.yml").read_text())


def npg_entry(env_id: str) -> dict[str, Any]:
    """The env's entry of the shipped ``npg.yml``, or its ``default`` entry (as the Zoo falls back)."""
    entries = npg_entries()
    return dict(entries.get(env_id, entries["default"]))


def _python_value(value: Any) -> Any:
    """An entry's value as the Zoo reads it: ``lin_<x>`` a linear schedule from ``x``, a call string evaluated."""
    if isinstance(value, str) and value.startswith("lin_"):
        return get_linear_fn(float(value.split("_")[1]), 0.0, 1.0)
    if isinstance(value, str) and "(" in value:
        return eval(value, {"nn": nn, "dict": dict})  # the names the Zoo's policy_kwargs strings use
    return value


def entry_model(env_id: str, entry: dict[str, Any], seed: int, model_class: type[NPG] = NPG) -> NPG:
    """
    ``model_class`` and its vectorised env (``n_envs`` copies, ``VecNormalize`` if the entry normalises), built from a
    ``npg.yml`` entry as the RL Zoo builds them; on the CPU.
    """
    normalize = entry.get("normalize", False)
    if isinstance(normalize, str):  # e.g. "{'norm_obs': True, 'norm_reward': False}"
        normalize = eval(normalize, {"nn": nn, "dict": dict})
    env: VecEnv = make_vec_env(env_id, n_envs=int(entry.get("n_envs", 1)), seed=seed)
    if normalize:
        normalize_kwargs = normalize if isinstance(normalize, dict) else {}
        env = VecNormalize(env, gamma=entry.get("gamma", 0.99), **normalize_kwargs)
    arguments = {key: _python_value(value) for key, value in entry.items() if key not in ZOO_ONLY}
    return model_class(entry.get("policy", "MlpPolicy"), env, seed=seed, device="cpu", **arguments)
