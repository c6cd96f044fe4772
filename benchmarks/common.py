"""
What the benchmark scripts share, defined once: where results go, the machine and code a number was measured with,
Markdown tables, JSON and JSON-lines records, the reward runs' records and per-update logs, and the models and
environments the comparisons build.

It is the one module the scripts import from one another: a maintained script runs as
``python benchmarks/<script>.py``, which puts ``benchmarks/`` on the import path, and imports it as ``common``;
the scripts in ``benchmarks/zoo_tuning/`` and ``benchmarks/investigations/`` put ``benchmarks/`` on the path
themselves, and the tests through pytest's ``pythonpath`` setting. No script imports another script.
"""

import csv
import functools
import gzip
import json
import math
import os
import pathlib
import platform
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
import yaml
from gymnasium import spaces
from sb3_contrib import TRPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete, InvalidActionEnvMultiDiscrete
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import get_linear_fn
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch import nn

import sb3_npg
from sb3_npg import NPG
from sb3_npg.conjugate_gradient import conjugate_gradient
from sb3_npg.constants import FISHER_BACKENDS

BENCHMARKS = pathlib.Path(__file__).resolve().parent
#: The repository's root: records name the files under it relative to it
REPOSITORY = BENCHMARKS.parent
#: The committed records of the maintained benchmarks
RESULTS = BENCHMARKS / "results"
#: The hyperparameter files shipped with sb3_npg (``npg.yml``, ``npg_lstm.yml``)
SHIPPED_HYPERPARAMS = pathlib.Path(sb3_npg.__file__).resolve().parent / "hyperparams"
#: The keys of a Zoo entry that configure the environment or the run, not the algorithm
ZOO_ONLY = ("n_timesteps", "n_envs", "normalize", "policy")


# Where a number was measured


def sb3_npg_commit() -> str | None:
    """The commit of the checkout the ``sb3_npg`` imported comes from (``None`` for an installed package)."""
    package_dir = pathlib.Path(sb3_npg.__file__).resolve().parent
    try:
        return subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_kind() -> str:
    """The kind of machine, e.g. ``2-core x86_64 CPU machine`` (no host name: records name no machine)."""
    return f"{os.cpu_count()}-core {platform.machine()} CPU machine"


def machine() -> dict[str, Any]:
    """
    Where the numbers were measured, and with which code. Every benchmark runs torch on one thread (each script sets
    it; the reward runs get ``--num-threads 1``).
    """
    import stable_baselines3
    import torch

    return {
        "kind": machine_kind(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sb3": stable_baselines3.__version__,
        "numpy": np.__version__,
        "torch_threads": 1,
        "sb3_npg": sb3_npg.__version__,
        "sb3_npg_commit": sb3_npg_commit(),
    }


def machine_line() -> str:
    """:func:`machine` in one line, for the header of a Markdown record."""
    found = machine()
    commit = found["sb3_npg_commit"]
    return (
        f"{found['kind']}, torch {found['torch']} ({found['torch_threads']} thread), SB3 {found['sb3']}, "
        f"Python {found['python']}, sb3_npg {found['sb3_npg']}" + (f" (commit {commit[:10]})" if commit else "")
    )


def repository_path(path: pathlib.Path | str) -> str:
    """
    A path as a record names it: relative to the repository's root when it is inside it, else its name alone (a
    record names no folder of the machine it was made on).
    """
    resolved = pathlib.Path(path).resolve()
    try:
        return resolved.relative_to(REPOSITORY).as_posix()
    except ValueError:
        return resolved.name


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


# Reward runs: their budgets, the config entries they use, their records and per-update logs


#: env -> (group, number of steps). Classic control at 1e5; Box2D at TRPO's Zoo budgets; MuJoCo at 1e6.
BUDGETS: dict[str, tuple[str, int]] = {
    "CartPole-v1": ("classic", 100_000),
    "Pendulum-v1": ("classic", 100_000),
    "Acrobot-v1": ("classic", 100_000),
    "LunarLander-v3": ("box2d", 200_000),
    "LunarLanderContinuous-v3": ("box2d", 100_000),
    "HalfCheetah-v5": ("mujoco", 1_000_000),
    "Hopper-v5": ("mujoco", 1_000_000),
    "Walker2d-v5": ("mujoco", 1_000_000),
    "CartPoleNoVel-v1": ("recurrent", 100_000),
    "PendulumNoVel-v1": ("recurrent", 100_000),
    "MountainCarContinuousNoVel-v0": ("recurrent", 300_000),
}
GROUPS = ("classic", "box2d", "mujoco")
RECURRENT_GROUP = "recurrent"
"""Velocity-masked envs (partial observation), at RecurrentPPO's RL Zoo budgets; run only when asked for."""


def expand_envs(names: Iterable[str]) -> list[str]:
    """Env ids, with group names (classic, box2d, mujoco, recurrent) expanded."""
    envs: list[str] = []
    for name in names:
        members = (
            [env for env, (group, _) in BUDGETS.items() if group == name] if name in (*GROUPS, RECURRENT_GROUP) else [name]
        )
        envs.extend(env for env in members if env not in envs)
    return envs


#: The per-update log of a run, in its log folder.
UPDATE_LOG = "updates.csv.gz"

NPG_ALGOS = ("npg", "npg_lstm")
"""The algorithms of sb3_npg (registered in the Zoo by ``sb3_npg.zoo.register``), with their shipped files."""


def zoo_config(algo: str) -> pathlib.Path:
    """The hyperparameter file used for ``algo``: NPG's (or RecurrentNPG's) shipped one, else the RL Zoo's own."""
    if algo in NPG_ALGOS:
        return SHIPPED_HYPERPARAMS / f"{algo}.yml"
    import rl_zoo3

    return pathlib.Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo}.yml"


