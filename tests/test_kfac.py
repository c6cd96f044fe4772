"""
K-FAC (:mod:`sb3_npg.kfac`) against dense matrices on tiny MLP and CNN policies: its factors are the exact Fisher
blocks where K-FAC is exact (one state; a linear Gaussian policy), its sampled expectation converges to the exact one,
its inverse is the damped Kronecker inverse (symmetric positive definite), conjugate gradient preconditioned by it
converges to the dense damped solve for every Fisher backend, masked logits included, and NPG's step with it is the
dense natural-gradient step (the same KL); with ``cg_max_steps=1`` the direction is the K-FAC solve, scaled by the
exact ``x^T F x``. Layers it does not cover raise ``ValueError`` at construction.
"""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from sb3_npg import NPG, MaskableNPG, RecurrentNPG, kfac
from sb3_npg.conjugate_gradient import conjugate_gradient
from sb3_npg.fisher import FISHER_BACKENDS, make_fisher
from sb3_npg.kfac import KFACPreconditioner
from sb3_npg.npg import UpdateBatch
from sb3_npg.parameters import flatten, unflatten
from tests.dense import dense_fisher, dense_kl_hessian, distribution_of, flat_actor
from tests.envs import ACTION_SPACES, MaskedToyEnv, image_space, random_mask
from tests.helpers import assert_close_in_norm, batch, cosine, perturb, tiny_model, toy_env

DISTRIBUTIONS = ["discrete", "box1d", "box6d", "multidiscrete", "multibinary"]


class TinyCNN(BaseFeaturesExtractor):
    """Two small convolutions (stride, padding) and a linear layer: a NatureCNN small enough for a dense Fisher."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 6):
        super().__init__(observation_space, features_dim)
        self.cnn = nn.Sequential(
            nn.Conv2d(observation_space.shape[0], 2, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(2, 3, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.linear = nn.Sequential(nn.Linear(27, features_dim), nn.Tanh())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(self.cnn(observations))


class ScaledTanh(nn.Module):
    """A custom activation with a parameter: a layer K-FAC does not cover."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(th.ones(1))

    def forward(self, inputs: th.Tensor) -> th.Tensor:
        return th.tanh(self.scale * inputs)


def tiny_cnn_model(distribution: str, share_features_extractor: bool = True, algorithm: type[NPG] = NPG, **kwargs) -> NPG:
    """A CnnPolicy with :class:`TinyCNN` on 12x12 grey images."""
    env = toy_env(ACTION_SPACES[distribution], image_space((12, 12, 1)))
    policy_kwargs = {
        "features_extractor_class": TinyCNN,
        "net_arch": [8],
        "share_features_extractor": share_features_extractor,
    }
    with pytest.warns(UserWarning, match="shared features extractor") if share_features_extractor else _no_warning():
        model = algorithm("CnnPolicy", env, n_steps=32, batch_size=32, policy_kwargs=policy_kwargs, seed=0, **kwargs)
    return model


class _no_warning:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def image_batch(model: NPG, n_samples: int) -> tuple[th.Tensor, th.Tensor]:
    """Random images (0-255, channel first as the policy sees them) and actions sampled from the policy."""
    generator = th.Generator().manual_seed(1)
    observations = th.randint(0, 256, (n_samples, *model.observation_space.shape), generator=generator).float()
    with th.no_grad():
        actions = model.policy.get_distribution(observations).get_actions()
    return observations, actions


def model_and_batch(kind: str, distribution: str, n_samples: int) -> tuple[NPG, th.Tensor, th.Tensor]:
    """A perturbed tiny ``"mlp"``, ``"cnn"`` (shared extractor) or ``"cnn-separate"`` model and a batch."""
    if kind == "mlp":
        model = tiny_model(distribution, net_arch=(6, 5))
        perturb(model)
        observations, actions = batch(model, n_samples)
    else:
        model = tiny_cnn_model(distribution, share_features_extractor=kind == "cnn")
        perturb(model)
        observations, actions = image_batch(model, n_samples)
    return model, observations, actions


def preconditioner_matrix(preconditioner: KFACPreconditioner, size: int) -> th.Tensor:
    """The dense matrix of ``v -> K^-1 v``, column by column."""
    return th.stack([preconditioner(column) for column in th.eye(size)], dim=1)


