"""
K-FAC: a Kronecker-factored approximation of the policy's Fisher and its damped inverse, as conjugate gradient's
preconditioner (``preconditioner="kfac"``; with ``cg_max_steps=1`` the update's direction is the K-FAC solve itself,
ACKTR's step, still scaled by the exact ``x^T F x``).

References: Martens & Grosse 2015 (https://arxiv.org/abs/1503.05671), Grosse & Martens 2016 for convolutions
(https://arxiv.org/abs/1602.01407), Wu et al. 2017, ACKTR (https://arxiv.org/abs/1708.05144).

The Fisher is the policy's, the Hessian at ``theta_old`` of the mean over states of the KL summed over action
dimensions, ``F = J^T M J / N`` (see :mod:`sb3_npg.fisher`). Per layer ``s = W a`` (``nn.Linear``; ``nn.Conv2d`` over
unfolded patches) its diagonal block is approximated by ``A ⊗ G`` (row-major ``W``, the bias as a last input column):

* ``A = (1/N) sum_n sum_t a a^T``, the layer's inputs with a 1 appended (``t`` the output positions of a
  convolution, one for a linear layer);
* ``G = (1/(N T)) sum_n sum_t sum_c delta delta^T`` with ``delta = J_s^T c`` the back-propagated columns ``c`` of a
  square root of ``M = sum_c c c^T``: the expectation over actions drawn from the policy itself, exact, not the
  taken actions' (the empirical Fisher). Categorical (each part of a multi-categorical, masked logits included):
  ``c_k = sqrt(p_k) (e_k - p)``, one per class; Bernoulli: ``sqrt(p_j (1 - p_j)) e_j``; diagonal Gaussian mean:
  ``e_j / sigma_j``. One batched backward pass gives them all.

A Gaussian policy's state-independent ``log_std`` has its exact block, ``2 I`` (no cross terms with the mean's
layers: ``M`` is block-diagonal). Damping is factored (``(A + pi sqrt(lambda) I) ⊗ (G + sqrt(lambda) / pi I)``,
``pi^2 = (tr A / dim A) / (tr G / dim G)``), the inverse is applied per layer, ``V -> (G + ...)^-1 V (A + ...)^-1``,
with Cholesky inverses computed once per update: the preconditioner is fixed and symmetric positive definite for
the whole solve.

Any other actor parameter (an LSTM, a normalisation layer, gSDE's ``log_std``, a custom module) is not covered:
:func:`kfac_layers` raises ``ValueError`` naming it, at the model's construction.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch as th
from stable_baselines3.common.distributions import BernoulliDistribution, DiagGaussianDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_npg.conjugate_gradient import conjugate_gradient
from sb3_npg.critic import index_observations
from sb3_npg.distributions import categorical_parts, distribution_outputs, output_fisher
from sb3_npg.fisher import FisherOperator
from sb3_npg.kl import action_distribution
from sb3_npg.parameters import flatten, unflatten

#: The layers K-FAC approximates by Kronecker factors
KFAC_LAYER_TYPES = (nn.Linear, nn.Conv2d)
#: ``log_direction_cosine``: the budget of the reference solve the step's direction is compared with
REFERENCE_CG_STEPS = 50
#: The factors of an update are computed from at most this many states of the Fisher's batch (evenly spaced): on
#: HalfCheetah-v5 (64x64 and 256x256 MLPs, 2048 states) 512 of them cost 0.005-0.015 of the K-FAC direction's cosine
#: to the natural gradient and a quarter of the factors' time, which otherwise costs 1.5-2.5 Fisher products
KFAC_MAX_SAMPLES = 512
#: A convolution's factors take at most this many rows (states x output positions; evenly spaced states): with
#: hundreds of positions per state (NatureCNN's first layer: 400), a few dozen states already give 2^14 rows for a
#: 257 x 257 factor, and the unfolded patches' products cost more than a Fisher product
KFAC_MAX_ROWS = 2**14
#: Samples per chunk when unfolding a convolution's input patches (bounds the memory of ``A``'s computation)
CONV_CHUNK_SAMPLES = 64


class KFACLayer(NamedTuple):
    """
    A layer K-FAC approximates, and where its parameters are in the actor's flat vector.

    :param name: the module's name in the policy
    :param module: the ``nn.Linear`` or ``nn.Conv2d``
    :param weight_position: index of its weight among the actor parameters
    :param bias_position: index of its bias among the actor parameters (``None``: no bias)
    """

    name: str
    module: nn.Linear | nn.Conv2d
    weight_position: int
    bias_position: int | None


def _uncovered(name: str, module: nn.Module, parameter_name: str, reason: str) -> ValueError:
    return ValueError(
        f"Invalid preconditioner='kfac': the actor parameter {parameter_name!r} belongs to "
        f"{name or 'the policy'} ({type(module).__name__}), {reason}; K-FAC covers nn.Linear and nn.Conv2d layers "
        "and a Gaussian policy's state-independent log_std. Use preconditioner=None for this policy."
    )


def kfac_layers(policy: ActorCriticPolicy, parameters: Sequence[nn.Parameter]) -> tuple[list[KFACLayer], int | None]:
    """
    The layers of the actor K-FAC approximates, and the position of a Gaussian policy's ``log_std``.

    :param policy: the actor-critic policy
    :param parameters: the actor parameters
    :return: the K-FAC layers and the position of ``log_std`` among ``parameters`` (``None`` if not Gaussian)
    :raises ValueError: naming the first actor parameter that is neither in a covered layer nor ``log_std``
    """
    positions = {id(parameter): index for index, parameter in enumerate(parameters)}
    covered: set[int] = set()
    layers = []
    log_std_position = None
    for name, module in policy.named_modules():
        own = dict(module.named_parameters(recurse=False))
        in_actor = {key: value for key, value in own.items() if id(value) in positions}
        if not in_actor:
            continue
        parameter_name = f"{name}.{next(iter(in_actor))}" if name else next(iter(in_actor))
        if module is policy and set(in_actor) == {"log_std"}:
            if not isinstance(policy.action_dist, DiagGaussianDistribution):
                raise _uncovered(name, module, parameter_name, f"the log_std of a {type(policy.action_dist).__name__}")
            log_std_position = positions[id(in_actor["log_std"])]
            covered.add(id(in_actor["log_std"]))
            continue
        if not isinstance(module, KFAC_LAYER_TYPES) or set(in_actor) - {"weight", "bias"}:
            raise _uncovered(name, module, parameter_name, "a layer K-FAC does not approximate")
        if isinstance(module, nn.Conv2d) and (
            module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            raise _uncovered(name, module, parameter_name, "a convolution with groups, a padding mode or string padding")
        if "weight" not in in_actor:
            raise _uncovered(name, module, parameter_name, "a bias without its weight among the actor parameters")
        bias = in_actor.get("bias")
        layers.append(KFACLayer(name, module, positions[id(module.weight)], None if bias is None else positions[id(bias)]))
        covered.update(id(value) for value in in_actor.values())
    if len(covered) != len(parameters):  # e.g. a parameter that is not in the policy's modules
        raise ValueError("Invalid preconditioner='kfac': some actor parameters are not in the policy's modules")
    return layers, log_std_position


def _diagonal_columns(roots: th.Tensor) -> th.Tensor:
    """The columns of the square root of ``diag(roots^2)`` per sample, ``(k, batch, k)``: column ``j`` is ``roots_j e_j``."""
    eye = th.eye(roots.shape[-1], dtype=roots.dtype, device=roots.device)
    return eye.unsqueeze(1) * roots.unsqueeze(0)


def sampled_columns(distribution: Distribution) -> list[th.Tensor]:
    """
    One column per sample whose outer product is ``M`` in expectation: the scores ``d log pi(a~|s) / d outputs`` of
    actions ``a~`` drawn from the distribution itself (``E[c c^T] = M``), as ``(1, batch, k)`` per output (a
    Gaussian's ``log_std`` output gets zeros: its block is exact). Draws from torch's global generator.

    :param distribution: the action distribution at ``theta_old`` on the batch
    :return: one tensor per distribution output
    """
    with th.no_grad():
        scores = output_fisher(distribution, distribution.sample()).scores
    assert scores is not None  # actions were given
    if isinstance(distribution, DiagGaussianDistribution):
        scores = [scores[0], th.zeros_like(scores[1])]
    return [score.unsqueeze(0) for score in scores]


def fisher_columns(distribution: Distribution) -> list[th.Tensor]:
    """
    The columns ``c`` of a square root ``M = sum_c c c^T`` of the action distribution's Fisher in its outputs (see
    :func:`~sb3_npg.distributions.distribution_outputs`), per sample, for what the layers' outputs influence:
    stacked as ``(columns, batch, k)`` per output (a Gaussian's ``log_std`` output gets zeros: its block is exact).
    The exact expectation over actions, one column per class (categorical) or action dimension (Gaussian, Bernoulli).

    :param distribution: the action distribution at ``theta_old`` on the batch
    :return: one tensor per distribution output
    """
    parts = categorical_parts(distribution)
    if parts is not None:
        probabilities = [part.probs.detach() for part in parts]
        n_columns = sum(p.shape[-1] for p in probabilities)
        stacked = []
        start = 0
        for p in probabilities:
            size = p.shape[-1]
            columns = p.new_zeros(n_columns, *p.shape)
            # column k of this part: sqrt(p_k) (e_k - p); zero at a masked class (p_k = 0)
            own = th.eye(size, dtype=p.dtype, device=p.device).unsqueeze(1) - p.unsqueeze(0)
            columns[start : start + size] = p.T.sqrt().unsqueeze(-1) * own
            stacked.append(columns)
            start += size
        return stacked
    if isinstance(distribution, BernoulliDistribution):
        p = distribution.distribution.probs.detach()
        return [_diagonal_columns((p * (1 - p)).sqrt())]
    if isinstance(distribution, DiagGaussianDistribution):
        mean_columns = _diagonal_columns(1 / distribution.distribution.scale.detach())
        return [mean_columns, th.zeros_like(mean_columns)]
    raise ValueError(f"Invalid preconditioner='kfac': no K-FAC for {type(distribution).__name__}")


def _damped_inverse(factor: th.Tensor, damping: float) -> th.Tensor:
    """``(factor + damping I)^-1`` by Cholesky (a larger jitter, then float64, if the damped factor is not SPD)."""
    eye = th.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
    jitter = max(damping, 1e-8 * max(factor.diagonal().mean().item(), 1e-30))
    cholesky, info = th.linalg.cholesky_ex(factor + jitter * eye)
    if info.item() == 0:
        return th.cholesky_inverse(cholesky)
    cholesky, info = th.linalg.cholesky_ex(factor.double() + 10 * jitter * eye.double())
    if info.item() == 0:
        return th.cholesky_inverse(cholesky).to(factor.dtype)
    raise ValueError("K-FAC factor is not positive definite even with damping")  # pragma: no cover - defensive


def _states_stride(module: nn.Module, outputs: th.Tensor) -> int:
    """
    Every how many states one call of a layer is taken in its factors: a convolution's at most :data:`KFAC_MAX_ROWS`
    rows (states x positions); a linear layer's every state (the batch is capped by :func:`make_preconditioner`).
    """
    if not isinstance(module, nn.Conv2d):
        return 1
    return -(-(outputs.numel() // outputs.shape[1]) // KFAC_MAX_ROWS)  # ceil of (states x positions) / KFAC_MAX_ROWS


def _patches(module: nn.Conv2d, inputs: th.Tensor) -> th.Tensor:
    """The unfolded input patches of a convolution, ``(batch, in_channels * kh * kw, positions)``."""
    padding: tuple[int, ...] = module.padding  # type: ignore[assignment]  # not a string: checked by kfac_layers
    return nn.functional.unfold(inputs, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)


def _with_bias_column(layer: KFACLayer, rows: th.Tensor) -> th.Tensor:
    """A layer's input rows ``a``, with a column of ones appended when the layer has a bias (its last input)."""
    return rows if layer.bias_position is None else th.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)


