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

Diagonal Gaussian MLP policies (the MuJoCo case) go one step further with :class:`NumpyGaussianPass`: the MLP heads,
the Gaussian's sampling and its log-probability in numpy ``float32`` on views of the same parameters, only the noise
still drawn by torch (the same ``Tensor.normal_`` call, so torch's generator makes the same draws). numpy's BLAS and
``tanh`` round differently from torch's, so values, actions and log-probabilities agree with SB3's to float32
rounding (a few units in the last place of the terms summed; within 1e-6 for inputs of unit scale), not bit for bit;
the random generators still end in the same state.

:func:`LeanForward.for_policy` accepts only what it reproduces exactly: SB3's ``MlpPolicy`` and
``MultiInputPolicy`` classes themselves (no subclass), an ``MlpExtractor`` of ``Linear`` layers and elementwise
activations, linear action and value heads, SB3's standard distributions, and no forward hook on any of its
modules (the lean pass calls no module but a features extractor it does not read from the array, so hooks would
not fire). Anything else (CNN policies, custom policies, sb3-contrib's maskable or recurrent policies) returns
``None``, and NPG then uses SB3's ``collect_rollouts`` unchanged.
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
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
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
# Most multiply-adds in one matrix product of the numpy pass (rows x inputs x outputs): 2 envs through a 256x256 layer
# (npg.yml's HalfCheetah-v5 entry). numpy's BLAS may run larger products on worker threads, which
# torch.set_num_threads does not control; policies with larger layers, or more envs, keep the torch pass. With one
# env numpy hands BLAS a matrix-vector product, which older OpenBLAS builds (numpy 1.23's wheels) thread from 9216
# multiply-adds; matrix products of 2 rows or more stayed on the calling thread at this size with numpy 1.23 and 2.4.
NUMPY_PASS_MAX_PRODUCT = 131072
NUMPY_PASS_MAX_VECTOR_PRODUCT = 8192

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


# The numpy counterparts of the in-place activations of the torch pass (elementwise: the same values up to rounding)
NUMPY_ACTIVATIONS: dict[Callable[[th.Tensor], th.Tensor], Callable[[np.ndarray], object]] = {
    th.Tensor.tanh_: lambda hidden: np.tanh(hidden, out=hidden),
    th.Tensor.relu_: lambda hidden: np.maximum(hidden, 0, out=hidden),
}
# (weight transposed, bias, activation) of a layer as numpy arrays sharing memory with the parameters
NumpyLayer = tuple[np.ndarray, np.ndarray | None, Callable[[np.ndarray], object] | None]


class NumpyGaussianPass:
    """
    The lean pass of a diagonal Gaussian MLP policy in numpy ``float32``: equal to ``policy(obs)`` up to rounding.

    On HalfCheetah-v5's 17x64x64x6 policy each torch call costs microseconds of dispatch for a few hundred
    multiply-adds; numpy's are cheaper and leave more of the CPU's caches to the environment. The MLP heads are
    ``float32`` matrix products (numpy's BLAS: rounded differently from torch's, so values, means and actions agree
    to float32 rounding, not bit for bit), ``tanh``/``relu`` by numpy, and the Gaussian's sampling and
    log-probability by torch's ``Normal`` formulas. The noise is still drawn by torch, ``Tensor.normal_`` on an
    ``(n_envs, action_dim)`` tensor as the torch pass and torch's ``rsample`` do, so torch's generator makes the same
    draws and ends in the same state. The standard deviation's terms come from the torch pass's formulas (torch's
    ``exp`` and ``log``, bit for bit), recomputed when ``log_std`` changes. The weights are numpy views of the
    parameters (they follow in-place updates); values and log-probabilities are written into the rollout buffer's
    arrays.

    Build it with :meth:`for_forward`, which accepts only what it computes this way.

    :param forward: the torch lean pass of the policy (its layers and standard deviation are read)
    :param n_envs: the number of environments (rows per step)
    """

    def __init__(self, forward: "LeanForward", n_envs: int):
        self.forward = forward
        self.actor_layers = [_numpy_layer(layer) for layer in forward.actor_layers]
        self.critic_layers = [_numpy_layer(layer) for layer in forward.critic_layers]
        self.action_weight_t, self.action_bias, _ = _numpy_layer(forward.action_head)
        self.value_weight_t, self.value_bias, _ = _numpy_layer(forward.value_head)
        self.action_shape = forward.action_shape
        self.noise = th.empty((n_envs, self.action_weight_t.shape[1]), dtype=th.float32)
        self.noise_array = self.noise.numpy()
        self.log_sqrt_2pi = np.float32(LOG_SQRT_2PI)
        self._gaussian_terms: tuple[th.Tensor, ...] | None = None
        self._gaussian_arrays: tuple[np.ndarray, ...] = ()

    @classmethod
    def for_forward(cls, forward: "LeanForward", n_envs: int) -> "NumpyGaussianPass | None":
        """
        :param forward: the torch lean pass of a policy
        :param n_envs: the number of environments
        :return: the numpy pass, or ``None`` unless the policy is a diagonal Gaussian (not gSDE) MLP on the CPU with
            ``float32`` parameters, ``tanh``/``relu`` (or no) activations, features read from the observation array,
            and no matrix product above :data:`NUMPY_PASS_MAX_PRODUCT` multiply-adds per step
            (:data:`NUMPY_PASS_MAX_VECTOR_PRODUCT` with one env)
        """
        if type(forward.distribution) is not DiagGaussianDistribution or not forward.flat_box_features:
            return None
        layers = [*forward.actor_layers, *forward.critic_layers, forward.action_head, forward.value_head]
        tensors = [tensor for weight_t, bias, _ in layers for tensor in (weight_t, bias) if tensor is not None]
        assert forward.log_std is not None
        tensors.append(forward.log_std)
        if any(tensor.dtype != th.float32 or tensor.device.type != "cpu" for tensor in tensors):
            return None
        if any(activation is not None and activation not in NUMPY_ACTIVATIONS for _, _, activation in layers):
            return None
        max_product = NUMPY_PASS_MAX_VECTOR_PRODUCT if n_envs == 1 else NUMPY_PASS_MAX_PRODUCT
        if any(n_envs * weight_t.shape[0] * weight_t.shape[1] > max_product for weight_t, _, _ in layers):
            return None
        return cls(forward, n_envs)

    def __call__(self, obs: np.ndarray, values_out: np.ndarray, log_prob_out: np.ndarray) -> np.ndarray:
        """
        :param obs: the observations, as the environment returned them
        :param values_out: where to write the values (shape ``(n_envs, 1)``)
        :param log_prob_out: where to write the log-probabilities (shape ``(n_envs,)``)
        :return: the sampled actions (a new array)
        """
        features = obs.astype(np.float32, copy=False)  # preprocess_obs's obs.float() and nn.Flatten()
        if features.ndim > 2:
            features = features.reshape(len(features), -1)
        latent_pi = _apply_numpy(self.actor_layers, features)
        latent_vf = _apply_numpy(self.critic_layers, features)
        np.matmul(latent_vf, self.value_weight_t, out=values_out)
        values_out += self.value_bias
        mean_actions = latent_pi @ self.action_weight_t
        mean_actions += self.action_bias
        gaussian_terms = self.forward.gaussian_terms()
        if gaussian_terms is not self._gaussian_terms:  # log_std changed (or first step): its terms as arrays
            self._gaussian_terms = gaussian_terms
            self._gaussian_arrays = tuple(term.numpy() for term in gaussian_terms[1:])
        std, negative_two_var, log_scale = self._gaussian_arrays
        # Normal.rsample: loc + eps * scale, with eps drawn by torch as the torch pass draws it
        self.noise.normal_()
        actions = self.noise_array * std
        actions += mean_actions
        # Normal.log_prob: -((value - loc) ** 2) / (2 * var) - log(scale) - log(sqrt(2 pi)), summed over dimensions
        log_prob = actions - mean_actions
        log_prob *= log_prob
        log_prob /= negative_two_var
        log_prob -= log_scale
        log_prob -= self.log_sqrt_2pi
        np.add.reduce(log_prob, axis=1, out=log_prob_out)  # np.sum without its wrapper
        return actions.reshape((-1, *self.action_shape))  # type: ignore[misc]


def _numpy_layer(layer: Layer) -> NumpyLayer:
    """A torch pass layer as numpy views of the same memory (the activation's numpy counterpart, if any)."""
    weight_t, bias, activation = layer
    return (
        weight_t.numpy(),
        None if bias is None else bias.numpy(),
        None if activation is None else NUMPY_ACTIVATIONS[activation],
    )


def _apply_numpy(layers: list[NumpyLayer], inputs: np.ndarray) -> np.ndarray:
    hidden = inputs
    for weight_t, bias, activation in layers:
        hidden = hidden @ weight_t
        if bias is not None:
            hidden += bias
        if activation is not None:
            activation(hidden)
    return hidden


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


def collect_rollouts(
    self: OnPolicyAlgorithm,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
    forward: LeanForward,
) -> bool:
    """
    SB3's ``OnPolicyAlgorithm.collect_rollouts`` (2.9), step for step, with ``forward`` for ``self.policy(obs)``
    (or, for the policies :meth:`NumpyGaussianPass.for_forward` accepts, its numpy pass).

    The model is named ``self`` as in SB3's method, so that callbacks reading ``self.locals`` find the same
    names (``self``, ``actions``, ``clipped_actions``, ``values``, ``log_probs``, ``new_obs``, ``rewards``,
    ``dones``, ``infos``, ...); ``values`` and ``log_probs`` are tensors, as in SB3's loop, on either pass.

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
    # SB3's own RolloutBuffer on the CPU: the forward pass writes values and log-probabilities into its arrays
    buffer_rows = _buffer_rows(rollout_buffer, forward)
    # Diagonal Gaussian MLPs: the whole step in numpy, written into the buffer's arrays
    numpy_pass = None if buffer_rows is None else NumpyGaussianPass.for_forward(forward, env.num_envs)
    value_arrays, log_prob_arrays = rollout_buffer.values[..., np.newaxis], rollout_buffer.log_probs

    while n_steps < n_rollout_steps:
        if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
            self.policy.reset_noise(env.num_envs)

        if buffer_rows is not None and isinstance(self._last_obs, np.ndarray):
            obs_tensor: PyTorchObs = th.from_numpy(self._last_obs)  # what obs_as_tensor gives on the CPU, cheaper
        else:
            obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
        if buffer_rows is None:
            action_tensor, values, log_probs = forward(self._last_obs, obs_tensor)  # type: ignore[arg-type]
            actions = action_tensor.cpu().numpy()
        else:
            value_rows, log_prob_rows = buffer_rows
            position = rollout_buffer.pos
            values, log_probs = value_rows[position], log_prob_rows[position]  # the buffer's rows, as tensors
            if numpy_pass is not None and isinstance(self._last_obs, np.ndarray):
                actions = numpy_pass(self._last_obs, value_arrays[position], log_prob_arrays[position])
            else:
                action_tensor, values, log_probs = forward(self._last_obs, obs_tensor, values, log_probs)  # type: ignore[arg-type]
                actions = action_tensor.cpu().numpy()

        clipped_actions = actions
        if isinstance(self.action_space, spaces.Box):
            if self.policy.squash_output:
                clipped_actions = self.policy.unscale_action(clipped_actions)
            else:
                # np.clip's own call, without its dispatch layer
                clipped_actions = actions.clip(self.action_space.low, self.action_space.high)

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

        if buffer_rows is None:
            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
        else:
            _add_written_step(rollout_buffer, self._last_obs, actions, rewards, self._last_episode_starts)  # type: ignore[arg-type]
        self._last_obs = new_obs  # type: ignore[assignment]
        self._last_episode_starts = dones

    with th.no_grad():
        values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))  # type: ignore[arg-type]

    rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

    callback.update_locals(locals())

    callback.on_rollout_end()

    return True


def _buffer_rows(rollout_buffer: RolloutBuffer, forward: LeanForward) -> tuple[th.Tensor, th.Tensor] | None:
    """
    :return: tensors sharing memory with the buffer's ``values`` (as ``(n_steps, n_envs, 1)``) and ``log_probs``,
        for the forward pass to write a step's values and log-probabilities into; ``None`` unless the buffer is
        SB3's ``RolloutBuffer`` itself (a subclass may change ``add``) and the policy is on the CPU
    """
    if type(rollout_buffer) is not RolloutBuffer or forward.value_head[0].device.type != "cpu":
        return None
    return th.from_numpy(rollout_buffer.values).unsqueeze(-1), th.from_numpy(rollout_buffer.log_probs)


def _add_written_step(
    rollout_buffer: RolloutBuffer, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, episode_starts: np.ndarray
) -> None:
    """
    ``RolloutBuffer.add`` (SB3 2.9) for a step whose values and log-probabilities the forward pass wrote already:
    the same reshapes and casts into the buffer's arrays, without ``add``'s intermediate copies.
    """
    position = rollout_buffer.pos
    if isinstance(rollout_buffer.observation_space, spaces.Discrete):
        obs = obs.reshape((rollout_buffer.n_envs, *rollout_buffer.obs_shape))
    rollout_buffer.observations[position] = obs
    rollout_buffer.actions[position] = actions.reshape((rollout_buffer.n_envs, rollout_buffer.action_dim))
    rollout_buffer.rewards[position] = rewards
    rollout_buffer.episode_starts[position] = episode_starts
    rollout_buffer.pos += 1
    if rollout_buffer.pos == rollout_buffer.buffer_size:
        rollout_buffer.full = True
