"""
MaskableRecurrentNPG: masks and memory together, against dense references on a tiny LSTM, and the API of MaskablePPO
and RecurrentPPO joined.

The dense references run the policy's LSTM along the stored sequences with sb3-contrib's ``get_distribution`` (no
masks), keep the real steps by plain indexing and mask the logits by hand (``torch.where``), each action dimension a
``torch.distributions.Categorical``: no sb3_npg mathematics. The rollouts come from :class:`~tests.envs.MaskedToyEnv`
(random masks, a third of the states with one valid action per dimension, an invalid action raises), two envs of
16 steps with episodes cut at 11 so that the sequences are padded.
"""

import contextlib
import pathlib

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.distributions import make_masked_proba_distribution
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
from sb3_contrib.ppo_recurrent.policies import MlpLstmPolicy as UnmaskedMlpLstmPolicy
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv
from torch import nn
from torch.distributions import Categorical, kl_divergence
from torch.func import functional_call

from sb3_npg import MaskableNPG, MaskableRecurrentNPG, RecurrentNPG
from sb3_npg.constants import FISHER_BACKENDS
from sb3_npg.fisher import make_fisher
from sb3_npg.kl import action_distribution, mean_summed_kl
from sb3_npg.maskable_recurrent import (
    MaskableRecurrentActorCriticPolicy,
    MaskableRecurrentDictRolloutBuffer,
    MaskableRecurrentRolloutBuffer,
    evaluate_policy,
)
from sb3_npg.policy_gradient import policy_gradient, policy_jacobian
from sb3_npg.recurrent import SequenceBatch
from tests.dense import actor_names, flat_actor
from tests.envs import MaskedToyEnv, ToyEnv, part_sizes, random_mask
from tests.helpers import assert_close_in_norm
from tests.torch_safety import UNTRUSTED_LOAD

ACTION_SPACES = {
    "discrete": spaces.Discrete(4),
    "multidiscrete": spaces.MultiDiscrete([3, 2, 4]),
    "multibinary": spaces.MultiBinary(3),
}
POLICY_KWARGS = dict(lstm_hidden_size=4, net_arch=[])


def masked_env(action_space: str, n_envs: int = 2, env_class: type[ToyEnv] = MaskedToyEnv, **env_kwargs) -> VecEnv:
    env_kwargs = dict(action_space=ACTION_SPACES[action_space], episode_length=11, **env_kwargs)
    return make_vec_env(env_class, n_envs=n_envs, seed=0, env_kwargs=env_kwargs)


def trained_model(action_space: str = "discrete", callback: BaseCallback | None = None, **kwargs) -> MaskableRecurrentNPG:
    """A tiny LSTM model after one update; its buffer holds a rollout whose episodes end mid-rollout."""
    model = MaskableRecurrentNPG(
        "MlpLstmPolicy", masked_env(action_space), n_steps=16, batch_size=16, seed=0, policy_kwargs=POLICY_KWARGS, **kwargs
    )
    model.set_logger(Logger(folder=None, output_formats=[]))
    model.learn(32, callback=callback)
    return model


def rollout(model: MaskableRecurrentNPG):
    """The whole rollout as one batch of padded sequences (the split of ``train()`` with ``np.random`` seeded), its
    real-step mask, and the real steps' actions and action masks."""
    np.random.seed(0)
    data = next(model.rollout_buffer.get(batch_size=None))
    real = data.mask > 1e-8
    assert not real.all(), "the rollout must have padded sequences"
    actions = data.actions[real]
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    return data, real, actions, data.action_masks[real]


def real_parts(policy, data, real, masks: th.Tensor | None, observations=None) -> list[Categorical]:
    """The categoricals (one per action dimension) of the real steps, logits masked by hand, the LSTM run from the
    stored states."""
    observations = data.observations if observations is None else observations
    distribution, _ = policy.get_distribution(observations, data.lstm_states.pi, data.episode_starts)
    inner = distribution.distributions if hasattr(distribution, "distributions") else [distribution.distribution]
    logits = th.cat([part.logits for part in inner], dim=1)[real]
    if masks is not None:
        logits = th.where(masks.bool(), logits, th.tensor(-1e8))
    return [Categorical(logits=part) for part in logits.split(part_sizes(policy.action_space), dim=1)]


def summed_kl(old: list[Categorical], new: list[Categorical]) -> th.Tensor:
    return sum(kl_divergence(o, n) for o, n in zip(old, new, strict=True)).mean()  # type: ignore[return-value]


