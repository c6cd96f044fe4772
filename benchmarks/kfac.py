"""
K-FAC benchmark: conjugate gradient preconditioned by K-FAC (``preconditioner="kfac"``) and the K-FAC direction
itself (``cg_max_steps=1``, ACKTR's step with the exact ``x^T F x``) against today's plain CG NPG and sb3-contrib
TRPO, side by side in one run, on the same rollout buffer.

Per configuration (HalfCheetah-v5 with a 64x64 and a 256x256 MLP, 2048 samples; a CnnPolicy on
BreakoutNoFrameskip-v4 through SB3's AtariWrapper with 4 stacked 84x84 frames, the shipped ``atari`` entry's
settings; without OpenCV its frames are warped to 84x84 by area interpolation in torch instead of OpenCV's, which
only the observations' pixels, not the cost of anything timed, depend on):

1. **Fisher products to reach the residual of 10 plain CG steps**: a plain NPG trains a few updates; after each, on
   its rollout, the residual ``||g - (F + l I) x||`` of 10 plain CG steps, and the number of preconditioned CG steps
   (one Fisher product each) that reach it; with the cosine of each direction (10 plain CG steps, K-FAC alone, the
   preconditioned solve) to the converged solve (100 preconditioned steps).
2. **Natural-gradient step time** (``train()`` without the critic: gradient, solve, scale, apply, measured KL) of plain CG NPG
   (10 steps), PCG NPG (the median number of steps of part 1) and direct K-FAC NPG, and **whole ``train()``** time of
   the three and TRPO (10 CG steps), all from the trained plain NPG's weights on one rollout buffer, interleaved
   round-robin; ratios are paired (each call against the reference's call of the same round).

Results go to ``benchmarks/results/kfac.{json,md}``.

3. **Returns** (``--returns``): the final returns of 1e6-step runs of the direct K-FAC step (the shipped entries with
   ``--hyperparams "preconditioner:'kfac'" cg_max_steps:1``, ``benchmarks/results/kfac/rewards.jsonl``) against the
   shipped CG entries on the same tuning seeds (``benchmarks/results/selection/rewards.jsonl``), both made by
   ``benchmarks/rewards.py``: per env each one's IQM with its 95 % stratified-bootstrap interval, P(K-FAC > CG)
   (rliable, as ``benchmarks/heldout_stats.py``) and the median training time, in
   ``benchmarks/results/kfac/returns.{json,md}``.

Usage::

    python benchmarks/kfac.py                    # all three configurations
    python benchmarks/kfac.py --configs cheetah64 --repeats 5
    python benchmarks/kfac.py --returns          # after the return runs land
    python benchmarks/kfac.py --configs breakout --start-from MODEL.zip   # from a trained policy's weights
"""

import argparse
import copy
import importlib.util
import pathlib
import statistics
import time
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from common import (
    CONFIDENCE,
    RESULTS,
    format_interval,
    improvement_estimate,
    interval_estimates,
    machine,
    machine_line,
    markdown_table,
    read_jsonl,
    repository_path,
    rliable_problem,
    steps_to_residual,
    variant_of,
    write_record,
)
from gymnasium import spaces
from sb3_contrib import TRPO
from stable_baselines3.common.atari_wrappers import (
    AtariWrapper,
    ClipRewardEnv,
    EpisodicLifeEnv,
    FireResetEnv,
    MaxAndSkipEnv,
    NoopResetEnv,
    WarpFrame,
)
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

from sb3_npg import NPG
from sb3_npg.conjugate_gradient import conjugate_gradient
from sb3_npg.critic import index_observations
from sb3_npg.fisher import make_fisher
from sb3_npg.kfac import make_preconditioner
from sb3_npg.npg import UpdateBatch
from sb3_npg.policy_gradient import policy_gradient, policy_jacobian

#: name -> (env id, policy, n_envs, algorithm settings shared by every model)
CONFIGS: dict[str, tuple[str, str, int, dict[str, Any]]] = {
    "cheetah64": (
        "HalfCheetah-v5",
        "MlpPolicy",
        1,
        dict(n_steps=2048, batch_size=128, n_critic_updates=10, policy_kwargs=dict(net_arch=[64, 64])),
    ),
    "cheetah256": (
        "HalfCheetah-v5",
        "MlpPolicy",
        1,
        dict(n_steps=2048, batch_size=128, n_critic_updates=10, policy_kwargs=dict(net_arch=[256, 256])),
    ),
    "breakout": (
        "BreakoutNoFrameskip-v4",
        "CnnPolicy",
        8,
        dict(
            n_steps=256,
            batch_size=256,
            n_critic_updates=4,
            sub_sampling_factor=5,
            learning_rate=2.5e-4,
            policy_kwargs=dict(share_features_extractor=False),
        ),
    ),
}
#: the models timed side by side: name -> NPG arguments (TRPO: its own class)
VARIANTS = ("trpo", "npg-cg", "npg-pcg", "npg-kfac")
CG_STEPS = 10
REFERENCE_STEPS = 100


