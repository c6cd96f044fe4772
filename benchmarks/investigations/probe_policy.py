"""
Probe a trained RL Zoo run's policy: how it does with and without action noise, and how far one NPG update moves it.

Two cheap measurements (seconds to a few minutes of CPU) on a run's saved model and ``VecNormalize`` statistics
(``<log_dir>/<algo>/<env>_1/{<env>.zip, best_model.zip, <env>/vecnormalize.pkl}``, as ``rl_zoo3.train`` writes them):

``noise``
    Episodes with the mean action (deterministic), with the mean plus Gaussian noise of ``c`` times the policy's own
    std for each ``c`` of ``--noise-scales`` (``c = 1`` is the stochastic policy training samples from), reporting the
    return, the episode length and the share of episodes that reach the time limit (the others fell).
``step``
    From the saved policy, ``--rollouts`` fresh rollouts of ``--rollout-steps`` samples with the stochastic policy,
    and on each the natural-gradient step of :class:`sb3_npg.NPG` (``damped_step_size``, as the MuJoCo entries)
    scaled to each ``target_kl`` of ``--kls``; reports the deterministic return after each step. This shows how much
    a single update of a given KL moves the return the evaluations measure. A TRPO model's policy gets NPG's step
    (the direction and normalisation TRPO computes before its line search). It also reports the cosine between the
    steps' directions from each pair of rollouts: near 1 when the step follows the gradient of the expected return,
    near 0 when the sampling noise of a rollout dominates it.
``continue``
    Train on from the saved policy and critic with NPG (the MuJoCo entries' values: 2 envs, ``--n-steps`` per env,
    ``--target-kl``, ``--cg-damping``, the damped step) for ``--steps`` steps, with the deterministic return every
    ``--eval-every`` updates: whether NPG's steps keep, improve or break a policy another run ended with.
``figure``
    Draw the ``continue`` lines of a JSON lines file written with ``--out`` (the positional argument): the
    deterministic and the training return against the steps trained on, one colour per ``target_kl``, one panel
    per source run; saved to ``--figure``.

The ``VecNormalize`` statistics are the ones saved at the end of training (``best_model.zip`` is evaluated with
them too, so its figures are approximate). Usage::

    nice -n 10 python benchmarks/investigations/probe_policy.py noise benchmarks/logs/runs/npg/Hopper-v5/seed7_1000000
    nice -n 10 python benchmarks/investigations/probe_policy.py step benchmarks/logs/runs/trpo/Hopper-v5/seed7_1000000 \
        --kls 0.006 0.09
    nice -n 10 python benchmarks/investigations/probe_policy.py continue benchmarks/logs/runs/trpo/Hopper-v5/seed7_1000000 \
        --target-kl 0.1 --steps 81920 --eval-every 2 --episodes 2 --seed 1 --out probes.jsonl
    python benchmarks/investigations/probe_policy.py figure probes.jsonl --figure continue.png

Output: one JSON line per measurement on stdout (and appended to ``--out``, if given).
"""

import argparse
import json
import pathlib
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from sb3_contrib import TRPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_npg import NPG

ALGOS: dict[str, type[BaseAlgorithm]] = {"npg": NPG, "trpo": TRPO}


def run_paths(log_dir: pathlib.Path, checkpoint: str) -> tuple[str, str, pathlib.Path, pathlib.Path]:
    """
    The algorithm, env id, model file and ``VecNormalize`` file of an ``rl_zoo3.train`` log directory.

    :param log_dir: the ``-f`` folder of the run (it holds ``<algo>/<env>_1/``)
    :param checkpoint: ``"final"`` (``<env>.zip``) or ``"best"`` (``best_model.zip``)
    """
    if checkpoint not in ("final", "best"):
        raise ValueError(f"Invalid checkpoint={checkpoint!r}: must be 'final' or 'best'")
    (run_dir,) = [path for path in log_dir.glob("*/*_1") if path.parent.name in ALGOS]
    algo, env_id = run_dir.parent.name, run_dir.name.removesuffix("_1")
    model = run_dir / (f"{env_id}.zip" if checkpoint == "final" else "best_model.zip")
    return algo, env_id, model, run_dir / env_id / "vecnormalize.pkl"


