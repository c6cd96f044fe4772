"""
One ``train()`` call against its dense prediction, and the actor/critic split.

On tiny networks the actor's change must be the natural-gradient step ``sqrt(2 eps / x^T F x) x`` with
``x = (F + damping I)^-1 g`` from dense matrices; the measured KL must be close to ``target_kl``; the critic
must be moved by its own regression only, and that regression must match a plain reference loop.
"""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from torch import nn
from torch.nn import functional as F

import sb3_npg.critic
import sb3_npg.fast.critic
import sb3_npg.fast.mlp
from sb3_npg import NPG, MaskableNPG
from tests.dense import dense_kl_hessian, dense_scores, flat_actor, select
from tests.envs import ACTION_SPACES, MaskedToyEnv, ToyEnv, image_space
from tests.helpers import collect, cosine, tiny_model, toy_env


def batch_tensors(model: NPG):
    """Observations, actions (in the shape ``train()`` uses) and (normalised) advantages of the whole rollout."""
    data = next(model.rollout_buffer.get(batch_size=None))
    actions = data.actions.long().flatten() if isinstance(model.action_space, spaces.Discrete) else data.actions
    advantages = data.advantages
    if model.normalize_advantage:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return data.observations, actions, advantages, data.returns


def dense_step(model: NPG) -> tuple[th.Tensor, th.Tensor, float]:
    """
    The step ``sqrt(2 eps / x^T F x) x`` with ``x = (F + damping I)^-1 g``, from dense matrices
    (``x^T (F + damping I) x`` with ``damped_step_size``).

    :return: the step, the policy gradient and the quadratic form
    """
    observations, actions, advantages, _ = batch_tensors(model)
    scores = dense_scores(model, observations, actions)
    gradient = (advantages[:, None] * scores).mean(dim=0)
    every = slice(None, None, model.sub_sampling_factor)
    if model.fisher == "empirical":
        fisher_matrix = scores[every].T @ scores[every] / len(scores[every])
    else:
        fisher_matrix = dense_kl_hessian(model, observations[every])
    damped = fisher_matrix + model.cg_damping * th.eye(len(gradient))
    direction = th.linalg.solve(damped, gradient)
    quadratic = (direction @ (damped if model.damped_step_size else fisher_matrix) @ direction).item()
    return (2 * model.target_kl / quadratic) ** 0.5 * direction, gradient, quadratic


def critic_parameters(model: NPG) -> list[th.nn.Parameter]:
    return [p for group in model.policy.optimizer.param_groups for p in group["params"]]


def cartpole(**kwargs) -> NPG:
    return NPG("MlpPolicy", "CartPole-v1", seed=0, **kwargs)


def toy(action_space: spaces.Space, **kwargs) -> NPG:
    env = make_vec_env(ToyEnv, n_envs=1, seed=0, env_kwargs={"action_space": action_space})
    return NPG("MlpPolicy", env, seed=0, **kwargs)


def box6d(**kwargs) -> NPG:
    return toy(ACTION_SPACES["box6d"], **kwargs)


TINY = {"n_steps": 64, "batch_size": 64, "policy_kwargs": {"net_arch": [8]}}