def log_probs(parts: list[Categorical], actions: th.Tensor) -> th.Tensor:
    columns = actions.reshape(len(actions), -1).long()
    return sum(part.log_prob(columns[:, index]) for index, part in enumerate(parts))  # type: ignore[return-value]


class _KL(nn.Module):
    def __init__(self, policy, data, real, masks):
        super().__init__()
        self.policy, self.data, self.real, self.masks = policy, data, real, masks
        with th.no_grad():
            self.old = real_parts(policy, data, real, masks)

    def forward(self) -> th.Tensor:
        return summed_kl(self.old, real_parts(self.policy, self.data, self.real, self.masks))


def dense_hessian(model: MaskableRecurrentNPG, data, real, masks) -> th.Tensor:
    """Hessian of the mean masked KL over real steps with respect to the flat actor parameters."""
    module = _KL(model.policy, data, real, masks)
    names = [f"policy.{name}" for name in actor_names(model)]
    shapes = [p.shape for p in model.actor_parameters]

    def kl_of(flat: th.Tensor) -> th.Tensor:
        chunks = flat.split([shape.numel() for shape in shapes])
        return functional_call(module, {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}, ())

    return th.autograd.functional.hessian(kl_of, flat_actor(model))


def dense_scores(model: MaskableRecurrentNPG, data, real, actions, masks) -> th.Tensor:
    """Per-real-step scores ``grad log pi(a_t | history)`` of the masked distribution, one backward each."""
    rows = []
    for log_prob in log_probs(real_parts(model.policy, data, real, masks), actions):
        gradients = th.autograd.grad(log_prob, model.actor_parameters, retain_graph=True, materialize_grads=True)
        rows.append(th.cat([g.reshape(-1) for g in gradients]))
    return th.stack(rows)


def assert_differ(first: th.Tensor, second: th.Tensor) -> None:
    """The masked and unmasked references are far apart, so a dropped mask cannot pass the comparison."""
    assert (first - second).norm() > 0.1 * second.norm()


@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
@pytest.mark.parametrize("backend", FISHER_BACKENDS)
def test_fisher_product_equals_dense_masked_fisher_over_real_steps(backend: str, action_space: str) -> None:
    model = trained_model(action_space)
    data, real, actions, masks = rollout(model)
    batch = SequenceBatch(model.policy, data.lstm_states.pi, data.episode_starts, real)
    fisher = make_fisher(backend, batch, model.actor_parameters, data.observations, actions, 0.0, action_masks=masks)  # type: ignore[arg-type]
    if backend == "empirical":
        scores = dense_scores(model, data, real, actions, masks)
        dense = scores.T @ scores / int(real.sum())
        unmasked_scores = dense_scores(model, data, real, actions, None)
        unmasked = unmasked_scores.T @ unmasked_scores / int(real.sum())
    else:
        dense = dense_hessian(model, data, real, masks)
        unmasked = dense_hessian(model, data, real, None)
    assert_differ(dense, unmasked)
    for vector in th.randn(3, dense.shape[0], generator=th.Generator().manual_seed(0)):
        assert_close_in_norm(fisher.matvec(vector), dense @ vector, rtol=1e-4)


@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
def test_gradient_equals_autograd_of_the_masked_log_probability(action_space: str) -> None:
    model = trained_model(action_space)
    data, real, actions, masks = rollout(model)
    advantages = data.advantages[real]
    batch = SequenceBatch(model.policy, data.lstm_states.pi, data.episode_starts, real)
    gradient = policy_gradient(policy_jacobian(batch, model.actor_parameters, data.observations, masks), actions, advantages)  # type: ignore[arg-type]

    def expected(action_masks: th.Tensor | None) -> th.Tensor:
        log_prob = log_probs(real_parts(model.policy, data, real, action_masks), actions)
        return th.cat([g.reshape(-1) for g in th.autograd.grad((advantages * log_prob).mean(), model.actor_parameters)])

    assert_differ(expected(masks), expected(None))
    assert_close_in_norm(gradient, expected(masks), rtol=1e-5)


