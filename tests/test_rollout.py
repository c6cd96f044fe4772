"""
The fast rollout path (``sb3_npg.fast``) against SB3's ``collect_rollouts``: same buffer, same random state.

Each test trains two NPG models from the same seed: one with NPG's ``collect_rollouts`` (the fast path where the
policy qualifies), one with SB3's ``OnPolicyAlgorithm.collect_rollouts``. A callback copies the rollout buffer at
the end of every rollout (after the advantages and returns are computed) and notes which path filled it (the fast
path's loop has ``forward`` among the locals it hands to callbacks; SB3's has not) and whether the numpy pass of
diagonal Gaussian MLPs took it (a ``numpy_pass`` local that is not ``None``). The two agree bit for bit, except with the numpy
pass: to float32 rounding there (:data:`NUMPY_PASS_TOLERANCE`), with the random generators' states still identical.
"""

import math
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from sb3_npg import NPG
from sb3_npg.fast.lean_forward import LeanForward, _reads_flat_box_features
from sb3_npg.fast.numpy_pass import NUMPY_PASS_MAX_PRODUCT, NUMPY_PASS_MAX_VECTOR_PRODUCT, NumpyGaussianPass
from tests.envs import ACTION_SPACES, ToyEnv, image_space

# Agreement of the numpy pass (float32 rounding of numpy's BLAS and tanh) with SB3's loop in a rollout, and how much
# more NPG's update (conjugate gradient, step length) lets the differences grow by the next rollout
NUMPY_PASS_TOLERANCE = 1e-6
AFTER_UPDATE_FACTOR = 100
# Observations up to 255 (unnormalised images): pre-activations in the hundreds, float32 steps of 1e-5 there
LARGE_INPUTS_TOLERANCE = 1e-5
BUFFER_FIELDS = ("observations", "actions", "rewards", "episode_starts", "values", "log_probs", "advantages", "returns")


class NPGWithSB3Rollout(NPG):
    """NPG with SB3's own ``collect_rollouts`` (the reference)."""

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        return OnPolicyAlgorithm.collect_rollouts(self, *args, **kwargs)


class BufferRecorder(BaseCallback):
    """
    Copies the rollout buffer at each rollout's end and notes whether the fast path filled it.

    :param stop_after: return ``False`` from ``on_step`` after this many calls (``None``: never)
    """

    def __init__(self, stop_after: int | None = None):
        super().__init__()
        self.buffers: list[dict[str, Any]] = []
        self.fast_path: list[bool] = []
        self.numpy_pass: list[bool] = []
        self.step_locals: list[dict[str, Any]] = []
        self.stop_after = stop_after
        self.calls = 0

    def _on_step(self) -> bool:
        self.calls += 1
        self.fast_path.append("forward" in self.locals)
        self.numpy_pass.append(self.locals.get("numpy_pass") is not None)
        self.step_locals.append(
            {
                name: np.array(self.locals[name], copy=True)
                for name in ("actions", "clipped_actions", "values", "log_probs", "rewards", "dones", "new_obs")
                if not isinstance(self.locals[name], dict)
            }
        )
        # values and log-probabilities are tensors (n_envs, 1) and (n_envs,), as SB3's loop hands them to callbacks
        assert isinstance(self.locals["values"], th.Tensor) and self.locals["values"].shape == (self.training_env.num_envs, 1)
        assert isinstance(self.locals["log_probs"], th.Tensor) and self.locals["log_probs"].shape == (
            self.training_env.num_envs,
        )
        return self.stop_after is None or self.calls < self.stop_after

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        copy: dict[str, Any] = {}
        for field in BUFFER_FIELDS:
            value = getattr(buffer, field)
            copy[field] = {key: array.copy() for key, array in value.items()} if isinstance(value, dict) else value.copy()
        self.buffers.append(copy)


