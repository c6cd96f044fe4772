"""
Environments of the project's own, for examples and benchmarks.

:class:`MaskedCueEnv` needs both a memory and action masks: a cue shown only at the first step says which action pays
at the last step, and most actions are invalid at every step (MaskableRecurrentNPG's example and benchmark).
"""

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class MaskedCueEnv(gym.Env):
    """
    Remember a cue, act only validly. At the first step the observation shows a cue, one of the ``n_actions``
    actions; it is hidden afterwards. After ``delay`` steps comes the decision: two actions are valid, the cued one and
    a decoy; the cued one pays +1, the decoy -1, and the episode ends. At every step only ``n_valid`` actions are valid
    (``action_masks()``, also shown in the observation); an invalid action costs -1 and ends the episode.

    The best return is 1. Without memory the decision is a coin flip between the two valid actions (expected return
    0); without masks the policy must first learn from the observation which actions are valid.

    Observation: the cue as a one-hot vector (zeros after the first step), the current mask (1 for valid actions) and
    the step's fraction of the episode, ``2 * n_actions + 1`` values in [0, 1].

    :param n_actions: the number of actions (and of cues)
    :param n_valid: the number of valid actions at every step before the decision
    :param delay: the number of steps between the cue and the decision (the episode has ``delay + 1`` steps)
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, n_actions: int = 6, n_valid: int = 2, delay: int = 3):
        if n_actions < 2:
            raise ValueError(f"Invalid n_actions={n_actions}: at least 2 (the cued action and a decoy)")
        if not 1 <= n_valid <= n_actions:
            raise ValueError(f"Invalid n_valid={n_valid}: between 1 and n_actions={n_actions}")
        if delay < 1:
            raise ValueError(f"Invalid delay={delay}: at least 1 step between the cue and the decision")
        self.n_actions = n_actions
        self.n_valid = n_valid
        self.delay = delay
        self.action_space = spaces.Discrete(n_actions)
        self.observation_space = spaces.Box(0.0, 1.0, (2 * n_actions + 1,), np.float32)
        self._cue = 0
        self._step = 0
        self._mask = np.ones(n_actions, dtype=bool)

    def _new_mask(self) -> np.ndarray:
        mask = np.zeros(self.n_actions, dtype=bool)
        if self._step == self.delay:  # the decision: the cued action and a decoy
            decoy = self.np_random.choice([action for action in range(self.n_actions) if action != self._cue])
            mask[[self._cue, decoy]] = True
        else:
            mask[self.np_random.choice(self.n_actions, self.n_valid, replace=False)] = True
        return mask

    def _observation(self) -> np.ndarray:
        cue = np.zeros(self.n_actions, dtype=np.float32)
        if self._step == 0:
            cue[self._cue] = 1.0
        return np.concatenate([cue, self._mask.astype(np.float32), [self._step / self.delay]]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(self.n_actions))
        self._step = 0
        self._mask = self._new_mask()
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = int(action)
        if not self._mask[action]:
            return self._observation(), -1.0, True, False, {"invalid_action": True}
        if self._step == self.delay:
            return self._observation(), 1.0 if action == self._cue else -1.0, True, False, {"invalid_action": False}
        self._step += 1
        self._mask = self._new_mask()
        return self._observation(), 0.0, False, False, {"invalid_action": False}

    def action_masks(self) -> np.ndarray:
        """The valid actions of the current step (sb3-contrib's masking protocol)."""
        return self._mask.copy()
