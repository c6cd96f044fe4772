"""
MaskableNPG: NPG with invalid action masking, on sb3-contrib's maskable components.

The policy (``MaskableActorCriticPolicy``), the rollout buffers that store each sample's mask
(``MaskableRolloutBuffer`` / ``MaskableDictRolloutBuffer``) and the rollout collection (``MaskablePPO.collect_rollouts``,
called as it is) come from sb3-contrib; the training step is NPG's own :meth:`~sb3_npg.npg.NPG.train`, given the
masks stored with the samples so that the policy gradient, every Fisher product and the KL after the step use the
masked distribution (the same masks for the old and the new policy).
"""

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.ppo_mask.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.vec_env import VecEnv

from sb3_npg.npg import NPG

SelfMaskableNPG = TypeVar("SelfMaskableNPG", bound="MaskableNPG")


class MaskableNPG(NPG):
    """
    Natural Policy Gradient (NPG) with Invalid Action Masking.

    The environment says which actions are valid through an ``action_masks()`` method (sb3-contrib's
    ``ActionMasker`` wrapper adds one); invalid actions get probability 0 when sampling, and the natural-gradient
    step (gradient, Fisher, KL) is computed on the masked distribution with the mask stored with each sample.
    The API is ``MaskablePPO``'s: ``learn(..., use_masking=True)``, ``predict(obs, action_masks=...)``.
    Discrete, MultiDiscrete and MultiBinary action spaces.

    Background on Invalid Action Masking: https://arxiv.org/abs/2006.14171

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy), a ``MaskableActorCriticPolicy``
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate of the critic (value function), it can be a function
        of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
    :param batch_size: Minibatch size for the critic's regression
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param cg_max_steps: Maximum number of conjugate-gradient steps (Fisher-vector products) per update
    :param cg_damping: Damping ``lambda`` in ``(F + lambda I) x = g``; it regularises the solve only
    :param target_kl: The KL divergence each update aims at (of the masked distributions, summed over action
        dimensions and averaged over states); a number, or a function of the progress remaining as in NPG
    :param n_critic_updates: Number of epochs of critic regression per update
    :param normalize_advantage: Whether to normalize the advantages
    :param sub_sampling_factor: Use every ``sub_sampling_factor``-th sample of the rollout for the Fisher
    :param fisher: The Fisher-vector product backend: ``"gauss_newton"``, ``"hessian"`` or ``"empirical"``
    :param preconditioner: ``None`` or ``"kfac"`` (see :class:`~sb3_npg.npg.NPG`; K-FAC of the masked logits)
    :param log_direction_cosine: Log the cosine of the direction to a converged solve (see :class:`~sb3_npg.npg.NPG`)
    :param damped_step_size: Normalise the step by ``x^T (F + lambda I) x`` instead of ``x^T F x``
    :param step_length: ``"quadratic"`` or ``"exact"`` (see :class:`~sb3_npg.npg.NPG`)
    :param rollout_buffer_class: Rollout buffer class to use (a maskable one). If ``None``, it will be
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
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    supported_action_spaces: ClassVar[tuple[type[spaces.Space], ...]] = (
        spaces.Discrete,
        spaces.MultiDiscrete,
        spaces.MultiBinary,
    )
    policy: MaskableActorCriticPolicy  # type: ignore[assignment]

    def __init__(
        self,
        policy: str | type[MaskableActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
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
        # Set by learn(use_masking=...) for the rollouts of that call
        self._use_masking = True
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
        # As MaskablePPO._setup_model: the maskable policy takes no use_sde, the buffer stores the masks
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        if not isinstance(self.policy, MaskableActorCriticPolicy):
            raise ValueError("Policy must subclass MaskableActorCriticPolicy")
        if self.rollout_buffer_class is None:
            if isinstance(self.observation_space, spaces.Dict):
                self.rollout_buffer_class = MaskableDictRolloutBuffer
            else:
                self.rollout_buffer_class = MaskableRolloutBuffer
        self.rollout_buffer = self.rollout_buffer_class(
            self.n_steps,
            self.observation_space,  # type: ignore[arg-type]
            self.action_space,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            **self.rollout_buffer_kwargs,
        )
        self._setup_actor_critic()

    def _action_masks(self, rollout_data: Any) -> th.Tensor | None:
        """The masks stored with the samples (all ones for rollouts collected with ``use_masking=False``)."""
        return rollout_data.action_masks

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Collect experiences with the current policy, the masks of ``env.action_masks()`` applied and stored
        (unless ``learn(use_masking=False)``): sb3-contrib's ``MaskablePPO.collect_rollouts``, called as it is.

        :raises ValueError: masking is asked for and the environment has no ``action_masks()`` method
        """
        return MaskablePPO.collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps, self._use_masking)  # type: ignore[arg-type]

    def learn(  # type: ignore[override]
        self: SelfMaskableNPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "MaskableNPG",
        reset_num_timesteps: bool = True,
        use_masking: bool = True,
        progress_bar: bool = False,
    ) -> SelfMaskableNPG:
        """
        Train; see :meth:`sb3_npg.npg.NPG.learn`.

        :param use_masking: Whether or not to use invalid action masks during training (the environment must
            have an ``action_masks()`` method, else ``ValueError``)
        """
        self._use_masking = use_masking
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        Get the policy action from an observation (and optional hidden state), as ``MaskablePPO.predict``.

        :param observation: the input observation
        :param state: The last hidden states (can be None, used in recurrent policies)
        :param episode_start: The last masks (can be None, used in recurrent policies)
        :param deterministic: Whether or not to return deterministic actions.
        :param action_masks: Action masks to apply to the action distribution
        :return: the model's action and the next hidden state (used in recurrent policies)
        """
        return self.policy.predict(observation, state, episode_start, deterministic, action_masks=action_masks)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_use_masking"]
