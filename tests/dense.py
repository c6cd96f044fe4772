"""
Dense references for the tests, built with plain autograd and ``torch.distributions`` only (no sb3_npg maths).

``dense_kl_hessian`` is the Hessian at ``theta_old`` of ``E_s[KL(pi_old || pi_theta)]`` summed over action
dimensions, over a flat vector of the actor parameters; ``dense_scores`` are the per-sample scores
``grad_theta log pi(a_i|s_i)``, one backward per sample. With ``action_masks`` (maskable policies) both are of the
distribution sb3-contrib's ``get_distribution(obs, action_masks)`` masks, the same masks for old and new.
"""

import torch as th
from torch import nn
from torch.distributions import kl_divergence
from torch.func import functional_call

from sb3_npg import NPG


def _torch_distributions(distribution) -> list[th.distributions.Distribution]:
    """The torch distributions behind an SB3 distribution (a list of categoricals for MultiDiscrete)."""
    if hasattr(distribution, "distributions"):  # sb3-contrib's maskable multi-categorical and Bernoulli
        return list(distribution.distributions)
    inner = distribution.distribution
    return list(inner) if isinstance(inner, list) else [inner]


def summed_kl(old: list[th.distributions.Distribution], new: list[th.distributions.Distribution]) -> th.Tensor:
    """Mean over states of the KL summed over every action dimension."""
    per_state = [kl_divergence(o, n).reshape(o.batch_shape[0], -1).sum(dim=1) for o, n in zip(old, new, strict=True)]
    return th.stack(per_state).sum(dim=0).mean()


class _KLOfParameters(nn.Module):
    """``theta -> mean summed KL(old || pi_theta)`` on fixed observations, for ``functional_call``."""

    def __init__(self, policy: nn.Module, observations, action_masks=None):
        super().__init__()
        self.policy = policy
        self.observations = observations
        self.action_masks = action_masks
        with th.no_grad():
            self.old = _torch_distributions(distribution_of(policy, observations, action_masks))

    def forward(self) -> th.Tensor:
        return summed_kl(self.old, _torch_distributions(distribution_of(self.policy, self.observations, self.action_masks)))


def distribution_of(policy: nn.Module, observations, action_masks=None):
    """``policy.get_distribution``, masked by ``action_masks`` when given."""
    if action_masks is None:
        return policy.get_distribution(observations)
    return policy.get_distribution(observations, action_masks=action_masks)


def actor_names(model: NPG) -> list[str]:
    """Names of the actor parameters in the policy, in ``model.actor_parameters`` order."""
    names = {id(parameter): name for name, parameter in model.policy.named_parameters()}
    return [names[id(parameter)] for parameter in model.actor_parameters]


def flat_actor(model: NPG) -> th.Tensor:
    """A detached copy of the actor parameters as one flat vector."""
    return th.cat([p.detach().reshape(-1) for p in model.actor_parameters]).clone()


def dense_kl_hessian(model: NPG, observations, action_masks=None) -> th.Tensor:
    """The Hessian at the current parameters of the mean summed KL on ``observations`` (masked if given), P x P."""
    kl_module = _KLOfParameters(model.policy, observations, action_masks)
    names = [f"policy.{name}" for name in actor_names(model)]
    shapes = [p.shape for p in model.actor_parameters]

    def kl_of(flat: th.Tensor) -> th.Tensor:
        chunks = flat.split([shape.numel() for shape in shapes])
        parameters = {name: chunk.view(shape) for name, chunk, shape in zip(names, chunks, shapes, strict=True)}
        return functional_call(kl_module, parameters, ())

    # functional_call leaves new parameter objects in modules registered under several names (a features extractor
    # shared by actor and critic): put the policy's own back, so model.actor_parameters stay the ones it uses
    owned = [
        (module, name, parameter)
        for module in model.policy.modules()
        for name, parameter in module.named_parameters(recurse=False)
    ]
    try:
        return th.autograd.functional.hessian(kl_of, flat_actor(model))
    finally:
        for module, name, parameter in owned:
            setattr(module, name, parameter)


def select(observations, index):
    """Rows ``index`` of a batch of observations (a tensor, or a dict of tensors)."""
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


def dense_scores(model: NPG, observations, actions: th.Tensor, action_masks=None) -> th.Tensor:
    """Per-sample scores ``grad_theta log pi(a_i|s_i)`` (masked if given), one backward per sample, N x P."""
    rows = []
    for index in range(len(actions)):
        sample = slice(index, index + 1)
        masks = None if action_masks is None else action_masks[sample]
        distribution = distribution_of(model.policy, select(observations, sample), masks)
        log_prob = distribution.log_prob(actions[sample]).sum()
        gradients = th.autograd.grad(log_prob, model.actor_parameters, allow_unused=True, materialize_grads=True)
        rows.append(th.cat([gradient.reshape(-1) for gradient in gradients]))
    return th.stack(rows)


def dense_fisher(backend: str, model: NPG, observations, actions: th.Tensor, action_masks=None) -> th.Tensor:
    """
    The dense matrix a Fisher backend stands for: the empirical Fisher ``S^T S / N`` of the per-sample scores for
    ``"empirical"``, the Hessian of the mean summed KL for the exact backends (masked if given), P x P.
    """
    if backend == "empirical":
        scores = dense_scores(model, observations, actions, action_masks)
        return scores.T @ scores / len(scores)
    return dense_kl_hessian(model, observations, action_masks)