@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
@pytest.mark.parametrize("backend", ["gauss_newton", "empirical"])
def test_step_equals_dense_masked_natural_gradient_step(backend: str, action_space: str) -> None:
    """``train()`` moves the actor by ``sqrt(2 eps / x^T F x) x``, ``x = (F + lambda I)^-1 g``, F and g of the masked
    distribution over real steps; the KL it logs is the masked KL over real steps, measured independently."""
    target_kl, damping = 0.01, 0.1
    model = trained_model(action_space, target_kl=target_kl, cg_damping=damping, fisher=backend)
    model.cg_max_steps = flat_actor(model).numel()  # CG to convergence: the step is the exact solve
    data, real, actions, masks = rollout(model)
    advantages = data.advantages[real]
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_prob = log_probs(real_parts(model.policy, data, real, masks), actions)
    gradient = th.cat([g.reshape(-1) for g in th.autograd.grad((advantages * log_prob).mean(), model.actor_parameters)])
    if backend == "empirical":  # fewer real steps than parameters: the Woodbury solve
        scores = dense_scores(model, data, real, actions, masks).double()
        assert scores.shape[0] < scores.shape[1]
        fisher = scores.T @ scores / int(real.sum())
    else:
        fisher = dense_hessian(model, data, real, masks).double()
    direction = th.linalg.solve(fisher + damping * th.eye(fisher.shape[0], dtype=th.float64), gradient.double())
    expected = (th.sqrt(2 * target_kl / (direction @ fisher @ direction)) * direction).float()
    with th.no_grad():
        old = real_parts(model.policy, data, real, masks)

    before = flat_actor(model)
    np.random.seed(0)  # the batch of rollout()
    model.train()

    assert model.skipped_updates == 0
    assert_close_in_norm(flat_actor(model) - before, expected, rtol=2e-3)  # float32 CG against a float64 solve
    with th.no_grad():
        kl = summed_kl(old, real_parts(model.policy, data, real, masks)).item()
    assert kl == pytest.approx(model.logger.name_to_value["train/kl_divergence"], rel=1e-4)


@pytest.mark.parametrize("step_length", ["quadratic", "exact"])
@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
def test_masked_sequence_kl_of_one_update_is_near_target(action_space: str, step_length: str) -> None:
    """The masked KL over real steps (padding excluded), measured independently after one update, is near target_kl;
    the unmasked KL of the same update is not what the step controls (it differs)."""
    target_kl = 0.01
    model = trained_model(action_space, target_kl=target_kl, step_length=step_length)
    data, real, _, masks = rollout(model)
    with th.no_grad():
        old, old_unmasked = real_parts(model.policy, data, real, masks), real_parts(model.policy, data, real, None)
    np.random.seed(0)  # the batch of rollout()
    model.train()
    with th.no_grad():
        kl = summed_kl(old, real_parts(model.policy, data, real, masks)).item()
        unmasked_kl = summed_kl(old_unmasked, real_parts(model.policy, data, real, None)).item()
    assert model.skipped_updates == 0
    tolerance = 0.05 if step_length == "exact" else 0.5
    assert abs(kl - target_kl) <= tolerance * target_kl, kl
    assert abs(unmasked_kl - kl) > 0.1 * kl, (unmasked_kl, kl)


def test_padding_changes_nothing() -> None:
    """Garbage in the padded observations and in the padded masks changes neither g, nor F v, nor the KL."""
    model = trained_model("multidiscrete")
    data, real, actions, masks = rollout(model)
    garbage = data.observations.clone()
    garbage[~real] = 1e3 * th.randn_like(garbage[~real])
    advantages = data.advantages[real]
    vector = th.randn(flat_actor(model).numel(), generator=th.Generator().manual_seed(1))
    results = []
    for observations in (data.observations, garbage):
        batch = SequenceBatch(model.policy, data.lstm_states.pi, data.episode_starts, real)
        gradient = policy_gradient(policy_jacobian(batch, model.actor_parameters, observations, masks), actions, advantages)  # type: ignore[arg-type]
        products = [
            make_fisher(backend, batch, model.actor_parameters, observations, actions, 0.0, action_masks=masks).matvec(vector)  # type: ignore[arg-type]
            for backend in FISHER_BACKENDS
        ]
        with th.no_grad():
            old = action_distribution(batch, observations, masks)  # type: ignore[arg-type]
            for parameter in model.actor_parameters:
                parameter.add_(0.1)
            kl = mean_summed_kl(old, action_distribution(batch, observations, masks))  # type: ignore[arg-type]
            for parameter in model.actor_parameters:
                parameter.sub_(0.1)
        results.append([gradient, *products, kl])
    for first, second in zip(*results, strict=True):
        assert th.allclose(first, second)