def make_env(env_id: str, vecnormalize: pathlib.Path, seed: int) -> VecNormalize:
    """One env with the run's observation normalisation, frozen (no statistics update, rewards as the env gives)."""
    venv = DummyVecEnv([lambda: gym.make(env_id)])
    venv.seed(seed)
    env = VecNormalize.load(str(vecnormalize), venv)
    env.training = False
    env.norm_reward = False
    return env


def run_episodes(model: BaseAlgorithm, env: VecNormalize, n_episodes: int, noise_scale: float | None) -> dict[str, Any]:
    """
    ``n_episodes`` episodes; ``noise_scale`` ``None``: the mean action, else the mean plus ``noise_scale`` times the
    policy's std of Gaussian noise; the action is clipped to the bounds after the noise, as in training. Also the
    share of the mean's action components outside the bounds (where the clipped action ignores small moves).
    """
    policy = model.policy
    assert isinstance(policy, ActorCriticPolicy) and isinstance(policy.log_std, th.Tensor), "a Gaussian policy"
    assert isinstance(env.action_space, gym.spaces.Box), "Box actions"
    std = th.exp(policy.log_std).detach().numpy() if noise_scale else None
    low, high = env.action_space.low, env.action_space.high
    returns: list[float] = []
    lengths: list[int] = []
    saturated: list[float] = []
    timeouts = 0
    obs: Any = env.reset()
    episode_return, episode_length = 0.0, 0
    while len(returns) < n_episodes:
        with th.no_grad():
            distribution = policy.get_distribution(policy.obs_to_tensor(obs)[0]).distribution
            assert isinstance(distribution, th.distributions.Normal), "a Gaussian policy"
            mean = distribution.mean.numpy()
        saturated.append(float(np.mean((mean < low) | (mean > high))))
        action = mean if std is None else mean + noise_scale * std * np.random.standard_normal(mean.shape)
        obs, reward, done, info = env.step(np.clip(action, low, high))
        episode_return += float(reward[0])
        episode_length += 1
        if done[0]:
            returns.append(episode_return)
            lengths.append(episode_length)
            timeouts += bool(info[0].get("TimeLimit.truncated", False))
            episode_return, episode_length = 0.0, 0
    return {
        "return": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "length": float(np.mean(lengths)),
        "timeouts": timeouts / n_episodes,
        "mean_outside_bounds": float(np.mean(saturated)),
    }


def probe_noise(model: BaseAlgorithm, env: VecNormalize, scales: list[float], n_episodes: int) -> list[dict[str, Any]]:
    """The deterministic policy, then the mean plus noise at each scale of the policy's std."""
    rows = [{"noise_scale": 0.0, **run_episodes(model, env, n_episodes, None)}]
    rows += [{"noise_scale": scale, **run_episodes(model, env, n_episodes, scale)} for scale in scales]
    return rows


def npg_from_saved(model: BaseAlgorithm, env: VecNormalize, seed: int, **settings: Any) -> NPG:
    """
    NPG with the saved model's policy and critic (its ``policy_kwargs`` and weights) and the MuJoCo entries' damped
    step (``batch_size`` 128, 25 CG steps), logging nowhere; ``settings`` are the probe's own NPG arguments.
    """
    npg = NPG(
        "MlpPolicy",
        env,
        batch_size=128,
        cg_max_steps=25,
        damped_step_size=True,
        policy_kwargs=model.policy_kwargs,
        seed=seed,
        device="cpu",
        **settings,
    )
    npg.policy.load_state_dict(model.policy.state_dict())
    npg.set_logger(configure(None, []))
    return npg


def probe_step(
    model: BaseAlgorithm,
    env: VecNormalize,
    kls: list[float],
    n_rollouts: int,
    rollout_steps: int,
    n_episodes: int,
    seed: int,
) -> list[dict[str, Any]]:
    """
    Deterministic return after one NPG step of each KL in ``kls`` from the saved policy, on ``n_rollouts`` fresh
    rollouts (the same rollout for every KL), with the return before any step as the reference.
    """
    npg = npg_from_saved(model, env, seed, n_steps=rollout_steps, n_critic_updates=1, cg_damping=0.1)
    saved = {name: value.clone() for name, value in npg.policy.state_dict().items()}
    rows = [{"rollout": -1, "kl_target": 0.0, **run_episodes(npg, env, n_episodes, None)}]
    start = th.cat([parameter.detach().flatten() for parameter in npg.actor_parameters])
    directions = []
    for rollout in range(n_rollouts):
        npg.policy.load_state_dict(saved)
        npg.target_kl = 1e-12  # learn() collects the rollout (the step it takes is negligible and undone below)
        npg.learn(rollout_steps, reset_num_timesteps=rollout == 0)
        for kl in kls:
            npg.policy.load_state_dict(saved)
            npg.target_kl = kl
            npg.train()  # the step on the collected rollout (the advantages were computed at the saved critic)
            if kl == kls[0]:  # the direction is the same for every KL, only its scale differs
                directions.append(th.cat([parameter.detach().flatten() for parameter in npg.actor_parameters]) - start)
            measured = npg.logger.name_to_value["train/kl_divergence"]
            rows.append({"rollout": rollout, "kl_target": kl, "kl": measured, **run_episodes(npg, env, n_episodes, None)})
    rows.append({"direction_cosines": pairwise_cosines(directions)})
    return rows


