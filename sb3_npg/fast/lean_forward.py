"""
A faster rollout for NPG: SB3's ``collect_rollouts`` loop with a lean forward pass of the policy.

On SB3's small MLP policies a rollout step is bound by per-call overhead, not arithmetic: ``policy(obs)``
dispatches six modules and builds a ``torch.distributions`` object (with argument validation) to sample and
score one action. :class:`LeanForward` computes the same actions, values and log-probabilities with plain
``torch.addmm`` calls on the layers' own (detached) weights and the distributions' own formulas, drawing from
torch's generator with the same calls in the same order (``Tensor.normal_`` for a diagonal Gaussian,
``torch.multinomial`` for categoricals, ``torch.bernoulli`` for Bernoulli; gSDE draws nothing per step, its
exploration matrices being the policy's state), so the rollout buffer and the random generators end in the same
state as with SB3's loop. For a ``Box`` observation space read by SB3's ``FlattenExtractor`` the features are the
observations as ``float32`` (what ``preprocess_obs`` and ``nn.Flatten`` make of them), read from the array
without module calls; for SB3's ``RolloutBuffer`` itself the values and log-probabilities are written straight
into the buffer's arrays and the step's other fields without ``RolloutBuffer.add``'s copies. All of this is bit
for bit what SB3's loop computes.

:func:`LeanForward.for_policy` accepts only what it reproduces exactly: SB3's ``MlpPolicy`` and
``MultiInputPolicy`` classes themselves (no subclass), an ``MlpExtractor`` of ``Linear`` layers and elementwise
activations, linear action and value heads, SB3's standard distributions, and no forward hook on any of its
modules (the lean pass calls no module but a features extractor it does not read from the array, so hooks would
not fire). Anything else (CNN policies, custom policies, sb3-contrib's maskable or recurrent policies) returns
``None``, and NPG then uses SB3's ``collect_rollouts`` unchanged.

Dependency internals: it reads torch's forward-hook registries (``Module._forward_hooks``, ``_forward_pre_hooks``
and the global ones, :data:`GLOBAL_HOOK_REGISTRIES`, :data:`MODULE_HOOK_REGISTRIES`) to know no hook would be
skipped; a registry it cannot read counts as a hook (:func:`forward_hooks_may_fire`). Kept bit-identical to SB3's
loop by tests/test_rollout.py.
"""

import math
from collections.abc import Callable

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn
from torch.nn import functional as F

from sb3_npg.fast.mlp import ELEMENTWISE_ACTIVATIONS

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


# (transposed weight, bias, activation) of a linear layer followed by an elementwise activation (or None)
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
    """
    The function an activation module applies: ``tanh``/``relu`` in place (the lean pass owns the linear layer's
    output it is applied to; the same kernels as the modules' forward), the module itself for any other activation.
    """
    if type(activation) is nn.Tanh:
        return th.Tensor.tanh_
    if type(activation) is nn.ReLU and not activation.inplace:
        return th.Tensor.relu_
    return activation


def _linear(inputs: th.Tensor, weight_t: th.Tensor, bias: th.Tensor | None, out: th.Tensor | None = None) -> th.Tensor:
    """
    ``F.linear(inputs, weight_t.T, bias)`` by the call it makes itself for 2-D inputs (``addmm``, or ``mm`` without
    bias), written into ``out`` if given.
    """
    if inputs.dim() != 2:
        outputs = F.linear(inputs, weight_t.T, bias)
        return outputs if out is None else out.copy_(outputs)
    return th.mm(inputs, weight_t, out=out) if bias is None else th.addmm(bias, inputs, weight_t, out=out)


def _layer(linear: nn.Linear) -> Layer:
    """``(transposed weight, bias, None)`` of a linear layer: detached views of its parameters (following in-place updates)."""
    return linear.weight.detach().T, None if linear.bias is None else linear.bias.detach(), None


def _linear_layers(module: nn.Module) -> list[Layer] | None:
    """
    :return: ``(transposed weight, bias, activation)`` per linear layer of a ``Sequential``, detached views of the
        layers' parameters (they follow in-place updates), or ``None`` if the ``Sequential`` holds anything else
    """
    if type(module) is not nn.Sequential:
        return None
    layers: list[Layer] = []
    for child in module:
        if type(child) is nn.Linear:
            layers.append(_layer(child))
        elif type(child) in ELEMENTWISE_ACTIVATIONS and layers and layers[-1][2] is None:
            weight_t, bias, _ = layers[-1]
            layers[-1] = (weight_t, bias, _activation_function(child))
        else:
            return None
    return layers


