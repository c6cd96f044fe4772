"""
MaskableRecurrentNPG: NPG with invalid action masking and an LSTM policy, on sb3-contrib's components.

sb3-contrib has masks (``MaskablePPO``) and memory (``RecurrentPPO``) but not both; this module joins their parts:

- the policy is sb3-contrib's ``RecurrentActorCriticPolicy`` with the maskable action distribution of
  ``sb3_contrib.common.maskable.distributions`` (:class:`MaskableRecurrentActorCriticPolicy`): its ``forward``,
  ``get_distribution``, ``evaluate_actions`` and ``predict`` are sb3-contrib's, with an ``action_masks`` argument applied
  where they build the distribution;
- the rollout buffers are sb3-contrib's recurrent buffers combined with its maskable ones
  (:class:`MaskableRecurrentRolloutBuffer`, :class:`MaskableRecurrentDictRolloutBuffer`): the masks are stored with
  each step, padded like the observations (with ones: a padded step has every action valid, and is never used) and
  yielded with each minibatch of sequences;
- the rollout collection is ``RecurrentPPO.collect_rollouts`` with ``MaskablePPO``'s masking (:meth:`collect_rollouts`);
- the update is NPG's own :meth:`~sb3_npg.npg.NPG.train` on RecurrentNPG's batch of sequences
  (:meth:`~sb3_npg.recurrent.RecurrentNPG._rollout_batch`: the real steps of the stored sequences, through
  :class:`~sb3_npg.recurrent.SequenceBatch`) with RecurrentNPG's sequence critic; :meth:`MaskableRecurrentNPG._action_masks`
  gives that batch the masks stored with the steps, so the gradient, every Fisher product and the KL after the step
  are those of the masked distribution.

:func:`evaluate_policy` evaluates with masks and memory (sb3-contrib's maskable ``evaluate_policy`` drops the LSTM
states between steps when it masks).
"""

import contextlib
from collections.abc import Callable, Iterator
from copy import deepcopy
from functools import partial
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.maskable.distributions import MaskableDistribution, make_masked_proba_distribution
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy as sb3_evaluate_policy
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule, TensorDict
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from torch import nn

from sb3_npg.recurrent import RecurrentNPG
from sb3_npg.signatures import bound_arguments, variant_signature

SelfMaskableRecurrentNPG = TypeVar("SelfMaskableRecurrentNPG", bound="MaskableRecurrentNPG")

#: sb3-contrib's message (``MaskablePPO``) for an environment without ``action_masks()``
NO_MASKING_SUPPORT = "Environment does not support action masking. Consider using ActionMasker wrapper"


def mask_part_sizes(action_space: spaces.Space) -> list[int]:
    """
    The sizes of the parts of an action mask, as sb3-contrib's maskable distributions read it: one part for
    ``Discrete(n)`` (``n`` entries), one per dimension for ``MultiDiscrete`` (``nvec``), two per dimension for
    ``MultiBinary`` (the masks of 0 and 1).
    """
    if isinstance(action_space, spaces.Discrete):
        return [int(action_space.n)]
    if isinstance(action_space, spaces.MultiDiscrete):
        return [int(n) for n in action_space.nvec]
    if isinstance(action_space, spaces.MultiBinary):
        return [2] * int(np.prod(action_space.n))
    raise ValueError(f"Action masks are for Discrete, MultiDiscrete and MultiBinary action spaces, not {action_space}")