def train(
    model_class: type[NPG],
    action_space: spaces.Space,
    n_envs: int,
    observation_space: spaces.Space | None = None,
    normalize: bool = False,
    stop_after: int | None = None,
    **kwargs: Any,
) -> tuple[NPG, BufferRecorder, dict[str, Any]]:
    """Two rollouts and one update in between; :return: the model, its recorder, and the random state after"""
    env = make_vec_env(lambda: ToyEnv(action_space, observation_space, episode_length=7), n_envs=n_envs, seed=3)
    if normalize:
        env = VecNormalize(env)
    policy = kwargs.pop("policy", "MultiInputPolicy" if isinstance(observation_space, spaces.Dict) else "MlpPolicy")
    model = model_class(policy, env, n_steps=24, batch_size=24, n_critic_updates=2, seed=0, **kwargs)
    recorder = BufferRecorder(stop_after)
    model.learn(2 * 24 * n_envs, callback=recorder)
    random_state = {"torch": th.get_rng_state(), "numpy": np.random.get_state()}
    return model, recorder, random_state


def assert_close(actual: Any, desired: Any, tolerance: float, err_msg: str) -> None:
    """
    ``actual`` equals ``desired`` bit for bit (``tolerance=0``) or to ``tolerance``, relative for magnitudes above 1
    and absolute below (a value near zero carries the rounding of the larger terms it sums: a dot product of 64
    terms, a log-probability, an advantage).
    """
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=tolerance, atol=tolerance, err_msg=err_msg)


def assert_same_training(
    fast: tuple[NPG, BufferRecorder, dict[str, Any]], sb3: tuple[NPG, BufferRecorder, dict], tolerance: float = 0.0
) -> None:
    """
    Same buffers at every rollout end, same random state, same parameters, timesteps and episode infos: bit for bit
    (``tolerance=0``), or the floating-point values to ``tolerance`` (see :func:`assert_close`) in the first rollout
    (buffer and callbacks' view) and to ``AFTER_UPDATE_FACTOR * tolerance`` after NPG's update (later rollouts,
    episode returns, parameters), the rest exactly.
    """
    (fast_model, fast_recorder, fast_random), (sb3_model, sb3_recorder, sb3_random) = fast, sb3
    after_update = AFTER_UPDATE_FACTOR * tolerance
    assert len(fast_recorder.buffers) == len(sb3_recorder.buffers)
    for index, (fast_buffer, sb3_buffer) in enumerate(zip(fast_recorder.buffers, sb3_recorder.buffers, strict=True)):
        buffer_tolerance = tolerance if index == 0 else after_update
        for field in BUFFER_FIELDS:
            fast_value, sb3_value = fast_buffer[field], sb3_buffer[field]
            if isinstance(sb3_value, dict):
                for key in sb3_value:
                    assert_close(fast_value[key], sb3_value[key], buffer_tolerance, err_msg=f"{field}[{key}]")
            else:
                assert_close(fast_value, sb3_value, buffer_tolerance, err_msg=field)
    assert len(fast_recorder.step_locals) == len(sb3_recorder.step_locals)
    steps = enumerate(zip(fast_recorder.step_locals, sb3_recorder.step_locals, strict=True))
    for index, (fast_locals, sb3_locals) in steps:
        assert fast_locals.keys() == sb3_locals.keys()
        step_tolerance = tolerance if index < fast_model.n_steps else after_update
        for name in sb3_locals:
            assert_close(fast_locals[name], sb3_locals[name], step_tolerance, err_msg=name)
    assert th.equal(fast_random["torch"], sb3_random["torch"]), "torch's generator state differs"
    for fast_part, sb3_part in zip(fast_random["numpy"], sb3_random["numpy"], strict=True):
        np.testing.assert_array_equal(fast_part, sb3_part)
    assert fast_model.num_timesteps == sb3_model.num_timesteps
    # Episode returns and lengths (not Monitor's wall-clock times)
    assert [info["l"] for info in fast_model.ep_info_buffer] == [info["l"] for info in sb3_model.ep_info_buffer]
    fast_returns, sb3_returns = ([info["r"] for info in model.ep_info_buffer] for model in (fast_model, sb3_model))
    assert_close(fast_returns, sb3_returns, after_update, err_msg="episode returns")
    assert len(fast_model.ep_info_buffer) > 0
    for fast_parameter, sb3_parameter in zip(fast_model.policy.parameters(), sb3_model.policy.parameters(), strict=True):
        assert_close(fast_parameter.detach(), sb3_parameter.detach(), after_update, err_msg="parameters")


