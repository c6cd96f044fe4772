"""
A faster rollout for NPG: SB3's ``collect_rollouts`` loop with a lean forward pass of the policy.

On SB3's small MLP policies a rollout step is bound by per-call overhead, not arithmetic: ``policy(obs)``
dispatches six modules and builds a ``torch.distributions`` object (with argument validation) to sample and
score one action. :class:`LeanForward` computes the same actions, values and log-probabilities with plain
``F.linear`` calls and the distributions' own formulas, drawing from torch's generator with the same calls in
the same order (``Tensor.normal_`` for a diagonal Gaussian, ``torch.multinomial`` for categoricals,
``torch.bernoulli`` for Bernoulli), so the rollout buffer and the random generators end in the same state as
with SB3's loop. gSDE keeps SB3's own distribution object (only the MLP is lean).

:func:`LeanForward.for_policy` accepts only what it reproduces exactly: SB3's ``MlpPolicy`` and
``MultiInputPolicy`` classes themselves (no subclass), an ``MlpExtractor`` of ``Linear`` layers and elementwise
activations, linear action and value heads, SB3's standard distributions, and no forward hook on any of its
modules (the lean pass calls no module, so hooks would not fire). Anything else (CNN policies,
custom policies and extractors, sb3-contrib's maskable or recurrent policies) returns ``None``, and NPG then
uses SB3's ``collect_rollouts`` unchanged.
"""

import math
from collections.abc import Callable

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn
from torch.nn import functional as F

from sb3_npg.mlp import ELEMENTWISE_ACTIVATIONS

# The policy classes whose forward pass LeanForward reproduces (exact types: subclasses may override anything)
SUPPORTED_POLICIES = (ActorCriticPolicy, MultiInputActorCriticPolicy)
SUPPORTED_DISTRIBUTIONS = (
    DiagGaussianDistribution,
    CategoricalDistribution,
    MultiCategoricalDistribution,
    BernoulliDistribution,
    StateDependentNoiseDistribution,
)
# log(sqrt(2 pi)), the constant of torch's Normal.log_prob
LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))

Layer = tuple[th.Tensor, th.Tensor | None, Callable[[th.Tensor], th.Tensor] | None]
# torch's registries of forward hooks (internal names, read only; if one is missing the fast path is not taken)
GLOBAL_HOOK_REGISTRIES = ("_global_forward_hooks", "_global_forward_pre_hooks")
MODULE_HOOK_REGISTRIES = ("_forward_hooks", "_forward_pre_hooks")


def forward_hooks_may_fire(policy: nn.Module) -> bool:
    """
    :param policy: a policy
    :return: whether a forward hook is registered on any of the policy's modules (or globally), which the lean
        forward pass would skip; ``True`` also when torch's hook registries cannot be read
    """
    global_registries = [getattr(nn.modules.module, name, None) for name in GLOBAL_HOOK_REGISTRIES]
    if any(registry is None or len(registry) > 0 for registry in global_registries):
        return True
    for module in policy.modules():
        for name in MODULE_HOOK_REGISTRIES:
            registry = getattr(module, name, None)
            if registry is None or len(registry) > 0:
                return True
    return False


def _activation_function(activation: nn.Module) -> Callable[[th.Tensor], th.Tensor]:
    """The function an activation module applies (``torch.tanh``/``torch.relu`` directly, what their forward calls)."""
    if type(activation) is nn.Tanh:
        return th.tanh
    if type(activation) is nn.ReLU and not activation.inplace:
        return th.relu
    return activation


def _linear_layers(module: nn.Module) -> list[Layer] | None:
    """:return: ``(weight, bias, activation)`` per linear layer of a ``Sequential``, or ``None`` if it is anything else"""
    if type(module) is not nn.Sequential:
        return None
    layers: list[Layer] = []
    for child in module:
        if type(child) is nn.Linear:
            layers.append((child.weight, child.bias, None))
        elif type(child) in ELEMENTWISE_ACTIVATIONS and layers and layers[-1][2] is None:
            weight, bias, _ = layers[-1]
            layers[-1] = (weight, bias, _activation_function(child))
        else:
            return None
    return layers