def checked_action_masks(action_masks: th.Tensor | np.ndarray, action_space: spaces.Space, n_rows: int) -> th.Tensor:
    """
    Action masks as a boolean ``(n_rows, mask size)`` tensor, after checking them.

    :param action_masks: true (or 1) for the valid actions: any shape with ``n_rows * mask size`` entries
    :param action_space: the action space the masks are for
    :param n_rows: the number of observations (rows of the distribution) they mask
    :raises ValueError: the masks have the wrong number of entries, or leave a row (or an action dimension of a row)
        without a valid action
    """
    sizes = mask_part_sizes(action_space)
    masks = th.as_tensor(action_masks).to(dtype=th.bool)
    if masks.numel() != n_rows * sum(sizes):
        raise ValueError(
            f"action_masks of shape {tuple(masks.shape)} do not fit {n_rows} observation(s) of the action space "
            f"{action_space}: expected {n_rows} x {sum(sizes)} entries ({' + '.join(map(str, sizes))} per observation)"
        )
    masks = masks.reshape(n_rows, sum(sizes))
    for dimension, part in enumerate(masks.split(sizes, dim=1)):
        empty = th.nonzero(~part.any(dim=1)).flatten()
        if len(empty) > 0:
            where = f" in action dimension {dimension}" if len(sizes) > 1 else ""
            raise ValueError(
                f"action_masks leave no valid action{where} for observation {empty[0].item()} "
                f"(of {n_rows}): every state needs at least one valid action"
            )
    return masks


class MaskableRecurrentActorCriticPolicy(RecurrentActorCriticPolicy):
    """
    sb3-contrib's ``RecurrentActorCriticPolicy`` (an LSTM actor-critic) whose action distribution is sb3-contrib's
    maskable one (``make_masked_proba_distribution``): ``forward``, ``get_distribution``, ``evaluate_actions`` and
    ``predict`` take ``action_masks`` (as ``MaskableActorCriticPolicy``'s), checked by :func:`checked_action_masks`.
    Constructor arguments as ``RecurrentActorCriticPolicy``'s; ``use_sde`` must be False (the actions are discrete).
    """

    #: The masks that the sb3-contrib method running inside :meth:`_masked` applies to the distribution it builds
    _pending_action_masks: th.Tensor | np.ndarray | None = None

    def _build(self, lr_schedule: Schedule) -> None:
        # Called by ActorCriticPolicy.__init__ once its (unmasked) action_dist is made. SB3's _build refuses a maskable
        # distribution, so the networks are made here from public pieces, in the order of sb3-contrib's
        # MaskableActorCriticPolicy._build (the same initial weights for a seed): the MLP extractor on the LSTM's output
        # (RecurrentActorCriticPolicy._build_mlp_extractor), the masked distribution's logits layer, the value layer,
        # orthogonal initialisation, the optimizer
        if self.use_sde:
            raise ValueError("use_sde=True is not supported with action masks (the actions are discrete)")
        self.action_dist = make_masked_proba_distribution(self.action_space)  # type: ignore[assignment]
        self._build_mlp_extractor()
        self.action_net = self.action_dist.proba_distribution_net(latent_dim=self.mlp_extractor.latent_dim_pi)
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            # sb3-contrib's order (the order of the random draws): a shared extractor first, separate ones last
            heads: dict[nn.Module, float] = {self.mlp_extractor: np.sqrt(2), self.action_net: 0.01, self.value_net: 1}
            if self.share_features_extractor:
                module_gains = {self.features_extractor: np.sqrt(2), **heads}
            else:
                module_gains = {**heads, self.pi_features_extractor: np.sqrt(2), self.vf_features_extractor: np.sqrt(2)}
            for module, gain in module_gains.items():
                module.apply(partial(self.init_weights, gain=gain))
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    @contextlib.contextmanager
    def _masked(self, action_masks: th.Tensor | np.ndarray | None) -> Iterator[None]:
        """
        Inside, the distributions built by sb3-contrib's methods are masked by ``action_masks``; ``None`` keeps the masks
        of an enclosing call (``predict`` calls ``get_distribution`` without them), none outside any.
        """
        if action_masks is None:
            yield
            return
        previous, self._pending_action_masks = self._pending_action_masks, action_masks
        try:
            yield
        finally:
            self._pending_action_masks = previous

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> MaskableDistribution:  # type: ignore[override]
        distribution: MaskableDistribution = self.action_dist.proba_distribution(  # type: ignore[call-arg, assignment]
            action_logits=self.action_net(latent_pi)
        )
        if self._pending_action_masks is not None:
            masks = checked_action_masks(self._pending_action_masks, self.action_space, latent_pi.shape[0])
            distribution.apply_masking(masks.to(latent_pi.device))
        return distribution

    def forward(  # type: ignore[override]
        self,
        obs: th.Tensor,
        lstm_states: RNNStates,
        episode_starts: th.Tensor,
        deterministic: bool = False,
        action_masks: th.Tensor | np.ndarray | None = None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, RNNStates]:
        """
        ``RecurrentActorCriticPolicy.forward`` (actions, values, log-probabilities, next LSTM states) with the actions
        drawn from the distribution masked by ``action_masks``.
        """
        with self._masked(action_masks):
            return super().forward(obs, lstm_states, episode_starts, deterministic)

    def get_distribution(  # type: ignore[override]
        self,
        obs: PyTorchObs,
        lstm_states: tuple[th.Tensor, th.Tensor],
        episode_starts: th.Tensor,
        action_masks: th.Tensor | np.ndarray | None = None,
    ) -> tuple[MaskableDistribution, tuple[th.Tensor, ...]]:
        """``RecurrentActorCriticPolicy.get_distribution`` (distribution, next LSTM states), masked by ``action_masks``."""
        with self._masked(action_masks):
            return super().get_distribution(obs, lstm_states, episode_starts)  # type: ignore[arg-type, return-value]

    def evaluate_actions(  # type: ignore[override]
        self,
        obs: th.Tensor,
        actions: th.Tensor,
        lstm_states: RNNStates,
        episode_starts: th.Tensor,
        action_masks: th.Tensor | np.ndarray | None = None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``RecurrentActorCriticPolicy.evaluate_actions`` (values, log-probabilities, entropy) of the masked distribution."""
        with self._masked(action_masks):
            return super().evaluate_actions(obs, actions, lstm_states, episode_starts)

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        ``RecurrentActorCriticPolicy.predict`` (action, next LSTM states) with ``MaskablePPO``'s ``action_masks``.

        :raises ValueError: the masks do not fit the observations, or leave a state without a valid action
        """
        with self._masked(action_masks):
            return super().predict(observation, state, episode_start, deterministic)


class MaskableRecurrentActorCriticCnnPolicy(MaskableRecurrentActorCriticPolicy):
    """:class:`MaskableRecurrentActorCriticPolicy` with ``CnnLstmPolicy``'s default: a NatureCNN features extractor."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        **kwargs: Any,
    ):
        super().__init__(
            observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs
        )


class MaskableRecurrentMultiInputActorCriticPolicy(MaskableRecurrentActorCriticPolicy):
    """:class:`MaskableRecurrentActorCriticPolicy` with sb3-contrib's ``MultiInputLstmPolicy`` default: Dict observations."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        **kwargs: Any,
    ):
        super().__init__(
            observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs
        )


