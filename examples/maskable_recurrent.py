"""Masks and memory together: MaskableRecurrentNPG on MaskedCueEnv, then masked prediction with LSTM states and evaluation.

``sb3_npg.envs.MaskedCueEnv`` shows a cue only at the first step; it says which of the two valid actions pays +1 three
steps later (the other costs -1), and only 2 of the 6 actions are valid at every step (an invalid one costs -1 and ends
the episode). A policy without memory wins the final choice half the time (expected return 0); the best return is 1.
Evaluate with ``sb3_npg.maskable_recurrent.evaluate_policy``: sb3-contrib's maskable ``evaluate_policy`` resets the
LSTM states at every step when it masks. Set ``SB3_NPG_EXAMPLE_QUICK=1`` to run it with a tiny budget (what
``tests/test_examples.py`` does).
"""

import os

import numpy as np
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.env_util import make_vec_env

from sb3_npg import MaskableRecurrentNPG
from sb3_npg.envs import MaskedCueEnv
from sb3_npg.maskable_recurrent import evaluate_policy

QUICK = os.environ.get("SB3_NPG_EXAMPLE_QUICK") == "1"

env = make_vec_env(MaskedCueEnv, n_envs=8, seed=0)
model = MaskableRecurrentNPG(
    "MlpLstmPolicy",
    env,
    n_steps=128,
    batch_size=256,
    target_kl=0.02,
    seed=0,
    policy_kwargs=dict(lstm_hidden_size=32, net_arch=[32]),
    verbose=1,
)
model.learn(total_timesteps=1_024 if QUICK else 40_000)  # use_masking=True by default

# The LSTM states and the current masks go with every prediction: the cue is remembered, invalid actions never chosen
observations, states, episode_starts = env.reset(), None, np.ones(env.num_envs, dtype=bool)
for _ in range(4):
    masks = get_action_masks(env)
    actions, states = model.predict(observations, states, episode_starts, deterministic=True, action_masks=masks)
    assert masks[np.arange(env.num_envs), actions].all()
    observations, rewards, episode_starts, infos = env.step(actions)
print(f"rewards at the decision: {rewards.tolist()}")

eval_env = make_vec_env(MaskedCueEnv, n_envs=1, seed=1)
mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=5 if QUICK else 100)
print(f"Mean return (masked evaluation with memory, best 1): {mean_return:.2f} +/- {std_return:.2f}")

model.save("maskable_recurrent_npg_cue")
model = MaskableRecurrentNPG.load("maskable_recurrent_npg_cue", env=env)
