"""
MaskableNPG: the masks in the mathematics (against dense matrices on tiny networks) and the MaskablePPO API.

The dense references (``tests/dense.py``) are built with autograd on sb3-contrib's masked distributions; the
states of every batch have random masks, some with a single valid action (per action dimension).
"""

import pathlib

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.evaluation import evaluate_policy
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_npg import MaskableNPG
from sb3_npg.constants import FISHER_BACKENDS
from sb3_npg.fast.mlp_jacobian import MLPJacobian
from sb3_npg.fisher import make_fisher
from sb3_npg.jacobian import AutogradJacobian
from sb3_npg.kl import mean_summed_kl
from sb3_npg.npg import UpdateBatch
from sb3_npg.parameters import flatten
from sb3_npg.policy_gradient import policy_gradient, policy_jacobian
from tests.dense import dense_fisher, dense_kl_hessian, distribution_of, flat_actor
from tests.envs import MaskedToyEnv, ToyEnv, random_mask
from tests.helpers import assert_close_in_norm, perturb, tiny_model
from tests.torch_safety import UNTRUSTED_LOAD

ACTION_SPACES = {
    "discrete": spaces.Discrete(4),
    "multidiscrete": spaces.MultiDiscrete([3, 2, 4]),
    "multibinary": spaces.MultiBinary(3),
}


