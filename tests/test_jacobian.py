"""
The hand-derived MLP products against autograd.

``MLPJacobian`` (SB3 MLP actors) and ``LinearChain`` (also the critic's fast path) must give the same
``J v``, ``J^T u`` and per-sample Gram matrix as the generic autograd path; policies they do not cover
(gSDE, CNN features) must fall back to autograd and still give the exact Fisher.
"""

import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

import sb3_npg.fast.mlp
from sb3_npg import NPG
from sb3_npg.fast.mlp import LinearChain
from sb3_npg.fast.mlp_jacobian import MLPJacobian
from sb3_npg.fisher import HessianFisher, make_fisher
from sb3_npg.jacobian import AutogradJacobian
from sb3_npg.policy_gradient import policy_jacobian
from tests.envs import ACTION_SPACES, ToyEnv, image_space
from tests.helpers import assert_close_in_norm, batch, perturb, tiny_model


@pytest.mark.parametrize("distribution", ["discrete", "box1d", "box6d", "multidiscrete", "multibinary"])
def test_mlp_jacobian_equals_autograd_jacobian(distribution: str) -> None:
    """
    Equal products. Categorical logits are compared up to a per-sample shift of all logits: torch normalises
    them (``logits - logsumexp``), SB3's action head does not, and the Fisher ``diag(p) - p p^T`` ignores the shift.
    """
    categorical = distribution in ("discrete", "multidiscrete")

    def modulo_shift(tensor: th.Tensor) -> th.Tensor:
        return tensor - tensor.mean(dim=-1, keepdim=True) if categorical else tensor

    model = tiny_model(distribution, net_arch=(8, 5))
    perturb(model)
    observations, _ = batch(model, 12)
    mlp = MLPJacobian.for_policy(model.policy, model.actor_parameters, observations)
    assert mlp is not None
    reference = AutogradJacobian(model.policy, model.actor_parameters, observations)
    generator = th.Generator().manual_seed(7)
    vector = th.randn(sum(p.numel() for p in model.actor_parameters), generator=generator)
    for actual, expected in zip(mlp.jvp(vector), reference.jvp(vector), strict=True):
        assert_close_in_norm(modulo_shift(actual), modulo_shift(expected), rtol=1e-5)
    output_vectors = [modulo_shift(th.randn(t.shape, generator=generator)) for t in reference.jvp(vector)]
    assert_close_in_norm(mlp.vjp(output_vectors), reference.vjp(output_vectors), rtol=1e-5)
    assert_close_in_norm(mlp.gram(output_vectors), reference.gram(output_vectors), rtol=1e-5)


def test_policies_outside_the_mlp_form_use_autograd_and_stay_exact() -> None:
    gsde = tiny_model("gsde")
    observations, _ = batch(gsde, 8)
    assert MLPJacobian.for_policy(gsde.policy, gsde.actor_parameters, observations) is None

    env = make_vec_env(
        ToyEnv, n_envs=1, env_kwargs={"action_space": ACTION_SPACES["discrete"], "observation_space": image_space()}
    )
    cnn = NPG(
        "CnnPolicy", env, n_steps=16, batch_size=16, policy_kwargs={"features_extractor_kwargs": {"features_dim": 8}}, seed=0
    )
    images = th.as_tensor(th.randint(0, 256, (6, 1, 36, 36), generator=th.Generator().manual_seed(8)), dtype=th.float32)
    assert isinstance(policy_jacobian(cnn.policy, cnn.actor_parameters, images), AutogradJacobian)
    gauss_newton = make_fisher("gauss_newton", cnn.policy, cnn.actor_parameters, images, th.zeros(6), damping=0.1)
    hessian = HessianFisher(cnn.policy, cnn.actor_parameters, images, th.zeros(6), damping=0.1)
    vector = th.randn(sum(p.numel() for p in cnn.actor_parameters), generator=th.Generator().manual_seed(9))
    assert_close_in_norm(gauss_newton.matvec(vector), hessian.matvec(vector), rtol=1e-4)


@pytest.fixture(params=["fused-kernels", "public-fallback"])
def activation_kernels(request, monkeypatch) -> str:
    """Run a test with torch's internal derivative kernels (when this torch has them) and with the public fallback."""
    if request.param == "public-fallback":
        monkeypatch.setattr(sb3_npg.fast.mlp, "fused_activation_kernels_supported", lambda: False)
    return request.param


def test_fused_activation_kernels_detected_on_this_torch() -> None:
    """The feature test finds torch's kernels here (so the fast path is what the other tests exercise)."""
    assert sb3_npg.fast.mlp.fused_activation_kernels_supported()


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU, nn.ELU, nn.SiLU])
def test_linear_chain_products_equal_autograd(activation: type[nn.Module], activation_kernels: str) -> None:
    th.manual_seed(0)
    network = nn.Sequential(nn.Linear(4, 6), activation(), nn.Linear(6, 5), activation(), nn.Linear(5, 2))
    chain = LinearChain.from_modules([network])
    assert chain is not None
    inputs = th.randn(9, 4)
    cache = chain.forward(inputs)
    th.testing.assert_close(cache.output, network(inputs))

    parameters = dict(network.named_parameters())
    tangents = {name: th.randn_like(p) for name, p in parameters.items()}
    _, expected_jvp = th.func.jvp(lambda p: th.func.functional_call(network, p, (inputs,)), (parameters,), (tangents,))
    th.testing.assert_close(chain.jvp(cache, list(tangents.values())), expected_jvp)

    output_gradient = th.randn(9, 2)
    expected_vjp = th.autograd.grad(network(inputs), list(parameters.values()), output_gradient)
    for actual, expected in zip(chain.vjp(cache, output_gradient), expected_vjp, strict=True):
        th.testing.assert_close(actual, expected)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU, nn.ELU])
def test_linear_chain_ending_in_an_activation_leaves_the_output_gradient_alone(
    activation: type[nn.Module], activation_kernels: str
) -> None:
    """Products with the derivative run in place on the chain's own buffers, never on the caller's tensor."""
    th.manual_seed(1)
    network = nn.Sequential(nn.Linear(3, 4), activation(), nn.Linear(4, 2), activation())
    chain = LinearChain.from_modules([network])
    assert chain is not None
    inputs = th.randn(7, 3)
    output_gradient = th.randn(7, 2)
    given = output_gradient.clone()
    expected = th.autograd.grad(network(inputs), list(network.parameters()), output_gradient)
    for actual, reference in zip(chain.vjp(chain.forward(inputs), output_gradient), expected, strict=True):
        th.testing.assert_close(actual, reference)
    assert th.equal(output_gradient, given)


def test_linear_chain_rejects_other_modules() -> None:
    assert LinearChain.from_modules([nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=-1), nn.Linear(3, 1))]) is None
    assert LinearChain.from_modules([nn.Sequential(nn.Linear(3, 3), nn.Dropout(), nn.Linear(3, 1))]) is None