class RecordMasks(BaseCallback):
    """The mask the rollout applied to each observation (observations are random floats: each is unique)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_observation: dict[bytes, np.ndarray] = {}

    def _on_step(self) -> bool:
        for observation, mask in zip(self.locals["obs_tensor"].cpu().numpy(), self.locals["action_masks"], strict=True):
            self.by_observation[observation.tobytes()] = np.asarray(mask, dtype=bool)
        return True


@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
def test_masks_travel_with_their_steps_through_sequence_minibatches(action_space: str) -> None:
    """Every minibatch of sequences carries, at each real step, the mask the rollout applied to that observation, and
    ones at the padded steps; the real steps of all minibatches are the rollout's steps, each once."""
    record = RecordMasks()
    model = trained_model(action_space, callback=record)
    assert isinstance(model.rollout_buffer, MaskableRecurrentRolloutBuffer)
    seen = []
    for data in model.rollout_buffer.get(batch_size=8):
        real = data.mask > 1e-8
        assert data.action_masks.shape == (len(data.mask), sum(part_sizes(model.action_space)))
        assert (data.action_masks[~real] == 1).all()
        for observation, mask in zip(data.observations[real].numpy(), data.action_masks[real].numpy(), strict=True):
            np.testing.assert_array_equal(mask.astype(bool), record.by_observation[observation.tobytes()])
            seen.append(observation.tobytes())
    assert len(seen) == len(set(seen)) == len(record.by_observation) == 32


def test_predict_follows_the_mask_and_returns_the_lstm_states() -> None:
    model = trained_model("discrete")
    observations = np.zeros((2, 3), dtype=np.float32)
    states, episode_start = None, np.ones(2, dtype=bool)
    for valid in range(4):
        masks = np.eye(4, dtype=bool)[[valid, 3 - valid]]
        for deterministic in (True, False):
            actions, states = model.predict(observations, states, episode_start, deterministic, action_masks=masks)
            np.testing.assert_array_equal(actions, [valid, 3 - valid])
            assert states is not None and states[0].shape == (1, 2, 4)
            episode_start = np.zeros(2, dtype=bool)
    action, state = model.predict(observations[0], action_masks=np.eye(4, dtype=bool)[2])  # one observation
    assert int(action) == 2 and state[0].shape == (1, 1, 4)
    # the states carry memory: from them the distribution differs from the one at an episode start
    # (get_distribution returns the policy's one distribution object: its probabilities are copied first)
    with th.no_grad():
        carried = tuple(th.as_tensor(s[:, :1]) for s in states)
        remembered = model.policy.get_distribution(th.zeros(1, 3), carried, th.zeros(1))[0].distribution.probs.clone()
        zeros = (th.zeros(1, 1, 4), th.zeros(1, 1, 4))
        at_start = model.policy.get_distribution(th.zeros(1, 3), zeros, th.ones(1))[0].distribution.probs
    assert not th.allclose(remembered, at_start)


