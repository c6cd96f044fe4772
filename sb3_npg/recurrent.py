"""
RecurrentNPG: NPG with an LSTM policy, on sb3-contrib's recurrent components.

The policy (``RecurrentActorCriticPolicy``), the rollout buffers that store the LSTM states
(``RecurrentRolloutBuffer`` / ``RecurrentDictRolloutBuffer``) and the rollout collection
(``RecurrentPPO.collect_rollouts``, called as it is, carrying the LSTM states across rollouts: see
:meth:`RecurrentNPG.collect_rollouts` for why) come from sb3-contrib. The update is NPG's own
:meth:`~sb3_npg.npg.NPG.train`, its batch given a :class:`SequenceBatch` whose distribution is recomputed along each
stored sequence from its stored initial LSTM state and episode starts (as ``RecurrentPPO.evaluate_actions`` does) and
keeps the real steps only, so that the policy gradient, every Fisher product and the KL are means over real steps,
padding excluded; the critic is regressed on the buffer's minibatches of sequences. The constructor passes NPG's
arguments through (:mod:`sb3_npg.signatures`).
"""

import copy
import warnings
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.maskable.distributions import MaskableDistribution
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from sb3_contrib.ppo_recurrent.policies import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import MaybeCallback, PyTorchObs
from stable_baselines3.common.vec_env import VecEnv

from sb3_npg.actor_critic import probe_observation
from sb3_npg.distributions import categorical_parts
from sb3_npg.npg import NPG, UpdateBatch
from sb3_npg.signatures import bound_arguments, variant_signature

SelfRecurrentNPG = TypeVar("SelfRecurrentNPG", bound="RecurrentNPG")


def select_rows(distribution: Distribution, rows: th.Tensor) -> Distribution:
    """
    The same SB3 distribution restricted to the batch rows ``rows`` (differentiably).

    :param distribution: an SB3 action distribution on a batch
    :param rows: a boolean mask (or index) over the batch
    :return: a copy whose underlying torch distribution has the selected rows only
    """
    if isinstance(distribution, MaskableDistribution):  # MaskableRecurrentNPG: rebuilt from the selected logits
        parts = categorical_parts(distribution)
        assert parts is not None
        logits = th.cat([part.logits for part in parts], dim=1)
        return copy.copy(distribution).proba_distribution(action_logits=logits[rows])
    selected = copy.copy(distribution)
    inner = distribution.distribution
    if isinstance(inner, list):  # MultiCategorical
        selected.distribution = [th.distributions.Categorical(logits=part.logits[rows]) for part in inner]  # type: ignore[attr-defined]
    elif isinstance(inner, th.distributions.Normal):  # diagonal Gaussian, squashed Gaussian, gSDE
        selected.distribution = th.distributions.Normal(inner.loc[rows], inner.scale[rows])
    elif isinstance(inner, th.distributions.Categorical):
        selected.distribution = th.distributions.Categorical(logits=inner.logits[rows])
    elif isinstance(inner, th.distributions.Bernoulli):
        selected.distribution = th.distributions.Bernoulli(logits=inner.logits[rows])
    else:
        raise NotImplementedError(f"Cannot select rows of {type(distribution).__name__}")
    return selected


class SequenceBatch:
    """
    The action distribution of a recurrent policy on a batch of padded sequences, real steps only.

    ``get_distribution(observations)`` runs the actor's LSTM along each sequence from its initial state
    ``lstm_states`` (reset at ``episode_starts``) over the padded ``observations`` and returns the distribution of the
    rows where ``real`` is true: the batch NPG's step (gradient, Fisher products, KL) is averaged over. With
    ``action_masks`` (one row per real step; a maskable policy, see MaskableRecurrentNPG) it is the masked distribution.

    :param policy: the recurrent actor-critic policy
    :param lstm_states: the actor's LSTM (hidden, cell) states at the start of each sequence
    :param episode_starts: the padded episode starts of the batch
    :param real: the boolean mask of the real (not padding) steps of the batch
    """

    def __init__(
        self,
        policy: RecurrentActorCriticPolicy,
        lstm_states: tuple[th.Tensor, ...],
        episode_starts: th.Tensor,
        real: th.Tensor,
    ):
        self.policy = policy
        self.lstm_states = lstm_states
        self.episode_starts = episode_starts
        self.real = real

    def get_distribution(self, observations: PyTorchObs, action_masks: th.Tensor | None = None) -> Distribution:
        """
        :param observations: the padded observations of the batch
        :param action_masks: the masks of the real steps (a maskable policy only), or ``None``
        :return: the action distribution on the real steps (masked by ``action_masks`` if given)
        """
        distribution, _ = self.policy.get_distribution(observations, self.lstm_states, self.episode_starts)  # type: ignore[arg-type]
        selected = select_rows(distribution, self.real)
        if action_masks is not None:
            if not isinstance(selected, MaskableDistribution):
                raise ValueError("action_masks need a maskable policy (MaskableRecurrentNPG's), not RecurrentNPG's")
            selected.apply_masking(action_masks)
        return selected


