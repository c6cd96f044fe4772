"""
MaskableNPG: NPG with invalid action masking, on sb3-contrib's maskable components.

The policy (``MaskableActorCriticPolicy``), the rollout buffers that store each sample's mask
(``MaskableRolloutBuffer`` / ``MaskableDictRolloutBuffer``) and the rollout collection (``MaskablePPO.collect_rollouts``,
called as it is: see :meth:`MaskableNPG.collect_rollouts` for why) come from sb3-contrib; the update is NPG's own
:meth:`~sb3_npg.npg.NPG.train`, its batch given the masks stored with the samples so that the policy gradient, every
Fisher product and the KL after the step use the masked distribution (the same masks for the old and the new policy).
The constructor passes NPG's arguments through (:mod:`sb3_npg.signatures`).
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
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_npg.npg import NPG
from sb3_npg.signatures import bound_arguments, variant_signature

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

    The parameters are :class:`~sb3_npg.npg.NPG`'s, in the same order and with the same defaults, except the gSDE
    ones (``use_sde``, ``sde_sample_freq``: masking is for discrete actions), as ``MaskablePPO`` takes PPO's; these
    differ:

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy): sb3-contrib's
        ``MaskableActorCriticPolicy`` or a subclass
    :param target_kl: The KL divergence each update aims at, of the masked distributions (summed over action
        dimensions and averaged over states); a number, or a function of the progress remaining as in NPG
    :param rollout_buffer_class: Rollout buffer class to use (a maskable one, which stores each sample's mask). If
        ``None``, it will be automatically selected (``MaskableRolloutBuffer``, or ``MaskableDictRolloutBuffer`` for
        ``Dict`` observations).
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

    def __init__(self, *args: Any, **kwargs: Any):
        # Set by learn(use_masking=...) for the rollouts of that call
        self._use_masking = True
        super().__init__(**bound_arguments(MaskableNPG.__init__, self, args, kwargs))

    __init__.__signature__ = variant_signature(  # type: ignore[attr-defined]
        NPG.__init__, policy=str | type[MaskableActorCriticPolicy], without=("use_sde", "sde_sample_freq")
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
        # sb3-contrib's rollout loop, called on this model although MaskableNPG is no MaskablePPO. It reads only what
        # SB3's OnPolicyAlgorithm defines (policy, action_space, device, gamma, num_timesteps, _last_obs,
        # _last_episode_starts, _update_info_buffer), the same from sb3-contrib 2.4 to 2.9, and
        # tests/test_variants.py checks that against the installed version. The alternatives are worse: a copy of
        # its ~90 lines would not follow sb3-contrib's fixes, and inheriting MaskablePPO would put PPO's constructor,
        # train() and _setup_model in NPG's method resolution order.
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