def config_entry(algo: str, env_id: str) -> tuple[str, dict[str, Any]] | None:
    """
    The entry of ``algo``'s config file used for ``env_id`` (``sb3_npg.zoo.zoo_entry``: its own, else its ``-v4``
    sibling's, else a ``NoVel`` env's full env's, else the ``atari`` entry); ``None`` if none applies.
    """
    from sb3_npg.zoo import zoo_entry

    with open(zoo_config(algo)) as file:
        return zoo_entry(yaml.safe_load(file), env_id)


def canonical_value(value: str) -> str:
    """
    A saved hyperparameter in one spelling: a ``policy_kwargs`` string such as ``"dict(log_std_init=-2, ...)"``
    (an entry, or a run's saved entry) is evaluated as the Zoo does and printed with sorted keys, the way a
    ``--hyperparams`` override comes back from the Zoo's ``config.yml``.
    """
    if not value.startswith("dict("):
        return value

    def sorted_keys(item: Any) -> Any:
        return {key: sorted_keys(item[key]) for key in sorted(item)} if isinstance(item, dict) else item

    return str(sorted_keys(eval(value, {"nn": nn})))  # the one name the Zoo's policy_kwargs strings use


def variant_of(result: dict[str, Any]) -> tuple[str, ...]:
    """The ``KEY:VALUE`` overrides of the variant a run belongs to (``()`` for the shipped entry)."""
    return tuple(result.get("variant", ()))


def label(result: dict[str, Any]) -> str:
    """The algorithm's name in tables and figures: ``npg``, or ``npg[step_length:'exact']`` for a variant."""
    variant = variant_of(result)
    return f"{result['algo']}[{','.join(variant)}]" if variant else result["algo"]


@functools.cache
def current_entry(algo: str, env: str, variant: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...] | None:
    """
    The hyperparameters a run of ``algo`` on ``env`` uses today (as the Zoo saves them: values as strings,
    without ``n_timesteps``), from the same file and entry as ``zoo_run.py``, with the ``variant``'s overrides
    applied as the Zoo applies ``--hyperparams`` (values evaluated); ``None`` if there is none.
    """
    found = config_entry(algo, env)
    if found is None:
        return None
    entry = {str(key): canonical_value(str(value)) for key, value in found[1].items() if key != "n_timesteps"}
    for override in variant:
        key, _, value = override.partition(":")
        entry[key] = canonical_value(str(eval(value, {"nn": nn})))
    return tuple(sorted(entry.items()))


