"""
Hand-derived forward, Jacobian-vector and vector-Jacobian products for SB3's MLP heads.

SB3's ``MlpPolicy`` builds each head as ``Linear -> activation -> ... -> Linear``. For such a chain
the products with its Jacobian (with respect to its weights) are a few matrix products on the cached
activations, with none of autograd's per-node overhead, which dominates on networks this small.
:mod:`sb3_npg.fast.mlp_jacobian` uses them for the Fisher-vector product of the actor and :mod:`sb3_npg.fast.critic`
for the critic's regression; anything else (CNNs, custom layers) takes the generic autograd path.

The ``Tanh`` and ``ReLU`` derivatives are applied by torch's own backward kernels (``aten::tanh_backward``,
``aten::threshold_backward``), one fused kernel each instead of forming the derivative and multiplying. Those
operators are internal to torch: :func:`fused_activation_kernels_supported` checks them once per process against
the public formula, which is used where they are missing or differ. Kept exact by tests/test_jacobian.py (every
product against autograd's, with and without the fused kernels). Inside ``learn()`` with ``num_threads=None`` each
product over a large batch runs at the torch thread count timed faster for it (:mod:`sb3_npg.fast.threads`).
"""

import functools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch as th
from torch import nn

from sb3_npg.fast.threads import large_product

# Activations applied elementwise: their Jacobian is the diagonal of their derivative
ELEMENTWISE_ACTIVATIONS = (
    nn.Tanh,
    nn.ReLU,
    nn.ELU,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
)


class ActivationDerivative(NamedTuple):
    """
    The derivative of an elementwise activation at the points of one forward pass, for products with it.

    :param saved: the activation's output for ``Tanh`` and ``ReLU`` (their derivatives follow from it, and one
        fused kernel applies them), the derivative itself for any other activation
    :param activation: ``"tanh"``, ``"relu"`` or ``"other"``
    """

    saved: th.Tensor
    activation: str

    def multiply(self, gradient: th.Tensor, in_place: bool) -> th.Tensor:
        """:return: ``gradient`` times the derivative, written into ``gradient`` if ``in_place``"""
        out = gradient if in_place else th.empty_like(gradient)
        if self.activation == "other":
            return th.mul(gradient, self.saved, out=out)
        if fused_activation_kernels_supported():
            return _fused_derivative_product(self.activation, gradient, self.saved, out)
        return th.mul(gradient, _activation_derivative(self.activation, self.saved), out=out)


def _fused_derivative_product(activation: str, gradient: th.Tensor, output: th.Tensor, out: th.Tensor) -> th.Tensor:
    """``gradient`` times the derivative of ``tanh``/``relu`` at the point whose output is ``output``, by torch's kernels."""
    if activation == "tanh":
        return th.ops.aten.tanh_backward.grad_input(gradient, output, grad_input=out)
    return th.ops.aten.threshold_backward.grad_input(gradient, output, 0, grad_input=out)


def _activation_derivative(activation: str, output: th.Tensor) -> th.Tensor:
    """The derivative of ``tanh`` (``1 - tanh^2``) or ``relu`` (``output > 0``) from the activation's output."""
    if activation == "tanh":
        return 1 - output.square()
    return (output > 0).to(output.dtype)


@functools.cache
def fused_activation_kernels_supported() -> bool:
    """
    Whether torch's internal ``tanh_backward``/``threshold_backward`` kernels exist here (with an ``out=``
    overload) and give the public formula's products; checked once per process.
    """
    gradient = th.linspace(-2.0, 2.0, 7)
    try:
        for activation, output in (("tanh", th.tanh(th.linspace(-3.0, 3.0, 7))), ("relu", th.relu(th.linspace(-3.0, 3.0, 7)))):
            fused = _fused_derivative_product(activation, gradient, output, th.empty_like(gradient))
            if not th.allclose(fused, gradient * _activation_derivative(activation, output)):
                return False
    except (AttributeError, RuntimeError, TypeError):
        return False
    return True


class ChainCache(NamedTuple):
    """
    What one forward pass keeps for the products.

    :param inputs: the input of each linear layer
    :param derivatives: the derivative of the activation after each linear layer (``None`` if no activation)
    :param output: the output of the chain
    """

    inputs: list[th.Tensor]
    derivatives: list[ActivationDerivative | None]
    output: th.Tensor


def _activation_with_derivative(activation: nn.Module, pre_activation: th.Tensor) -> tuple[th.Tensor, ActivationDerivative]:
    """Apply an elementwise activation and return its derivative at the same point."""
    if isinstance(activation, nn.Tanh):
        output = th.tanh(pre_activation)
        return output, ActivationDerivative(output, "tanh")
    if isinstance(activation, nn.ReLU):
        output = th.relu(pre_activation)
        return output, ActivationDerivative(output, "relu")
    with th.enable_grad():
        point = pre_activation.detach().requires_grad_(True)
        output = activation(point)
        (derivative,) = th.autograd.grad(output.sum(), point)
    return output.detach(), ActivationDerivative(derivative, "other")