def check_equivalent(*args: Any, numpy_pass: bool = False, tolerance: float = NUMPY_PASS_TOLERANCE, **kwargs: Any) -> None:
    """
    Train with both paths; the fast one must have been taken (with the numpy pass or without, as ``numpy_pass``
    says), and both must agree: bit for bit, or to ``tolerance`` with the numpy pass (:func:`assert_same_training`).
    """
    fast = train(NPG, *args, **kwargs)
    assert fast[1].fast_path and all(fast[1].fast_path), "NPG did not take the fast rollout path"
    assert fast[1].numpy_pass == [numpy_pass] * len(fast[1].numpy_pass), f"the numpy pass was not {numpy_pass} throughout"
    sb3 = train(NPGWithSB3Rollout, *args, **kwargs)
    assert not any(sb3[1].fast_path)
    assert_same_training(fast, sb3, tolerance if numpy_pass else 0.0)


@pytest.mark.parametrize("n_envs", [1, 4])
@pytest.mark.parametrize("action_space", list(ACTION_SPACES.values()), ids=list(ACTION_SPACES))
def test_same_rollouts_on_every_action_space(action_space: spaces.Space, n_envs: int) -> None:
    check_equivalent(action_space, n_envs, numpy_pass=isinstance(action_space, spaces.Box))


@pytest.mark.parametrize("n_envs", [1, 4])
@pytest.mark.parametrize("sde_sample_freq", [-1, 4])
def test_same_rollouts_with_gsde(n_envs: int, sde_sample_freq: int) -> None:
    check_equivalent(ACTION_SPACES["box6d"], n_envs, use_sde=True, sde_sample_freq=sde_sample_freq)


@pytest.mark.parametrize("policy_kwargs", [dict(use_expln=True), dict(full_std=False)], ids=["expln", "reduced_std"])
def test_same_rollouts_with_gsde_options(policy_kwargs: dict[str, Any]) -> None:
    """gSDE's other standard deviations (``expln``, one per latent feature) come from SB3's own ``get_std``."""
    check_equivalent(ACTION_SPACES["box6d"], 4, use_sde=True, sde_sample_freq=4, policy_kwargs=policy_kwargs)


def test_same_rollouts_with_gsde_squashed_actions() -> None:
    """Squashed gSDE actions are unscaled to the bounds of the action space (here not [-1, 1])."""
    action_space = spaces.Box(np.array([-2, 0], np.float32), np.array([3, 0.5], np.float32))
    check_equivalent(action_space, 2, use_sde=True, policy_kwargs=dict(squash_output=True))


def test_same_rollouts_with_clipped_box_actions_and_vec_normalize() -> None:
    """Gaussian samples beyond narrow bounds are clipped; VecNormalize's statistics follow the same steps."""
    action_space = spaces.Box(-0.1, 0.1, (3,), np.float32)
    check_equivalent(action_space, 4, normalize=True, numpy_pass=True)
    env = make_vec_env(lambda: ToyEnv(action_space), n_envs=1)
    clipped = NPG("MlpPolicy", env, n_steps=24, batch_size=24, seed=0)
    recorder = BufferRecorder()
    clipped.learn(24, callback=recorder)
    # The test exercises clipping: some sampled actions were outside the bounds
    assert any(np.any(step["actions"] != step["clipped_actions"]) for step in recorder.step_locals)


@pytest.mark.parametrize("n_envs", [1, 4])
def test_same_rollouts_with_dict_observations(n_envs: int) -> None:
    observation_space = spaces.Dict({"vector": spaces.Box(-1, 1, (4,), np.float32), "discrete": spaces.Discrete(5)})
    check_equivalent(ACTION_SPACES["box6d"], n_envs, observation_space)
    check_equivalent(ACTION_SPACES["multidiscrete"], n_envs, observation_space)