@pytest.mark.parametrize("fisher", ["gauss_newton", "hessian", "empirical"])
@pytest.mark.parametrize("make_model", [cartpole, box6d], ids=["cartpole", "box6d"])
def test_actor_step_is_the_dense_natural_gradient_step(make_model, fisher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Direction (cosine > 0.99) and length of the actor's change; the policy step leaves the critic alone (CG 15)."""
    model = make_model(fisher=fisher, target_kl=0.02, **TINY)
    collect(model)
    expected, gradient, quadratic = dense_step(model)
    actor_before = flat_actor(model)
    critic_before = [p.detach().clone() for p in critic_parameters(model)]
    monkeypatch.setattr(model, "_fit_critic", lambda *batch: 0.0)
    model.train()
    change = flat_actor(model) - actor_before
    assert cosine(change, expected) > 0.99
    assert change.norm().item() == pytest.approx(expected.norm().item(), rel=0.02)
    assert all(th.equal(p, before) for p, before in zip(critic_parameters(model), critic_before, strict=True))
    logs = model.logger.name_to_value
    assert logs["train/xFx"] == pytest.approx(quadratic, rel=0.02)
    assert logs["train/policy_gradient_norm"] == pytest.approx(gradient.norm().item(), rel=1e-4)
    assert logs["train/step_size"] == pytest.approx((2 * model.target_kl / quadratic) ** 0.5, rel=0.02)
    assert model.skipped_updates == 0


@pytest.mark.parametrize("option", [{"damped_step_size": True}, {"normalize_advantage": False}], ids=lambda o: next(iter(o)))
def test_step_options(option: dict) -> None:
    """``damped_step_size`` normalises by ``x^T (F + damping I) x``; without normalisation ``g`` uses the raw advantages."""
    model = box6d(target_kl=0.02, **TINY, **option)
    collect(model)
    expected, gradient, quadratic = dense_step(model)
    before = flat_actor(model)
    model.train()
    change = flat_actor(model) - before
    assert cosine(change, expected) > 0.99
    assert change.norm().item() == pytest.approx(expected.norm().item(), rel=0.02)
    assert model.logger.name_to_value["train/xFx"] == pytest.approx(quadratic, rel=0.02)
    assert model.logger.name_to_value["train/policy_gradient_norm"] == pytest.approx(gradient.norm().item(), rel=1e-4)


@pytest.mark.parametrize(
    ("make_model", "target_kl"),
    [(cartpole, 0.01), (box6d, 0.05)],
    ids=["cartpole", "box6d"],
)
def test_measured_kl_is_close_to_target(make_model, target_kl: float) -> None:
    """Default settings (64x64, gauss_newton, CG 15): every update's measured KL is within a factor 2 of ``target_kl``."""
    model = make_model(n_steps=512, target_kl=target_kl)
    ratios = []
    for _ in range(4):
        collect(model)
        model.train()
        ratios.append(model.logger.name_to_value["train/kl_divergence"] / target_kl)
    assert all(0.5 <= ratio <= 2 for ratio in ratios), ratios


def test_sub_sampling_uses_every_kth_sample_for_the_fisher(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Fisher is built on every k-th sample and the gradient on all of them: the step matches that dense prediction."""
    model = box6d(sub_sampling_factor=3, **TINY)
    collect(model)
    fisher_batches = []
    make_fisher = sb3_npg.npg.make_fisher

    def spy(backend, policy, parameters, observations, actions, damping, jacobian=None, action_masks=None):
        fisher_batches.append(observations)
        assert jacobian is None  # the full batch's Jacobian is not reused for a sub-sampled Fisher
        return make_fisher(backend, policy, parameters, observations, actions, damping, jacobian, action_masks)

    monkeypatch.setattr(sb3_npg.npg, "make_fisher", spy)
    # The rollout buffer shuffles the batch with numpy's global generator: the same seed gives the same order.
    np.random.seed(0)
    expected, _, _ = dense_step(model)
    before = flat_actor(model)
    np.random.seed(0)
    model.train()
    np.random.seed(0)
    observations = next(model.rollout_buffer.get(batch_size=None)).observations
    assert len(fisher_batches) == 1
    assert len(fisher_batches[0]) == 22
    assert th.equal(fisher_batches[0], observations[::3])
    change = flat_actor(model) - before
    assert cosine(change, expected) > 0.99
    assert change.norm().item() == pytest.approx(expected.norm().item(), rel=0.02)


def image_model(**kwargs) -> NPG:
    env_kwargs = {"action_space": spaces.Discrete(2), "observation_space": image_space()}
    env = make_vec_env(ToyEnv, n_envs=1, seed=0, env_kwargs=env_kwargs)
    return NPG("CnnPolicy", env, n_steps=32, batch_size=8, n_critic_updates=2, seed=0, **kwargs)


def ids(parameters) -> set[int]:
    return {id(p) for p in parameters}


@pytest.mark.parametrize("use_sde", [False, True])
def test_log_std_is_an_actor_parameter(use_sde: bool) -> None:
    model = box6d(use_sde=use_sde, **TINY)
    assert id(model.policy.log_std) in ids(model.actor_parameters)
    assert id(model.policy.log_std) not in ids(critic_parameters(model))


def test_parameter_split_with_shared_cnn_features_extractor() -> None:
    """The shared NatureCNN is an actor parameter, moved by the natural-gradient step only; value_net is the critic's."""
    model = image_model()
    policy = model.policy
    assert policy.share_features_extractor
    actor, critic = ids(model.actor_parameters), ids(critic_parameters(model))
    assert ids(policy.features_extractor.parameters()) <= actor
    assert not ids(policy.features_extractor.parameters()) & critic
    assert ids(policy.action_net.parameters()) <= actor
    assert ids(policy.value_net.parameters()) <= critic
    assert ids(policy.mlp_extractor.value_net.parameters()) <= critic
    assert not actor & critic
    assert actor | critic == ids(policy.parameters())


def test_parameter_split_with_separate_cnn_features_extractors() -> None:
    model = image_model(policy_kwargs={"share_features_extractor": False})
    policy = model.policy
    assert ids(policy.pi_features_extractor.parameters()) <= ids(model.actor_parameters)
    assert ids(policy.vf_features_extractor.parameters()) | ids(policy.value_net.parameters()) <= ids(critic_parameters(model))
    assert not ids(model.actor_parameters) & ids(critic_parameters(model))


SEPARATE_HEADS_RELU = {"net_arch": {"pi": [8], "vf": [16, 8]}, "activation_fn": nn.ReLU}


def reference_critic_fit(model: NPG, observations, returns: th.Tensor) -> None:
    """
    The plain critic regression: per epoch numpy's permutation (as ``RolloutBuffer.get``), minibatches,
    ``predict_values``, MSE, a fresh optimiser.
    """
    policy = model.policy
    parameters = critic_parameters(model)
    optimizer = policy.optimizer_class(parameters, lr=model.lr_schedule(1), **policy.optimizer_kwargs)
    n_samples = len(returns)
    for _ in range(model.n_critic_updates):
        permutation = th.from_numpy(np.random.permutation(n_samples))
        for start in range(0, n_samples, model.batch_size):
            index = permutation[start : start + model.batch_size]
            loss = F.mse_loss(policy.predict_values(select(observations, index)).flatten(), returns[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: box6d(n_steps=50, batch_size=16, n_critic_updates=3),
        lambda: box6d(n_steps=50, batch_size=16, n_critic_updates=3, policy_kwargs={"share_features_extractor": False}),
        lambda: box6d(n_steps=50, batch_size=16, n_critic_updates=3, policy_kwargs=SEPARATE_HEADS_RELU),
        lambda: box6d(n_steps=50, batch_size=16, n_critic_updates=3, policy_kwargs={"activation_fn": nn.ELU}),
        image_model,
    ],
    ids=["mlp", "mlp-separate-extractors", "mlp-relu-separate-heads", "mlp-elu", "cnn-shared"],
)
def test_fast_critic_loop_matches_reference_loop(make_model) -> None:
    """``_fit_critic`` (features precomputed once, tensor indexing) gives the parameters of the plain loop; the actor stays."""
    model = make_model()
    collect(model)
    observations, _, _, returns = batch_tensors(model)
    start = {name: value.clone() for name, value in model.policy.state_dict().items()}
    actor_before = flat_actor(model)
    critic_before = [p.detach().clone() for p in critic_parameters(model)]

    np.random.seed(123)
    loss = model._fit_critic(observations, returns)
    fast = [p.detach().clone() for p in critic_parameters(model)]
    assert th.equal(flat_actor(model), actor_before)
    assert np.isfinite(loss) and loss > 0

    model.policy.load_state_dict(start)
    np.random.seed(123)
    reference_critic_fit(model, observations, returns)
    reference = [p.detach() for p in critic_parameters(model)]
    assert all(not th.equal(p, before) for p, before in zip(fast, critic_before, strict=True))
    for fast_p, reference_p in zip(fast, reference, strict=True):
        th.testing.assert_close(fast_p, reference_p, rtol=1e-5, atol=1e-6)


def test_fused_adam_step_continues_the_optimiser_state_across_calls() -> None:
    """
    After the critic optimiser's first ``step()``, the critic's updates go through ``torch.optim.adam.adam`` on the
    optimiser's own state: two ``_fit_critic`` calls match two passes of the plain loop with one optimiser,
    and the optimiser's step count counts every minibatch (so a saved and reloaded optimiser carries on).
    """
    model = box6d(n_steps=50, batch_size=16, n_critic_updates=3)
    collect(model)
    observations, _, _, returns = batch_tensors(model)
    start = {name: value.clone() for name, value in model.policy.state_dict().items()}
    chain_parameters = sb3_npg.fast.critic.critic_chain(model.policy).parameters
    assert sb3_npg.fast.critic.fused_adam_step(model.policy.optimizer, chain_parameters) is None  # no state yet

    np.random.seed(5)
    for _ in range(2):
        model._fit_critic(observations, returns)
    fast = [p.detach().clone() for p in critic_parameters(model)]
    minibatches_per_call = model.n_critic_updates * -(-len(returns) // model.batch_size)
    steps = {model.policy.optimizer.state[p]["step"].item() for p in chain_parameters}
    assert steps == {2 * minibatches_per_call}
    assert sb3_npg.fast.critic.fused_adam_step(model.policy.optimizer, chain_parameters) is not None

    model.policy.load_state_dict(start)
    policy = model.policy
    optimizer = policy.optimizer_class(critic_parameters(model), lr=model.lr_schedule(1), **policy.optimizer_kwargs)
    np.random.seed(5)
    for _ in range(2 * model.n_critic_updates):
        permutation = th.from_numpy(np.random.permutation(len(returns)))
        for first in range(0, len(returns), model.batch_size):
            index = permutation[first : first + model.batch_size]
            optimizer.zero_grad()
            F.mse_loss(policy.predict_values(select(observations, index)).flatten(), returns[index]).backward()
            optimizer.step()
    for fast_p, reference_p in zip(fast, critic_parameters(model), strict=True):
        th.testing.assert_close(fast_p, reference_p.detach(), rtol=1e-5, atol=1e-6)


def test_fused_adam_step_only_for_a_fused_adam_on_the_critic_parameters() -> None:
    """Any other optimiser (or one holding other parameters) keeps ``optimizer.step()``."""
    parameters = [nn.Parameter(th.ones(3))]
    for optimizer in (
        th.optim.Adam(parameters, fused=False),
        th.optim.Adam(parameters, fused=True, amsgrad=True),
        th.optim.SGD(parameters, lr=0.1),
    ):
        parameters[0].grad = th.ones(3)
        optimizer.step()
        assert sb3_npg.fast.critic.fused_adam_step(optimizer, parameters) is None
    optimizer = th.optim.Adam(parameters, fused=True)
    optimizer.step()
    assert sb3_npg.fast.critic.fused_adam_step(optimizer, parameters) is not None
    assert sb3_npg.fast.critic.fused_adam_step(optimizer, [nn.Parameter(th.ones(3))]) is None
    # AdamW goes through torch's adam function where that function does decoupled weight decay (torch >= 2.7)
    optimizer = th.optim.AdamW(parameters, fused=True)
    optimizer.step()
    decoupled_in_adam = "decoupled_weight_decay" in optimizer.param_groups[0]
    assert (sb3_npg.fast.critic.fused_adam_step(optimizer, parameters) is not None) == decoupled_in_adam


def fit_twice(model: NPG, observations, returns: th.Tensor, start: dict[str, th.Tensor]) -> list[th.Tensor]:
    """Two ``_fit_critic`` calls from the policy state ``start`` (a fresh critic optimiser): the critic's parameters."""
    model.policy.load_state_dict(start)
    model._setup_model()  # a fresh critic optimiser, no Adam state yet
    model.policy.load_state_dict(start)
    np.random.seed(7)
    for _ in range(2):
        model._fit_critic(observations, returns)
    return [p.detach().clone() for p in critic_parameters(model)]


def test_fused_adam_fallback_gives_the_same_critic(monkeypatch) -> None:
    """
    With ``torch.optim.adam.adam`` declared unusable (the feature test failing, as on a torch whose function differs),
    the critic takes ``optimizer.step()`` and ends with the same parameters as through the fast path.
    """
    model = box6d(n_steps=50, batch_size=16, n_critic_updates=3)
    collect(model)
    observations, _, _, returns = batch_tensors(model)
    start = {name: value.clone() for name, value in model.policy.state_dict().items()}
    assert sb3_npg.fast.critic.functional_adam_supported()  # this torch: the fast path is real

    fast = fit_twice(model, observations, returns, start)
    assert sb3_npg.fast.critic.fused_adam_step(model.policy.optimizer, critic_parameters(model)) is not None

    monkeypatch.setattr(sb3_npg.fast.critic, "functional_adam_supported", lambda: False)
    fallback = fit_twice(model, observations, returns, start)
    assert sb3_npg.fast.critic.fused_adam_step(model.policy.optimizer, critic_parameters(model)) is None
    for fast_p, fallback_p in zip(fast, fallback, strict=True):
        th.testing.assert_close(fast_p, fallback_p, rtol=1e-5, atol=1e-6)


def test_functional_adam_feature_test_rejects_a_changed_signature(monkeypatch) -> None:
    """A torch whose ``adam`` function wants an argument we do not pass (or lacks one we do) is detected, not called."""

    def adam_with_new_argument(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, new_flag, **kwargs):
        raise AssertionError("must not be called")

    def adam_without_maximize(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, amsgrad, beta1, beta2, lr
    ):
        raise AssertionError("must not be called")

    for changed in (adam_with_new_argument, adam_without_maximize):
        monkeypatch.setattr(sb3_npg.fast.critic, "_functional_adam", changed)
        sb3_npg.fast.critic.functional_adam_supported.cache_clear()
        try:
            assert not sb3_npg.fast.critic.functional_adam_supported()
        finally:
            sb3_npg.fast.critic.functional_adam_supported.cache_clear()


@pytest.mark.parametrize("algorithm", ["npg", "maskable", "dict"])
def test_critic_minibatches_are_the_buffers(algorithm: str) -> None:
    """
    Every epoch of the critic visits the batch in the minibatches ``rollout_buffer.get(batch_size)`` yields, in the
    same order, for SB3's buffer, sb3-contrib's maskable one and SB3's dict one, and draws what ``get`` draws from
    numpy's generator, no more.
    """
    if algorithm == "npg":
        model = tiny_model("box6d", n_steps=40)
    elif algorithm == "maskable":
        model = tiny_model(spaces.Discrete(4), n_steps=40, algorithm=MaskableNPG, env_class=MaskedToyEnv)
    else:
        observation_space = spaces.Dict({"a": spaces.Box(-1, 1, (3,)), "b": spaces.Box(-1, 1, (2,))})
        model = NPG("MultiInputPolicy", toy_env(observation_space=observation_space), n_steps=40, batch_size=40, seed=0)
    collect(model)
    buffer, batch_size, n_epochs = model.rollout_buffer, 16, 3
    n_samples = buffer.buffer_size * buffer.n_envs

    np.random.seed(11)
    batch_rows = sb3_npg.critic.upcoming_get_order(buffer)
    returns = next(buffer.get(batch_size=None)).returns
    orders = list(sb3_npg.critic.epoch_orders(n_samples, n_epochs, batch_rows))
    drawn_after = np.random.random()
    ours = [returns[order[start : start + batch_size]] for order in orders for start in range(0, n_samples, batch_size)]

    np.random.seed(11)
    assert th.equal(next(buffer.get(batch_size=None)).returns, returns)  # the peek left the buffer's draw alone
    theirs = [minibatch.returns for _ in range(n_epochs) for minibatch in buffer.get(batch_size)]
    assert np.random.random() == drawn_after
    assert len(ours) == len(theirs) == n_epochs * -(-n_samples // batch_size)
    assert all(th.equal(mine, expected) for mine, expected in zip(ours, theirs, strict=True))
    assert not th.equal(th.cat(ours[: len(ours) // n_epochs]), returns)  # a real shuffle, not the batch's order