class RecurrentNPG(NPG):
    """
    Natural Policy Gradient (NPG) with an LSTM policy (sb3-contrib's ``RecurrentActorCriticPolicy``).

    The API is ``RecurrentPPO``'s: ``predict(obs, state, episode_start)`` returns the next LSTM states; the policy
    options ``lstm_hidden_size``, ``n_lstm_layers``, ``enable_critic_lstm`` and ``shared_lstm`` keep their meaning
    (with ``shared_lstm`` the LSTM is an actor parameter, moved by the natural-gradient step only). The step
    recomputes the distribution along each stored sequence (from its stored initial LSTM state) and averages over
    real steps only; the critic is regressed on minibatches of sequences (the buffer's), its loss over real steps.

    The parameters are :class:`~sb3_npg.npg.NPG`'s, in the same order; these differ:

    :param policy: The policy model to use (MlpLstmPolicy, CnnLstmPolicy, MultiInputLstmPolicy): sb3-contrib's
        ``RecurrentActorCriticPolicy`` or a subclass
    :param n_steps: The number of steps to run for each environment per update (default 128, as ``RecurrentPPO``;
        NPG takes one step per rollout and wants longer ones: the shipped entries use 1024 to 2048)
    :param batch_size: Minibatch size (in steps, before padding) for the critic's regression
    :param target_kl: The KL divergence each update aims at (averaged over real steps); a number, or a function of
        the progress remaining as in NPG
    :param sub_sampling_factor: Must be 1 (sub-sampling would cut the sequences)
    :param rollout_buffer_class: Rollout buffer class to use (a recurrent one, which stores the LSTM states). If
        ``None``, it will be automatically selected (``RecurrentRolloutBuffer``, or ``RecurrentDictRolloutBuffer``
        for ``Dict`` observations).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpLstmPolicy": MlpLstmPolicy,
        "CnnLstmPolicy": CnnLstmPolicy,
        "MultiInputLstmPolicy": MultiInputLstmPolicy,
    }
    policy: RecurrentActorCriticPolicy  # type: ignore[assignment]
    rollout_buffer: RecurrentRolloutBuffer  # type: ignore[assignment]  # or RecurrentDictRolloutBuffer: same samples

    def __init__(self, *args: Any, **kwargs: Any):
        arguments = bound_arguments(RecurrentNPG.__init__, self, args, kwargs)
        if arguments["sub_sampling_factor"] != 1:
            raise ValueError(f"Invalid sub_sampling_factor={arguments['sub_sampling_factor']!r}: RecurrentNPG needs 1")
        self._last_lstm_states: RNNStates | None = None
        super().__init__(**arguments)

    __init__.__signature__ = variant_signature(  # type: ignore[attr-defined]
        NPG.__init__, policy=str | type[RecurrentActorCriticPolicy], defaults={"n_steps": 128}
    )

    def _setup_model(self) -> None:
        # As RecurrentPPO._setup_model: the buffer stores the LSTM states, the rollout carries them
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, use_sde=self.use_sde, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        if not isinstance(self.policy, RecurrentActorCriticPolicy):
            raise ValueError("Policy must subclass RecurrentActorCriticPolicy")
        lstm = self.policy.lstm_actor
        single_hidden_state_shape = (lstm.num_layers, self.n_envs, lstm.hidden_size)
        self._last_lstm_states = RNNStates(
            (th.zeros(single_hidden_state_shape, device=self.device), th.zeros(single_hidden_state_shape, device=self.device)),
            (th.zeros(single_hidden_state_shape, device=self.device), th.zeros(single_hidden_state_shape, device=self.device)),
        )
        if self.rollout_buffer_class is None:
            if isinstance(self.observation_space, spaces.Dict):
                self.rollout_buffer_class = RecurrentDictRolloutBuffer
            else:
                self.rollout_buffer_class = RecurrentRolloutBuffer
        buffer_class: type[RecurrentRolloutBuffer] = self.rollout_buffer_class  # type: ignore[assignment]
        self.rollout_buffer = buffer_class(
            self.n_steps,
            self.observation_space,  # type: ignore[arg-type]
            self.action_space,
            (self.n_steps, lstm.num_layers, self.n_envs, lstm.hidden_size),
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            **self.rollout_buffer_kwargs,
        )
        self._setup_actor_critic()
        if self.policy.shared_lstm:
            warnings.warn(
                "With shared_lstm, NPG's critic does not train the LSTM (it is an actor parameter, moved by the "
                "natural-gradient step only), so the value function can only fit its head on the actor's LSTM "
                "outputs. Pass policy_kwargs=dict(shared_lstm=False, enable_critic_lstm=True) to give the critic its own.",
                UserWarning,
                stacklevel=3,
            )

    def _sample_distribution(self) -> Distribution:
        observation, _ = self.policy.obs_to_tensor(probe_observation(self.observation_space))
        lstm = self.policy.lstm_actor
        zeros = th.zeros((lstm.num_layers, 1, lstm.hidden_size), device=self.device)
        distribution, _ = self.policy.get_distribution(observation, (zeros, zeros), th.ones(1, device=self.device))  # type: ignore[arg-type]
        return distribution

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Collect experiences with the current policy, storing the LSTM states and carrying them to the next rollout:
        sb3-contrib's ``RecurrentPPO.collect_rollouts``, called as it is.
        """
        # sb3-contrib's rollout loop, called on this model although RecurrentNPG is no RecurrentPPO. It reads only
        # what SB3's OnPolicyAlgorithm defines (policy, action_space, device, gamma, num_timesteps, use_sde,
        # sde_sample_freq, _last_obs, _last_episode_starts, _update_info_buffer) and _last_lstm_states (set up here
        # as RecurrentPPO sets it up), the same from sb3-contrib 2.4 to 2.9, and tests/test_variants.py checks that
        # against the installed version. The alternatives are worse: a copy of its ~100 lines would not follow
        # sb3-contrib's fixes, and inheriting RecurrentPPO would put PPO's constructor, train() and _setup_model in
        # NPG's method resolution order.
        return RecurrentPPO.collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps)  # type: ignore[arg-type]

    def _rollout_batch(self) -> UpdateBatch:
        """
        The rollout buffer as one batch of padded sequences: the actions and advantages of the real steps, the
        distribution recomputed along each sequence from its stored initial LSTM state (:class:`SequenceBatch`), and
        the masks of the real steps if :meth:`_action_masks` gives the buffer's (MaskableRecurrentNPG), which
        :class:`SequenceBatch` applies to that distribution.
        """
        rollout_data = next(self.rollout_buffer.get(batch_size=None))
        real = rollout_data.mask > 1e-8
        actions = rollout_data.actions[real]
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        masks = self._action_masks(rollout_data)  # None, or the masks of MaskableRecurrentNPG's buffer (padded)
        return UpdateBatch(
            observations=rollout_data.observations,
            actions=actions,
            advantages=rollout_data.advantages[real],
            returns=rollout_data.returns,
            policy=SequenceBatch(self.policy, rollout_data.lstm_states.pi, rollout_data.episode_starts, real),
            action_masks=None if masks is None else masks[real],
        )

    def _fit_critic(self, observations: PyTorchObs, returns: th.Tensor, batch_rows: np.ndarray | None = None) -> float:
        """
        :meth:`~sb3_npg.npg.NPG.train`'s critic step: :meth:`_fit_sequence_critic`, on the buffer's minibatches of
        sequences. The whole padded batch given (``observations``, ``returns``) is not what it regresses on: the
        critic's LSTM needs the sequences with their stored states, which the buffer cuts as for RecurrentPPO.
        """
        return self._fit_sequence_critic()

    def _fit_sequence_critic(self) -> float:
        """
        ``n_critic_updates`` epochs of regression of the value function on the returns, on the buffer's minibatches
        of padded sequences (the critic's LSTM, if any, run from the stored states), the MSE over real steps only.

        :return: the mean value loss
        """
        losses = []
        for _ in range(self.n_critic_updates):
            for data in self.rollout_buffer.get(self.batch_size):
                real = data.mask > 1e-8
                values = self.policy.predict_values(data.observations, data.lstm_states.vf, data.episode_starts).flatten()  # type: ignore[arg-type]
                value_loss = F.mse_loss(values[real], data.returns[real])
                self.policy.zero_grad(set_to_none=True)
                value_loss.backward()
                self.policy.optimizer.step()
                losses.append(value_loss.detach())
        return th.stack(losses).mean().item()

    def learn(
        self: SelfRecurrentNPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "RecurrentNPG",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRecurrentNPG:
        """Train; see :meth:`sb3_npg.npg.NPG.learn` (the tensorboard run is named after the class, as RecurrentPPO's)."""
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_lstm_states"]
