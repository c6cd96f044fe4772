"""
The critic's fast path: an MLP value head (SB3's ``MlpPolicy``) on a shared, fixed features extractor is fitted with
the gradients from the hand-derived products of :class:`~sb3_npg.fast.mlp.LinearChain`, and a fused ``Adam``/``AdamW``
update applied by :func:`fused_adam_step`, the function ``Adam.step`` itself runs, without ``Optimizer.step``'s
per-call bookkeeping, which costs as much as the critic's products on SB3's small networks.

Chosen in one place, :func:`sb3_npg.critic.fit_critic`, when :func:`critic_chain` finds the critic is exactly SB3's
MLP value head (else ``policy.predict_values``, autograd and ``optimizer.step()``: the reference loop).

Dependency internals: ``torch.optim.adam.adam`` is internal to torch: its signature and the optimiser's
parameter-group keys change between releases (``decoupled_weight_decay`` appeared in torch 2.7).
:func:`functional_adam_supported` checks it once per process against ``Adam.step`` on a tiny problem; where it does
not hold, ``optimizer.step()`` is used (same update). The activation-derivative kernels are feature-tested in
:mod:`sb3_npg.fast.mlp`. Kept exact by tests/test_train_step.py (the fused step against ``Adam.step``, the whole
update against the autograd critic, the fallback when the feature test fails).
"""

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from torch import nn

from sb3_npg.fast.mlp import LinearChain
from sb3_npg.fast.threads import large_product

_functional_adam: Callable[..., None] | None
try:  # internal to torch (see the module docstring): feature-tested before use
    from torch.optim.adam import adam as _functional_adam
except ImportError:  # a torch without it takes optimizer.step()
    _functional_adam = None


def _functional_adam_arguments(group: dict[str, Any]) -> dict[str, Any] | None:
    """
    The keyword arguments of ``torch.optim.adam.adam`` for an optimiser's parameter group, or ``None`` if this
    torch's function does not take what the group needs (its keyword-only parameters must all be known here).
    """
    if _functional_adam is None:
        return None
    parameters = inspect.signature(_functional_adam).parameters
    arguments: dict[str, Any] = dict(
        fused=True,
        amsgrad=False,
        beta1=group["betas"][0],
        beta2=group["betas"][1],
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=group["maximize"],
    )
    if group.get("decoupled_weight_decay", False):  # AdamW in torch >= 2.7 (a separate function before)
        arguments["decoupled_weight_decay"] = True
    elif "decoupled_weight_decay" in parameters:
        arguments["decoupled_weight_decay"] = False
    required = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY and p.default is p.empty}
    if not set(arguments) <= set(parameters) or not required <= set(arguments):
        return None
    return arguments


@functools.cache
def functional_adam_supported() -> bool:
    """
    Whether ``torch.optim.adam.adam`` can replace ``Adam.step`` in this torch: it takes the arguments
    :func:`fused_adam_step` gives, and two steps through it equal two ``Adam(fused=True).step()`` calls.
    Checked once per process.
    """
    try:
        reference = nn.Parameter(th.linspace(-1.0, 1.0, 5))
        candidate = nn.Parameter(reference.detach().clone())
        reference_optimizer = th.optim.Adam([reference], lr=0.1, fused=True)
        candidate_optimizer = th.optim.Adam([candidate], lr=0.1, fused=True)
        gradients = [th.linspace(0.5, -2.0, 5), th.linspace(1.0, 3.0, 5)]
        reference.grad, candidate.grad = gradients[0].clone(), gradients[0].clone()
        reference_optimizer.step()
        candidate_optimizer.step()  # creates the state the function works on
        step = _fused_adam_step_function(candidate_optimizer, [candidate])
        if step is None:
            return False
        reference.grad = gradients[1].clone()
        reference_optimizer.step()
        step([gradients[1].clone()])
        return bool(th.allclose(reference.detach(), candidate.detach(), rtol=1e-6, atol=1e-7))
    except (TypeError, KeyError, RuntimeError, ValueError):
        return False