class AreaWarpFrame(WarpFrame):
    """SB3's ``WarpFrame`` (grey 84x84 frames) by area interpolation in torch, where OpenCV is not installed."""

    def observation(self, frame: np.ndarray) -> np.ndarray:
        grey = th.as_tensor(frame, dtype=th.float32) @ th.tensor([0.299, 0.587, 0.114])
        warped = th.nn.functional.interpolate(grey[None, None], size=(self.height, self.width), mode="area")
        return warped[0].permute(1, 2, 0).round().clamp(0, 255).to(th.uint8).numpy()


def atari_wrapper(env: gym.Env) -> gym.Env:
    """SB3's ``AtariWrapper`` with its defaults (no-op starts, frame skip 4, life loss as episode end, FIRE at reset,
    84x84 grey frames, clipped rewards), its frames warped by :class:`AreaWarpFrame` when OpenCV is missing."""
    if cv2_available():
        return AtariWrapper(env)
    env = EpisodicLifeEnv(MaxAndSkipEnv(NoopResetEnv(env, noop_max=30), skip=4))
    if "FIRE" in env.unwrapped.get_action_meanings():  # type: ignore[attr-defined]
        env = FireResetEnv(env)
    return ClipRewardEnv(AreaWarpFrame(env))


def cv2_available() -> bool:
    return importlib.util.find_spec("cv2") is not None


def make_env(env_id: str, n_envs: int, seed: int) -> VecEnv:
    """The config's vectorised env (Atari: SB3's AtariWrapper and 4 stacked frames, as the ``atari`` entry)."""
    if "NoFrameskip" in env_id:
        import ale_py  # registers the Atari envs with gymnasium

        gym.register_envs(ale_py)
        return VecFrameStack(make_vec_env(env_id, n_envs=n_envs, seed=seed, wrapper_class=atari_wrapper), 4)
    return make_vec_env(env_id, n_envs=n_envs, seed=seed)


def make_model(variant: str, config: str, pcg_steps: int) -> BaseAlgorithm:
    """A model of ``variant`` at the config's settings, seed 0."""
    env_id, policy, n_envs, settings = CONFIGS[config]
    env = make_env(env_id, n_envs, seed=0)
    settings = copy.deepcopy(settings)
    if variant == "trpo":
        return TRPO(policy, env, cg_max_steps=CG_STEPS, seed=0, device="cpu", **settings)
    extra: dict[str, Any] = {
        "npg-cg": dict(cg_max_steps=CG_STEPS),
        "npg-pcg": dict(cg_max_steps=pcg_steps, preconditioner="kfac"),
        "npg-kfac": dict(cg_max_steps=1, preconditioner="kfac"),
    }[variant]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return NPG(policy, env, seed=0, device="cpu", num_threads=1, **settings, **extra)


