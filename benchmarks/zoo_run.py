"""
Train one (algo, env, seed) through the RL Zoo pipeline, evaluate it, and write ``result.json``.

This is the unit of work of ``benchmarks/rewards.py``, run in its own process::

    python benchmarks/zoo_run.py --algo npg --env CartPole-v1 --seed 0 --n-timesteps 100000 \
        --log-folder benchmarks/logs/npg/CartPole-v1/seed0

It is ``rl_zoo3 train`` (with NPG registered through :mod:`sb3_npg.zoo`) plus four things the Zoo does
not do itself: it times ``model.learn`` (the train time), it keeps one row per policy update of what the SB3
logger holds after it (``<log-folder>/updates.csv.gz``, see :class:`UpdateLog`), it evaluates the saved model the
way ``rl_zoo3 enjoy`` loads it (``VecNormalize`` statistics included) over deterministic episodes (stochastic on
Atari, as the Zoo evaluates Atari), and it
writes everything a results table needs into ``<log-folder>/result.json``. ``result.json`` is written
last, only after a complete run: its presence means the run finished.

Hyperparameters: NPG reads the shipped ``sb3_npg/hyperparams/npg.yml`` (RecurrentNPG, ``--algo npg_lstm``,
``npg_lstm.yml``); the other algorithms read the RL Zoo's own files. An env missing from a file but present there
as ``-v4`` (the Zoo's MuJoCo entries for TRPO, PPO and A2C) is trained with that ``-v4`` entry, unchanged, and the
result says so; likewise a velocity-masked env (``CartPoleNoVel-v1``) missing from a file is trained with the
full env's entry (``CartPole-v1``: feed-forward NPG on the masked envs, to show what memory buys).
"""

import argparse
import csv
import gzip
import importlib.util
import json
import os
import pathlib
import sys
import time
from typing import Any

import numpy as np
import yaml
from common import NPG_ALGOS, UPDATE_LOG, config_entry, repository_path, zoo_config
from stable_baselines3.common.callbacks import BaseCallback


def resolve_config(algo: str, env_id: str, run_dir: pathlib.Path) -> tuple[pathlib.Path, str]:
    """
    The config file to pass to the Zoo and the entry it will use for ``env_id``.

    If the env has no entry but its ``-v4`` sibling (or, for a ``NoVel`` env, the full env) has one, a copy of the
    file with that entry under the requested name is written into ``run_dir`` (same settings, nothing else changed).
    """
    config = zoo_config(algo)
    found = config_entry(algo, env_id)
    if found is None:
        raise KeyError(f"{config} has no entry for {env_id} (nor its -v4 sibling, nor an atari entry for a game)")
    name, entry = found
    if name in (env_id, "atari"):  # the Zoo itself falls back to the atari entry
        return config, env_id
    run_dir.mkdir(parents=True, exist_ok=True)
    patched = run_dir / f"{algo}_{env_id}.yml"
    with open(patched, "w") as file:
        yaml.safe_dump({env_id: entry}, file)
    return patched, name


def register_npg() -> None:
    """Add NPG and RecurrentNPG to the RL Zoo (``sb3_npg.zoo.register``, idempotent)."""
    if importlib.util.find_spec("sb3_npg.zoo") is None:
        raise RuntimeError("sb3_npg.zoo (the RL Zoo bridge) is not available in this checkout")
    from sb3_npg.zoo import register

    register()


def evaluate_saved(algo: str, env_id: str, save_path: str, params_path: str, n_episodes: int, seed: int) -> list[float]:
    """Load the saved model and its env statistics as ``rl_zoo3 enjoy`` does; returns per-episode returns."""
    from rl_zoo3.exp_manager import ExperimentManager
    from rl_zoo3.utils import ALGOS, create_test_env, get_saved_hyperparams
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_npg.zoo import is_atari

    hyperparams, stats_path = get_saved_hyperparams(params_path, norm_reward=False, test_mode=True)
    env = create_test_env(
        env_id,
        n_envs=1,
        stats_path=stats_path,
        seed=seed,
        should_render=False,
        hyperparams=hyperparams,
        vec_env_cls=ExperimentManager.default_vec_env_cls,
    )
    model = ALGOS[algo].load(os.path.join(save_path, f"{env_id}.zip"), device="cpu", custom_objects={"learning_rate": 0.0})
    # Deterministic except on Atari, like the Zoo's own evaluations (a greedy Atari policy can stall).
    deterministic = not is_atari(env_id)
    returns, _ = evaluate_policy(
        model, env, n_eval_episodes=n_episodes, deterministic=deterministic, return_episode_rewards=True
    )
    env.close()
    return [float(r) for r in returns]