def _fused_adam_step_function(
    optimizer: th.optim.Optimizer, parameters: list[th.Tensor]
) -> Callable[[list[th.Tensor]], None] | None:
    """:func:`fused_adam_step` without the feature test."""
    if type(optimizer) not in (th.optim.Adam, th.optim.AdamW) or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    if not group.get("fused") or group["amsgrad"] or {id(p) for p in group["params"]} != {id(p) for p in parameters}:
        return None
    if type(optimizer) is th.optim.AdamW and not group.get("decoupled_weight_decay", False):
        return None  # AdamW's own functional form before torch 2.7: left to optimizer.step()
    arguments = _functional_adam_arguments(group)
    states = [optimizer.state.get(parameter, {}) for parameter in parameters]
    if arguments is None or not all("exp_avg" in state for state in states):
        return None
    # The state tensors are updated in place by each step: gathered once, not per minibatch
    exp_avgs = [state["exp_avg"] for state in states]
    exp_avg_sqs = [state["exp_avg_sq"] for state in states]
    state_steps = [state["step"] for state in states]
    assert _functional_adam is not None

    def step(gradients: list[th.Tensor]) -> None:
        _functional_adam(parameters, gradients, exp_avgs, exp_avg_sqs, [], state_steps, **arguments)

    return step


def fused_adam_step(optimizer: th.optim.Optimizer, parameters: list[th.Tensor]) -> Callable[[list[th.Tensor]], None] | None:
    """
    The update of a fused ``Adam``/``AdamW`` on ``parameters`` as a function of their gradients, or ``None``.

    It calls ``torch.optim.adam.adam`` (the function ``Adam.step`` runs) on the optimiser's own state and
    hyperparameters: the same update, without ``Optimizer.step``'s per-call bookkeeping (its step hooks are not
    run). ``None`` (use ``optimizer.step()``) unless :func:`functional_adam_supported`, the optimiser is a fused
    Adam (or an AdamW where torch's ``adam`` function handles it) without ``amsgrad``, with one parameter group
    holding exactly ``parameters``, and its state exists (``optimizer.step()`` creates it on the first step).
    """
    if not functional_adam_supported():
        return None
    return _fused_adam_step_function(optimizer, parameters)


def critic_chain(policy: ActorCriticPolicy) -> LinearChain | None:
    """
    The critic as a :class:`~sb3_npg.mlp.LinearChain` on the shared features, when it is exactly SB3's MLP
    value head and the features extractor is shared (so the critic's parameters are the chain's);
    ``None`` otherwise (the critic then runs through ``policy.predict_values`` and autograd).
    """
    if not policy.share_features_extractor or type(policy.mlp_extractor) is not MlpExtractor:
        return None
    chain = LinearChain.from_modules([policy.mlp_extractor.value_net, policy.value_net])
    critic_parameters = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    if chain is None or {id(p) for p in chain.parameters} != critic_parameters:
        return None
    return chain


def fit_mlp_critic(
    optimizer: th.optim.Optimizer,
    chain: LinearChain,
    features: th.Tensor,
    returns: th.Tensor,
    epoch_orders: Iterable[th.Tensor],
    batch_size: int,
) -> float:
    """
    :func:`fit_critic` for an MLP value head on shared features: the same minibatches and updates, with the
    gradients from the chain's products and, once the optimiser has state, its fused Adam update called
    directly (see :func:`fused_adam_step`). Each epoch gathers the batch once in its order; its minibatches are slices.

    :param epoch_orders: per epoch, the batch's rows in minibatch order (:func:`sb3_npg.critic.epoch_orders`)
    :return: the mean value loss
    """
    n_samples = returns.shape[0]
    adam_step = fused_adam_step(optimizer, chain.parameters)
    losses = []
    for order in epoch_orders:
        permutation = order.to(returns.device)
        shuffled_features, shuffled_returns = features[permutation], returns[permutation].unsqueeze(1)
        for start in range(0, n_samples, batch_size):
            minibatch_returns = shuffled_returns[start : start + batch_size]
            # One product for the thread choice: the minibatch's forward, gradient and update
            with large_product("critic", minibatch_returns.shape[0], chain.work_per_row):
                cache = chain.forward(shuffled_features[start : start + batch_size])
                errors = cache.output - minibatch_returns
                losses.append(errors.square().mean())
                gradients = chain.vjp(cache, errors.mul_(2.0 / errors.numel()))  # the MSE's output gradient
                if adam_step is not None:
                    adam_step(gradients)
                else:  # gradients assigned, not accumulated: no zero_grad needed
                    for parameter, gradient in zip(chain.parameters, gradients, strict=True):
                        parameter.grad = gradient
                    optimizer.step()
                    adam_step = fused_adam_step(optimizer, chain.parameters)
    return th.stack(losses).mean().item()