def is_current(result: dict[str, Any]) -> bool:
    """
    Whether a recorded run used the hyperparameters its config entry has today, with its variant's overrides
    (unknown: assumed so).
    """
    saved = result.get("hyperparams")
    entry = current_entry(result["algo"], result["env"], variant_of(result))
    if saved is None or entry is None:
        return True
    return tuple(sorted((key, canonical_value(value)) for key, value in saved.items() if key != "n_timesteps")) == entry


def group_results(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Runs by (env, algo), one per seed (the latest current line wins, else the latest stale one), sorted by seed."""
    latest: dict[tuple[str, str, int], dict[str, Any]] = {}
    for result in results:
        key = (result["env"], label(result), result["seed"])
        if is_current(result) or key not in latest or not is_current(latest[key]):
            latest[key] = result
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for (env, algo, _), result in sorted(latest.items()):
        grouped[(env, algo)].append(result)
    return grouped


#: The measured KL of an update in each algorithm's log: NPG's, TRPO's, and PPO's estimate (``approx_kl``: the mean
#: over the update's epochs and minibatches of the estimated KL from the rollout's policy, so below the KL the whole
#: update ends at)
KL_KEYS = ("train/kl_divergence", "train/kl_divergence_loss", "train/approx_kl")


def kl_key(row: dict[str, float]) -> str:
    """The key of the update's measured KL in a per-update log row (one of :data:`KL_KEYS`; TRPO's when none is there)."""
    return next((key for key in KL_KEYS if key in row), "train/kl_divergence_loss")


def read_update_log(path: pathlib.Path) -> list[dict[str, float]]:
    """The rows of a per-update log (``.csv.gz``), values as floats (an empty cell is NaN)."""
    with gzip.open(path, "rt", newline="") as file:
        return [{key: float(value) if value else math.nan for key, value in row.items()} for row in csv.DictReader(file)]


# Statistics over seeds (rliable)

#: The size of every confidence interval of the reward statistics
CONFIDENCE = 0.95


def rliable_problem() -> str | None:
    """Why rliable's bootstrap cannot run in this environment (``None`` if it can), with what to install."""
    try:
        from rliable import library  # noqa: F401  (imports arch's bootstrap)
    except Exception as error:  # arch 7 with pandas 3 fails with a TypeError while importing
        return f"rliable cannot be imported ({type(error).__name__}: {error}); pip install rliable 'arch<8' 'pandas<3'"
    import arch

    if int(arch.__version__.split(".")[0]) >= 8:
        return f"arch {arch.__version__} no longer takes the random_state rliable 1.2 passes; pip install 'arch<8' 'pandas<3'"
    return None


