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


def part_sizes(action_space: spaces.Space) -> list[int]:
    """The sizes of the categorical parts of the mask (``MultiBinary``: two outcomes per dimension)."""
    if isinstance(action_space, spaces.Discrete):
        return [int(action_space.n)]
    if isinstance(action_space, spaces.MultiDiscrete):
        return [int(n) for n in action_space.nvec]
    return [2] * int(action_space.n)


def random_mask(action_space: spaces.Space, generator: np.random.Generator, single: bool = False) -> np.ndarray:
    """A mask with at least one valid action per part; with ``single`` exactly one per part."""
    parts = []
    for size in part_sizes(action_space):
        part = np.zeros(size, dtype=bool) if single else generator.random(size) < 0.5
        part[generator.integers(size)] = True
        parts.append(part)
    return np.concatenate(parts)


class MaskedToyEnv(ToyEnv):
    """:class:`~tests.envs.ToyEnv` with random masks (a third of the states with a single valid action per part);
    an invalid action raises."""

    def __init__(self, action_space: spaces.Space, observation_space: spaces.Space | None = None, episode_length: int = 16):
        super().__init__(action_space, observation_space, episode_length=episode_length)
        self._mask = np.ones(sum(part_sizes(action_space)), dtype=bool)

    def _observation(self):
        self._mask = random_mask(self.action_space, self.np_random, single=self.np_random.random() < 1 / 3)
        return super()._observation()

    def action_masks(self) -> np.ndarray:
        return self._mask

    def step(self, action):
        offsets = np.cumsum([0, *part_sizes(self.action_space)])[:-1]
        chosen = offsets + np.atleast_1d(np.asarray(action, dtype=np.int64))
        if not self._mask[chosen].all():
            raise AssertionError(f"invalid action {action} for mask {self._mask.astype(int)}")
        return super().step(action)
