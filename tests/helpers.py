"""
Helpers shared by the test files: tiny models on the toy environments, one rollout collected as ``learn`` does,
a perturbed actor, and the comparisons of float32 results (one definition each; test files import them from here,
never from one another).
"""

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from sb3_npg import NPG
from tests.envs import ACTION_SPACES, ToyEnv

#: Settings of a model that trains in milliseconds (16 samples per rollout, an 8-unit MLP)
TINY = {"n_steps": 16, "batch_size": 8, "n_critic_updates": 2, "policy_kwargs": {"net_arch": [8]}, "seed": 0}


def toy_env(
    action_space: spaces.Space = ACTION_SPACES["box6d"],
    observation_space: spaces.Space | None = None,
    n_envs: int = 1,
    env_class: type[ToyEnv] = ToyEnv,
) -> VecEnv:
    """``n_envs`` copies of ``env_class`` (:class:`~tests.envs.ToyEnv` or a subclass), seeded with 0."""
    env_kwargs = {"action_space": action_space, "observation_space": observation_space}
    return make_vec_env(env_class, n_envs=n_envs, seed=0, env_kwargs=env_kwargs)


def tiny_model(
    distribution: str | spaces.Space,
    n_steps: int = 32,
    net_arch: tuple[int, ...] = (8,),
    activation_fn: type[nn.Module] = nn.Tanh,
    algorithm: type[NPG] = NPG,
    env_class: type[ToyEnv] = ToyEnv,
    **kwargs,
) -> NPG:
    """
    An ``algorithm`` model with a tiny MLP on ``env_class`` with the action distribution ``distribution``.

    :param distribution: a key of :data:`~tests.envs.ACTION_SPACES`, ``"gsde"`` (``box6d`` with gSDE), or an action space
    :param kwargs: further arguments of ``algorithm``
    """
    if isinstance(distribution, spaces.Space):
        action_space = distribution
    else:
        action_space = ACTION_SPACES["box6d" if distribution == "gsde" else distribution]
    if distribution == "gsde":
        kwargs["use_sde"] = True
    return algorithm(
        "MlpPolicy",
        toy_env(action_space, env_class=env_class),
        n_steps=n_steps,
        batch_size=n_steps,
        policy_kwargs={"net_arch": list(net_arch), "activation_fn": activation_fn},
        seed=0,
        **kwargs,
    )


def batch(model: NPG, n_samples: int) -> tuple[th.Tensor, th.Tensor]:
    """Random observations and actions sampled from the policy (in the shapes ``train()`` uses)."""
    generator = np.random.default_rng(1)
    observations = th.as_tensor(generator.uniform(-1, 1, (n_samples, *model.observation_space.shape)), dtype=th.float32)
    if model.use_sde:
        model.policy.reset_noise()
    with th.no_grad():
        actions = model.policy.get_distribution(observations).get_actions()
    return observations, actions


def perturb(model: NPG, scale: float = 0.3) -> None:
    """
    Move the actor away from its initialisation (log_std 0, tiny action layer) so every term of F is exercised:
    Gaussian noise of standard deviation ``scale`` (seeded) on every actor parameter.
    """
    generator = th.Generator().manual_seed(2)
    with th.no_grad():
        for parameter in model.actor_parameters:
            parameter.add_(scale * th.randn(parameter.shape, generator=generator))


def assert_close_in_norm(actual: th.Tensor, expected: th.Tensor, rtol: float) -> None:
    """``||actual - expected|| <= rtol ||expected||`` (float32 network, so relative to the norm)."""
    error = (actual - expected).norm().item()
    assert error <= rtol * expected.norm().item(), f"relative error {error / expected.norm().item():.2e}"


def collect(model: NPG) -> None:
    """Fill the rollout buffer once, as ``learn`` does before ``train()`` (the logger is configured too)."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, reset_num_timesteps=model._last_obs is None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


def cosine(a: th.Tensor, b: th.Tensor) -> float:
    """The cosine of the angle between two flat tensors."""
    return (a @ b / (a.norm() * b.norm())).item()


def observations_for(model, n: int = 20) -> np.ndarray:
    """``n`` observations sampled from the model's observation space (seeded with 0)."""
    space = model.observation_space
    space.seed(0)
    return np.stack([space.sample() for _ in range(n)])