def tiny_masked_model(action_space: str, n_steps: int = 32, **kwargs) -> MaskableNPG:
    """A MaskableNPG model with a tiny MLP on :class:`MaskedToyEnv`, logging nowhere."""
    model = tiny_model(ACTION_SPACES[action_space], n_steps, algorithm=MaskableNPG, env_class=MaskedToyEnv, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def masked_batch(model: MaskableNPG, n_samples: int, single_every: int = 3) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """Random observations, masks (every ``single_every``-th state with one valid action per part) and valid actions."""
    generator = np.random.default_rng(1)
    observations = th.as_tensor(generator.uniform(-1, 1, (n_samples, *model.observation_space.shape)), dtype=th.float32)
    masks = np.stack(
        [random_mask(model.action_space, generator, single=index % single_every == 0) for index in range(n_samples)]
    )
    action_masks = th.as_tensor(masks, dtype=th.float32)  # as the rollout buffer stores them
    with th.no_grad():
        actions = distribution_of(model.policy, observations, action_masks).get_actions()
    return observations, actions, action_masks


def assert_differ(first: th.Tensor, second: th.Tensor) -> None:
    """The masked and unmasked references are far apart, so a dropped mask cannot pass the comparison."""
    assert (first - second).norm() > 0.1 * second.norm()


def make_jacobian(kind: str, model: MaskableNPG, observations: th.Tensor, masks: th.Tensor):
    """The hand-derived MLP Jacobian (the default for MLP actors) or the autograd one (any other policy)."""
    if kind == "mlp":
        jacobian = policy_jacobian(model.policy, model.actor_parameters, observations, masks)
        assert isinstance(jacobian, MLPJacobian)
        return jacobian
    return AutogradJacobian(model.policy, model.actor_parameters, observations, masks)


#: (backend, Jacobian) pairs: each Jacobian for the backends that use one, none for ``"hessian"``
FISHER_CASES = [
    (backend, jacobian)
    for backend in FISHER_BACKENDS
    for jacobian in (["mlp", "autograd"] if backend != "hessian" else [None])
]


@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
@pytest.mark.parametrize(("backend", "jacobian"), FISHER_CASES)
def test_fisher_vector_product_equals_dense_masked_fisher(backend: str, action_space: str, jacobian: str | None) -> None:
    """
    Every backend's ``F v`` equals the dense Hessian of the masked KL (empirical: masked score outer products),
    with either Jacobian (``"hessian"`` uses none).
    """
    model = tiny_masked_model(action_space)
    perturb(model, scale=0.5)
    observations, actions, masks = masked_batch(model, 24)
    dense = dense_fisher(backend, model, observations, actions, masks)
    unmasked = dense_fisher(backend, model, observations, actions)
    assert th.isfinite(dense).all()
    assert_differ(dense, unmasked)
    fisher = make_fisher(
        backend,
        model.policy,
        model.actor_parameters,
        observations,
        actions,
        0.1,
        jacobian=None if jacobian is None else make_jacobian(jacobian, model, observations, masks),
        action_masks=masks,
    )
    for vector in th.randn(4, dense.shape[0], generator=th.Generator().manual_seed(3)):
        assert_close_in_norm(fisher.matvec(vector), dense @ vector, rtol=1e-4)
    gradient = th.randn(dense.shape[0], generator=th.Generator().manual_seed(4))
    direction, _ = fisher.solve(gradient, max_iter=10 * dense.shape[0])
    assert_close_in_norm(direction, th.linalg.solve(dense + 0.1 * th.eye(dense.shape[0]), gradient), rtol=1e-3)


@pytest.mark.parametrize("jacobian", ["mlp", "autograd"])
@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
def test_masked_policy_gradient_equals_autograd(action_space: str, jacobian: str) -> None:
    """``g = J^T (A * scores) / N`` (either Jacobian) equals autograd's gradient of the masked log-prob."""
    model = tiny_masked_model(action_space)
    perturb(model, scale=0.5)
    observations, actions, masks = masked_batch(model, 24)
    advantages = th.randn(24, generator=th.Generator().manual_seed(12))

    def expected_gradient(action_masks: th.Tensor | None) -> th.Tensor:
        log_prob = distribution_of(model.policy, observations, action_masks).log_prob(actions)
        return flatten(th.autograd.grad((advantages * log_prob).mean(), model.actor_parameters))

    expected = expected_gradient(masks)
    assert_differ(expected, expected_gradient(None))
    gradient = policy_gradient(make_jacobian(jacobian, model, observations, masks), actions, advantages)
    assert_close_in_norm(gradient, expected, rtol=1e-5)


@pytest.mark.parametrize(("step_length", "sub_sampling_factor"), [("quadratic", 1), ("exact", 1), ("quadratic", 2)])
@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
def test_step_equals_dense_natural_gradient_step_and_its_kl(
    action_space: str, step_length: str, sub_sampling_factor: int
) -> None:
    """
    The actor's update of ``train()`` on a batch with masks is the dense step ``sqrt(2 eps / x^T F x) x``,
    ``x = (F + lambda I)^-1 g`` with F (on every ``sub_sampling_factor``-th sample) and g of the masked distribution;
    the KL it logs is the masked KL measured independently, near target_kl.
    """
    target_kl = 0.01
    model = tiny_masked_model(
        action_space,
        cg_max_steps=300,
        normalize_advantage=False,
        target_kl=target_kl,
        step_length=step_length,
        sub_sampling_factor=sub_sampling_factor,
    )
    perturb(model, scale=0.5)
    observations, actions, masks = masked_batch(model, 24)
    advantages = th.randn(24, generator=th.Generator().manual_seed(12))
    every = slice(None, None, sub_sampling_factor)
    fisher = dense_kl_hessian(model, observations[every], masks[every])
    log_prob = distribution_of(model.policy, observations, masks).log_prob(actions)
    gradient = flatten(th.autograd.grad((advantages * log_prob).mean(), model.actor_parameters))
    direction = th.linalg.solve(fisher + model.cg_damping * th.eye(len(gradient)), gradient)
    expected_step = th.sqrt(2 * target_kl / (direction @ fisher @ direction)) * direction
    with th.no_grad():
        old = distribution_of(model.policy, observations, masks)
        old_parts = [th.distributions.Categorical(logits=part.logits.clone()) for part in _parts(old)]
    before = flat_actor(model)

    model._rollout_batch = lambda: UpdateBatch(observations, actions, advantages, th.zeros(24), model.policy, masks)
    model._fit_critic = lambda *batch: 0.0
    model.train()

    step = flat_actor(model) - before
    with th.no_grad():
        new_parts = _parts(distribution_of(model.policy, observations, masks))
        kl = sum(th.distributions.kl_divergence(p, q) for p, q in zip(old_parts, new_parts, strict=True)).mean().item()
    logged_kl = model.logger.name_to_value["train/kl_divergence"]
    assert logged_kl == pytest.approx(kl, rel=1e-4)
    if step_length == "quadratic":
        assert_close_in_norm(step, expected_step, rtol=2e-3)
        if sub_sampling_factor == 1:  # a Fisher on half the batch (12 states) misjudges the KL of the whole batch
            assert kl == pytest.approx(target_kl, rel=0.3)
    else:
        assert th.nn.functional.cosine_similarity(step, expected_step, dim=0) > 0.999
        assert kl == pytest.approx(target_kl, rel=0.05)


def _parts(distribution) -> list[th.distributions.Categorical]:
    """The torch categoricals of a maskable distribution."""
    return list(distribution.distributions) if hasattr(distribution, "distributions") else [distribution.distribution]


@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
@pytest.mark.parametrize("backend", FISHER_BACKENDS)
def test_single_valid_action_states_add_nothing(action_space: str, backend: str) -> None:
    """
    States with one valid action (per part) are point masses: their KL is 0, they add nothing to F or g, and
    nothing is NaN; on a mixed batch F is the Fisher of the other states, scaled by their share.
    """
    model = tiny_masked_model(action_space)
    perturb(model, scale=0.5)
    observations, actions, masks = masked_batch(model, 24, single_every=2)
    single = th.arange(24) % 2 == 0
    vectors = th.randn(3, len(flat_actor(model)), generator=th.Generator().manual_seed(5))

    only_single = make_fisher(
        backend, model.policy, model.actor_parameters, observations[single], actions[single], 0.1, action_masks=masks[single]
    )
    jacobian = policy_jacobian(model.policy, model.actor_parameters, observations[single], masks[single])
    assert policy_gradient(jacobian, actions[single], th.ones(int(single.sum()))).abs().max() == 0
    for vector in vectors:
        assert only_single.matvec(vector).abs().max() == 0

    mixed = make_fisher(backend, model.policy, model.actor_parameters, observations, actions, 0.1, action_masks=masks)
    others = make_fisher(
        backend,
        model.policy,
        model.actor_parameters,
        observations[~single],
        actions[~single],
        0.1,
        action_masks=masks[~single],
    )
    for vector in vectors:
        product = mixed.matvec(vector)
        assert th.isfinite(product).all()
        assert_close_in_norm(product, others.matvec(vector) / 2, rtol=1e-5)
    old = distribution_of(model.policy, observations[single], masks[single])
    with th.no_grad():
        for parameter in model.actor_parameters:
            parameter.add_(1.0)
    assert mean_summed_kl(old, distribution_of(model.policy, observations[single], masks[single])).item() == 0.0


@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
@pytest.mark.parametrize("fisher", FISHER_BACKENDS)
def test_training_and_evaluation_never_take_an_invalid_action(action_space: str, fisher: str) -> None:
    """The environment raises on an invalid action; training and evaluation run through, with finite parameters."""
    model = tiny_masked_model(action_space, n_steps=64, fisher=fisher)
    model.learn(256)
    assert model.logger.name_to_value["train/kl_divergence"] > 0
    assert all(th.isfinite(parameter).all() for parameter in model.policy.parameters())
    env = MaskedToyEnv(ACTION_SPACES[action_space])
    for deterministic in (True, False):
        evaluate_policy(model, env, n_eval_episodes=3, deterministic=deterministic, warn=False)


def test_predict_follows_the_mask() -> None:
    model = tiny_masked_model("discrete")
    observation = np.zeros(3, dtype=np.float32)
    for valid in range(4):
        mask = np.eye(4, dtype=bool)[valid]
        for deterministic in (True, False):
            action, _ = model.predict(observation, deterministic=deterministic, action_masks=mask)
            assert int(action) == valid


def test_masks_reach_the_env_through_the_finite_check() -> None:
    """NPG wraps the env in its NaN/inf check; the masks must still come from the envs inside, also after set_env."""
    space = ACTION_SPACES["discrete"]
    for step, seed in enumerate((0, 3)):
        venv = make_vec_env(MaskedToyEnv, n_envs=2, seed=seed, env_kwargs={"action_space": space})
        if step == 0:
            model = MaskableNPG("MlpPolicy", venv, n_steps=32, batch_size=32, seed=0)
        else:
            model.set_env(venv)
        assert model.env is not venv  # the check wraps it
        assert is_masking_supported(model.env)
        venv.reset()
        for _ in range(5):  # masks change at every step: they must be the current ones of each env inside
            expected = np.stack([env.unwrapped.action_masks() for env in venv.envs])
            assert np.array_equal(get_action_masks(model.env), expected)
            venv.step(np.array([np.flatnonzero(mask)[0] for mask in expected]))


def test_masking_errors_as_maskable_ppo() -> None:
    """The errors of MaskablePPO: an env without action_masks(), a policy that is not maskable."""
    env = make_vec_env(ToyEnv, n_envs=1, seed=0, env_kwargs={"action_space": spaces.Discrete(3)})
    model = MaskableNPG("MlpPolicy", env, n_steps=32, batch_size=32, seed=0)
    with pytest.raises(ValueError, match="Environment does not support action masking"):
        model.learn(64)
    model.learn(64, use_masking=False)  # no masks asked for: trains
    with pytest.raises(ValueError, match="Policy must subclass MaskableActorCriticPolicy"):
        MaskableNPG(ActorCriticPolicy, env, n_steps=32, batch_size=32)
    box_env = make_vec_env(ToyEnv, n_envs=1, env_kwargs={"action_space": spaces.Box(-1, 1, (2,), np.float32)})
    with pytest.raises(AssertionError, match="only supports"):
        MaskableNPG("MlpPolicy", box_env)


def test_action_masker_and_eval_callback(tmp_path: pathlib.Path) -> None:
    """sb3-contrib's InvalidActionEnvDiscrete, the ActionMasker wrapper and MaskableEvalCallback work with it."""
    env = InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10)
    masked = ActionMasker(gym.make("CartPole-v1"), lambda _: np.array([True, False]))
    model = MaskableNPG("MlpPolicy", masked, n_steps=32, batch_size=32, seed=0)
    with pytest.warns(RuntimeWarning, match="skipped the policy update"):  # one valid action: nothing to learn
        model.learn(64)
    assert all(model.predict(masked.reset()[0], action_masks=masked.action_masks())[0] == 0 for _ in range(5))
    model = MaskableNPG("MlpPolicy", env, n_steps=64, batch_size=64, seed=0)
    callback = MaskableEvalCallback(
        InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10),
        eval_freq=64,
        n_eval_episodes=2,
        log_path=str(tmp_path),
        warn=False,
    )
    model.learn(128, callback=callback)
    assert callback.n_calls == 128 and (tmp_path / "evaluations.npz").exists()


