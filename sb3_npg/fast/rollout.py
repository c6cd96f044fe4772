"""
A faster rollout for NPG: SB3's ``OnPolicyAlgorithm.collect_rollouts`` loop, step for step, with the lean forward
pass of :mod:`sb3_npg.fast.lean_forward` (or the numpy pass of :mod:`sb3_npg.fast.numpy_pass`) for
``self.policy(obs)``, and the values and log-probabilities written straight into SB3's ``RolloutBuffer``.

Chosen in one place, :meth:`sb3_npg.npg.NPG.collect_rollouts`: when :meth:`LeanForward.for_policy
<sb3_npg.fast.lean_forward.LeanForward.for_policy>` returns ``None`` NPG runs SB3's ``collect_rollouts`` unchanged.
It follows SB3 2.9's loop (the names callbacks read in ``self.locals`` included). Kept bit-identical (float32-identical
for the numpy pass) by tests/test_rollout.py.
"""

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_npg.fast.lean_forward import LeanForward
from sb3_npg.fast.numpy_pass import NumpyGaussianPass


def collect_rollouts(
    self: OnPolicyAlgorithm,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
    forward: LeanForward,
) -> bool:
    """
    SB3's ``OnPolicyAlgorithm.collect_rollouts`` (2.9), step for step, with ``forward`` for ``self.policy(obs)``
    (or, for the policies :meth:`NumpyGaussianPass.for_forward` accepts, its numpy pass).

    The model is named ``self`` as in SB3's method, so that callbacks reading ``self.locals`` find the same
    names (``self``, ``actions``, ``clipped_actions``, ``values``, ``log_probs``, ``new_obs``, ``rewards``,
    ``dones``, ``infos``, ...); ``values`` and ``log_probs`` are tensors, as in SB3's loop, on either pass.

    :param self: the algorithm collecting the rollout
    :param env: the training environment
    :param callback: callback called at each step (and at the beginning and end of the rollout)
    :param rollout_buffer: buffer to fill
    :param n_rollout_steps: number of steps to collect per environment
    :param forward: the lean forward pass of ``self.policy`` (from :meth:`LeanForward.for_policy`)
    :return: ``True`` if ``n_rollout_steps`` were collected, ``False`` if a callback stopped the rollout
    """
    assert self._last_obs is not None, "No previous observation was provided"
    self.policy.set_training_mode(False)

    n_steps = 0
    rollout_buffer.reset()
    if self.use_sde:
        self.policy.reset_noise(env.num_envs)

    callback.on_rollout_start()
    # SB3's own RolloutBuffer on the CPU: the forward pass writes values and log-probabilities into its arrays
    buffer_rows = _buffer_rows(rollout_buffer, forward)
    # Diagonal Gaussian MLPs: the whole step in numpy, written into the buffer's arrays
    numpy_pass = None if buffer_rows is None else NumpyGaussianPass.for_forward(forward, env.num_envs)
    value_arrays, log_prob_arrays = rollout_buffer.values[..., np.newaxis], rollout_buffer.log_probs

    while n_steps < n_rollout_steps:
        if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
            self.policy.reset_noise(env.num_envs)

        if buffer_rows is not None and isinstance(self._last_obs, np.ndarray):
            obs_tensor: PyTorchObs = th.from_numpy(self._last_obs)  # what obs_as_tensor gives on the CPU, cheaper
        else:
            obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
        if buffer_rows is None:
            action_tensor, values, log_probs = forward(self._last_obs, obs_tensor)  # type: ignore[arg-type]
            actions = action_tensor.cpu().numpy()
        else:
            value_rows, log_prob_rows = buffer_rows
            position = rollout_buffer.pos
            values, log_probs = value_rows[position], log_prob_rows[position]  # the buffer's rows, as tensors
            if numpy_pass is not None and isinstance(self._last_obs, np.ndarray):
                actions = numpy_pass(self._last_obs, value_arrays[position], log_prob_arrays[position])
            else:
                action_tensor, values, log_probs = forward(self._last_obs, obs_tensor, values, log_probs)  # type: ignore[arg-type]
                actions = action_tensor.cpu().numpy()

        clipped_actions = actions
        if isinstance(self.action_space, spaces.Box):
            if self.policy.squash_output:
                clipped_actions = self.policy.unscale_action(clipped_actions)
            else:
                # np.clip's own call, without its dispatch layer
                clipped_actions = actions.clip(self.action_space.low, self.action_space.high)

        new_obs, rewards, dones, infos = env.step(clipped_actions)

        self.num_timesteps += env.num_envs

        callback.update_locals(locals())
        if not callback.on_step():
            return False

        self._update_info_buffer(infos, dones)
        n_steps += 1

        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.reshape(-1, 1)

        # Bootstrap on timeouts with the value of the terminal observation (SB3 issue #633)
        for idx, done in enumerate(dones):
            if done and infos[idx].get("terminal_observation") is not None and infos[idx].get("TimeLimit.truncated", False):
                terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                with th.no_grad():
                    terminal_value = self.policy.predict_values(terminal_obs)[0]  # type: ignore[arg-type]
                rewards[idx] += self.gamma * terminal_value

        if buffer_rows is None:
            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
        else:
            _add_written_step(rollout_buffer, self._last_obs, actions, rewards, self._last_episode_starts)  # type: ignore[arg-type]
        self._last_obs = new_obs  # type: ignore[assignment]
        self._last_episode_starts = dones

    with th.no_grad():
        values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))  # type: ignore[arg-type]

    rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

    callback.update_locals(locals())

    callback.on_rollout_end()

    return True


def _buffer_rows(rollout_buffer: RolloutBuffer, forward: LeanForward) -> tuple[th.Tensor, th.Tensor] | None:
    """
    :return: tensors sharing memory with the buffer's ``values`` (as ``(n_steps, n_envs, 1)``) and ``log_probs``,
        for the forward pass to write a step's values and log-probabilities into; ``None`` unless the buffer is
        SB3's ``RolloutBuffer`` itself (a subclass may change ``add``) and the policy is on the CPU
    """
    if type(rollout_buffer) is not RolloutBuffer or forward.value_head[0].device.type != "cpu":
        return None
    return th.from_numpy(rollout_buffer.values).unsqueeze(-1), th.from_numpy(rollout_buffer.log_probs)


def _add_written_step(
    rollout_buffer: RolloutBuffer, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, episode_starts: np.ndarray
) -> None:
    """
    ``RolloutBuffer.add`` (SB3 2.9) for a step whose values and log-probabilities the forward pass wrote already:
    the same reshapes and casts into the buffer's arrays, without ``add``'s intermediate copies.
    """
    position = rollout_buffer.pos
    if isinstance(rollout_buffer.observation_space, spaces.Discrete):
        obs = obs.reshape((rollout_buffer.n_envs, *rollout_buffer.obs_shape))
    rollout_buffer.observations[position] = obs
    rollout_buffer.actions[position] = actions.reshape((rollout_buffer.n_envs, rollout_buffer.action_dim))
    rollout_buffer.rewards[position] = rewards
    rollout_buffer.episode_starts[position] = episode_starts
    rollout_buffer.pos += 1
    if rollout_buffer.pos == rollout_buffer.buffer_size:
        rollout_buffer.full = True