def collect(model: BaseAlgorithm) -> None:
    """Fill the model's rollout buffer once, as ``learn`` does before ``train()``."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, reset_num_timesteps=model._last_obs is None)  # type: ignore[attr-defined]
    callback.on_training_start(locals(), globals())
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)  # type: ignore[attr-defined]


def cosine(a: th.Tensor, b: th.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


def measure_products(trainer: NPG, n_updates: int) -> list[dict[str, float]]:
    """
    After each of ``n_updates`` updates of ``trainer`` (plain CG NPG), on its next rollout: the residual of 10 plain CG
    steps, the preconditioned steps that reach it, and each direction's cosine to the converged solve.
    """
    rows = []
    for _ in range(n_updates):
        collect(trainer)
        data = next(trainer.rollout_buffer.get(batch_size=None))
        actions = data.actions.long().flatten() if isinstance(trainer.action_space, spaces.Discrete) else data.actions
        advantages = (data.advantages - data.advantages.mean()) / (data.advantages.std() + 1e-8)
        trainer.policy.set_training_mode(False)
        jacobian = policy_jacobian(trainer.policy, trainer.actor_parameters, data.observations)
        gradient = policy_gradient(jacobian, actions, advantages)
        every = slice(None, None, trainer.sub_sampling_factor)
        observations = index_observations(data.observations, every)
        fisher = make_fisher(
            "gauss_newton",
            trainer.policy,
            trainer.actor_parameters,
            observations,
            actions[every],
            trainer.cg_damping,
            jacobian=jacobian if trainer.sub_sampling_factor == 1 else None,
        )
        start = time.perf_counter()
        kfac = make_preconditioner("kfac", trainer.policy, trainer.actor_parameters, observations, trainer.cg_damping)
        assert kfac is not None
        build_seconds = time.perf_counter() - start
        reference, _ = conjugate_gradient(fisher.damped_matvec, gradient, REFERENCE_STEPS, residual_tol=0, preconditioner=kfac)
        plain, plain_residual = conjugate_gradient(fisher.damped_matvec, gradient, CG_STEPS, residual_tol=0)
        target = plain_residual.norm().item()
        steps = steps_to_residual(fisher.damped_matvec, gradient, kfac, target, 3 * CG_STEPS)
        solution, _ = conjugate_gradient(
            fisher.damped_matvec, gradient, steps or 3 * CG_STEPS, residual_tol=0, preconditioner=kfac
        )
        row = {
            "cg10_residual": target,
            "pcg_steps_to_cg10_residual": float(steps) if steps is not None else float("nan"),
            "cosine_cg10": cosine(plain, reference),
            "cosine_kfac": cosine(kfac(gradient), reference),
            "cosine_pcg": cosine(solution, reference),
            "kfac_build_ms": 1000 * build_seconds,
        }
        rows.append(row)
        print("  products:", {key: round(value, 4) for key, value in row.items()})
        trainer.policy.set_training_mode(True)
        trainer.train()
    return rows


def share_state(models: dict[str, BaseAlgorithm], trainer: NPG) -> None:
    """Every model gets the trained NPG's weights, and one rollout buffer collected by the first NPG model."""
    state = trainer.policy.state_dict()
    for model in models.values():
        model.policy.load_state_dict(state)
    first = models["npg-cg"]
    collect(first)
    for model in models.values():
        if model is not first:
            model._setup_learn(first.n_steps * first.n_envs)  # type: ignore[attr-defined]
            model.rollout_buffer = first.rollout_buffer  # type: ignore[attr-defined]


def paired(values: list[float], reference: list[float]) -> float:
    return statistics.median(v / r for v, r in zip(values, reference, strict=True))


def time_steps(models: dict[str, BaseAlgorithm], repeats: int) -> dict[str, dict[str, float]]:
    """
    Interleaved round-robin timings: each NPG's actor step (``train()`` on the batch, the critic left out) from the
    same weights (restored after each call, not timed), then every model's ``train()``. Medians and paired ratios (to
    plain CG NPG's step, to TRPO's train()).
    """
    data = next(models["npg-cg"].rollout_buffer.get(batch_size=None))  # type: ignore[attr-defined]
    step_times: dict[str, list[float]] = {name: [] for name in models if name != "trpo"}
    train_times: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(repeats + 1):
        for name, model in models.items():
            if name == "trpo":
                continue
            npg: NPG = model  # type: ignore[assignment]
            actions = data.actions.long().flatten() if isinstance(npg.action_space, spaces.Discrete) else data.actions
            saved = [parameter.detach().clone() for parameter in npg.actor_parameters]
            batch = UpdateBatch(data.observations, actions, data.advantages, data.returns, npg.policy)
            npg._rollout_batch = lambda batch=batch: batch  # type: ignore[method-assign]
            npg._fit_critic = lambda *_: 0.0  # type: ignore[method-assign]
            start = time.perf_counter()
            npg.train()
            elapsed = time.perf_counter() - start
            del npg._rollout_batch, npg._fit_critic  # the class's own again
            npg._restore_actor(saved)
            if repeat > 0:
                step_times[name].append(elapsed)
        for name, model in models.items():
            start = time.perf_counter()
            model.train()
            if repeat > 0:
                train_times[name].append(time.perf_counter() - start)
    result = {}
    for name in models:
        timed: dict[str, float] = {
            "train_ms": 1000 * statistics.median(train_times[name]),
            "train_ratio_to_trpo": paired(train_times[name], train_times["trpo"]),
        }
        if name in step_times:
            timed["step_ms"] = 1000 * statistics.median(step_times[name])
            timed["step_ratio_to_cg"] = paired(step_times[name], step_times["npg-cg"])
        result[name] = timed
    return result