def pairwise_cosines(vectors: list[th.Tensor]) -> list[float]:
    """The cosine of the angle between each pair of ``vectors`` (in the order (0, 1), (0, 2), ..., (1, 2), ...)."""
    units = [vector / vector.norm() for vector in vectors]
    return [float(units[i] @ units[j]) for i in range(len(units)) for j in range(i + 1, len(units))]


def probe_continue(
    model: BaseAlgorithm,
    env_id: str,
    vecnormalize: pathlib.Path,
    target_kl: float,
    n_steps: int,
    total_steps: int,
    eval_every: int,
    n_episodes: int,
    seed: int,
    cg_damping: float = 0.1,
) -> list[dict[str, Any]]:
    """
    Deterministic return (and training return, and the median KL of the last ``eval_every`` updates) every
    ``eval_every`` updates of NPG trained on from the saved policy (observation statistics updated as in training,
    copied to the evaluation env before each evaluation).
    """
    venv = DummyVecEnv([lambda: Monitor(gym.make(env_id)) for _ in range(2)])  # Monitor: the training returns
    venv.seed(seed)
    train_env = VecNormalize.load(str(vecnormalize), venv)
    train_env.norm_reward = False
    eval_env = make_env(env_id, vecnormalize, seed + 1)
    npg = npg_from_saved(
        model,
        train_env,
        seed,
        n_steps=n_steps,
        gamma=0.99,
        gae_lambda=0.95,
        n_critic_updates=20,
        learning_rate=1e-3,
        cg_damping=cg_damping,
        target_kl=target_kl,
    )
    measured: list[float] = []  # the KL of each update, read before the logger's dump clears it
    train = npg.train

    def train_and_record() -> None:
        train()
        measured.append(npg.logger.name_to_value["train/kl_divergence"])

    npg.train = train_and_record  # type: ignore[method-assign]
    rows = []
    steps_per_eval = eval_every * n_steps * 2
    for done_steps in range(0, total_steps + 1, steps_per_eval):
        if done_steps:
            npg.learn(steps_per_eval, reset_num_timesteps=done_steps == steps_per_eval)
        eval_env.obs_rms = train_env.obs_rms.copy()
        episodes = [info["r"] for info in npg.ep_info_buffer] if npg.ep_info_buffer else [float("nan")]
        rows.append(
            {
                "steps": done_steps,
                "target_kl": target_kl,
                "n_steps": n_steps,
                "cg_damping": cg_damping,
                "training_return": float(np.mean(episodes[-20:])),
                "median_kl": float(np.median(measured[-eval_every:])) if done_steps else float("nan"),
                **run_episodes(npg, eval_env, n_episodes, None),
            }
        )
    return rows