@pytest.mark.parametrize("trusted", [True, UNTRUSTED_LOAD])
@pytest.mark.parametrize("action_space", list(ACTION_SPACES))
def test_save_load_round_trip(tmp_path: pathlib.Path, action_space: str, trusted: bool) -> None:
    model = tiny_masked_model(action_space, n_steps=32)
    model.learn(64)
    model.save(tmp_path / "model")
    loaded = MaskableNPG.load(tmp_path / "model", env=model.get_env(), trusted=trusted)
    assert type(loaded) is MaskableNPG
    for saved, restored in zip(model.policy.state_dict().values(), loaded.policy.state_dict().values(), strict=True):
        assert th.equal(saved, restored)
    observations, _, masks = masked_batch(model, 8)
    for index in range(8):
        expected, _ = model.predict(observations[index].numpy(), deterministic=True, action_masks=masks[index].numpy())
        actual, _ = loaded.predict(observations[index].numpy(), deterministic=True, action_masks=masks[index].numpy())
        assert np.array_equal(expected, actual)
    loaded.learn(64)  # continues with masks


@pytest.mark.parametrize("policy", ["MultiInputPolicy", "CnnPolicy"])
def test_dict_and_image_observations(policy: str) -> None:
    """The MultiInputPolicy and CnnPolicy aliases train with masks (autograd Jacobian) and never take an invalid action."""
    image = spaces.Box(0, 255, (36, 36, 1), np.uint8)
    observation_space = (
        spaces.Dict({"image": image, "vector": spaces.Box(-1, 1, (3,), np.float32)}) if policy == "MultiInputPolicy" else image
    )
    env = make_vec_env(
        MaskedToyEnv, n_envs=1, seed=0, env_kwargs={"action_space": spaces.Discrete(4), "observation_space": observation_space}
    )
    policy_kwargs = {"features_extractor_kwargs": {"features_dim": 16}} if policy == "CnnPolicy" else {"net_arch": [8]}
    policy_kwargs["share_features_extractor"] = False
    model = MaskableNPG(policy, env, n_steps=32, batch_size=32, seed=0, policy_kwargs=policy_kwargs)
    model.learn(64)
    assert model.logger.name_to_value["train/kl_divergence"] > 0
