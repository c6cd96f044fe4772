"""
The critic's regression: ``n_critic_updates`` epochs of minibatch MSE regression of the value function on the returns.

NPG moves the actor by its natural-gradient step only; the critic (the value parameters, and nothing else) is
fitted here. :func:`fit_critic` is the general loop (``policy.predict_values`` and autograd, then the optimiser's
``step()``) and the one place that chooses the fast path for SB3's MLP value head on a shared features extractor
(:func:`sb3_npg.fast.critic.fit_mlp_critic`: hand-derived products and a fused Adam step, the same updates).

The minibatches are those of SB3's buffers: each epoch visits the rollout in the order of numpy's
``np.random.permutation``, the draw ``RolloutBuffer.get(batch_size)`` makes (:func:`epoch_orders`), so a seeded
run consumes numpy's and torch's generators exactly as sb3-contrib's TRPO does.
"""

from collections.abc import Iterator

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch.nn import functional as F

from sb3_npg.fast.critic import critic_chain, fit_mlp_critic


def index_observations(observations: PyTorchObs, index: th.Tensor | slice) -> PyTorchObs:
    """Select rows of a batch of observations (a tensor, or a dict of tensors for ``Dict`` spaces)."""
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


def upcoming_get_order(rollout_buffer: RolloutBuffer) -> np.ndarray:
    """
    The buffer rows, in order, of the batch that ``rollout_buffer.get()`` yields next.

    SB3's rollout buffers (and sb3-contrib's maskable ones) start ``get()`` with
    ``np.random.permutation(buffer_size * n_envs)`` on numpy's global generator. The same permutation is drawn
    here from a copy of that generator's state, which is then restored, so that the draw itself stays the buffer's.
    For a buffer class that orders its batch otherwise, this is still a permutation: the critic's minibatches
    stay a shuffle of the batch, only no longer the buffer's own.

    :param rollout_buffer: a full rollout buffer, before its ``get()``
    :return: row ``i`` of the coming batch is row ``order[i]`` of the buffer (flattened over envs)
    """
    state = np.random.get_state()
    try:
        return np.random.permutation(rollout_buffer.buffer_size * rollout_buffer.n_envs)
    finally:
        np.random.set_state(state)


def epoch_orders(n_samples: int, n_epochs: int, batch_rows: np.ndarray | None = None) -> Iterator[th.Tensor]:
    """
    Per epoch, the rows of the batch in the order in which ``RolloutBuffer.get(batch_size)`` would yield them as
    minibatches: one ``np.random.permutation`` of the buffer per epoch (drawn when the epoch starts, as ``get()``
    draws it), mapped from buffer rows to rows of the batch.

    :param n_samples: rows in the batch (the whole buffer)
    :param n_epochs: passes over the batch
    :param batch_rows: the buffer row of each row of the batch (:func:`upcoming_get_order`); ``None``: the batch
        is in the buffer's order
    :return: per epoch, a permutation of ``range(n_samples)`` whose consecutive slices are the minibatches
    """
    batch_position = np.arange(n_samples) if batch_rows is None else np.argsort(batch_rows)
    for _ in range(n_epochs):
        yield th.from_numpy(batch_position[np.random.permutation(n_samples)])


def fit_critic(
    policy: ActorCriticPolicy,
    observations: PyTorchObs,
    returns: th.Tensor,
    n_epochs: int,
    batch_size: int,
    batch_rows: np.ndarray | None = None,
) -> float:
    """
    ``n_epochs`` epochs of minibatch regression of the value function on the returns (MSE), with ``policy.optimizer``.

    Minibatches are those of ``RolloutBuffer.get(batch_size)`` (:func:`epoch_orders`), indexed straight from the
    batch tensors. With a shared features extractor (an actor parameter,
    not moved by the critic) the features are computed once for all epochs, and an MLP critic (SB3's ``MlpPolicy``)
    takes :func:`fit_mlp_critic`: hand-derived products instead of autograd.

    :param policy: the actor-critic policy; its ``optimizer`` holds the critic's parameters only
    :param observations: the batch's observations
    :param returns: the regression targets, one per observation
    :param n_epochs: passes over the batch
    :param batch_size: minibatch size
    :param batch_rows: the buffer row of each row of the batch (:func:`upcoming_get_order`); ``None``: the batch is
        in the buffer's order
    :return: the mean value loss
    """
    if policy.share_features_extractor:
        with th.no_grad():
            critic_inputs: PyTorchObs = policy.extract_features(observations, policy.features_extractor)  # type: ignore[assignment]
        chain = critic_chain(policy)
        if chain is not None:
            orders = epoch_orders(returns.shape[0], n_epochs, batch_rows)
            return fit_mlp_critic(policy.optimizer, chain, critic_inputs, returns, orders, batch_size)  # type: ignore[arg-type]

        def predict_values(features: PyTorchObs) -> th.Tensor:
            return policy.value_net(policy.mlp_extractor.forward_critic(features))  # type: ignore[arg-type]

    else:
        critic_inputs = observations
        predict_values = policy.predict_values  # type: ignore[assignment]

    n_samples = returns.shape[0]
    losses = []
    for order in epoch_orders(n_samples, n_epochs, batch_rows):
        permutation = order.to(returns.device)
        for start in range(0, n_samples, batch_size):
            index = permutation[start : start + batch_size]
            policy.optimizer.zero_grad()
            values = predict_values(index_observations(critic_inputs, index)).flatten()
            value_loss = F.mse_loss(values, returns[index])
            value_loss.backward()
            policy.optimizer.step()
            losses.append(value_loss.detach())
    return th.stack(losses).mean().item()
