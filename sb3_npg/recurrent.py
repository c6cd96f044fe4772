"""
RecurrentNPG: NPG with an LSTM policy, on sb3-contrib's recurrent components.

The policy (``RecurrentActorCriticPolicy``), the rollout buffers that store the LSTM states
(``RecurrentRolloutBuffer`` / ``RecurrentDictRolloutBuffer``) and the rollout collection
(``RecurrentPPO.collect_rollouts``, called as it is, carrying the LSTM states across rollouts) come from
sb3-contrib; the training step is NPG's own natural-gradient step, given a :class:`SequenceBatch` whose
distribution is recomputed along each stored sequence from its stored initial LSTM state and episode starts (as
``RecurrentPPO.evaluate_actions`` does) and keeps the real steps only, so that the policy gradient, every Fisher
product and the KL are means over real steps, padding excluded.
"""

import copy
import warnings
from typing import Any, ClassVar

import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from sb3_contrib.ppo_recurrent.policies import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, PyTorchObs, Schedule
from stable_baselines3.common.vec_env import VecEnv

from sb3_npg.npg import NPG


def select_rows(distribution: Distribution, rows: th.Tensor) -> Distribution:
    """
    The same SB3 distribution restricted to the batch rows ``rows`` (differentiably).

    :param distribution: an SB3 action distribution on a batch
    :param rows: a boolean mask (or index) over the batch
    :return: a copy whose underlying torch distribution has the selected rows only
    """
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
    rows where ``real`` is true: the batch NPG's step (gradient, Fisher products, KL) is averaged over.

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
        :param action_masks: not supported (must be ``None``)
        :return: the action distribution on the real steps
        """
        if action_masks is not None:
            raise ValueError("action_masks are not supported by RecurrentNPG")
        distribution, _ = self.policy.get_distribution(observations, self.lstm_states, self.episode_starts)  # type: ignore[arg-type]
        return select_rows(distribution, self.real)


class RecurrentNPG(NPG):
    """
    Natural Policy Gradient (NPG) with an LSTM policy (sb3-contrib's ``RecurrentActorCriticPolicy``).

    The API is ``RecurrentPPO``'s: ``predict(obs, state, episode_start)`` returns the next LSTM states; the policy
    options ``lstm_hidden_size``, ``n_lstm_layers``, ``enable_critic_lstm`` and ``shared_lstm`` keep their meaning
    (with ``shared_lstm`` the LSTM is an actor parameter, moved by the natural-gradient step only). The step
    recomputes the distribution along each stored sequence (from its stored initial LSTM state) and averages over
    real steps only; the critic is regressed on minibatches of sequences (the buffer's), its loss over real steps.

    Parameters as :class:`~sb3_npg.npg.NPG`'s (``sub_sampling_factor`` must be 1: sub-sampling would cut the
    sequences).

    :param policy: The policy model to use (MlpLstmPolicy, CnnLstmPolicy, MultiInputLstmPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate of the critic (value function), it can be a function
        of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
    :param batch_size: Minibatch size (in steps, before padding) for the critic's regression
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param cg_max_steps: Maximum number of conjugate-gradient steps (Fisher-vector products) per update
    :param cg_damping: Damping ``lambda`` in ``(F + lambda I) x = g``
    :param target_kl: The KL divergence each update aims at (averaged over real steps); a number, or a function of
        the progress remaining as in NPG
    :param n_critic_updates: Number of epochs of critic regression per update
    :param normalize_advantage: Whether to normalize the advantages
    :param sub_sampling_factor: Must be 1
    :param fisher: The Fisher-vector product backend: ``"gauss_newton"``, ``"hessian"`` or ``"empirical"``
    :param preconditioner: Must be ``None`` (K-FAC does not cover the LSTM: ``"kfac"`` raises ``ValueError``)
    :param log_direction_cosine: Log the cosine of the direction to a converged solve (see :class:`~sb3_npg.npg.NPG`)
    :param damped_step_size: Normalise the step by ``x^T (F + lambda I) x`` instead of ``x^T F x``
    :param step_length: ``"quadratic"`` or ``"exact"``
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE (-1: only at the rollout start)
    :param rollout_buffer_class: Rollout buffer class to use (a recurrent one). If ``None``, it will be
        automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param stats_window_size: Window size for the rollout logging
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: the verbosity level: 0 no output, 1 info, 2 debug
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
    :param num_threads: The number of torch intra-op threads ``learn()`` runs with, the caller's setting restored
        afterwards; ``None`` (default): 1, with the large MLP products timed at the caller's count (see
        :class:`~sb3_npg.npg.NPG`)
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpLstmPolicy": MlpLstmPolicy,
        "CnnLstmPolicy": CnnLstmPolicy,
        "MultiInputLstmPolicy": MultiInputLstmPolicy,
    }
    policy: RecurrentActorCriticPolicy  # type: ignore[assignment]
    rollout_buffer: RecurrentRolloutBuffer  # type: ignore[assignment]  # or RecurrentDictRolloutBuffer: same samples

    def __init__(
        self,
        policy: str | type[RecurrentActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 128,
        batch_size: int = 128,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        cg_max_steps: int = 15,
        cg_damping: float = 0.1,
        target_kl: float | Schedule = 0.01,
        n_critic_updates: int = 10,
        normalize_advantage: bool = True,
        sub_sampling_factor: int = 1,
        fisher: str = "gauss_newton",
        preconditioner: str | None = None,
        log_direction_cosine: bool = False,
        damped_step_size: bool = False,
        step_length: str = "quadratic",
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        num_threads: int | None = None,
        _init_setup_model: bool = True,
    ):
        if sub_sampling_factor != 1:
            raise ValueError(f"Invalid sub_sampling_factor={sub_sampling_factor!r}: RecurrentNPG needs 1")
        self._last_lstm_states: RNNStates | None = None
        super().__init__(
            policy,  # type: ignore[arg-type]
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            gamma=gamma,
            gae_lambda=gae_lambda,
            cg_max_steps=cg_max_steps,
            cg_damping=cg_damping,
            target_kl=target_kl,
            n_critic_updates=n_critic_updates,
            normalize_advantage=normalize_advantage,
            sub_sampling_factor=sub_sampling_factor,
            fisher=fisher,
            preconditioner=preconditioner,
            log_direction_cosine=log_direction_cosine,
            damped_step_size=damped_step_size,
            step_length=step_length,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            num_threads=num_threads,
            _init_setup_model=_init_setup_model,
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
        observation, _ = self.policy.obs_to_tensor(self.observation_space.sample())
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
        return RecurrentPPO.collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps)  # type: ignore[arg-type]

    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer: one natural-gradient step on all its sequences
        (real steps only), then the critic's regression.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        rollout_data = next(self.rollout_buffer.get(batch_size=None))
        real = rollout_data.mask > 1e-8
        actions = rollout_data.actions[real]
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        batch = SequenceBatch(self.policy, rollout_data.lstm_states.pi, rollout_data.episode_starts, real)
        self._policy_step(rollout_data.observations, actions, rollout_data.advantages[real], batch_policy=batch)
        self._record_update(self._fit_sequence_critic())

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

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_lstm_states"]
