"""
Continuous control with ``VecNormalize``: train, save the model *and* the normalisation statistics, reload both.

A policy trained on normalised observations only works with the same running mean and variance, so
``vecnormalize.pkl`` must travel with the model. At evaluation time the statistics are frozen
(``training=False``) and rewards are left unnormalised (``norm_reward=False``) so returns are real returns.

Run: ``python examples/continuous_vecnormalize.py`` (about a minute; ``SB3_NPG_EXAMPLE_QUICK=1`` for a smoke run).
"""

import os
import tempfile

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from sb3_npg import NPG

QUICK = os.environ.get("SB3_NPG_EXAMPLE_QUICK") == "1"
ENV_ID = "Pendulum-v1"

# Training: normalised observations and rewards, 2 envs. Pendulum has a 1-D action: target_kl is the
# KL summed over action dimensions, so 0.01-0.02 is TRPO-like here; for 6-D MuJoCo envs use ~0.05-0.1.
env = VecNormalize(make_vec_env(ENV_ID, n_envs=2, seed=0), norm_obs=True, norm_reward=True, gamma=0.9)
model = NPG(
    "MlpPolicy", env, n_steps=1024, gamma=0.9, n_critic_updates=15, target_kl=0.02, use_sde=True, sde_sample_freq=4, seed=0
)
model.learn(total_timesteps=2_048 if QUICK else 60_000, progress_bar=not QUICK)

with tempfile.TemporaryDirectory() as folder:
    model_path = os.path.join(folder, "npg_pendulum.zip")
    stats_path = os.path.join(folder, "vecnormalize.pkl")
    model.save(model_path)
    env.save(stats_path)  # the running mean / variance of the observations (and of the returns)
    del model, env

    # Reloading: wrap a fresh env with the saved statistics, frozen, and real (unnormalised) rewards.
    eval_env = VecNormalize.load(stats_path, make_vec_env(ENV_ID, n_envs=1, seed=123))
    eval_env.training = False
    eval_env.norm_reward = False
    model = NPG.load(model_path, env=eval_env)
    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=3 if QUICK else 10, deterministic=True)
    print(f"{ENV_ID}: mean return {mean_return:.1f} +/- {std_return:.1f} (reloaded model and VecNormalize statistics)")