def layer_block_indices(model: NPG, weight_position: int, bias_position: int | None) -> list[int]:
    """The flat indices of a layer's ``[W | b]`` in K-FAC's row-major order (each output row, then its bias)."""
    offsets = np.cumsum([0, *(p.numel() for p in model.actor_parameters)])
    weight = model.actor_parameters[weight_position]
    rows, columns = weight.shape[0], weight[0].numel()
    indices = []
    for row in range(rows):
        indices += [int(offsets[weight_position]) + row * columns + column for column in range(columns)]
        if bias_position is not None:
            indices.append(int(offsets[bias_position]) + row)
    return indices


@pytest.mark.parametrize("kind", ["mlp", "cnn-separate"])
def test_layer_matrix_is_the_row_major_weight_and_bias(kind: str) -> None:
    """
    ``layer_matrix`` lays a layer's part of a flat vector out as ``[W | b]`` in the order of the Fisher blocks above,
    ``set_layer_matrix`` writes it back; ``layer_calls`` gives one call per layer, with a gradient per Fisher column.
    """
    model, observations, _ = model_and_batch(kind, "discrete", 5)
    layers, _ = kfac.kfac_layers(model.policy, model.actor_parameters)
    vector = th.arange(sum(p.numel() for p in model.actor_parameters), dtype=th.float32)
    chunks = unflatten(vector, model.actor_parameters)
    for layer in layers:
        matrix = kfac.layer_matrix(layer, chunks)
        indices = layer_block_indices(model, layer.weight_position, layer.bias_position)
        assert th.equal(matrix.flatten(), vector[indices])
        written = [th.zeros_like(chunk) for chunk in chunks]
        kfac.set_layer_matrix(layer, matrix, written)
        for position in (layer.weight_position, layer.bias_position):
            if position is not None:
                assert th.equal(written[position], chunks[position])
    calls = kfac.layer_calls(model.policy, layers, observations, expectation="exact")
    n_actions = model.action_space.n  # type: ignore[attr-defined]
    for layer, (call,) in zip(layers, calls, strict=True):
        assert call.output_gradients is not None
        assert call.output_gradients.shape[:3] == (n_actions, 5, layer.module.weight.shape[0])
        assert call.inputs.shape[0] == 5 and call.stride == 1


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_factors_are_the_exact_fisher_blocks_on_one_state(kind: str, distribution: str) -> None:
    """On one state K-FAC's independence assumption holds: ``G ⊗ A`` is the dense Fisher's block of each layer."""
    model, observations, _ = model_and_batch(kind, distribution, 1)
    dense = dense_kl_hessian(model, observations)
    preconditioner = KFACPreconditioner(model.policy, model.actor_parameters, observations, 0.1, expectation="exact")
    assert len(preconditioner.layers) == (3 if kind == "mlp" else 5)
    for layer, (a_factor, g_factor) in zip(preconditioner.layers, preconditioner.factors, strict=True):
        indices = layer_block_indices(model, layer.weight_position, layer.bias_position)
        block = dense[indices][:, indices]
        assert block.abs().max() > 0
        if isinstance(layer.module, nn.Conv2d):  # one state, several positions: the block is not a Kronecker product
            continue
        assert_close_in_norm(th.kron(g_factor, a_factor), block, rtol=1e-4)


def test_linear_gaussian_policy_is_exact() -> None:
    """A linear Gaussian policy (no hidden layer, state-independent std): F is ``A ⊗ diag(1/sigma^2)`` and ``2 I``."""
    model = tiny_model("box6d", net_arch=())
    perturb(model)
    observations, _ = batch(model, 64)
    dense = dense_kl_hessian(model, observations)
    for expectation, rtol in [("exact", 1e-3), ("sampled", 0.5)]:
        preconditioner = KFACPreconditioner(model.policy, model.actor_parameters, observations, 1e-7, expectation=expectation)
        inverse = preconditioner_matrix(preconditioner, dense.shape[0])
        error = (inverse @ dense - th.eye(dense.shape[0])).norm() / dense.shape[0] ** 0.5
        assert error < rtol, expectation


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_sampled_expectation_converges_to_the_exact_one(distribution: str) -> None:
    """``G`` from one action drawn per state is an unbiased estimate: over many copies of a batch it is the exact ``G``."""
    model = tiny_model(distribution, net_arch=(6, 5))
    perturb(model)
    observations, _ = batch(model, 8)
    exact = KFACPreconditioner(model.policy, model.actor_parameters, observations, 0.1, expectation="exact")
    th.manual_seed(0)
    repeated = observations.repeat(4000, 1)
    sampled = KFACPreconditioner(model.policy, model.actor_parameters, repeated, 0.1, expectation="sampled")
    for (a_exact, g_exact), (a_sampled, g_sampled) in zip(exact.factors, sampled.factors, strict=True):
        assert_close_in_norm(a_sampled, a_exact, rtol=1e-3)
        assert_close_in_norm(g_sampled, g_exact, rtol=0.05)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "cnn-separate"])
