"""
The numpy pass of the lean rollout. Diagonal Gaussian MLP policies (the MuJoCo case) take :class:`NumpyGaussianPass`:
the MLP heads, the Gaussian's sampling and its log-probability in numpy ``float32`` on views of the same parameters,
only the noise still drawn by torch (the same ``Tensor.normal_`` call, so torch's generator makes the same draws).
numpy's BLAS and ``tanh`` round differently from torch's, so values, actions and log-probabilities agree with SB3's to float32
rounding (a few units in the last place of the terms summed; within 1e-6 for inputs of unit scale), not bit for bit;
the random generators still end in the same state.

Chosen by :func:`sb3_npg.fast.rollout.collect_rollouts` when :meth:`NumpyGaussianPass.for_forward` accepts the
policy (a diagonal Gaussian MLP on flat ``Box`` features, SB3's ``RolloutBuffer``, products small enough to stay on
the calling thread), else the torch lean pass. Kept float32-identical (and the random state identical) to SB3's
loop by tests/test_rollout.py.
"""

from collections.abc import Callable

import numpy as np
import torch as th
from stable_baselines3.common.distributions import DiagGaussianDistribution

from sb3_npg.fast.lean_forward import LOG_SQRT_2PI, Layer, LeanForward

# Most multiply-adds in one matrix product of the numpy pass (rows x inputs x outputs): 2 envs through a 256x256 layer
# (npg.yml's HalfCheetah-v5 entry). numpy's BLAS may run larger products on worker threads, which
# torch.set_num_threads does not control; policies with larger layers, or more envs, keep the torch pass. With one
# env numpy hands BLAS a matrix-vector product, which older OpenBLAS builds (numpy 1.23's wheels) thread from 9216
# multiply-adds; matrix products of 2 rows or more stayed on the calling thread at this size with numpy 1.23 and 2.4.
NUMPY_PASS_MAX_PRODUCT = 131072
NUMPY_PASS_MAX_VECTOR_PRODUCT = 8192


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