MlpLstmPolicy = MaskableRecurrentActorCriticPolicy
CnnLstmPolicy = MaskableRecurrentActorCriticCnnPolicy
MultiInputLstmPolicy = MaskableRecurrentMultiInputActorCriticPolicy


class MaskableRecurrentRolloutBufferSamples(NamedTuple):
    """sb3-contrib's ``RecurrentRolloutBufferSamples`` with the padded ``action_masks`` of the steps."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    lstm_states: RNNStates
    episode_starts: th.Tensor
    mask: th.Tensor
    action_masks: th.Tensor


class MaskableRecurrentDictRolloutBufferSamples(NamedTuple):
    """sb3-contrib's ``RecurrentDictRolloutBufferSamples`` with the padded ``action_masks`` of the steps."""

    observations: TensorDict
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    lstm_states: RNNStates
    episode_starts: th.Tensor
    mask: th.Tensor
    action_masks: th.Tensor


# add(*args, lstm_states=..., action_masks=..., **kwargs): each base takes its own keyword and passes the rest on
class MaskableRecurrentRolloutBuffer(RecurrentRolloutBuffer, MaskableRolloutBuffer):  # type: ignore[misc]
    """
    sb3-contrib's ``RecurrentRolloutBuffer`` (LSTM states, padded sequences) that also stores the action masks as
    its ``MaskableRolloutBuffer`` does (``add(..., lstm_states=..., action_masks=...)``). Every minibatch of
    sequences carries the masks of its steps, padded like the observations (with ones: every action valid at a
    padded step, which the training step never uses), ``(n_seq * max_length, mask size)``.

    Arguments as ``RecurrentRolloutBuffer``'s.
    """

    def get(self, batch_size: int | None = None) -> Iterator[MaskableRecurrentRolloutBufferSamples]:  # type: ignore[override]
        if not self.generator_ready:  # laid out as RecurrentRolloutBuffer.get lays out the other arrays
            self.action_masks = self.swap_and_flatten(self.action_masks)
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env_change: np.ndarray, env: Any = None
    ) -> MaskableRecurrentRolloutBufferSamples:
        samples = super()._get_samples(batch_inds, env_change, env)  # sets self.pad for these sequences
        masks = self.pad(self.action_masks[batch_inds], padding_value=1.0).reshape(-1, self.mask_dims)
        return MaskableRecurrentRolloutBufferSamples(*samples, action_masks=masks)