def test_inverse_is_the_damped_kronecker_inverse(kind: str) -> None:
    """
    ``K^-1`` is block-diagonal, ``(G + sqrt(l)/pi I)^-1 ⊗ (A + pi sqrt(l) I)^-1`` per layer, ``I / (2 + l)`` on log_std;
    the CNNs' linear layer (more inputs than the 16 states) applies its ``A``'s inverse by Woodbury's identity.
    """
    model, observations, _ = model_and_batch(kind, "box6d", 16)
    damping = 0.1
    preconditioner = KFACPreconditioner(model.policy, model.actor_parameters, observations, damping)
    low_rank = [
        layer.name
        for layer, (a_inverse, _) in zip(preconditioner.layers, preconditioner._inverses, strict=True)
        if a_inverse.rows is not None
    ]
    assert low_rank == ([] if kind == "mlp" else ["features_extractor.linear.0"])
    size = sum(p.numel() for p in model.actor_parameters)
    inverse = preconditioner_matrix(preconditioner, size)
    assert_close_in_norm(inverse, inverse.T, rtol=1e-5)
    assert th.linalg.eigvalsh((inverse + inverse.T) / 2).min() > 0
    expected = th.zeros(size, size)
    for layer, (a_factor, g_factor) in zip(preconditioner.layers, preconditioner.factors, strict=True):
        pi = ((a_factor.trace() / len(a_factor)) / (g_factor.trace() / len(g_factor))).sqrt()
        a_damped = a_factor + pi * damping**0.5 * th.eye(len(a_factor))
        g_damped = g_factor + damping**0.5 / pi * th.eye(len(g_factor))
        indices = th.tensor(layer_block_indices(model, layer.weight_position, layer.bias_position))
        expected[indices[:, None], indices] = th.kron(th.linalg.inv(g_damped), th.linalg.inv(a_damped))
    log_std = model.policy.log_std
    position = next(i for i, p in enumerate(model.actor_parameters) if p is log_std)
    start = sum(p.numel() for p in model.actor_parameters[:position])
    expected[start : start + log_std.numel(), start : start + log_std.numel()] = th.eye(log_std.numel()) / (2 + damping)
    assert_close_in_norm(inverse, expected, rtol=1e-4)


@pytest.mark.parametrize("backend", FISHER_BACKENDS)
@pytest.mark.parametrize(
    ("kind", "distribution"), [*(("mlp", d) for d in DISTRIBUTIONS), ("cnn", "discrete"), ("cnn-separate", "box6d")]
)
def test_preconditioned_cg_converges_to_the_dense_solve(kind: str, distribution: str, backend: str) -> None:
    """Conjugate gradient preconditioned by K-FAC, on each backend's products, reaches ``(F + l I)^-1 g`` (cosine 0.9999)."""
    model, observations, actions = model_and_batch(kind, distribution, 24)
    dense = dense_fisher(backend, model, observations, actions)
    size = dense.shape[0]
    gradient = th.randn(size, generator=th.Generator().manual_seed(4))
    expected = th.linalg.solve(dense + 0.1 * th.eye(size), gradient)
    fisher = make_fisher(backend, model.policy, model.actor_parameters, observations, actions, damping=0.1)
    preconditioner = KFACPreconditioner(model.policy, model.actor_parameters, observations, 0.1)
    direction, residual = conjugate_gradient(fisher.damped_matvec, gradient, 3 * size, preconditioner=preconditioner)
    assert cosine(direction, expected) >= 0.9999
    assert_close_in_norm(direction, expected, rtol=2e-3)
    assert (residual - (gradient - (dense + 0.1 * th.eye(size)) @ direction)).norm() <= 1e-3 * gradient.norm()
    if backend != "empirical":  # the Woodbury solve is exact and takes no preconditioner
        solved, _ = fisher.solve(gradient, 3 * size, preconditioner)
        assert cosine(solved, expected) >= 0.9999


