"""sb3_npg: Natural Policy Gradient for Stable-Baselines3."""

import os

from sb3_npg.maskable import MaskableNPG
from sb3_npg.maskable_recurrent import MaskableRecurrentNPG
from sb3_npg.npg import NPG
from sb3_npg.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_npg.recurrent import RecurrentNPG
from sb3_npg.trpo_compat import trpo_to_npg_kwargs

with open(os.path.join(os.path.dirname(__file__), "version.txt")) as file_handler:
    __version__ = file_handler.read().strip()

__all__ = [
    "NPG",
    "CnnPolicy",
    "MaskableNPG",
    "MaskableRecurrentNPG",
    "MlpPolicy",
    "MultiInputPolicy",
    "RecurrentNPG",
    "__version__",
    "trpo_to_npg_kwargs",
]