def _apply(layers: list[Layer], inputs: th.Tensor) -> th.Tensor:
    hidden = inputs
    if inputs.dim() != 2:
        for weight_t, bias, activation in layers:
            hidden = _linear(hidden, weight_t, bias)
            hidden = hidden if activation is None else activation(hidden)
        return hidden
    for weight_t, bias, activation in layers:  # _linear's 2-D case, inlined: this is most of a rollout step's calls
        hidden = th.mm(hidden, weight_t) if bias is None else th.addmm(bias, hidden, weight_t)
        if activation is not None:
            hidden = activation(hidden)
    return hidden


class LeanForward:
    """
    ``policy(obs)`` (sampled actions, values, log-probabilities) without module dispatch or distribution objects.

    Build it with :meth:`for_policy`, which checks that the policy is one it reproduces exactly. It holds detached
    views of the policy's parameters, which follow in-place updates (an optimiser's step, a callback's change under
    ``no_grad``) but not parameters replaced by new tensors: build a new one for each rollout (NPG does).

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
        self.action_head, self.value_head = _layer(action_net), _layer(value_net)
        self.distribution = policy.action_dist
        self.action_shape = policy.action_space.shape
        self.flat_box_features = _reads_flat_box_features(policy)
        # The standard deviation's terms (diagonal Gaussian, gSDE), recomputed only when log_std changes
        self.log_std = policy.log_std.detach() if isinstance(self.distribution, DiagGaussianDistribution) else None
        self._gaussian_terms: tuple[th.Tensor, ...] | None = None

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

    def __call__(
        self,
        obs: np.ndarray | dict[str, np.ndarray],
        obs_tensor: PyTorchObs,
        values_out: th.Tensor | None = None,
        log_prob_out: th.Tensor | None = None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        :param obs: the observations, as the environment returned them
        :param obs_tensor: the same as tensors (as ``obs_as_tensor`` gives them)
        :param values_out: where to write the values (shape ``(n_envs, 1)``), or ``None`` for a new tensor
        :param log_prob_out: where to write the log-probabilities (shape ``(n_envs,)``), or ``None``
        :return: sampled actions, values and log-probabilities, as ``policy(obs_tensor)`` returns them
        """
        if self.flat_box_features and isinstance(obs, np.ndarray) and obs.dtype.kind == "f":
            # preprocess_obs's obs.float() and nn.Flatten(): the same float32 rounding, done by numpy
            features: th.Tensor | tuple[th.Tensor, th.Tensor] = th.from_numpy(obs.astype(np.float32, copy=False))
            if features.dim() > 2:  # type: ignore[union-attr]
                features = features.flatten(1)  # type: ignore[union-attr]
        else:
            with th.no_grad():
                features = self.policy.extract_features(obs_tensor)
        if isinstance(features, th.Tensor):
            latent_pi = _apply(self.actor_layers, features)
            latent_vf = _apply(self.critic_layers, features)
        else:
            pi_features, vf_features = features
            latent_pi = _apply(self.actor_layers, pi_features)
            latent_vf = _apply(self.critic_layers, vf_features)
        value_weight_t, value_bias, _ = self.value_head
        values = _linear(latent_vf, value_weight_t, value_bias, out=values_out)
        action_weight_t, action_bias, _ = self.action_head
        mean_actions = _linear(latent_pi, action_weight_t, action_bias)
        actions, log_prob = self._sample(mean_actions, latent_pi, log_prob_out)
        return actions.reshape((-1, *self.action_shape)), values, log_prob  # type: ignore[misc]

    def _sample(
        self, mean_actions: th.Tensor, latent_pi: th.Tensor, log_prob_out: th.Tensor | None
    ) -> tuple[th.Tensor, th.Tensor]:
        """Sample actions and score them as SB3's distribution does, with the same calls to the generator."""
        distribution = self.distribution
        if isinstance(distribution, DiagGaussianDistribution):
            return self._sample_gaussian(mean_actions, log_prob_out)
        if isinstance(distribution, CategoricalDistribution):
            actions, log_prob = _sample_categorical(mean_actions)
        elif isinstance(distribution, MultiCategoricalDistribution):
            samples = [_sample_categorical(logits) for logits in th.split(mean_actions, list(distribution.action_dims), dim=1)]
            actions = th.stack([sample for sample, _ in samples], dim=1)
            log_prob = th.stack([log_prob for _, log_prob in samples], dim=1).sum(dim=1)
        elif isinstance(distribution, BernoulliDistribution):
            actions = th.bernoulli(th.sigmoid(mean_actions))
            log_prob = -F.binary_cross_entropy_with_logits(mean_actions, actions, reduction="none").sum(dim=1)
        else:
            assert isinstance(distribution, StateDependentNoiseDistribution)
            actions, log_prob = self._sample_state_dependent(distribution, mean_actions, latent_pi)
        return actions, log_prob if log_prob_out is None else log_prob_out.copy_(log_prob)

    def _sample_state_dependent(
        self, distribution: StateDependentNoiseDistribution, mean_actions: th.Tensor, latent_sde: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        gSDE: ``proba_distribution``, ``get_actions`` and ``log_prob`` of SB3's ``StateDependentNoiseDistribution``
        by the same operations, without building its ``Normal``: the scale ``sqrt(latent² @ std² + epsilon)``, the
        noise from the distribution's own exploration matrices (its ``get_noise``), ``tanh`` and its correction when
        actions are squashed. ``get_std(log_std)²`` is kept while ``log_std`` is unchanged. The distribution object is
        left as it was (SB3's loop leaves the last step's ``Normal`` in it; ``train()`` and ``predict`` rebuild it).
        """
        log_std = self.policy.log_std.detach()
        with th.no_grad():  # the exploration matrices were sampled with autograd (a reparametrised draw)
            if self._gaussian_terms is None or not th.equal(log_std, self._gaussian_terms[0]):
                self._gaussian_terms = (log_std.clone(), distribution.get_std(log_std) ** 2)
            scale = th.sqrt(th.mm(latent_sde**2, self._gaussian_terms[1]) + distribution.epsilon)
            gaussian_actions = mean_actions + distribution.get_noise(latent_sde)
            bijector = distribution.bijector
            actions = gaussian_actions if bijector is None else bijector.forward(gaussian_actions)
            if bijector is not None:  # log_prob starts from the inverse of the squashed actions, as SB3's does
                gaussian_actions = bijector.inverse(actions)
            # torch's Normal(mean_actions, scale).log_prob, summed over action dimensions
            log_prob = (-((gaussian_actions - mean_actions) ** 2) / (2 * scale**2) - scale.log() - LOG_SQRT_2PI).sum(dim=1)
            if bijector is not None:
                log_prob -= th.sum(bijector.log_prob_correction(gaussian_actions), dim=1)
        return actions, log_prob

    def gaussian_terms(self) -> tuple[th.Tensor, ...]:
        """
        :return: the diagonal Gaussian's ``(log_std, std, -2 var, log std)``, recomputed only when ``log_std``
            changed since the last call (one comparison)
        """
        log_std = self.log_std
        assert log_std is not None
        if self._gaussian_terms is None or not th.equal(log_std, self._gaussian_terms[0]):
            std = log_std.exp()
            self._gaussian_terms = (log_std.clone(), std, -(2 * std**2), std.log())
        return self._gaussian_terms

    def _sample_gaussian(self, mean_actions: th.Tensor, log_prob_out: th.Tensor | None) -> tuple[th.Tensor, th.Tensor]:
        """
        ``Normal(mean, ones_like(mean) * exp(log_std))``: ``rsample()`` and ``log_prob``, summed over action dimensions.

        The same operations on the same values as torch's ``Normal`` (``loc + eps * scale``;
        ``-((value - loc) ** 2) / (2 * var) - log(scale) - log(sqrt(2 pi))``), with the standard deviation's terms
        broadcast over rows and kept while ``log_std`` is unchanged (one comparison per step): the negation moves
        to the denominator, which IEEE division leaves bit for bit the same.
        """
        _, std, negative_two_var, log_scale = self.gaussian_terms()
        actions = th.empty_like(mean_actions).normal_().mul_(std).add_(mean_actions)
        log_prob = (actions - mean_actions).square_().div_(negative_two_var).sub_(log_scale).sub_(LOG_SQRT_2PI)
        return actions, th.sum(log_prob, dim=1, out=log_prob_out)


def _reads_flat_box_features(policy: ActorCriticPolicy) -> bool:
    """
    Whether the policy's features are its observations as ``float32``, flattened: a ``Box`` space (not an image
    that ``preprocess_obs`` scales) read by SB3's ``FlattenExtractor`` (shared, or one for the actor and one for
    the critic).
    """
    space = policy.observation_space
    if not isinstance(space, spaces.Box) or (policy.normalize_images and is_image_space(space)):
        return False
    if policy.share_features_extractor:
        extractors = [policy.features_extractor]
    else:
        extractors = [policy.pi_features_extractor, policy.vf_features_extractor]
    return all(
        type(extractor) is FlattenExtractor
        and type(extractor.flatten) is nn.Flatten
        and (extractor.flatten.start_dim, extractor.flatten.end_dim) == (1, -1)
        for extractor in extractors
    )


def _sample_categorical(logits: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """``Categorical(logits=logits)``: one sample per row (``torch.multinomial``) and its log-probability."""
    normalized = logits - logits.logsumexp(dim=-1, keepdim=True)
    # torch.multinomial(probs, 1, True) gives the (rows, 1) int64 indices that Categorical.sample transposes and
    # reshapes to (rows,) and log_prob unsqueezes back: the same values, taken as they are
    samples = th.multinomial(normalized.softmax(dim=-1), 1, True)
    return samples.view(logits.shape[:-1]), normalized.gather(-1, samples).squeeze(-1)