def run_config(config: str, n_updates: int, repeats: int, start_from: pathlib.Path | None = None) -> dict[str, Any]:
    print(config)
    trainer: NPG = make_model("npg-cg", config, CG_STEPS)  # type: ignore[assignment]
    if start_from is not None:  # a trained policy of the same config (the weights only)
        trainer.policy.load_state_dict(NPG.load(start_from, device="cpu").policy.state_dict())
    products = measure_products(trainer, n_updates)
    steps = [row["pcg_steps_to_cg10_residual"] for row in products if np.isfinite(row["pcg_steps_to_cg10_residual"])]
    pcg_steps = int(np.ceil(statistics.median(steps))) if steps else CG_STEPS
    models = {variant: make_model(variant, config, pcg_steps) for variant in VARIANTS}
    share_state(models, trainer)
    timings = time_steps(models, repeats)
    for name, timed in timings.items():
        print(f"  {name:9s}", {key: round(value, 3) for key, value in timed.items()})
    return {"config": config, "env": CONFIGS[config][0], "products": products, "pcg_steps": pcg_steps, "timings": timings}


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# K-FAC: preconditioned CG and the direct K-FAC step against plain CG NPG and TRPO",
        "",
        f"Command: `{command}`; {time.strftime('%Y-%m-%d')}; {machine_line()}.",
        "",
        "## Fisher products to reach the residual of 10 plain CG steps (median over updates; cosines to the converged solve)",
        "",
    ]
    rows = []
    for result in results:
        products = result["products"]

        def median(key: str, rows: list[dict[str, float]] = products) -> float:
            return statistics.median(row[key] for row in rows)

        rows.append(
            [
                result["config"],
                len(products),
                f"{median('pcg_steps_to_cg10_residual'):.1f} (of 10)",
                f"{median('cosine_cg10'):.4f}",
                f"{median('cosine_pcg'):.4f}",
                f"{median('cosine_kfac'):.4f}",
                f"{median('kfac_build_ms'):.0f} ms",
            ]
        )
    lines += markdown_table(
        ["config", "updates", "PCG products", "cos CG-10", "cos PCG", "cos K-FAC alone", "K-FAC factors + inverses"], rows
    )
    lines += ["", "## Natural-gradient step and whole train() (medians; paired ratios)", ""]
    rows = []
    for result in results:
        for name, timed in result["timings"].items():
            label = f"{name} ({result['pcg_steps']} steps)" if name == "npg-pcg" else name
            step = f"{timed['step_ms']:.0f} ms ({timed['step_ratio_to_cg']:.2f}x)" if "step_ms" in timed else "-"
            train = f"{timed['train_ms']:.0f} ms ({timed['train_ratio_to_trpo']:.3f}x)"
            rows.append([result["config"], label, step, train])
    lines += markdown_table(["config", "model", "natural-gradient step (x plain CG NPG)", "train() (x TRPO)"], rows)
    return "\n".join(lines) + "\n"


#: The overrides of the direct K-FAC step's return runs
KFAC_STEP = ("cg_max_steps:1", "preconditioner:'kfac'")


def returns_record(kfac_path: pathlib.Path, cg_path: pathlib.Path, reps: int, bootstrap_seed: int) -> dict[str, Any]:
    """
    Per env with direct K-FAC runs: the K-FAC runs and the shipped CG entry's runs on the same seeds (final returns,
    training times), each one's IQM with its interval, and P(K-FAC > CG) with its interval.
    """
    from rliable import metrics

    kfac_runs = [run for run in read_jsonl(kfac_path) if tuple(sorted(variant_of(run))) == KFAC_STEP]
    cg_runs = [run for run in read_jsonl(cg_path) if not variant_of(run)]
    envs: dict[str, Any] = {}
    for env in dict.fromkeys(run["env"] for run in kfac_runs):
        kfac = {run["seed"]: run for run in kfac_runs if run["env"] == env}
        cg = {run["seed"]: run for run in cg_runs if run["env"] == env and run["seed"] in kfac}
        seeds = sorted(set(kfac) & set(cg))
        by_step = {"kfac": [kfac[seed] for seed in seeds], "cg": [cg[seed] for seed in seeds]}
        entry: dict[str, Any] = {"seeds": seeds}
        if seeds:
            scores = {step: np.array([[run["final_mean_return"]] for run in runs]) for step, runs in by_step.items()}
            points, intervals = interval_estimates(scores, metrics.aggregate_iqm, reps, bootstrap_seed)
            entry["p_kfac_over_cg"], entry["p_kfac_over_cg_ci"] = improvement_estimate(
                scores["kfac"], scores["cg"], reps, bootstrap_seed
            )
            for step, runs in by_step.items():
                entry[step] = {
                    "final_returns": [run["final_mean_return"] for run in runs],
                    "iqm": points[step],
                    "iqm_ci": list(intervals[step]),
                    "train_time_s": [run["train_time_s"] for run in runs],
                    "commits": sorted({run["machine"].get("sb3_npg_commit") or "-" for run in runs}),
                }
        envs[env] = entry
    return {
        "sources": [repository_path(kfac_path), repository_path(cg_path)],
        "reps": reps,
        "bootstrap_seed": bootstrap_seed,
        "confidence": CONFIDENCE,
        "envs": envs,
    }


