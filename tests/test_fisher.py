"""
The Fisher machinery against dense matrices on tiny networks.

Every backend's Fisher-vector product is compared with a dense Fisher built independently with plain autograd:
the Hessian of the mean summed KL (``torch.autograd.functional.hessian`` over a flat parameter vector) for
``"gauss_newton"`` and ``"hessian"``, and ``(1/N) sum_i s_i s_i^T`` from per-sample scores for ``"empirical"``,
for every action distribution. The conjugate-gradient solver and the empirical Fisher's Woodbury solve are
checked against ``torch.linalg.solve``.
"""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from sb3_npg import NPG
from sb3_npg.conjugate_gradient import conjugate_gradient
from sb3_npg.constants import FISHER_BACKENDS
from sb3_npg.distributions import distribution_outputs, output_fisher
from sb3_npg.fast.mlp_jacobian import MLPJacobian
from sb3_npg.fisher import EmpiricalFisher, make_fisher
from sb3_npg.jacobian import AutogradJacobian
from sb3_npg.kl import mean_summed_kl
from sb3_npg.parameters import flatten
from sb3_npg.policy_gradient import policy_gradient, policy_jacobian
from tests.dense import dense_fisher, dense_kl_hessian, dense_scores
from tests.envs import ACTION_SPACES, ToyEnv
from tests.helpers import assert_close_in_norm, batch, perturb, tiny_model

DISTRIBUTIONS = ["discrete", "box1d", "box6d", "gsde", "multidiscrete", "multibinary"]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("backend", ["gauss_newton", "hessian"])
def test_fisher_vector_product_equals_dense_kl_hessian(backend: str, distribution: str) -> None:
    model = tiny_model(distribution)
    perturb(model)
    observations, actions = batch(model, 24)
    dense = dense_kl_hessian(model, observations)
    assert dense.abs().max() > 0
    fisher = make_fisher(backend, model.policy, model.actor_parameters, observations, actions, damping=0.1)
    vectors = th.randn(4, dense.shape[0], generator=th.Generator().manual_seed(3))
    for vector in vectors:
        assert_close_in_norm(fisher.matvec(vector), dense @ vector, rtol=1e-4)
        assert_close_in_norm(fisher.damped_matvec(vector), dense @ vector + 0.1 * vector, rtol=1e-4)


@pytest.mark.parametrize("activation_fn", [nn.ReLU, nn.ELU, nn.SiLU])
@pytest.mark.parametrize("distribution", ["discrete", "box6d"])
def test_fisher_vector_product_with_other_activations_and_depths(distribution: str, activation_fn: type[nn.Module]) -> None:
    model = tiny_model(distribution, net_arch=(8, 6), activation_fn=activation_fn)
    perturb(model)
    observations, actions = batch(model, 24)
    dense = dense_kl_hessian(model, observations)
    fisher = make_fisher("gauss_newton", model.policy, model.actor_parameters, observations, actions, damping=0.1)
    for vector in th.randn(3, dense.shape[0], generator=th.Generator().manual_seed(12)):
        assert_close_in_norm(fisher.matvec(vector), dense @ vector, rtol=1e-4)


