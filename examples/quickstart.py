"""Quickstart: train NPG on CartPole-v1, print progress, then evaluate the trained agent.

The settings are those of ``tests/test_learning.py``, which solve CartPole-v1 (mean return >= 475) in
about 15k steps with seed 0. Set ``SB3_NPG_EXAMPLE_QUICK=1`` to run it with a tiny budget (what
``tests/test_examples.py`` does).
"""

import os

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_npg import NPG

QUICK = os.environ.get("SB3_NPG_EXAMPLE_QUICK") == "1"
N_EVAL_EPISODES = 2 if QUICK else 10

env = make_vec_env("CartPole-v1", n_envs=4, seed=0)
model = NPG("MlpPolicy", env, n_steps=256, target_kl=0.03, gae_lambda=0.98, n_critic_updates=20, seed=0, verbose=1)
model.learn(total_timesteps=2_048 if QUICK else 30_000)
mean_return, std_return = evaluate_policy(model, make_vec_env("CartPole-v1", seed=1000), n_eval_episodes=N_EVAL_EPISODES)
print(f"Mean return over {N_EVAL_EPISODES} episodes: {mean_return:.1f} +/- {std_return:.1f}")