@pytest.mark.parametrize("action_space", ["discrete", "multidiscrete", "multibinary"])
def test_masked_logits(action_space: str) -> None:
    """MaskableNPG: the factors of the masked distribution (a masked class adds nothing); PCG reaches the masked solve."""
    model = tiny_model(ACTION_SPACES[action_space], algorithm=MaskableNPG, env_class=MaskedToyEnv, net_arch=(6, 5))
    perturb(model)
    generator = np.random.default_rng(1)
    observations = th.as_tensor(generator.uniform(-1, 1, (24, 3)), dtype=th.float32)
    masks = th.as_tensor(
        np.stack([random_mask(model.action_space, generator, single=i % 3 == 0) for i in range(24)]), dtype=th.float32
    )
    dense = dense_kl_hessian(model, observations, masks)
    size = dense.shape[0]
    gradient = th.randn(size, generator=th.Generator().manual_seed(4))
    expected = th.linalg.solve(dense + 0.1 * th.eye(size), gradient)
    fisher = make_fisher("gauss_newton", model.policy, model.actor_parameters, observations, None, 0.1, action_masks=masks)
    preconditioner = KFACPreconditioner(model.policy, model.actor_parameters, observations, 0.1, action_masks=masks)
    direction, _ = fisher.solve(gradient, 3 * size, preconditioner)
    assert cosine(direction, expected) >= 0.9999
    # exact G of the masked distribution on the single-valid-action states alone: a point mass, G = 0
    single = observations[::3], masks[::3]
    point_masses = KFACPreconditioner(
        model.policy, model.actor_parameters, single[0], 0.1, action_masks=single[1], expectation="exact"
    )
    assert all(g_factor.abs().max() < 1e-6 for _, g_factor in point_masses.factors)


def logged(model: NPG, key: str) -> float:
    return model.logger.name_to_value[key]