@pytest.mark.parametrize(
    ("policy", "observation_space"),
    [
        (
            "MultiInputPolicy",
            spaces.Dict({"a": spaces.Box(-1, 1, (3,), np.float32), "b": spaces.Box(-1, 1, (2,), np.float32)}),
        ),
        ("MlpPolicy", spaces.Discrete(5)),
    ],
    ids=["dict", "discrete-observations"],
)
@pytest.mark.parametrize("backend", FISHER_BACKENDS)
def test_fisher_on_preprocessed_observations(policy: str, observation_space: spaces.Space, backend: str) -> None:
    """Dict and one-hot encoded observations, on a rollout: products and solves against the dense matrices."""
    env_kwargs = {"action_space": ACTION_SPACES["box6d"], "observation_space": observation_space}
    env = make_vec_env(ToyEnv, n_envs=1, seed=0, env_kwargs=env_kwargs)
    model = NPG(policy, env, n_steps=32, batch_size=32, policy_kwargs={"net_arch": [8]}, seed=0)
    perturb(model)
    model.learn(32)
    data = next(model.rollout_buffer.get(batch_size=None))
    observations, actions = data.observations, data.actions
    dense = dense_fisher(backend, model, observations, actions)
    fisher = make_fisher(backend, model.policy, model.actor_parameters, observations, actions, damping=0.1)
    generator = th.Generator().manual_seed(13)
    vector, gradient = th.randn(2, dense.shape[0], generator=generator)
    assert_close_in_norm(fisher.matvec(vector), dense @ vector, rtol=1e-4)
    direction, _ = fisher.solve(gradient, max_iter=10 * dense.shape[0])
    assert_close_in_norm(direction, th.linalg.solve(dense + 0.1 * th.eye(dense.shape[0]), gradient), rtol=1e-3)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_empirical_fisher_equals_dense_outer_products(distribution: str) -> None:
    model = tiny_model(distribution)
    perturb(model)
    observations, actions = batch(model, 24)
    scores = dense_scores(model, observations, actions)
    dense = scores.T @ scores / len(scores)
    fisher = make_fisher("empirical", model.policy, model.actor_parameters, observations, actions, damping=0.1)
    for vector in th.randn(4, dense.shape[0], generator=th.Generator().manual_seed(3)):
        assert_close_in_norm(fisher.matvec(vector), dense @ vector, rtol=1e-4)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_empirical_score_products_equal_dense_scores(distribution: str) -> None:
    """
    ``G v``, ``G^T w`` and the Woodbury solve's ``G G^T`` (built without forming ``G``), with ``G`` the N x P
    matrix of per-sample scores ``grad log pi(a_i|s_i)``.
    """
    model = tiny_model(distribution)
    perturb(model)
    observations, actions = batch(model, 24)
    scores = dense_scores(model, observations, actions)
    fisher = make_fisher("empirical", model.policy, model.actor_parameters, observations, actions, damping=0.1)
    assert isinstance(fisher, EmpiricalFisher)
    generator = th.Generator().manual_seed(11)
    vector, weights = th.randn(scores.shape[1], generator=generator), th.randn(scores.shape[0], generator=generator)
    assert_close_in_norm(fisher.score_products(vector), scores @ vector, rtol=1e-5)
    assert_close_in_norm(fisher.transposed_score_products(weights), scores.T @ weights, rtol=1e-5)
    with th.no_grad():
        output_scores = output_fisher(model.policy.get_distribution(observations), actions).scores
    assert output_scores is not None
    assert_close_in_norm(fisher.jacobian.gram(output_scores), scores @ scores.T, rtol=1e-5)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_policy_gradient_and_old_distribution_from_the_jacobian(distribution: str) -> None:
    """
    ``g = J^T (A * scores) / N`` equals autograd's gradient of ``mean(A * log pi(a|s))``, and the Jacobian's
    distribution is the policy's at ``theta_old`` (hand-derived MLP Jacobian, or autograd for gSDE).
    """
    model = tiny_model(distribution)
    perturb(model)
    observations, actions = batch(model, 24)
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    advantages = th.randn(24, generator=th.Generator().manual_seed(12))
    log_prob = model.policy.get_distribution(observations).log_prob(actions)
    expected = th.autograd.grad((advantages * log_prob).mean(), model.actor_parameters)
    jacobian = policy_jacobian(model.policy, model.actor_parameters, observations)
    assert isinstance(jacobian, AutogradJacobian if distribution == "gsde" else MLPJacobian)
    assert_close_in_norm(policy_gradient(jacobian, actions, advantages), flatten(expected), rtol=1e-5)
    # kept as the old policy through the step: it must not hold the forward graph alive
    assert not any(output.requires_grad for output in distribution_outputs(jacobian.distribution))
    with th.no_grad():
        reference = model.policy.get_distribution(observations)
        assert th.allclose(jacobian.distribution.log_prob(actions), reference.log_prob(actions), atol=1e-6)
        assert float(mean_summed_kl(jacobian.distribution, reference)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("backend", FISHER_BACKENDS)
def test_solve_equals_dense_damped_solve(backend: str, distribution: str) -> None:
    """``solve`` returns ``(F + damping I)^-1 g`` and its residual; the empirical Fisher uses Woodbury here (N < P)."""
    model = tiny_model(distribution)
    perturb(model)
    observations, actions = batch(model, 24)
    dense = dense_fisher(backend, model, observations, actions)
    n_parameters = dense.shape[0]
    assert len(observations) < n_parameters
    gradient = th.randn(n_parameters, generator=th.Generator().manual_seed(4))
    damped = dense + 0.1 * th.eye(n_parameters)
    fisher = make_fisher(backend, model.policy, model.actor_parameters, observations, actions, damping=0.1)
    direction, residual = fisher.solve(gradient, max_iter=10 * n_parameters)
    assert_close_in_norm(direction, th.linalg.solve(damped, gradient), rtol=1e-3)
    assert (residual - (gradient - damped @ direction)).norm() <= 1e-3 * gradient.norm()


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_empirical_woodbury_and_conjugate_gradient_agree(distribution: str) -> None:
    """Woodbury (batch smaller than the parameter count) against CG on the same operator, then the CG path (batch larger)."""
    small = tiny_model(distribution)
    perturb(small)
    observations, actions = batch(small, 16)
    fisher = make_fisher("empirical", small.policy, small.actor_parameters, observations, actions, damping=0.1)
    n_parameters = sum(p.numel() for p in small.actor_parameters)
    assert len(observations) < n_parameters
    gradient = th.randn(n_parameters, generator=th.Generator().manual_seed(5))
    woodbury, _ = fisher.solve(gradient, max_iter=1)  # exact whatever the CG budget
    by_cg, _ = conjugate_gradient(fisher.damped_matvec, gradient, max_iter=10 * n_parameters)
    assert_close_in_norm(woodbury, by_cg, rtol=1e-3)
    assert_close_in_norm(fisher.damped_matvec(woodbury), gradient, rtol=1e-3)

    large = tiny_model(distribution, net_arch=(2,))
    perturb(large)
    n_parameters = sum(p.numel() for p in large.actor_parameters)
    observations, actions = batch(large, 2 * n_parameters)
    scores = dense_scores(large, observations, actions)
    damped = scores.T @ scores / len(scores) + 0.1 * th.eye(n_parameters)
    fisher = make_fisher("empirical", large.policy, large.actor_parameters, observations, actions, damping=0.1)
    gradient = th.randn(n_parameters, generator=th.Generator().manual_seed(6))
    direction, residual = fisher.solve(gradient, max_iter=10 * n_parameters)
    assert_close_in_norm(direction, th.linalg.solve(damped, gradient), rtol=1e-3)
    assert (residual - (gradient - damped @ direction)).norm() <= 1e-3 * gradient.norm()


def random_spd(size: int, seed: int) -> th.Tensor:
    """A random symmetric positive definite float64 matrix with eigenvalues in about [0.5, 4 size]."""
    generator = th.Generator().manual_seed(seed)
    factor = th.randn(size, size, generator=generator, dtype=th.float64)
    return factor @ factor.T + 0.5 * th.eye(size, dtype=th.float64)


def test_conjugate_gradient_solves_spd_system() -> None:
    matrix = random_spd(20, seed=7)
    b = th.randn(20, generator=th.Generator().manual_seed(8), dtype=th.float64)
    direction, residual = conjugate_gradient(lambda v: matrix @ v, b, max_iter=200, residual_tol=1e-20)
    th.testing.assert_close(direction, th.linalg.solve(matrix, b), rtol=1e-7, atol=1e-9)
    th.testing.assert_close(residual, b - matrix @ direction, rtol=0, atol=1e-9)
    assert residual.norm() < 1e-9 * b.norm()


@pytest.mark.parametrize("max_iter", [1, 3, 8])
def test_conjugate_gradient_residual_when_stopped_early(max_iter: int) -> None:
    """An unconverged solve still returns ``r = b - A x``, so ``x^T A x = x^T (b - r)`` as ``train()`` uses it."""
    matrix = random_spd(30, seed=9)
    b = th.randn(30, generator=th.Generator().manual_seed(10), dtype=th.float64)
    products = []

    def matvec(vector: th.Tensor) -> th.Tensor:
        products.append(vector)
        return matrix @ vector

    direction, residual = conjugate_gradient(matvec, b, max_iter=max_iter)
    assert len(products) == max_iter
    th.testing.assert_close(residual, b - matrix @ direction, rtol=0, atol=1e-9)
    th.testing.assert_close(direction @ (b - residual), direction @ matrix @ direction)
    assert 0 < residual.norm() < b.norm()


def test_conjugate_gradient_stops_on_zero_or_negative_curvature() -> None:
    """A zero right-hand side costs no product; a non-positive-definite operator gives a finite x (zero here)."""
    products = []
    direction, residual = conjugate_gradient(lambda v: products.append(v) or v, th.zeros(5), max_iter=10)
    assert not products
    assert th.equal(direction, th.zeros(5))
    b = th.ones(5)
    direction, residual = conjugate_gradient(lambda v: -v, b, max_iter=10)
    assert th.equal(direction, th.zeros(5))
    assert th.equal(residual, b)