@pytest.mark.parametrize(
    ("action_space", "masks", "message"),
    [
        ("discrete", np.ones(3, dtype=bool), r"action_masks of shape \(3,\) do not fit 1 observation\(s\)"),
        ("discrete", np.zeros(4, dtype=bool), "action_masks leave no valid action for observation 0"),
        ("multidiscrete", np.ones(8, dtype=bool), r"expected 1 x 9 entries \(3 \+ 2 \+ 4 per observation\)"),
        ("multidiscrete", np.array([1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=bool), "no valid action in action dimension 1"),
        ("multibinary", np.array([1, 1, 0, 0, 1, 0], dtype=bool), "no valid action in action dimension 1"),
    ],
)
def test_bad_masks_in_predict_are_named(action_space: str, masks: np.ndarray, message: str) -> None:
    model = MaskableRecurrentNPG(
        "MlpLstmPolicy", masked_env(action_space), n_steps=16, batch_size=16, policy_kwargs=POLICY_KWARGS
    )
    with pytest.raises(ValueError, match=message):
        model.predict(np.zeros(3, dtype=np.float32), action_masks=masks)


class BadMaskEnv(MaskedToyEnv):
    """:class:`~tests.envs.MaskedToyEnv` whose ``action_masks()`` goes wrong at the third step: too short, or empty."""

    def __init__(self, action_space: spaces.Space, episode_length: int = 16, fault: str = "short"):
        super().__init__(action_space, episode_length=episode_length)
        self.fault = fault

    def action_masks(self) -> np.ndarray:
        if self._steps < 2:
            return self._mask
        return self._mask[:-1] if self.fault == "short" else np.zeros_like(self._mask)


@pytest.mark.parametrize(("fault", "message"), [("short", "do not fit 2 observation"), ("empty", "leave no valid action")])
def test_bad_masks_from_the_env_stop_training_with_a_named_error(fault: str, message: str) -> None:
    env = masked_env("discrete", env_class=BadMaskEnv, fault=fault)
    model = MaskableRecurrentNPG("MlpLstmPolicy", env, n_steps=16, batch_size=16, policy_kwargs=POLICY_KWARGS)
    with pytest.raises(ValueError, match=message):
        model.learn(32)
    assert model.num_timesteps == 4  # two steps of the two envs, then the third step's masks are refused


def learn_without_masks(algorithm: type, policy: str) -> tuple[BaseException, bool]:
    """``algorithm`` learns with masking on a SubprocVecEnv without ``action_masks``: the exception, and whether the
    workers still answer afterwards (then learning without masking works)."""
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, vec_env_kwargs={"start_method": "fork"})
    try:
        model = algorithm(policy, env, n_steps=16, batch_size=32, seed=0)
        with pytest.raises(Exception) as raised:
            model.learn(32)
        try:
            env.get_attr("spec")
        except (EOFError, BrokenPipeError, ConnectionResetError):  # the masking check killed the workers
            return raised.value, False
        env.reset()
        model.learn(32, use_masking=False)
        assert model.num_timesteps == 32
        return raised.value, True
    finally:
        with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):
            env.close()


def test_env_without_masks_answers_as_maskable_ppo_and_subproc_workers_survive() -> None:
    expected, expected_alive = learn_without_masks(MaskablePPO, "MlpPolicy")
    error, alive = learn_without_masks(MaskableRecurrentNPG, "MlpLstmPolicy")
    assert (type(error), alive) == (type(expected), expected_alive), (error, expected)
    if hasattr(VecEnv, "has_attr"):  # sb3-contrib asks has_attr (SB3 2.6 on): the workers stay alive
        assert isinstance(error, ValueError) and "does not support action masking" in str(error) and alive


def test_bad_construction_arguments() -> None:
    env = masked_env("discrete")
    with pytest.raises(ValueError, match="Policy must subclass MaskableRecurrentActorCriticPolicy"):
        MaskableRecurrentNPG(UnmaskedMlpLstmPolicy, env, n_steps=16, batch_size=16)
    with pytest.raises(ValueError, match="use_sde"):
        MaskableRecurrentNPG("MlpLstmPolicy", env, n_steps=16, batch_size=16, use_sde=True)
    with pytest.raises(ValueError, match="must store action masks and LSTM states"):
        MaskableRecurrentNPG("MlpLstmPolicy", env, n_steps=16, batch_size=16, rollout_buffer_class=RecurrentRolloutBuffer)
    with pytest.raises(ValueError, match="sub_sampling_factor"):  # RecurrentNPG's checks hold
        MaskableRecurrentNPG("MlpLstmPolicy", env, n_steps=16, batch_size=16, sub_sampling_factor=2)
    box_env = make_vec_env(ToyEnv, n_envs=1, env_kwargs={"action_space": spaces.Box(-1, 1, (2,), np.float32)})
    with pytest.raises(AssertionError, match="only supports"):
        MaskableRecurrentNPG("MlpLstmPolicy", box_env)