@pytest.mark.parametrize(
    "policy_kwargs",
    [
        dict(share_features_extractor=False),
        dict(activation_fn=nn.ReLU, net_arch=dict(pi=[16], vf=[8, 8])),
        dict(activation_fn=nn.ELU, net_arch=[]),
    ],
    ids=["separate_extractors", "relu_unequal_heads", "elu_no_hidden_layers"],
)
def test_same_rollouts_with_other_mlp_shapes(policy_kwargs: dict[str, Any]) -> None:
    check_equivalent(ACTION_SPACES["discrete"], 2, policy_kwargs=policy_kwargs)


class LinearExtractor(BaseFeaturesExtractor):
    """A features extractor with parameters of its own (the lean pass calls it, under ``no_grad``)."""

    def __init__(self, observation_space: spaces.Box):
        super().__init__(observation_space, features_dim=5)
        self.linear = nn.Linear(int(np.prod(observation_space.shape)), 5)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return th.tanh(self.linear(observations.flatten(1)))


@pytest.mark.filterwarnings("ignore:NPG's critic does not train a shared features extractor")
@pytest.mark.parametrize(
    ("observation_space", "policy_kwargs", "numpy_pass"),
    [
        (spaces.Box(-1, 1, (2, 3), np.float32), {}, True),
        (spaces.Box(-1, 1, (4,), np.float64), {}, True),
        (image_space((6, 6, 1)), {}, False),
        (image_space((6, 6, 1)), dict(normalize_images=False), True),
        (spaces.Box(-5, 5, (3,), np.int64), {}, True),
        (spaces.Discrete(5), {}, False),
        (spaces.Box(-1, 1, (4,), np.float32), dict(features_extractor_class=LinearExtractor), False),
    ],
    ids=["box_2d", "box_float64", "image_scaled", "image_unscaled", "box_int64", "discrete", "extractor_with_parameters"],
)
def test_same_rollouts_with_other_observations(
    observation_space: spaces.Space, policy_kwargs: dict[str, Any], numpy_pass: bool
) -> None:
    """
    Features read from the observation array (flattened, cast to float32) or through SB3's extractor, as SB3 does;
    the numpy pass takes those read from the array.
    """
    large_inputs = isinstance(observation_space, spaces.Box) and observation_space.high.max() > 5
    tolerance = LARGE_INPUTS_TOLERANCE if large_inputs else NUMPY_PASS_TOLERANCE
    check_equivalent(
        ACTION_SPACES["box6d"], 4, observation_space, policy_kwargs=policy_kwargs, numpy_pass=numpy_pass, tolerance=tolerance
    )


@pytest.mark.parametrize(("activation_fn", "numpy_pass"), [(nn.ReLU, True), (nn.ELU, False)], ids=["relu", "elu"])
def test_numpy_pass_activations(activation_fn: type[nn.Module], numpy_pass: bool) -> None:
    """The numpy pass computes tanh (the default) and ReLU networks; a Gaussian policy with another activation keeps
    the torch pass, bit for bit."""
    check_equivalent(ACTION_SPACES["box6d"], 2, numpy_pass=numpy_pass, policy_kwargs=dict(activation_fn=activation_fn))


def numpy_pass_of(n_envs: int, **policy_kwargs: Any) -> NumpyGaussianPass | None:
    """The numpy pass NPG would build for an MlpPolicy on a 6-D Box action space with ``n_envs`` environments."""
    model = NPG("MlpPolicy", ToyEnv(ACTION_SPACES["box6d"]), seed=0, policy_kwargs=policy_kwargs)
    forward = LeanForward.for_policy(model.policy)
    assert forward is not None
    return NumpyGaussianPass.for_forward(forward, n_envs)