def interval_estimates(
    score_dict: dict[str, Any], metric: Any, reps: int, bootstrap_seed: int
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """
    ``rliable.library.get_interval_estimates`` (stratified bootstrap, percentile interval of size :data:`CONFIDENCE`)
    of a scalar ``metric``, seeded; returns points and (low, high). rliable resamples with numpy's global generator
    (its ``random_state`` does not reach the resampling), so it is seeded with ``bootstrap_seed`` first.
    """
    from rliable import library

    np.random.seed(bootstrap_seed)
    points, intervals = library.get_interval_estimates(
        score_dict, lambda *scores: np.array([metric(*scores)]), reps=reps, confidence_interval_size=CONFIDENCE
    )
    return (
        {key: float(value[0]) for key, value in points.items()},
        {key: (float(value[0][0]), float(value[1][0])) for key, value in intervals.items()},
    )


def improvement_estimate(
    scores: np.ndarray, baseline: np.ndarray, reps: int, bootstrap_seed: int
) -> tuple[float, list[float]]:
    """
    P(a run of ``scores`` ends above a run of ``baseline``) (``rliable.metrics.probability_of_improvement``: the
    Mann-Whitney U statistic, ties one half) and its interval, by :func:`interval_estimates`; scores of shape
    (seeds, 1 task), each set resampled on its own.
    """
    from rliable import metrics

    point, interval = interval_estimates({"p": (scores, baseline)}, metrics.probability_of_improvement, reps, bootstrap_seed)
    return point["p"], list(interval["p"])


def format_interval(point: float | None, interval: Sequence[float] | None, single: bool, digits: int = 0) -> str:
    """``**point** [low, high]``; ``-`` without runs; no interval from ``single`` seeds (resampling one value)."""
    if point is None or interval is None:
        return "-"
    if single:
        return f"**{point:.{digits}f}** (one seed: no interval)"
    return f"**{point:.{digits}f}** [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


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


class VersusRandom(gym.Env):
    """
    A two-player PettingZoo classic game (AEC API) as a single-agent env against a uniformly random opponent.

    The learning player is drawn at random each game; observations are the game's ``observation`` planes
    (flattened), ``action_masks()`` its ``action_mask``. An illegal move ends the game as a loss (PettingZoo's rule).

    :param game: ``"tictactoe_v3"`` or ``"connect_four_v3"``
    """

    def __init__(self, game: str = "tictactoe_v3"):
        from pettingzoo import classic
        from pettingzoo.utils.env_logger import EnvLogger

        EnvLogger.suppress_output()  # the illegal-move warnings of the unmasked runs
        self.game = getattr(classic, game).env()
        self.game.reset(seed=0)
        player = self.game.possible_agents[0]
        planes = self.game.observation_space(player)["observation"]
        self.observation_space = spaces.Box(0.0, 1.0, (int(np.prod(planes.shape)),), np.float32)
        self.action_space = spaces.Discrete(int(self.game.action_space(player).n))
        self.player = player

    def _observation(self) -> np.ndarray:
        return self.game.observe(self.player)["observation"].astype(np.float32).ravel()

    def action_masks(self) -> np.ndarray:
        return self.game.observe(self.player)["action_mask"].astype(bool)

    def _over(self) -> bool:
        return bool(self.game.terminations[self.player] or self.game.truncations[self.player])

    def _opponent_moves(self) -> None:
        while not self._over() and self.game.agent_selection != self.player:
            legal = np.flatnonzero(self.game.observe(self.game.agent_selection)["action_mask"])
            self.game.step(int(self.np_random.choice(legal)))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.game.reset(seed=int(self.np_random.integers(2**31)))
        self.player = self.game.possible_agents[int(self.np_random.integers(2))]
        self._opponent_moves()
        return self._observation(), {}

    def step(self, action):
        illegal = not self.action_masks()[int(action)]
        self.game.step(int(action))
        self._opponent_moves()
        over = self._over()
        reward = float(self.game.rewards[self.player]) if over else 0.0
        return self._observation(), reward, over, False, {"illegal": illegal}


def masked_task_env(task: str) -> gym.Env:
    """The env of a masked-action task of ``maskable.py``: ``discrete``, ``multidiscrete`` or ``tictactoe``."""
    if task == "discrete":
        return InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55)
    if task == "multidiscrete":
        return InvalidActionEnvMultiDiscrete(dims=[4, 6], n_invalid_actions=5)
    if task == "tictactoe":
        return VersusRandom("tictactoe_v3")
    raise ValueError(f"Unknown task {task!r}")


def steps_to_residual(
    matvec: Callable[[th.Tensor], th.Tensor],
    gradient: th.Tensor,
    preconditioner: Callable[[th.Tensor], th.Tensor],
    target: float,
    limit: int,
) -> int | None:
    """
    The preconditioned CG steps whose residual norm first reaches ``target`` (``None``: not within ``limit``), from one
    solve of ``limit`` steps: the preconditioner is given the residual after each step.
    """
    norms: list[float] = []

    def recording(residual: th.Tensor) -> th.Tensor:
        norms.append(residual.norm().item())
        return preconditioner(residual)

    conjugate_gradient(matvec, gradient, limit, residual_tol=0, preconditioner=recording)
    return next((k for k, norm in enumerate(norms) if k > 0 and norm <= target), None)