def returns_markdown(record: dict[str, Any]) -> str:
    """``returns.md``: per env the two steps' returns per seed, IQMs, P(K-FAC > CG) and median training times."""
    rows = []
    for env, entry in record["envs"].items():
        if not entry["seeds"]:
            rows.append([env, "-", "-", "-", "-", "-", "-"])
            continue
        kfac, cg = entry["kfac"], entry["cg"]
        single = len(entry["seeds"]) == 1
        per_seed = " / ".join(f"{k:.0f} vs {c:.0f}" for k, c in zip(kfac["final_returns"], cg["final_returns"], strict=True))
        times = [statistics.median(step["train_time_s"]) for step in (kfac, cg)]
        rows.append(
            [
                env,
                ", ".join(map(str, entry["seeds"])),
                per_seed,
                format_interval(kfac["iqm"], kfac["iqm_ci"], single),
                format_interval(cg["iqm"], cg["iqm_ci"], single),
                format_interval(entry["p_kfac_over_cg"], entry["p_kfac_over_cg_ci"], single, digits=2),
                f"{times[0]:.0f} / {times[1]:.0f} ({times[0] / times[1]:.2f}x)",
            ]
        )
    header = [
        "env",
        "seeds",
        "final return per seed: K-FAC vs CG",
        "K-FAC IQM [95 % CI]",
        "CG IQM [95 % CI]",
        "P(K-FAC > CG) [95 % CI]",
        "median train s: K-FAC / CG",
    ]
    return "\n".join(
        [
            "# Returns of the direct K-FAC step against CG NPG (1e6 steps, tuning seeds)",
            "",
            f"Generated by `{record['command']}` on {record['date']}; {machine_line()}.",
            f"Runs: {', '.join(f'`{source}`' for source in record['sources'])} (`benchmarks/rewards.py`, the RL Zoo pipeline;",
            "K-FAC: the shipped entry with `--hyperparams \"preconditioner:'kfac'\" cg_max_steps:1`; CG: the shipped entry).",
            "Final return: mean of 10 deterministic episodes of the final model. rliable:",
            f"{record['reps']} stratified-bootstrap replications, numpy seed {record['bootstrap_seed']}; with 3 seeds the IQM",
            "is the mean. Training times: the runs were made two at a time, one per core, beside other work.",
            "",
            *markdown_table(header, rows),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--updates", type=int, default=5, help="updates measured for the product counts")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (after one warm-up round)")
    parser.add_argument("--output", default="kfac", help="stem of the records in benchmarks/results/")
    parser.add_argument("--returns", action="store_true", help="only the returns' record (part 3)")
    parser.add_argument(
        "--start-from",
        type=pathlib.Path,
        default=None,
        metavar="MODEL",
        help="measure from the weights of a trained model of the (one) config (e.g. the final model of a\n"
        "benchmarks/rewards.py run) instead of a fresh initialisation",
    )
    parser.add_argument("--reps", type=int, default=10_000, help="bootstrap replications of --returns")
    args = parser.parse_args()
    if args.returns:
        problem = rliable_problem()
        if problem is not None:
            raise SystemExit(problem)
        record = returns_record(RESULTS / "kfac" / "rewards.jsonl", RESULTS / "selection" / "rewards.jsonl", args.reps, 0)
        record = {"command": "python benchmarks/kfac.py --returns", "date": time.strftime("%Y-%m-%d"), **record}
        text = returns_markdown(record)
        write_record("returns", record, text, folder=RESULTS / "kfac")
        print(text)
        return
    th.set_num_threads(1)
    results = [run_config(config, args.updates, args.repeats, args.start_from) for config in args.configs]
    command = "python benchmarks/kfac.py " + " ".join(
        [f"--configs {' '.join(args.configs)}", f"--updates {args.updates}", f"--repeats {args.repeats}"]
        + ([f"--output {args.output}"] if args.output != "kfac" else [])
        + ([f"--start-from {repository_path(args.start_from)}"] if args.start_from else [])
    )
    record = {"command": command, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "results": results}
    write_record(args.output, record, markdown(results, command))


if __name__ == "__main__":
    main()