def test_numpy_pass_qualification() -> None:
    """
    Only float32 Gaussian MLPs whose per-step products stay within NUMPY_PASS_MAX_PRODUCT multiply-adds
    (NUMPY_PASS_MAX_VECTOR_PRODUCT with one env).
    """
    assert NUMPY_PASS_MAX_PRODUCT == 2 * 256 * 256  # npg.yml's HalfCheetah-v5 entry: 2 envs, 256 x 256
    assert isinstance(numpy_pass_of(2, net_arch=[256, 256]), NumpyGaussianPass)
    assert numpy_pass_of(3, net_arch=[256, 256]) is None
    assert isinstance(numpy_pass_of(32), NumpyGaussianPass)  # 32 x 64 x 64
    assert numpy_pass_of(33) is None
    assert NUMPY_PASS_MAX_VECTOR_PRODUCT == 8192
    assert isinstance(numpy_pass_of(1), NumpyGaussianPass)  # 64 x 64
    assert isinstance(numpy_pass_of(1, net_arch=[90, 90]), NumpyGaussianPass)
    assert numpy_pass_of(1, net_arch=[91, 91]) is None
    assert numpy_pass_of(1, net_arch=[256, 256]) is None
    double = NPG("MlpPolicy", ToyEnv(ACTION_SPACES["box6d"]), seed=0)
    double.policy.double()
    forward = LeanForward.for_policy(double.policy)
    assert forward is not None and NumpyGaussianPass.for_forward(forward, 1) is None


def worker_threads_cpu_ticks() -> int:
    """CPU time (clock ticks) used so far by this process's threads other than the calling one (Linux)."""
    ticks = 0
    for thread in os.listdir("/proc/self/task"):
        if int(thread) == os.getpid():
            continue
        try:
            fields = Path(f"/proc/self/task/{thread}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads per-thread CPU time from /proc")
