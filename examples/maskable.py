"""Invalid action masking: MaskableNPG on sb3-contrib's InvalidActionEnvDiscrete, then masked prediction and evaluation.

The environment says which actions are valid through its ``action_masks()`` method (wrap any env with sb3-contrib's
``ActionMasker`` to add one). The settings are those of sb3-contrib's MaskablePPO performance test
(``gamma=0.4``); ``benchmarks/maskable.py`` measures a mean return of 85-97 (of 100) after 10k steps over three
seeds. Set ``SB3_NPG_EXAMPLE_QUICK=1`` to run it with a tiny budget (what ``tests/test_examples.py`` does).
"""

import os

import numpy as np
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from sb3_contrib.common.maskable.evaluation import evaluate_policy
from sb3_contrib.common.maskable.utils import get_action_masks

from sb3_npg import MaskableNPG

QUICK = os.environ.get("SB3_NPG_EXAMPLE_QUICK") == "1"

env = InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55)
model = MaskableNPG("MlpPolicy", env, gamma=0.4, seed=0, verbose=1)
model.learn(total_timesteps=2_048 if QUICK else 10_000)  # use_masking=True by default

# The mask of the current state goes with every prediction: invalid actions are never chosen
observation, _ = env.reset(seed=1)
action_masks = np.asarray(get_action_masks(env), dtype=bool)
action, _ = model.predict(observation, action_masks=action_masks, deterministic=True)
print(f"valid actions: {np.flatnonzero(action_masks).tolist()}, chosen: {int(action)}")

mean_return, std_return = evaluate_policy(model, env, n_eval_episodes=2 if QUICK else 20, warn=False)
print(f"Mean return (masked evaluation): {mean_return:.1f} +/- {std_return:.1f}")

model.save("maskable_npg_invalid_actions")
model = MaskableNPG.load("maskable_npg_invalid_actions", env=env)