class LinearChain:
    """
    ``Linear -> activation -> ... -> Linear`` with elementwise activations, as SB3's MLP extractor builds.

    :param layers: the linear layers, each with the activation that follows it (or ``None``)
    """

    def __init__(self, layers: Sequence[tuple[nn.Linear, nn.Module | None]]):
        self.layers = list(layers)
        self.parameters: list[th.Tensor] = []
        for linear, _ in self.layers:
            self.parameters.append(linear.weight)
            if linear.bias is not None:
                self.parameters.append(linear.bias)
        # Detached views of the layers' current values (they follow in-place updates such as an optimiser's):
        # the products below run without autograd and without a module lookup per call
        self._weights = [linear.weight.detach() for linear, _ in self.layers]
        self._biases = [None if linear.bias is None else linear.bias.detach() for linear, _ in self.layers]
        #: The multiply-adds of one sample through the linear layers (the size of a product, per row)
        self.work_per_row = sum(weight.numel() for weight in self._weights)

    @classmethod
    def from_modules(cls, modules: Iterable[nn.Module]) -> "LinearChain | None":
        """
        :param modules: modules applied in order (``nn.Sequential`` are expanded)
        :return: the chain, or ``None`` if the modules are not linear layers and elementwise activations
        """
        flat: list[nn.Module] = []
        for module in modules:
            flat.extend(module if isinstance(module, nn.Sequential) else [module])
        layers: list[tuple[nn.Linear, nn.Module | None]] = []
        for module in flat:
            if isinstance(module, nn.Linear):
                layers.append((module, None))
            elif isinstance(module, ELEMENTWISE_ACTIVATIONS) and layers and layers[-1][1] is None:
                layers[-1] = (layers[-1][0], module)
            elif not isinstance(module, nn.Identity):
                return None
        return cls(layers) if layers else None

    def forward(self, inputs: th.Tensor) -> ChainCache:
        """:return: the output and what the products need (no autograd graph is built)"""
        with large_product("forward", inputs.shape[0], self.work_per_row):
            return self._forward(inputs)

    def _forward(self, inputs: th.Tensor) -> ChainCache:
        """:meth:`forward` at the current thread count."""
        layer_inputs, derivatives = [], []
        hidden = inputs.detach()
        for (_, activation), weight, bias in zip(self.layers, self._weights, self._biases, strict=True):
            layer_inputs.append(hidden)
            hidden = nn.functional.linear(hidden, weight, bias)
            derivative = None
            if activation is not None:
                hidden, derivative = _activation_with_derivative(activation, hidden)
            derivatives.append(derivative)
        return ChainCache(layer_inputs, derivatives, hidden)

    def jvp(self, cache: ChainCache, tangents: Sequence[th.Tensor]) -> th.Tensor:
        """
        :param tangents: a direction in weight space, one tensor per entry of ``self.parameters``
        :return: the directional derivative of the output (``J v``)
        """
        with large_product("jvp", cache.output.shape[0], self.work_per_row):
            return self._jvp(cache, tangents)

    def _jvp(self, cache: ChainCache, tangents: Sequence[th.Tensor]) -> th.Tensor:
        """:meth:`jvp` at the current thread count."""
        tangent_iter = iter(tangents)
        output_tangent: th.Tensor | None = None
        for weight, bias, layer_input, derivative in zip(
            self._weights, self._biases, cache.inputs, cache.derivatives, strict=True
        ):
            weight_tangent = next(tangent_iter)
            bias_tangent = next(tangent_iter) if bias is not None else None
            layer_tangent = nn.functional.linear(layer_input, weight_tangent, bias_tangent)
            if output_tangent is not None:  # accumulated in place: no temporary the size of the batch
                layer_tangent.addmm_(output_tangent, weight.T)
            output_tangent = layer_tangent if derivative is None else derivative.multiply(layer_tangent, in_place=True)
        assert output_tangent is not None
        return output_tangent

    def backpropagate(self, cache: ChainCache, output_gradient: th.Tensor) -> list[th.Tensor]:
        """
        :param output_gradient: per-sample gradient with respect to the output
        :return: per-sample gradients with respect to each linear layer's output (before its activation)
        """
        deltas = []
        gradient = output_gradient
        for index in reversed(range(len(self.layers))):
            derivative = cache.derivatives[index]
            if derivative is not None:  # in place except on the caller's tensor
                gradient = derivative.multiply(gradient, in_place=gradient is not output_gradient)
            deltas.append(gradient)
            if index > 0:
                gradient = gradient @ self._weights[index]
        return deltas[::-1]

    def vjp(self, cache: ChainCache, output_gradient: th.Tensor) -> list[th.Tensor]:
        """:return: ``J^T u``: the gradient of ``sum(u * output)`` for each entry of ``self.parameters``"""
        with large_product("vjp", output_gradient.shape[0], self.work_per_row):
            return self._vjp(cache, output_gradient)

    def _vjp(self, cache: ChainCache, output_gradient: th.Tensor) -> list[th.Tensor]:
        """:meth:`vjp` at the current thread count."""
        gradients: list[th.Tensor] = []
        deltas = self.backpropagate(cache, output_gradient)
        for bias, layer_input, delta in zip(self._biases, cache.inputs, deltas, strict=True):
            gradients.append(delta.T @ layer_input)
            if bias is not None:
                gradients.append(delta.sum(dim=0))
        return gradients

    def gram(self, cache: ChainCache, output_gradients: th.Tensor) -> th.Tensor:
        """
        The Gram matrix ``G G^T`` of the per-sample weight gradients ``G`` (row i: the gradient of
        ``output_gradients[i] . output[i]``), without forming ``G``: for a linear layer the per-sample
        gradient is the outer product of its delta and input, so its Gram is ``(D D^T) * (H H^T)``.
        """
        n_samples = output_gradients.shape[0]
        gram = th.zeros(n_samples, n_samples, dtype=output_gradients.dtype, device=output_gradients.device)
        deltas = self.backpropagate(cache, output_gradients)
        for bias, layer_input, delta in zip(self._biases, cache.inputs, deltas, strict=True):
            input_gram = layer_input @ layer_input.T
            if bias is not None:
                input_gram += 1
            gram += (delta @ delta.T) * input_gram
        return gram
