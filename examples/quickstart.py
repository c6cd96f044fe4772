"""Quickstart: train NPG on CartPole-v1, print progress, then evaluate the trained agent.

Set ``SB3_NPG_EXAMPLE_QUICK=1`` to run it with a tiny budget (what ``tests/test_examples.py`` does).
"""

import os

from stable_baselines3.common.evaluation import evaluate_policy

from sb3_npg import NPG

QUICK = os.environ.get("SB3_NPG_EXAMPLE_QUICK") == "1"

model = NPG("MlpPolicy", "CartPole-v1", n_steps=1024, target_kl=0.02, seed=0, verbose=1)
model.learn(total_timesteps=2_048 if QUICK else 50_000)
mean_return, std_return = evaluate_policy(model, model.get_env(), n_eval_episodes=2 if QUICK else 10)
print(f"Mean return over 10 episodes: {mean_return:.1f} +/- {std_return:.1f}")