def layer_matrix(layer: KFACLayer, chunks: Sequence[th.Tensor]) -> th.Tensor:
    """
    A layer's part of a flat vector as the matrix K-FAC's factors act on: ``out x in`` (a convolution's weight
    flattened per output channel), the bias as a last column.

    :param layer: the K-FAC layer
    :param chunks: the flat vector split per actor parameter (:func:`sb3_npg.parameters.unflatten`)
    """
    weight = chunks[layer.weight_position]
    matrix = weight.reshape(weight.shape[0], -1)
    if layer.bias_position is None:
        return matrix
    return th.cat([matrix, chunks[layer.bias_position].unsqueeze(1)], dim=1)


def set_layer_matrix(layer: KFACLayer, matrix: th.Tensor, chunks: list[th.Tensor]) -> None:
    """
    The inverse of :func:`layer_matrix`: write ``matrix`` into the layer's weight (and bias) chunks of ``chunks``.

    :param layer: the K-FAC layer
    :param matrix: ``out x in`` (plus the bias column)
    :param chunks: the per-parameter chunks, changed in place
    """
    weight_shape = chunks[layer.weight_position].shape
    chunks[layer.weight_position] = matrix[:, : weight_shape[1:].numel()].reshape(weight_shape)
    if layer.bias_position is not None:
        chunks[layer.bias_position] = matrix[:, -1]