def _apply(layers: list[Layer], inputs: th.Tensor) -> th.Tensor:
    hidden = inputs
    for weight, bias, activation in layers:
        hidden = F.linear(hidden, weight, bias)
        if activation is not None:
            hidden = activation(hidden)
    return hidden


class LeanForward:
    """
    ``policy(obs)`` (sampled actions, values, log-probabilities) without module dispatch or distribution objects.

    Build it with :meth:`for_policy`, which checks that the policy is one it reproduces exactly. It holds the
    policy's weight tensors themselves (it follows in-place updates); build a new one if modules are replaced.

    :param policy: the policy (already checked by :meth:`for_policy`)
    :param actor_layers: the actor's MLP layers
    :param critic_layers: the critic's MLP layers
    """

    def __init__(self, policy: ActorCriticPolicy, actor_layers: list[Layer], critic_layers: list[Layer]):
        self.policy = policy
        self.actor_layers = actor_layers
        self.critic_layers = critic_layers
        action_net, value_net = policy.action_net, policy.value_net
        assert isinstance(action_net, nn.Linear) and isinstance(value_net, nn.Linear)
        self.action_weight, self.action_bias = action_net.weight, action_net.bias
        self.value_weight, self.value_bias = value_net.weight, value_net.bias
        self.distribution = policy.action_dist
        self.action_shape = policy.action_space.shape

    @classmethod
    def for_policy(cls, policy: nn.Module) -> "LeanForward | None":
        """
        :param policy: any policy
        :return: the lean forward pass of ``policy``, or ``None`` if it is not one this module reproduces exactly
            (then use the policy's own forward)
        """
        if type(policy) not in SUPPORTED_POLICIES:
            return None
        assert isinstance(policy, ActorCriticPolicy)
        if type(policy.action_dist) not in SUPPORTED_DISTRIBUTIONS or type(policy.mlp_extractor) is not MlpExtractor:
            return None
        if type(policy.action_net) is not nn.Linear or type(policy.value_net) is not nn.Linear:
            return None
        if isinstance(policy.action_dist, StateDependentNoiseDistribution) != policy.use_sde:
            return None
        if forward_hooks_may_fire(policy):
            return None
        actor_layers = _linear_layers(policy.mlp_extractor.policy_net)
        critic_layers = _linear_layers(policy.mlp_extractor.value_net)
        if actor_layers is None or critic_layers is None:
            return None
        return cls(policy, actor_layers, critic_layers)

    def __call__(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        :param obs: observations as tensors (as ``obs_as_tensor`` gives them)
        :return: sampled actions, values and log-probabilities, as ``policy(obs)`` returns them
        """
        policy = self.policy
        features = policy.extract_features(obs)
        if isinstance(features, th.Tensor):
            latent_pi = _apply(self.actor_layers, features)
            latent_vf = _apply(self.critic_layers, features)
        else:
            pi_features, vf_features = features
            latent_pi = _apply(self.actor_layers, pi_features)
            latent_vf = _apply(self.critic_layers, vf_features)
        values = F.linear(latent_vf, self.value_weight, self.value_bias)
        mean_actions = F.linear(latent_pi, self.action_weight, self.action_bias)
        actions, log_prob = self._sample(mean_actions, latent_pi)
        return actions.reshape((-1, *self.action_shape)), values, log_prob  # type: ignore[misc]

    def _sample(self, mean_actions: th.Tensor, latent_pi: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Sample actions and score them as SB3's distribution does, with the same calls to the generator."""
        distribution = self.distribution
        if isinstance(distribution, DiagGaussianDistribution):
            # Normal(mean, ones_like(mean) * exp(log_std)).rsample() and log_prob, summed over action dimensions
            # (the standard deviation broadcast over rows: the same elementwise values)
            std = self.policy.log_std.exp()
            noise = th.empty(mean_actions.shape, dtype=mean_actions.dtype, device=mean_actions.device).normal_()
            actions = mean_actions + noise * std
            log_prob = -((actions - mean_actions) ** 2) / (2 * std**2) - std.log() - LOG_SQRT_2PI
            return actions, log_prob.sum(dim=1)
        if isinstance(distribution, CategoricalDistribution):
            return _sample_categorical(mean_actions)
        if isinstance(distribution, MultiCategoricalDistribution):
            samples = [_sample_categorical(logits) for logits in th.split(mean_actions, list(distribution.action_dims), dim=1)]
            actions = th.stack([sample for sample, _ in samples], dim=1)
            return actions, th.stack([log_prob for _, log_prob in samples], dim=1).sum(dim=1)
        if isinstance(distribution, BernoulliDistribution):
            actions = th.bernoulli(th.sigmoid(mean_actions))
            return actions, -F.binary_cross_entropy_with_logits(mean_actions, actions, reduction="none").sum(dim=1)
        # gSDE: SB3's own distribution (its noise matrix is the policy's state)
        sde = distribution.proba_distribution(mean_actions, self.policy.log_std, latent_pi)
        actions = sde.get_actions()
        return actions, sde.log_prob(actions)


def _sample_categorical(logits: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """``Categorical(logits=logits)``: one sample per row (``torch.multinomial``) and its log-probability."""
    normalized = logits - logits.logsumexp(dim=-1, keepdim=True)
    actions = th.multinomial(F.softmax(normalized, dim=-1), 1, True).T.reshape(logits.shape[:-1])
    return actions, normalized.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def collect_rollouts(
    self: OnPolicyAlgorithm,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
    forward: LeanForward,
) -> bool:
    """
    SB3's ``OnPolicyAlgorithm.collect_rollouts`` (2.9), step for step, with ``forward`` for ``self.policy(obs)``.

    The model is named ``self`` as in SB3's method, so that callbacks reading ``self.locals`` find the same
    names (``self``, ``actions``, ``clipped_actions``, ``values``, ``log_probs``, ``new_obs``, ``rewards``,
    ``dones``, ``infos``, ...).

    :param self: the algorithm collecting the rollout
    :param env: the training environment
    :param callback: callback called at each step (and at the beginning and end of the rollout)
    :param rollout_buffer: buffer to fill
    :param n_rollout_steps: number of steps to collect per environment
    :param forward: the lean forward pass of ``self.policy`` (from :meth:`LeanForward.for_policy`)
    :return: ``True`` if ``n_rollout_steps`` were collected, ``False`` if a callback stopped the rollout
    """
    assert self._last_obs is not None, "No previous observation was provided"
    self.policy.set_training_mode(False)

    n_steps = 0
    rollout_buffer.reset()
    if self.use_sde:
        self.policy.reset_noise(env.num_envs)

    callback.on_rollout_start()

    while n_steps < n_rollout_steps:
        if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
            self.policy.reset_noise(env.num_envs)

        with th.no_grad():
            obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
            action_tensor, values, log_probs = forward(obs_tensor)
        actions = action_tensor.cpu().numpy()

        clipped_actions = actions
        if isinstance(self.action_space, spaces.Box):
            if self.policy.squash_output:
                clipped_actions = self.policy.unscale_action(clipped_actions)
            else:
                clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)

        new_obs, rewards, dones, infos = env.step(clipped_actions)

        self.num_timesteps += env.num_envs

        callback.update_locals(locals())
        if not callback.on_step():
            return False

        self._update_info_buffer(infos, dones)
        n_steps += 1

        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.reshape(-1, 1)

        # Bootstrap on timeouts with the value of the terminal observation (SB3 issue #633)
        for idx, done in enumerate(dones):
            if done and infos[idx].get("terminal_observation") is not None and infos[idx].get("TimeLimit.truncated", False):
                terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                with th.no_grad():
                    terminal_value = self.policy.predict_values(terminal_obs)[0]  # type: ignore[arg-type]
                rewards[idx] += self.gamma * terminal_value

        rollout_buffer.add(
            self._last_obs,  # type: ignore[arg-type]
            actions,
            rewards,
            self._last_episode_starts,  # type: ignore[arg-type]
            values,
            log_probs,
        )
        self._last_obs = new_obs  # type: ignore[assignment]
        self._last_episode_starts = dones

    with th.no_grad():
        values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))  # type: ignore[arg-type]

    rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

    callback.update_locals(locals())

    callback.on_rollout_end()

    return True