def plot_continue(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    """
    The ``continue`` rows: deterministic (solid) and training (dotted) return against the updates, per source run,
    one colour per ``(target_kl, cg_damping, n_steps)`` (a row without ``cg_damping`` had the default, 0.1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"cg_damping": 0.1, **row} for row in rows if row.get("mode") == "continue"]
    if not rows:
        raise ValueError("no 'continue' lines to draw")

    def source(row: dict[str, Any]) -> tuple[str, str, str]:
        return row["algo"], row["log_dir"], row["checkpoint"]

    def setting(row: dict[str, Any]) -> tuple[float, float, int]:
        return row["target_kl"], row["cg_damping"], row["n_steps"]

    settings = sorted({setting(row) for row in rows})
    palette = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange", "tab:brown")
    colours = dict(zip(settings, palette, strict=False))
    sources = sorted({source(row) for row in rows})
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4.5), squeeze=False, sharey=True)
    for ax, run_source in zip(axes[0], sources, strict=True):
        labelled = set()
        for chosen, seed in sorted({(setting(row), row["seed"]) for row in rows if source(row) == run_source}):
            mine = [row for row in rows if (source(row), setting(row), row["seed"]) == (run_source, chosen, seed)]
            updates = [row["steps"] / (2 * row["n_steps"]) for row in mine]  # 2 envs
            label = None if chosen in labelled else f"target_kl {chosen[0]:g}, cg_damping {chosen[1]:g}, n_steps {chosen[2]}"
            labelled.add(chosen)
            colour = colours.get(chosen, "k")
            ax.plot(updates, [row["return"] for row in mine], "o-", color=colour, markersize=3, label=label)
            ax.plot(updates, [row["training_return"] for row in mine], ":", color=colour, linewidth=1)
        name = pathlib.Path(run_source[1]).name.split("_")[0].replace("seed", "seed ")
        ax.set_title(
            f"from {run_source[0].upper()}'s {rows[0]['env']} {name} policy ({run_source[2]} model)", fontsize="medium"
        )
        ax.set_xlabel("NPG updates from the saved policy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="lower left")
    axes[0][0].set_ylabel("return: deterministic (solid), training (dotted)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", choices=("noise", "step", "continue", "figure"))
    parser.add_argument("log_dir", type=pathlib.Path, help="the run's rl_zoo3 log folder (-f); figure: a --out file")
    parser.add_argument("--figure", type=pathlib.Path, default=pathlib.Path("continue.png"), help="figure: the image")
    parser.add_argument("--checkpoint", choices=("final", "best"), default="final")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per measurement")
    parser.add_argument("--noise-scales", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--kls", type=float, nargs="+", default=[0.005, 0.02, 0.05, 0.09])
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--rollout-steps", type=int, default=4096)
    parser.add_argument("--target-kl", type=float, default=0.1, help="continue: NPG's target_kl")
    parser.add_argument("--cg-damping", type=float, default=0.1, help="continue: NPG's cg_damping")
    parser.add_argument("--n-steps", type=int, default=2048, help="continue: samples per env per update (2 envs)")
    parser.add_argument("--steps", type=int, default=163840, help="continue: steps to train on")
    parser.add_argument("--eval-every", type=int, default=5, help="continue: updates between evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    for name in ("episodes", "rollouts", "rollout_steps", "n_steps", "steps", "eval_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(scale <= 0 for scale in args.noise_scales) or any(kl <= 0 for kl in args.kls) or args.target_kl <= 0:
        parser.error("--noise-scales, --kls and --target-kl must be > 0")
    if args.cg_damping < 0:
        parser.error(f"--cg-damping must be >= 0, got {args.cg_damping}")
    if args.mode == "figure":
        rows = [json.loads(line) for line in args.log_dir.read_text().splitlines() if line.strip()]
        plot_continue(rows, args.figure)
        return rows
    th.set_num_threads(1)
    np.random.seed(args.seed)
    th.manual_seed(args.seed)
    algo, env_id, model_path, vecnormalize = run_paths(args.log_dir, args.checkpoint)
    env = make_env(env_id, vecnormalize, args.seed)
    model = ALGOS[algo].load(model_path, device="cpu")
    if not isinstance(model.action_space, gym.spaces.Box):
        raise ValueError(
            f"Invalid run {args.log_dir}: the probe takes Gaussian policies (Box actions), not {model.action_space}"
        )
    if args.mode == "noise":
        rows = probe_noise(model, env, args.noise_scales, args.episodes)
    elif args.mode == "continue":
        rows = probe_continue(
            model,
            env_id,
            vecnormalize,
            args.target_kl,
            args.n_steps,
            args.steps,
            args.eval_every,
            args.episodes,
            args.seed,
            args.cg_damping,
        )
    else:
        rows = probe_step(model, env, args.kls, args.rollouts, args.rollout_steps, args.episodes, args.seed)
    run = {
        "algo": algo,
        "env": env_id,
        "log_dir": str(args.log_dir),
        "checkpoint": args.checkpoint,
        "mode": args.mode,
        "seed": args.seed,
    }
    lines = [json.dumps({**run, **row}) for row in rows]
    print("\n".join(lines))
    if args.out is not None:
        with args.out.open("a") as file:
            file.write("".join(line + "\n" for line in lines))
    return rows


if __name__ == "__main__":
    main()
