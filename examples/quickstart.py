"""Quickstart: train NPG on CartPole-v1, print progress, then evaluate the trained agent."""

from stable_baselines3.common.evaluation import evaluate_policy

from sb3_npg import NPG

model = NPG("MlpPolicy", "CartPole-v1", n_steps=1024, target_kl=0.02, seed=0, verbose=1)
model.learn(total_timesteps=50_000)
mean_return, std_return = evaluate_policy(model, model.get_env(), n_eval_episodes=10)
print(f"Mean return over 10 episodes: {mean_return:.1f} +/- {std_return:.1f}")