class UpdateLog(BaseCallback):
    """
    One CSV row per policy update: every ``train/`` key the SB3 logger holds after the update (NPG:
    ``train/kl_divergence``, ``train/step_size``, ``train/xFx``, ``train/std``, ``train/explained_variance``,
    ``train/advantage_std``, ...; TRPO: ``train/kl_divergence_loss``, ``train/is_line_search_success``, ...), with
    ``time/total_timesteps``, the algorithm's ``target_kl``, and ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean``
    (the last 100 training episodes, as SB3 logs them). An algorithm that does not log ``train/advantage_std``
    gets it from its rollout buffer (the same quantity: the standard deviation of the advantages before any
    normalisation).

    SB3 writes an update's ``train/`` values only at the next iteration's dump (or at an evaluation's, in between),
    so they are read here when the next rollout starts, and after the last update when training ends. Written
    (gzip-compressed, 6 significant digits) when training ends.

    :param path: the ``.csv.gz`` file to write
    """

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__()
        self.path = path
        self.rows: list[dict[str, float]] = []
        self.advantage_std = float("nan")

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        self.record_update()

    def _on_rollout_end(self) -> None:
        buffer = getattr(self.model, "rollout_buffer", None)
        if buffer is not None and buffer.advantages.size > 1:
            self.advantage_std = float(np.std(buffer.advantages, ddof=1))

    def _on_training_end(self) -> None:
        self.record_update()
        self.write()

    def record_update(self) -> None:
        """Add a row with the ``train/`` values of the update just made (none before the first update)."""
        logged = {key: float(value) for key, value in self.logger.name_to_value.items() if key.startswith("train/")}
        if not logged:
            return
        logged.setdefault("train/advantage_std", self.advantage_std)
        episodes: list[dict[str, float]] = list(self.model.ep_info_buffer or [])
        # the update's KL bound: as logged (a schedule's value), else the algorithm's number (TRPO), else none (PPO)
        target_kl = getattr(self.model, "target_kl", None)
        fixed_target_kl = float(target_kl) if isinstance(target_kl, (int, float)) else float("nan")
        self.rows.append(
            {
                "time/total_timesteps": self.num_timesteps,
                "target_kl": logged.get("train/target_kl", fixed_target_kl),
                **dict(sorted(logged.items())),
                "rollout/ep_rew_mean": float(np.mean([info["r"] for info in episodes])) if episodes else float("nan"),
                "rollout/ep_len_mean": float(np.mean([info["l"] for info in episodes])) if episodes else float("nan"),
            }
        )

    def write(self) -> None:
        """Write the rows (columns: the union of the rows' keys, first-seen order; a missing value is empty)."""
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with gzip.open(self.path, "wt", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns, restval="")
            writer.writeheader()
            for row in self.rows:
                writer.writerow({key: f"{value:.6g}" for key, value in row.items()})