class LayerCall(NamedTuple):
    """
    One call of a K-FAC layer in the forward pass of a batch.

    :param inputs: the layer's inputs (detached)
    :param output_gradients: the Fisher's columns back-propagated to the layer's outputs, ``(columns, batch, out,
        ...)``; ``None`` if the layer does not influence the distribution on this batch
    :param stride: every how many states the factors take (:func:`_states_stride`)
    """

    inputs: th.Tensor
    output_gradients: th.Tensor | None
    stride: int


def layer_calls(
    policy: ActorCriticPolicy,
    layers: Sequence[KFACLayer],
    observations: PyTorchObs,
    action_masks: th.Tensor | None = None,
    batch_policy: Any = None,
    expectation: str = "sampled",
) -> list[list[LayerCall]]:
    """
    What K-FAC's factors are made of: one forward pass of the batch with hooks on the layers, then one backward pass
    of the Fisher's columns (batched over the columns when there are several) to every call's outputs.

    :param policy: the actor-critic policy (its layers are hooked)
    :param layers: the K-FAC layers (:func:`kfac_layers`)
    :param observations: the batch
    :param action_masks: the batch's action masks, or ``None``
    :param batch_policy: what gives the batch's distribution through ``get_distribution`` (default: ``policy``)
    :param expectation: ``"sampled"`` (:func:`sampled_columns`) or ``"exact"`` (:func:`fisher_columns`)
    :return: per layer, its calls in the order of the forward pass
    """
    inputs: dict[int, list[th.Tensor]] = {id(layer.module): [] for layer in layers}
    outputs: dict[int, list[th.Tensor]] = {id(layer.module): [] for layer in layers}

    def record(module: nn.Module, arguments: tuple[th.Tensor, ...], output: th.Tensor) -> None:
        inputs[id(module)].append(arguments[0].detach())
        outputs[id(module)].append(output)

    handles = [layer.module.register_forward_hook(record) for layer in layers]
    try:
        with th.enable_grad():
            distribution = action_distribution(batch_policy or policy, observations, action_masks)
    finally:
        for handle in handles:
            handle.remove()
    dist_outputs = distribution_outputs(distribution)
    columns = fisher_columns(distribution) if expectation == "exact" else sampled_columns(distribution)
    layer_outputs = [output for layer in layers for output in outputs[id(layer.module)]]
    used = [(output, column) for output, column in zip(dist_outputs, columns, strict=True) if output.requires_grad]
    batched = columns[0].shape[0] > 1  # several columns: one vmapped backward pass; one: a plain one
    gradients = th.autograd.grad(
        [output for output, _ in used],
        layer_outputs,
        grad_outputs=[column if batched else column[0] for _, column in used],
        is_grads_batched=batched,
        allow_unused=True,
    )
    if not batched:
        gradients = tuple(None if gradient is None else gradient.unsqueeze(0) for gradient in gradients)
    by_output = iter(gradients)
    return [
        [
            LayerCall(x, next(by_output), _states_stride(layer.module, output))
            for x, output in zip(inputs[id(layer.module)], outputs[id(layer.module)], strict=True)
        ]
        for layer in layers
    ]