class MaskableRecurrentDictRolloutBuffer(RecurrentDictRolloutBuffer, MaskableDictRolloutBuffer):  # type: ignore[misc]
    """:class:`MaskableRecurrentRolloutBuffer` for Dict observations (sb3-contrib's ``RecurrentDictRolloutBuffer``)."""

    def get(self, batch_size: int | None = None) -> Iterator[MaskableRecurrentDictRolloutBufferSamples]:  # type: ignore[override]
        if not self.generator_ready:
            self.action_masks = self.swap_and_flatten(self.action_masks)
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env_change: np.ndarray, env: Any = None
    ) -> MaskableRecurrentDictRolloutBufferSamples:
        samples = super()._get_samples(batch_inds, env_change, env)
        masks = self.pad(self.action_masks[batch_inds], padding_value=1.0).reshape(-1, self.mask_dims)
        return MaskableRecurrentDictRolloutBufferSamples(*samples, action_masks=masks)


class MaskableRecurrentNPG(RecurrentNPG):
    """
    Natural Policy Gradient (NPG) with Invalid Action Masking and an LSTM policy: ``MaskablePPO``'s masks with
    ``RecurrentPPO``'s memory.

    The environment says which actions are valid through an ``action_masks()`` method (sb3-contrib's
    ``ActionMasker`` wrapper adds one); invalid actions get probability 0, and the natural-gradient step (gradient,
    Fisher products, KL) is taken on the masked distribution recomputed along the stored sequences, real steps only.
    The API joins ``RecurrentPPO``'s and ``MaskablePPO``'s: ``learn(..., use_masking=True)``,
    ``predict(obs, state, episode_start, deterministic, action_masks)``. Discrete, MultiDiscrete and MultiBinary
    action spaces; evaluate with :func:`sb3_npg.maskable_recurrent.evaluate_policy` (masks and memory).

    The parameters are :class:`~sb3_npg.recurrent.RecurrentNPG`'s (and so :class:`~sb3_npg.npg.NPG`'s), in the same
    order and with the same defaults; these differ:

    :param policy: The policy model to use (MlpLstmPolicy, CnnLstmPolicy, MultiInputLstmPolicy): a
        :class:`MaskableRecurrentActorCriticPolicy` (sb3-contrib's recurrent policy with its maskable distribution)
    :param env: The environment to learn from (if registered in Gym, can be str); it must have ``action_masks()``
        unless ``learn(use_masking=False)``
    :param target_kl: The KL divergence each update aims at, of the masked distributions (summed over action
        dimensions and averaged over real steps); a number, or a function of the progress remaining as in NPG
    :param use_sde: Must be False (the actions are discrete); taken so that code written for RecurrentPPO runs
    :param rollout_buffer_class: Rollout buffer class to use (one that stores the masks and the LSTM states). If
        ``None``, it will be automatically selected (:class:`MaskableRecurrentRolloutBuffer`, or
        :class:`MaskableRecurrentDictRolloutBuffer` for ``Dict`` observations).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpLstmPolicy": MlpLstmPolicy,
        "CnnLstmPolicy": CnnLstmPolicy,
        "MultiInputLstmPolicy": MultiInputLstmPolicy,
    }
    supported_action_spaces: ClassVar[tuple[type[spaces.Space], ...]] = (
        spaces.Discrete,
        spaces.MultiDiscrete,
        spaces.MultiBinary,
    )
    policy: MaskableRecurrentActorCriticPolicy  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any):
        arguments = bound_arguments(MaskableRecurrentNPG.__init__, self, args, kwargs)
        if arguments["use_sde"]:
            raise ValueError("Invalid use_sde=True: MaskableRecurrentNPG's actions are discrete (gSDE is for Box actions)")
        # Set by learn(use_masking=...) for the rollouts of that call
        self._use_masking = True
        super().__init__(**arguments)

    __init__.__signature__ = variant_signature(  # type: ignore[attr-defined]
        RecurrentNPG.__init__, policy=str | type[MaskableRecurrentActorCriticPolicy]
    )

    def _setup_model(self) -> None:
        if self.rollout_buffer_class is None:
            if isinstance(self.observation_space, spaces.Dict):
                self.rollout_buffer_class = MaskableRecurrentDictRolloutBuffer
            else:
                self.rollout_buffer_class = MaskableRecurrentRolloutBuffer
        super()._setup_model()
        if not isinstance(self.policy, MaskableRecurrentActorCriticPolicy):
            raise ValueError("Policy must subclass MaskableRecurrentActorCriticPolicy")
        if not isinstance(self.rollout_buffer, MaskableRecurrentRolloutBuffer | MaskableRecurrentDictRolloutBuffer):
            raise ValueError(
                f"rollout_buffer_class={type(self.rollout_buffer).__name__} must store action masks and LSTM states "
                "(a MaskableRecurrentRolloutBuffer or MaskableRecurrentDictRolloutBuffer)"
            )

    def _action_masks(self, rollout_data: Any) -> th.Tensor | None:
        """The padded masks stored with the sequences (all ones for rollouts collected with ``use_masking=False``)."""
        return rollout_data.action_masks

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Collect experiences with the current policy: sb3-contrib's ``RecurrentPPO.collect_rollouts`` (the LSTM states
        stored with each step and carried to the next rollout) with ``MaskablePPO.collect_rollouts``' masking (the masks
        of ``env.action_masks()`` applied to the policy and stored, unless ``learn(use_masking=False)``).

        :raises ValueError: masking is asked for and the environment has no ``action_masks()`` method (before any
            step), or its masks do not fit the action space or leave a state without a valid action
        """
        assert isinstance(rollout_buffer, MaskableRecurrentRolloutBuffer | MaskableRecurrentDictRolloutBuffer)
        assert self._last_obs is not None, "No previous observation was provided"
        assert self._last_lstm_states is not None
        if self._use_masking and not is_masking_supported(env):
            raise ValueError(NO_MASKING_SUPPORT)
        # Switch to eval mode (this affects batch norm / dropout)
        self.policy.set_training_mode(False)
        n_steps = 0
        action_masks = None
        rollout_buffer.reset()
        callback.on_rollout_start()
        lstm_states = deepcopy(self._last_lstm_states)

        while n_steps < n_rollout_steps:
            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                episode_starts = th.tensor(self._last_episode_starts, dtype=th.float32, device=self.device)
                if self._use_masking:
                    action_masks = get_action_masks(env)
                actions, values, log_probs, lstm_states = self.policy(
                    obs_tensor, lstm_states, episode_starts, action_masks=action_masks
                )
            actions = actions.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(actions)
            self.num_timesteps += env.num_envs

            # Give access to local variables
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            # Bootstrap truncated episodes with the value of their terminal observation (from the critic's state)
            for idx, done in enumerate(dones):
                info = infos[idx]
                if done and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with th.no_grad():
                        terminal_lstm_state = (
                            lstm_states.vf[0][:, idx : idx + 1, :].contiguous(),
                            lstm_states.vf[1][:, idx : idx + 1, :].contiguous(),
                        )
                        not_start = th.tensor([False], dtype=th.float32, device=self.device)
                        terminal_value = self.policy.predict_values(terminal_obs, terminal_lstm_state, not_start)[0]  # type: ignore[arg-type]
                    rewards[idx] += self.gamma * terminal_value

            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
                lstm_states=self._last_lstm_states,
                action_masks=action_masks,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            self._last_lstm_states = lstm_states

        with th.no_grad():
            episode_starts = th.tensor(dones, dtype=th.float32, device=self.device)
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device), lstm_states.vf, episode_starts)  # type: ignore[arg-type]
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.on_rollout_end()
        return True

    def learn(  # type: ignore[override]
        self: SelfMaskableRecurrentNPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "MaskableRecurrentNPG",
        reset_num_timesteps: bool = True,
        use_masking: bool = True,
        progress_bar: bool = False,
    ) -> SelfMaskableRecurrentNPG:
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
        Get the policy action and the next LSTM states from an observation, as ``RecurrentPPO.predict``, with
        ``MaskablePPO.predict``'s ``action_masks``.

        :param observation: the input observation
        :param state: The last LSTM states (``None``: zeros, at the start of an episode)
        :param episode_start: Whether each observation starts an episode (the states are reset there)
        :param deterministic: Whether or not to return deterministic actions.
        :param action_masks: Action masks to apply to the action distribution (``None``: every action valid)
        :return: the model's action and the next LSTM states
        :raises ValueError: the masks do not fit the observations, or leave a state without a valid action
        """
        return self.policy.predict(observation, state, episode_start, deterministic, action_masks=action_masks)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_use_masking"]


class _MaskedPredictor:
    """``model.predict`` given the current masks of ``env`` at every call (for SB3's ``evaluate_policy``)."""

    def __init__(self, model: Any, env: VecEnv):
        self.model = model
        self.env = env

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        masks = get_action_masks(self.env)
        return self.model.predict(observation, state, episode_start, deterministic, action_masks=masks)


def evaluate_policy(
    model: Any,
    env: GymEnv,
    n_eval_episodes: int = 10,
    deterministic: bool = True,
    render: bool = False,
    callback: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    reward_threshold: float | None = None,
    return_episode_rewards: bool = False,
    warn: bool = True,
    use_masking: bool = True,
) -> tuple[float, float] | tuple[list[float], list[int]]:
    """
    sb3-contrib's maskable ``evaluate_policy`` that keeps the LSTM states: SB3's ``evaluate_policy`` (which carries
    ``state`` and ``episode_start`` from step to step) with the environment's current masks given to every
    ``model.predict`` call. sb3-contrib's maskable version resets the memory of a recurrent model at every step
    when it masks; use this one for :class:`MaskableRecurrentNPG` (it works for MaskableNPG too).

    Arguments and return value as sb3-contrib's ``sb3_contrib.common.maskable.evaluation.evaluate_policy``.

    :raises ValueError: ``use_masking`` and the environment has no ``action_masks()`` method
    """
    if not isinstance(env, VecEnv):
        gym_env = env
        env = DummyVecEnv([lambda: gym_env])  # type: ignore[list-item, return-value]
    if use_masking and not is_masking_supported(env):
        raise ValueError(NO_MASKING_SUPPORT)
    predictor = _MaskedPredictor(model, env) if use_masking else model
    return sb3_evaluate_policy(
        predictor,  # type: ignore[arg-type]
        env,
        n_eval_episodes=n_eval_episodes,
        deterministic=deterministic,
        render=render,
        callback=callback,
        reward_threshold=reward_threshold,
        return_episode_rewards=return_episode_rewards,
        warn=warn,
    )
