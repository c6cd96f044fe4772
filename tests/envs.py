"""Small gymnasium environments for the tests: any action space, vector, image and dict observations, cheap to step."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ToyEnv(gym.Env):
    """
    Fixed-length episodes with random observations; the reward prefers actions correlated with the first observation.

    :param action_space: any action space NPG supports
    :param observation_space: a ``Box`` (vector or ``uint8`` image) or a ``Dict`` of them
    :param episode_length: steps per episode
    """

    def __init__(self, action_space: spaces.Space, observation_space: spaces.Space | None = None, episode_length: int = 16):
        self.action_space = action_space
        self.observation_space = observation_space if observation_space is not None else spaces.Box(-1, 1, (3,), np.float32)
        self.episode_length = episode_length
        self._steps = 0
        self._signal = 0.0

    def _observation(self):
        observation = self.observation_space.sample()
        first = next(iter(observation.values())) if isinstance(observation, dict) else observation
        self._signal = float(np.asarray(first).flat[0])
        return observation

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self._steps = 0
        return self._observation(), {}

    def step(self, action):
        reward = self._signal * float(np.mean(np.asarray(action, dtype=np.float64)))
        self._steps += 1
        return self._observation(), reward, False, self._steps >= self.episode_length, {}


def image_space(shape: tuple[int, ...] = (36, 36, 1)) -> spaces.Box:
    """A ``uint8`` channel-last image space, the smallest NatureCNN accepts by default."""
    return spaces.Box(0, 255, shape, np.uint8)


ACTION_SPACES = {
    "discrete": spaces.Discrete(3),
    "box1d": spaces.Box(-1, 1, (1,), np.float32),
    "box6d": spaces.Box(-1, 1, (6,), np.float32),
    "multidiscrete": spaces.MultiDiscrete([3, 2, 4]),
    "multibinary": spaces.MultiBinary(3),
}