@pytest.mark.parametrize("step_length", ["quadratic", "exact"])
@pytest.mark.parametrize(("kind", "distribution"), [("mlp", "box6d"), ("mlp", "discrete"), ("cnn-separate", "multidiscrete")])
def test_step_with_kfac_preconditioner_is_the_dense_step(kind: str, distribution: str, step_length: str) -> None:
    """
    ``preconditioner="kfac"`` with enough CG steps: the update is the dense ``sqrt(2 eps / x^T F x) x`` (same KL per
    update as plain CG); with ``cg_max_steps=1`` its direction is ``K^-1 g`` and ``train/xFx`` is the exact ``x^T F x``.
    """
    target_kl = 0.01
    kwargs = dict(cg_max_steps=200, normalize_advantage=False, target_kl=target_kl, step_length=step_length)
    if kind == "mlp":
        model = tiny_model(distribution, net_arch=(6, 5), preconditioner="kfac", log_direction_cosine=True, **kwargs)
    else:
        model = tiny_cnn_model(distribution, share_features_extractor=False, preconditioner="kfac", **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    perturb(model)
    observations, actions = batch(model, 24) if kind == "mlp" else image_batch(model, 24)
    advantages = th.randn(24, generator=th.Generator().manual_seed(12))
    dense = dense_kl_hessian(model, observations)
    log_prob = distribution_of(model.policy, observations).log_prob(actions)
    gradient = flatten(th.autograd.grad((advantages * log_prob).mean(), model.actor_parameters))
    direction = th.linalg.solve(dense + model.cg_damping * th.eye(len(gradient)), gradient)
    expected_step = th.sqrt(2 * target_kl / (direction @ dense @ direction)) * direction
    before = flat_actor(model)
    # train() on this batch, the actor's step only
    model._rollout_batch = lambda: UpdateBatch(observations, actions, advantages, th.zeros(24), model.policy)
    model._fit_critic = lambda *batch: 0.0
    model.train()
    step = flat_actor(model) - before
    if step_length == "quadratic":
        assert_close_in_norm(step, expected_step, rtol=2e-3)
        assert logged(model, "train/kl_divergence") == pytest.approx(target_kl, rel=0.3)
    else:
        assert cosine(step, expected_step) > 0.999
        assert logged(model, "train/kl_divergence") == pytest.approx(target_kl, rel=0.05)
    if kind == "mlp":
        assert logged(model, "train/direction_cosine") > 0.9999

    # cg_max_steps=1: ACKTR's direction K^-1 g, scaled by the exact x^T F x (one Fisher product)
    model.cg_max_steps = 1
    with th.no_grad():
        for parameter, value in zip(
            model.actor_parameters, before.split([p.numel() for p in model.actor_parameters]), strict=True
        ):
            parameter.copy_(value.view_as(parameter))
    th.manual_seed(5)  # the same actions drawn for G as in the step
    kfac_direction = KFACPreconditioner(model.policy, model.actor_parameters, observations, model.cg_damping)(gradient)
    th.manual_seed(5)
    model.train()
    step = flat_actor(model) - before
    assert cosine(step, kfac_direction) > 0.9999
    x = (
        kfac_direction
        * (gradient @ kfac_direction)
        / (kfac_direction @ (dense + model.cg_damping * th.eye(len(gradient))) @ kfac_direction)
    )
    assert logged(model, "train/xFx") == pytest.approx((x @ dense @ x).item(), rel=1e-3)
    if step_length == "exact":
        assert logged(model, "train/kl_divergence") == pytest.approx(target_kl, rel=0.05)
    else:
        assert_close_in_norm(step, th.sqrt(2 * target_kl / (x @ dense @ x)) * x, rtol=2e-3)
    if kind == "mlp":
        assert 0 < logged(model, "train/direction_cosine") < 0.9999


def test_same_kl_per_update_as_plain_cg_in_training() -> None:
    """Two updates of learn() from the same seed: the preconditioned step moves the policy by the KL plain CG moves it."""
    kls = {}
    for preconditioner in (None, "kfac"):
        model = tiny_model("box6d", n_steps=64, net_arch=(16, 16), cg_max_steps=100, preconditioner=preconditioner)
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.learn(64)
        kls[preconditioner] = logged(model, "train/kl_divergence")
    assert kls["kfac"] == pytest.approx(kls[None], rel=1e-3)


def test_uncovered_layers_raise_at_construction() -> None:
    """An LSTM, gSDE's log_std and a LayerNorm are named in a ValueError when the model is made."""
    with pytest.raises(ValueError, match=r"preconditioner='kfac'.*lstm_actor.*\(LSTM\)"):
        RecurrentNPG("MlpLstmPolicy", toy_env(ACTION_SPACES["discrete"]), n_steps=16, batch_size=16, preconditioner="kfac")
    with pytest.raises(ValueError, match=r"preconditioner='kfac'.*log_std.*StateDependentNoiseDistribution"):
        tiny_model("gsde", preconditioner="kfac")
    policy_kwargs = {"net_arch": [8], "activation_fn": ScaledTanh}
    with pytest.raises(ValueError, match=r"preconditioner='kfac'.*mlp_extractor\.policy_net\.1\.scale.*\(ScaledTanh\)"):
        NPG("MlpPolicy", toy_env(ACTION_SPACES["discrete"]), policy_kwargs=policy_kwargs, preconditioner="kfac")
    with pytest.raises(ValueError, match=r"Invalid preconditioner='shampoo': must be one of None, 'kfac'"):
        NPG("MlpPolicy", toy_env(ACTION_SPACES["discrete"]), preconditioner="shampoo")


def test_convolution_factors_take_at_most_kfac_max_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A convolution's factors come from every k-th state, k the ceiling of states x positions / KFAC_MAX_ROWS."""
    model, observations, _ = model_and_batch("cnn", "discrete", 24)
    full = KFACPreconditioner(model.policy, model.actor_parameters, observations, 0.1, expectation="exact")
    monkeypatch.setattr(kfac, "KFAC_MAX_ROWS", 100)  # first convolution: 24 states x 25 positions -> every 6th state
    capped = KFACPreconditioner(model.policy, model.actor_parameters, observations, 0.1, expectation="exact")
    every_sixth = KFACPreconditioner(model.policy, model.actor_parameters, observations[::6], 0.1, expectation="exact")
    first_convolution = 0
    assert isinstance(capped.layers[first_convolution].module, nn.Conv2d)
    for expected, actual in zip(every_sixth.factors[first_convolution], capped.factors[first_convolution], strict=True):
        assert_close_in_norm(actual, expected, rtol=1e-5)
    for layer, (a_full, g_full), (a_capped, g_capped) in zip(full.layers, full.factors, capped.factors, strict=True):
        if isinstance(layer.module, nn.Linear):  # linear layers keep every state
            assert_close_in_norm(a_capped, a_full, rtol=1e-6)
            assert_close_in_norm(g_capped, g_full, rtol=1e-6)