def learning_curve(save_path: str) -> tuple[list[int], list[float]]:
    """Mean return of each periodic evaluation (``evaluations.npz`` written by the Zoo's EvalCallback)."""
    path = os.path.join(save_path, "evaluations.npz")
    if not os.path.isfile(path):
        return [], []
    data = np.load(path)
    return [int(t) for t in data["timesteps"]], [float(r) for r in data["results"].mean(axis=1)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--n-timesteps", type=int, required=True)
    parser.add_argument("--log-folder", required=True)
    parser.add_argument("--eval-freq", type=int, default=-1, help="steps between curve evaluations (-1: n_timesteps / 10)")
    parser.add_argument("--curve-episodes", type=int, default=5, help="episodes per curve evaluation")
    parser.add_argument(
        "--final-episodes", type=int, default=10, help="episodes of the final evaluation (deterministic except on Atari)"
    )
    parser.add_argument("--verbose", type=int, default=0)
    parser.add_argument(
        "--hyperparams",
        nargs="+",
        default=[],
        metavar="KEY:VALUE",
        help="overrides of the config entry, passed on to the Zoo's --hyperparams (for tuning runs)",
    )
    args = parser.parse_args(argv)

    import torch as th

    th.set_num_threads(1)
    import rl_zoo3.train
    from rl_zoo3.exp_manager import ExperimentManager

    run_dir = pathlib.Path(args.log_folder)
    if args.algo in NPG_ALGOS:
        register_npg()
    config, entry = resolve_config(args.algo, args.env, run_dir)
    eval_freq = args.eval_freq if args.eval_freq > 0 else max(args.n_timesteps // 10, 1)

    timing: dict[str, Any] = {}
    original_learn = ExperimentManager.learn

    def timed_learn(self: ExperimentManager, model: Any) -> None:
        self.callbacks.append(UpdateLog(run_dir / UPDATE_LOG))
        start = time.perf_counter()
        original_learn(self, model)
        timing.update(
            train_time_s=time.perf_counter() - start,
            num_timesteps=int(model.num_timesteps),
            save_path=self.save_path,
            params_path=self.params_path,
            skipped_updates=getattr(model, "skipped_updates", None),
        )

    ExperimentManager.learn = timed_learn  # type: ignore[method-assign]
    zoo_argv = [
        "rl_zoo3.train",
        *("--algo", args.algo, "--env", args.env, "--seed", str(args.seed)),
        *("-n", str(args.n_timesteps), "-f", str(run_dir), "--conf-file", str(config)),
        *("--eval-freq", str(eval_freq), "--eval-episodes", str(args.curve_episodes), "--n-eval-envs", "1"),
        *("--num-threads", "1", "--device", "cpu", "--verbose", str(args.verbose)),
        *(["--hyperparams", *args.hyperparams] if args.hyperparams else []),
    ]
    start = time.perf_counter()
    sys.argv = zoo_argv
    rl_zoo3.train.train()
    if timing.get("num_timesteps", 0) < args.n_timesteps:
        raise RuntimeError(f"training stopped early at {timing.get('num_timesteps')} of {args.n_timesteps} steps")

    returns = evaluate_saved(
        args.algo, args.env, timing["save_path"], timing["params_path"], args.final_episodes, seed=10_000 + args.seed
    )
    steps, curve = learning_curve(timing["save_path"])
    with open(os.path.join(timing["params_path"], "config.yml")) as file:
        saved = yaml.load(file, Loader=yaml.UnsafeLoader)
    hyperparams = {str(key): str(value) for key, value in (saved.items() if isinstance(saved, dict) else saved)}
    result = {
        "algo": args.algo,
        "env": args.env,
        "seed": args.seed,
        "n_timesteps": args.n_timesteps,
        "steps": timing["num_timesteps"],
        "final_mean_return": float(np.mean(returns)),
        "final_std_return": float(np.std(returns)),
        "final_returns": returns,
        "train_time_s": round(timing["train_time_s"], 2),
        "run_time_s": round(time.perf_counter() - start, 2),
        "skipped_updates": timing["skipped_updates"],
        "config": config.name if config.parent != run_dir else repository_path(config),
        "config_entry": entry,
        "overrides": args.hyperparams,
        "hyperparams": hyperparams,
        "curve_steps": steps,
        "curve_returns": curve,
        "update_log": UPDATE_LOG,
        "command": " ".join(repository_path(arg) if arg in (str(run_dir), str(config)) else arg for arg in zoo_argv),
    }
    with open(run_dir / "result.json.tmp", "w") as file:
        json.dump(result, file)
    os.replace(run_dir / "result.json.tmp", run_dir / "result.json")
    return result


if __name__ == "__main__":
    main()
