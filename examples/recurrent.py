"""Memory: RecurrentNPG (an LSTM policy) on CartPole without its velocities, then prediction that carries the LSTM state.

The observation keeps the cart position and the pole angle and hides both velocities (the RL Zoo's ``CartPoleNoVel-v1``
does the same), so a policy must remember the previous observations to act well. The settings are those of the
shipped ``sb3_npg/hyperparams/npg_lstm.yml`` entry for ``CartPoleNoVel-v1`` (without ``VecNormalize``); see
docs/recurrent.md for its results. Set ``SB3_NPG_EXAMPLE_QUICK=1`` to run it with a tiny budget (what
``tests/test_examples.py`` does).
"""

import os

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from torch import nn

from sb3_npg import RecurrentNPG

QUICK = os.environ.get("SB3_NPG_EXAMPLE_QUICK") == "1"


class HideVelocities(gym.ObservationWrapper):
    """CartPole's observation with the cart velocity and the pole's angular velocity set to 0."""

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation * np.array([1.0, 0.0, 1.0, 0.0], dtype=observation.dtype)


env = make_vec_env("CartPole-v1", n_envs=8, seed=0, wrapper_class=HideVelocities)
model = RecurrentNPG(
    "MlpLstmPolicy",
    env,
    n_steps=128,
    batch_size=256,
    gamma=0.98,
    gae_lambda=0.8,
    n_critic_updates=20,
    target_kl=0.016,
    step_length="exact",
    policy_kwargs=dict(
        ortho_init=False,
        activation_fn=nn.ReLU,
        lstm_hidden_size=64,
        enable_critic_lstm=True,  # the critic has its own LSTM, trained by its regression
        net_arch=dict(pi=[64], vf=[64]),
    ),
    seed=0,
    verbose=1,
)
model.learn(total_timesteps=2_048 if QUICK else 100_000)

# predict() takes and returns the LSTM states; episode_start resets them where an episode begins
observations = env.reset()
states = None
episode_starts = np.ones((env.num_envs,), dtype=bool)
for _ in range(10):
    actions, states = model.predict(observations, state=states, episode_start=episode_starts, deterministic=True)
    observations, rewards, dones, infos = env.step(actions)
    episode_starts = dones
print(f"LSTM state: {len(states)} tensors (hidden, cell) of shape {states[0].shape} (layers, envs, hidden size)")

# SB3's evaluate_policy carries the states itself
mean_return, std_return = evaluate_policy(model, env, n_eval_episodes=2 if QUICK else 20, warn=False)
print(f"Mean return without velocities: {mean_return:.1f} +/- {std_return:.1f}")

model.save("recurrent_npg_cartpole_novel")
model = RecurrentNPG.load("recurrent_npg_cartpole_novel", env=env)