class InputInverse:
    """
    ``M -> M (A + damping I)^-1`` for a layer's input factor ``A``: its Cholesky inverse, or, when ``A = R^T R`` has
    fewer rows ``R`` than columns (a wide layer fed fewer states than its inputs, e.g. NatureCNN's 3137 x 512 linear
    layer with a few hundred states), by Woodbury's identity
    ``(A + mu I)^-1 = (I - R^T (mu I + R R^T)^-1 R) / mu``: a states x states inverse instead of inputs x inputs.

    :param a_input: ``A``, or its rows ``R`` if ``low_rank``
    :param low_rank: whether ``a_input`` is ``R``
    :param damping: ``mu``
    """

    def __init__(self, a_input: th.Tensor, low_rank: bool, damping: float) -> None:
        self.rows = a_input if low_rank else None
        self.damping = damping
        self.inverse = _damped_inverse(a_input @ a_input.T if low_rank else a_input, damping)

    def apply(self, matrix: th.Tensor) -> th.Tensor:
        """:return: ``matrix (A + mu I)^-1``"""
        if self.rows is None:
            return matrix @ self.inverse
        return (matrix - (matrix @ self.rows.T) @ self.inverse @ self.rows) / self.damping


class KFACPreconditioner:
    """
    ``v -> K^-1 v`` with ``K`` the damped K-FAC approximation of ``F + damping I`` on a batch, built once per update
    (one forward pass with hooks on the K-FAC layers, one batched backward pass of the Fisher's columns).

    :param policy: the actor-critic policy, at ``theta_old`` (its modules are hooked)
    :param parameters: the actor parameters, the coordinates of the flat vectors
    :param observations: the batch the Fisher is averaged over
    :param damping: ``lambda`` of ``F + lambda I``
    :param action_masks: the batch's action masks (maskable policies), or ``None``
    :param batch_policy: what gives the batch's distribution through ``get_distribution`` (default: ``policy``)
    :param expectation: how ``G`` takes the expectation over actions: ``"sampled"`` (default; one action drawn from
        the policy per state, :func:`sampled_columns`, one backward pass of the batch) or ``"exact"``
        (:func:`fisher_columns`, one backward pass per class or action dimension)
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        parameters: Sequence[nn.Parameter],
        observations: PyTorchObs,
        damping: float,
        action_masks: th.Tensor | None = None,
        batch_policy: Any = None,
        expectation: str = "sampled",
    ):
        self.parameters = list(parameters)
        self.damping = damping
        self.layers, self.log_std_position = kfac_layers(policy, self.parameters)
        calls_per_layer = layer_calls(policy, self.layers, observations, action_masks, batch_policy, expectation)
        #: per layer, ``A`` (``None`` where it is kept as its rows) and ``G``, and the inverses of their damped forms
        self._factors: list[tuple[th.Tensor | None, th.Tensor]] = []
        self._inverses: list[tuple[InputInverse, th.Tensor]] = []
        for layer, calls in zip(self.layers, calls_per_layer, strict=True):
            g_factor = th.stack([self._output_factor(layer, call.output_gradients, call.stride) for call in calls]).sum(dim=0)
            if isinstance(layer.module, nn.Linear):
                rows = [(self._input_rows(layer, call.inputs), len(call.inputs)) for call in calls]  # and N of each call
                low_rank = sum(len(r) for r, _ in rows) < rows[0][0].shape[1]  # fewer rows than inputs: A kept as rows
                if low_rank:
                    a_factor, a_input = None, th.cat([r / n**0.5 for r, n in rows])
                else:
                    a_factor = a_input = th.stack([r.T @ r / n for r, n in rows]).sum(dim=0)
            else:
                a_factor = a_input = th.stack([self._input_factor(layer, call.inputs[:: call.stride]) for call in calls]).sum(
                    dim=0
                )
            self._factors.append((a_factor, g_factor))
            self._inverses.append(self._damped_inverses(a_input, low_rank=a_factor is None, g_factor=g_factor))

    @property
    def factors(self) -> list[tuple[th.Tensor, th.Tensor]]:
        """Per layer, the Kronecker factors ``(A, G)`` (an ``A`` kept as its rows ``R`` is formed, ``R^T R``)."""
        factors = []
        for (a_factor, g_factor), (inverse, _) in zip(self._factors, self._inverses, strict=True):
            if a_factor is None:
                assert inverse.rows is not None
                a_factor = inverse.rows.T @ inverse.rows
            factors.append((a_factor, g_factor))
        return factors

    @staticmethod
    def _input_rows(layer: KFACLayer, inputs: th.Tensor) -> th.Tensor:
        """The inputs ``a`` of one call of a linear layer, one row per state, a 1 appended when it has a bias."""
        return _with_bias_column(layer, inputs.reshape(-1, layer.module.weight.shape[1]))

    @staticmethod
    def _input_factor(layer: KFACLayer, inputs: th.Tensor) -> th.Tensor:
        """``(1/N) sum_n sum_t a a^T`` of one call of a convolution (``a`` its patches), a 1 appended with a bias."""
        module = layer.module
        assert isinstance(module, nn.Conv2d)
        total = None
        chunks = [
            _patches(module, chunk).transpose(1, 2).reshape(-1, module.weight[0].numel())
            for chunk in inputs.split(CONV_CHUNK_SAMPLES)
        ]
        for chunk_rows in chunks:
            rows = _with_bias_column(layer, chunk_rows)
            product = rows.T @ rows
            total = product if total is None else total + product
        assert total is not None
        return total / len(inputs)

    @staticmethod
    def _output_factor(layer: KFACLayer, gradients: th.Tensor | None, stride: int) -> th.Tensor:
        """
        ``(1/(N T)) sum sum_c delta delta^T`` from the columns' gradients ``(columns, batch, out, ...)``, over every
        ``stride``-th sample.
        """
        out_features = layer.module.weight.shape[0]
        if gradients is None:  # the layer does not influence the distribution on this batch
            return layer.module.weight.new_zeros(out_features, out_features)
        gradients = gradients[:, ::stride]
        n_columns = gradients.shape[0]
        if isinstance(layer.module, nn.Conv2d):  # (columns, batch, out, height, width): channels last
            gradients = gradients.movedim(2, -1)
        rows = gradients.reshape(-1, out_features)  # (columns * batch * positions, out)
        return rows.T @ rows / (rows.shape[0] / n_columns)

    def _damped_inverses(self, a_input: th.Tensor, low_rank: bool, g_factor: th.Tensor) -> tuple[InputInverse, th.Tensor]:
        """
        ``(A + pi sqrt(lambda) I)^-1`` (applied from the right) and ``(G + sqrt(lambda) / pi I)^-1`` (factored Tikhonov
        damping); ``a_input`` is ``A``, or with ``low_rank`` its rows ``R`` (``A = R^T R``).
        """
        a_dim = a_input.shape[1]
        a_scale = ((a_input * a_input).sum() if low_rank else a_input.trace()).item() / a_dim
        g_scale = g_factor.trace().item() / g_factor.shape[0]
        pi = (a_scale / g_scale) ** 0.5 if a_scale > 0 and g_scale > 0 else 1.0
        root = self.damping**0.5
        return InputInverse(a_input, low_rank, pi * root), _damped_inverse(g_factor, root / pi)

    def __call__(self, vector: th.Tensor) -> th.Tensor:
        """:return: ``K^-1 v`` for a flat vector ``v`` over the actor parameters"""
        chunks = unflatten(vector, self.parameters)
        result: list[th.Tensor] = list(chunks)
        for layer, (a_inverse, g_inverse) in zip(self.layers, self._inverses, strict=True):
            set_layer_matrix(layer, a_inverse.apply(g_inverse @ layer_matrix(layer, chunks)), result)
        if self.log_std_position is not None:  # exact block 2 I of the summed KL, damped
            result[self.log_std_position] = chunks[self.log_std_position] / (2.0 + self.damping)
        return flatten(result)


def check_preconditioner(preconditioner: str | None, policy: ActorCriticPolicy, parameters: Sequence[nn.Parameter]) -> None:
    """
    At construction: raise ``ValueError`` if ``preconditioner="kfac"`` does not cover every actor parameter.

    :param preconditioner: one of :data:`sb3_npg.constants.PRECONDITIONERS`
    :param policy: the actor-critic policy
    :param parameters: its actor parameters
    """
    if preconditioner == "kfac":
        kfac_layers(policy, parameters)


def make_preconditioner(
    preconditioner: str | None,
    policy: ActorCriticPolicy,
    parameters: Sequence[nn.Parameter],
    observations: PyTorchObs,
    damping: float,
    action_masks: th.Tensor | None = None,
    batch_policy: Any = None,
) -> KFACPreconditioner | None:
    """
    The preconditioner of this update's solve (``None``: plain conjugate gradient), its factors from at most
    :data:`KFAC_MAX_SAMPLES` evenly spaced states of the batch.

    :param preconditioner: one of :data:`sb3_npg.constants.PRECONDITIONERS`
    :param policy: the actor-critic policy, at ``theta_old``
    :param parameters: the actor parameters
    :param observations: the batch the Fisher is averaged over
    :param damping: the solve's damping
    :param action_masks: the batch's action masks, or ``None``
    :param batch_policy: what gives the batch's distribution (default: ``policy``)
    """
    if preconditioner is None:
        return None
    n_samples = len(next(iter(observations.values())) if isinstance(observations, dict) else observations)
    every = slice(None, None, -(-n_samples // KFAC_MAX_SAMPLES))  # ceil: at most KFAC_MAX_SAMPLES states
    if batch_policy is None or batch_policy is policy:  # a batch of independent states: take every k-th
        observations = index_observations(observations, every)
        action_masks = None if action_masks is None else action_masks[every]
    return KFACPreconditioner(policy, parameters, observations, damping, action_masks, batch_policy)


def direction_cosine(
    fisher: FisherOperator,
    gradient: th.Tensor,
    direction: th.Tensor,
    preconditioner: Callable[[th.Tensor], th.Tensor] | None,
) -> float:
    """
    The cosine of ``direction`` to ``(F + damping I)^-1 g`` solved to convergence (conjugate gradient, preconditioned
    by ``preconditioner`` if given, up to :data:`REFERENCE_CG_STEPS` products): a diagnostic, not used for the step.

    :param fisher: the update's Fisher operator
    :param gradient: the policy gradient ``g``
    :param direction: the step's direction
    :param preconditioner: the update's preconditioner, or ``None``
    """
    reference, _ = conjugate_gradient(fisher.damped_matvec, gradient, REFERENCE_CG_STEPS, preconditioner=preconditioner)
    norms = direction.norm() * reference.norm()
    return (direction @ reference / norms).item() if norms > 0 else float("nan")