@pytest.mark.parametrize("action_space", sorted(ACTION_SPACES))
@pytest.mark.parametrize("share_features_extractor", [True, False])
def test_networks_and_initial_weights_are_those_of_sb3_contribs_maskable_build(
    action_space: str, share_features_extractor: bool
) -> None:
    """
    The policy builds its networks itself (SB3's ``_build`` refuses a masked distribution); for a seed they are the
    ones sb3-contrib's ``MaskableActorCriticPolicy._build`` makes on the same recurrent policy: same layers, same weights.
    """

    class ContribBuilt(MaskableRecurrentActorCriticPolicy):
        def _build(self, lr_schedule) -> None:
            self.action_dist = make_masked_proba_distribution(self.action_space)
            MaskableActorCriticPolicy._build(self, lr_schedule)

    class LinearExtractor(BaseFeaturesExtractor):  # weights of its own, so that the order of initialisation shows
        def __init__(self, observation_space: spaces.Box) -> None:
            super().__init__(observation_space, features_dim=4)
            self.linear = nn.Linear(observation_space.shape[0], 4)

        def forward(self, observations: th.Tensor) -> th.Tensor:
            return self.linear(observations)

    observation_space = spaces.Box(-1, 1, (5,), np.float32)
    kwargs = dict(
        lstm_hidden_size=8,
        net_arch=dict(pi=[6], vf=[7]),
        features_extractor_class=LinearExtractor,
        share_features_extractor=share_features_extractor,
    )
    built = {}
    for policy_class in (MaskableRecurrentActorCriticPolicy, ContribBuilt):
        th.manual_seed(3)
        built[policy_class] = policy_class(observation_space, ACTION_SPACES[action_space], lambda _: 1e-3, **kwargs)
    ours, contribs = built.values()
    assert type(ours.action_dist) is type(contribs.action_dist)
    assert ours.state_dict().keys() == contribs.state_dict().keys()
    for name, tensor in ours.state_dict().items():
        assert th.equal(tensor, contribs.state_dict()[name]), name
    assert [group["lr"] for group in ours.optimizer.param_groups] == [1e-3]


def test_recurrent_npg_refuses_masks() -> None:
    """RecurrentNPG's policy is not maskable: masks given to its batch raise instead of being dropped."""
    model = RecurrentNPG("MlpLstmPolicy", "CartPole-v1", n_steps=16, batch_size=16, seed=0, policy_kwargs=POLICY_KWARGS)
    model.learn(16)
    data = next(model.rollout_buffer.get(batch_size=None))
    batch = SequenceBatch(model.policy, data.lstm_states.pi, data.episode_starts, data.mask > 1e-8)
    with pytest.raises(ValueError, match="maskable policy"):
        batch.get_distribution(data.observations, action_masks=th.ones(16, 2))


def test_evaluate_policy_keeps_memory_and_masks() -> None:
    """sb3_npg's evaluate_policy gives predict the states of the previous step and the env's current masks (the env
    raises on an invalid action); the rewards are those of a hand-written loop doing the same."""
    model = trained_model("discrete")
    calls: list[tuple[bool, bool]] = []
    predict = model.predict

    def spy(observation, state=None, episode_start=None, deterministic=False, action_masks=None):
        calls.append((state is None, action_masks is None))
        return predict(observation, state, episode_start, deterministic, action_masks)

    model.predict = spy  # type: ignore[method-assign]
    env = masked_env("discrete", n_envs=1)
    rewards, lengths = evaluate_policy(model, env, n_eval_episodes=2, return_episode_rewards=True, warn=False)
    assert lengths == [11, 11] and calls[0] == (True, False)
    assert all(call == (False, False) for call in calls[1:])

    model.predict = predict  # type: ignore[method-assign]
    env = masked_env("discrete", n_envs=1)
    observation, state, start, by_hand = env.reset(), None, np.ones(1, dtype=bool), [0.0, 0.0]
    for episode in range(2):
        for _ in range(11):
            masks = np.stack(env.env_method("action_masks"))
            action, state = model.predict(observation, state, start, deterministic=True, action_masks=masks)
            observation, reward, start, _ = env.step(action)
            by_hand[episode] += float(reward[0])
    np.testing.assert_allclose(rewards, by_hand, rtol=1e-6)
    with pytest.raises(ValueError, match="does not support action masking"):
        evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1), n_eval_episodes=1, warn=False)


@pytest.mark.parametrize("trusted", [True, UNTRUSTED_LOAD])
@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
def test_save_load_keeps_masked_predictions_and_states(tmp_path: pathlib.Path, action_space: str, trusted: bool) -> None:
    model = trained_model(action_space)
    model.save(tmp_path / "model")
    loaded = MaskableRecurrentNPG.load(tmp_path / "model", env=model.get_env(), trusted=trusted)
    assert type(loaded) is MaskableRecurrentNPG and type(loaded.policy) is type(model.policy)
    generator = np.random.default_rng(0)
    observations = generator.normal(size=(2, 3)).astype(np.float32)
    states: list = [None, None]
    episode_start = np.ones(2, dtype=bool)
    for _ in range(4):
        masks = np.stack([random_mask(ACTION_SPACES[action_space], generator) for _ in range(2)])
        actions = []
        for index, algorithm in enumerate((model, loaded)):
            action, states[index] = algorithm.predict(observations, states[index], episode_start, True, action_masks=masks)
            actions.append(action)
        np.testing.assert_array_equal(actions[0], actions[1])
        for first, second in zip(states[0], states[1], strict=True):
            np.testing.assert_array_equal(first, second)
        episode_start = np.zeros(2, dtype=bool)
    loaded.learn(32)  # continues with masks
    assert loaded.skipped_updates == 0