@pytest.mark.parametrize("rows", [1, 2, 16, 64])
def test_numpy_pass_products_run_on_the_calling_thread(rows: int) -> None:
    """
    The largest products the numpy pass accepts use no BLAS worker thread (torch.set_num_threads does not limit
    numpy's BLAS): while they take 0.2 s of the calling thread's CPU, the other threads take less than a quarter of it
    (a BLAS that shares the work would take about as much on a worker).
    """
    max_product = NUMPY_PASS_MAX_VECTOR_PRODUCT if rows == 1 else NUMPY_PASS_MAX_PRODUCT
    width = math.isqrt(max_product // rows)  # rows x width x width multiply-adds: the largest accepted
    hidden = np.ones((rows, width), np.float32)
    weight_t = th.ones(width, width).T.numpy()  # a transposed parameter, as the numpy pass reads it
    before, start = worker_threads_cpu_ticks(), time.thread_time()
    while time.thread_time() - start < 0.2:
        for _ in range(100):
            hidden @ weight_t
    assert worker_threads_cpu_ticks() - before < 0.05 * os.sysconf("SC_CLK_TCK")


@pytest.mark.filterwarnings("ignore:NPG's critic does not train a shared features extractor")
def test_features_are_read_from_the_array_only_for_flattened_box_observations() -> None:
    """The observations are the features for a Box space read by FlattenExtractor, unless preprocess_obs scales images."""

    def reads_array(observation_space: spaces.Space, **policy_kwargs: Any) -> bool:
        model = NPG("MlpPolicy", ToyEnv(ACTION_SPACES["discrete"], observation_space), policy_kwargs=policy_kwargs)
        return _reads_flat_box_features(model.policy)

    assert reads_array(spaces.Box(-1, 1, (3,), np.float32))
    assert reads_array(spaces.Box(-1, 1, (2, 3), np.float32), share_features_extractor=False)
    assert reads_array(image_space((6, 6, 1)), normalize_images=False)
    assert not reads_array(image_space((6, 6, 1)))
    assert not reads_array(spaces.Discrete(5))
    assert not reads_array(spaces.Box(-1, 1, (4,), np.float32), features_extractor_class=LinearExtractor)


class CountingRolloutBuffer(RolloutBuffer):
    """A user's buffer subclass: its ``add`` may do more than SB3's, so it must be called at every step."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.calls = getattr(self, "calls", 0) + 1
        super().add(*args, **kwargs)


def test_rollout_buffer_subclass_keeps_its_add() -> None:
    """The step is written into the buffer's arrays directly only for SB3's RolloutBuffer itself."""
    fast = train(NPG, ACTION_SPACES["box6d"], 2, rollout_buffer_class=CountingRolloutBuffer)
    assert all(fast[1].fast_path) and fast[0].rollout_buffer.calls == 2 * 24
    assert not any(fast[1].numpy_pass)  # it writes into the buffer's arrays: SB3's RolloutBuffer only
    sb3 = train(NPGWithSB3Rollout, ACTION_SPACES["box6d"], 2, rollout_buffer_class=CountingRolloutBuffer)
    assert_same_training(fast, sb3)


def test_callback_stopping_the_rollout_stops_both_paths_alike() -> None:
    """``on_step`` returning ``False`` ends the rollout and ``learn`` at the same step, with the same state."""
    fast = train(NPG, ACTION_SPACES["box1d"], 2, stop_after=10)
    sb3 = train(NPGWithSB3Rollout, ACTION_SPACES["box1d"], 2, stop_after=10)
    assert fast[1].calls == sb3[1].calls == 10 and all(fast[1].fast_path) and all(fast[1].numpy_pass)
    assert fast[0].num_timesteps == sb3[0].num_timesteps == 20
    assert_same_training(fast, sb3, NUMPY_PASS_TOLERANCE)


class StdAnnealer(BufferRecorder):
    """Changes the Gaussian's log standard deviation and the action head's weights in place at every step, mid-rollout."""

    def _on_step(self) -> bool:
        with th.no_grad():
            self.model.policy.log_std.add_(0.05)
            self.model.policy.action_net.weight.mul_(1.1)
        return super()._on_step()


@pytest.mark.parametrize("use_sde", [False, True], ids=["gaussian", "gsde"])
def test_parameters_changed_by_a_callback_mid_rollout_are_used_at_the_next_step(use_sde: bool) -> None:
    """A callback moving the policy's parameters between steps acts on both paths at the same step."""
    results = []
    for model_class in (NPG, NPGWithSB3Rollout):
        env = make_vec_env(lambda: ToyEnv(ACTION_SPACES["box6d"], episode_length=7), n_envs=2, seed=3)
        model = model_class("MlpPolicy", env, n_steps=24, batch_size=24, n_critic_updates=2, seed=0, use_sde=use_sde)
        recorder = StdAnnealer()
        model.learn(48, callback=recorder)
        results.append((model, recorder, {"torch": th.get_rng_state(), "numpy": np.random.get_state()}))
    assert all(results[0][1].fast_path)
    assert results[0][1].numpy_pass == [not use_sde] * 24
    assert_same_training(results[0], results[1], NUMPY_PASS_TOLERANCE if not use_sde else 0.0)


def test_truncated_episodes_are_bootstrapped() -> None:
    """ToyEnv truncates every 7 steps: there (only) the stored reward adds gamma times a value to the env's reward."""
    _, recorder, _ = train(NPG, ACTION_SPACES["discrete"], 1)
    steps = recorder.step_locals[:24]  # the first rollout (the callback saw the env's rewards before bootstrapping)
    truncated = np.array([step["dones"][0] for step in steps])
    assert np.flatnonzero(truncated).tolist() == [6, 13, 20]
    env_rewards = np.array([step["rewards"][0] for step in steps])
    stored_rewards = recorder.buffers[0]["rewards"][:, 0]
    np.testing.assert_array_equal(stored_rewards[~truncated], env_rewards[~truncated].astype(np.float32))
    assert np.all(np.abs(stored_rewards[truncated] - env_rewards[truncated]) > 1e-6)


class SubclassedPolicy(ActorCriticPolicy):
    """A user's policy subclass: it may override anything, so the fast path must not assume SB3's forward."""

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        actions, values, log_prob = super().forward(obs, deterministic)
        return actions, values + 1.0, log_prob


@pytest.mark.filterwarnings("ignore:NPG's critic does not train a shared features extractor")
@pytest.mark.parametrize(
    ("policy", "observation_space"),
    [(SubclassedPolicy, None), ("CnnPolicy", image_space())],
    ids=["policy_subclass", "cnn_policy"],
)
def test_other_policies_take_sb3_path(policy: Any, observation_space: spaces.Space | None) -> None:
    fast = train(NPG, ACTION_SPACES["discrete"], 2, observation_space, policy=policy)
    assert fast[1].fast_path and not any(fast[1].fast_path)
    sb3 = train(NPGWithSB3Rollout, ACTION_SPACES["discrete"], 2, observation_space, policy=policy)
    assert_same_training(fast, sb3)


@pytest.mark.filterwarnings("ignore:NPG's critic does not train a shared features extractor")
def test_qualification_is_strict() -> None:
    """Only SB3's own policy classes, MLP extractors of linear layers and activations, and standard distributions."""
    env = gym.make("CartPole-v1")
    model = NPG("MlpPolicy", env, seed=0)
    assert isinstance(LeanForward.for_policy(model.policy), LeanForward)
    assert isinstance(model.policy.action_dist, CategoricalDistribution)
    assert LeanForward.for_policy(NPG(SubclassedPolicy, env).policy) is None
    assert LeanForward.for_policy(NPG(ActorCriticCnnPolicy, ToyEnv(ACTION_SPACES["discrete"], image_space())).policy) is None
    dropout = NPG("MlpPolicy", env, seed=0)
    dropout.policy.mlp_extractor.policy_net.append(nn.Dropout(0.5))
    assert LeanForward.for_policy(dropout.policy) is None
    custom_head = NPG("MlpPolicy", env, seed=0)
    custom_head.policy.value_net = nn.Sequential(nn.Linear(64, 1))
    assert LeanForward.for_policy(custom_head.policy) is None
    gaussian = NPG("MlpPolicy", ToyEnv(ACTION_SPACES["box1d"]), seed=0)
    assert isinstance(gaussian.policy.action_dist, DiagGaussianDistribution)

    class OtherDistribution(DiagGaussianDistribution):
        pass

    gaussian.policy.action_dist = OtherDistribution(1)
    assert LeanForward.for_policy(gaussian.policy) is None


@pytest.mark.parametrize("hooked", ["policy", "action_net", "layer"])
def test_forward_hooks_keep_sb3_path_and_fire(hooked: str) -> None:
    """A forward hook on the policy or one of its modules is called at every step: NPG takes SB3's path."""
    calls = []
    model = NPG("MlpPolicy", ToyEnv(ACTION_SPACES["discrete"]), n_steps=24, batch_size=24, seed=0)
    module = {
        "policy": model.policy,
        "action_net": model.policy.action_net,
        "layer": model.policy.mlp_extractor.policy_net[0],
    }[hooked]
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    assert LeanForward.for_policy(model.policy) is None
    recorder = BufferRecorder()
    model.learn(24, callback=recorder)
    assert not any(recorder.fast_path)
    assert len(calls) >= 24
    handle.remove()
    assert isinstance(LeanForward.for_policy(model.policy), LeanForward)


def test_unreadable_hook_registries_keep_sb3_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """If torch's internal hook registries are not where the check reads them, the fast path is not taken."""
    model = NPG("MlpPolicy", ToyEnv(ACTION_SPACES["discrete"]), seed=0)
    assert isinstance(LeanForward.for_policy(model.policy), LeanForward)
    monkeypatch.delattr(nn.modules.module, "_global_forward_hooks")
    assert LeanForward.for_policy(model.policy) is None
    monkeypatch.undo()
    for module in model.policy.modules():
        monkeypatch.delattr(module, "_forward_hooks")
    assert LeanForward.for_policy(model.policy) is None
