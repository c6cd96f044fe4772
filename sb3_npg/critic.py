"""
The critic's regression: ``n_critic_updates`` epochs of minibatch MSE regression of the value function on the returns.

NPG moves the actor by its natural-gradient step only; the critic (the value parameters, and nothing else) is
fitted here. :func:`fit_critic` is the general loop (``policy.predict_values`` and autograd, then the optimiser's
``step()``) and the one place that chooses the fast path for SB3's MLP value head on a shared features extractor
(:func:`sb3_npg.fast.critic.fit_mlp_critic`: hand-derived products and a fused Adam step, the same updates).
"""

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch.nn import functional as F

from sb3_npg.fast.critic import critic_chain, fit_mlp_critic


def index_observations(observations: PyTorchObs, index: th.Tensor | slice) -> PyTorchObs:
    """Select rows of a batch of observations (a tensor, or a dict of tensors for ``Dict`` spaces)."""
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


def fit_critic(
    policy: ActorCriticPolicy, observations: PyTorchObs, returns: th.Tensor, n_epochs: int, batch_size: int
) -> float:
    """
    ``n_epochs`` epochs of minibatch regression of the value function on the returns (MSE), with ``policy.optimizer``.

    Minibatches are indexed straight from the batch tensors. With a shared features extractor (an actor parameter,
    not moved by the critic) the features are computed once for all epochs, and an MLP critic (SB3's ``MlpPolicy``)
    takes :func:`fit_mlp_critic`: hand-derived products instead of autograd.

    :param policy: the actor-critic policy; its ``optimizer`` holds the critic's parameters only
    :param observations: the batch's observations
    :param returns: the regression targets, one per observation
    :param n_epochs: passes over the batch
    :param batch_size: minibatch size
    :return: the mean value loss
    """
    if policy.share_features_extractor:
        with th.no_grad():
            critic_inputs: PyTorchObs = policy.extract_features(observations, policy.features_extractor)  # type: ignore[assignment]
        chain = critic_chain(policy)
        if chain is not None:
            return fit_mlp_critic(policy.optimizer, chain, critic_inputs, returns, n_epochs, batch_size)  # type: ignore[arg-type]

        def predict_values(features: PyTorchObs) -> th.Tensor:
            return policy.value_net(policy.mlp_extractor.forward_critic(features))  # type: ignore[arg-type]

    else:
        critic_inputs = observations
        predict_values = policy.predict_values  # type: ignore[assignment]

    n_samples = returns.shape[0]
    losses = []
    for _ in range(n_epochs):
        permutation = th.randperm(n_samples, device=returns.device)
        for start in range(0, n_samples, batch_size):
            index = permutation[start : start + batch_size]
            policy.optimizer.zero_grad()
            values = predict_values(index_observations(critic_inputs, index)).flatten()
            value_loss = F.mse_loss(values, returns[index])
            value_loss.backward()
            policy.optimizer.step()
            losses.append(value_loss.detach())
    return th.stack(losses).mean().item()