def test_warm_start_from_recurrent_and_maskable_npg(tmp_path: pathlib.Path) -> None:
    """set_parameters takes a RecurrentNPG file (same LSTM policy, unmasked) whole, a MaskableNPG file's weights where
    the names and shapes match (exact_match=False; the LSTM keeps its own), and names a parameter that does not fit."""
    env = masked_env("discrete")
    model = MaskableRecurrentNPG("MlpLstmPolicy", env, n_steps=16, batch_size=16, policy_kwargs=POLICY_KWARGS)
    recurrent = RecurrentNPG("MlpLstmPolicy", env, n_steps=16, batch_size=16, seed=1, policy_kwargs=POLICY_KWARGS)
    recurrent.save(tmp_path / "recurrent")
    model.set_parameters(tmp_path / "recurrent")
    for key, value in recurrent.policy.state_dict().items():
        assert th.equal(model.policy.state_dict()[key], value), key

    # lstm_hidden_size equal to the observation size: the MLP after the LSTM has the shapes of MaskableNPG's MLP
    wide = MaskableRecurrentNPG(
        "MlpLstmPolicy", env, n_steps=16, batch_size=16, policy_kwargs=dict(lstm_hidden_size=3, net_arch=[8])
    )
    maskable = MaskableNPG("MlpPolicy", env, n_steps=16, batch_size=16, seed=1, policy_kwargs=dict(net_arch=[8]))
    maskable.save(tmp_path / "maskable")
    lstm_before = {key: value.clone() for key, value in wide.policy.state_dict().items() if key.startswith("lstm_")}
    with pytest.warns(UserWarning, match="Loaded the policy weights"):
        wide.set_parameters(tmp_path / "maskable", exact_match=False)
    state = wide.policy.state_dict()
    for key, value in maskable.policy.state_dict().items():
        assert th.equal(state[key], value), key
    assert all(th.equal(state[key], value) for key, value in lstm_before.items())
    with pytest.raises(ValueError, match=r"Parameter 'policy.mlp_extractor.policy_net.0.weight' has shape \(8, 3\)"):
        MaskableRecurrentNPG(
            "MlpLstmPolicy", env, n_steps=16, batch_size=16, policy_kwargs=dict(lstm_hidden_size=5, net_arch=[8])
        ).set_parameters(tmp_path / "maskable", exact_match=False)


@pytest.mark.parametrize("policy", ["MultiInputLstmPolicy", "CnnLstmPolicy"])
def test_dict_and_image_observations(policy: str) -> None:
    """The MultiInputLstmPolicy (masks in the Dict buffer) and CnnLstmPolicy aliases train with masks and never take an
    invalid action (the env raises)."""
    image = spaces.Box(0, 255, (36, 36, 1), np.uint8)
    observation_space = (
        spaces.Dict({"image": image, "vector": spaces.Box(-1, 1, (3,), np.float32)})
        if policy == "MultiInputLstmPolicy"
        else image
    )
    env = masked_env("multidiscrete", observation_space=observation_space)
    policy_kwargs = dict(lstm_hidden_size=8, share_features_extractor=False, features_extractor_kwargs=dict(features_dim=16))
    if policy == "MultiInputLstmPolicy":
        policy_kwargs["features_extractor_kwargs"] = dict(cnn_output_dim=16)
    model = MaskableRecurrentNPG(policy, env, n_steps=16, batch_size=16, seed=0, policy_kwargs=policy_kwargs)
    expected_buffer = (
        MaskableRecurrentDictRolloutBuffer if policy == "MultiInputLstmPolicy" else MaskableRecurrentRolloutBuffer
    )
    assert type(model.rollout_buffer) is expected_buffer
    model.learn(32)
    assert model.skipped_updates == 0
    assert model.logger.name_to_value["train/kl_divergence"] == pytest.approx(model.target_kl, rel=0.5)
