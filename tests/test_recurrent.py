"""
RecurrentNPG: the natural-gradient step over sequences.

Dense references run the policy's LSTM along the stored sequences with sb3-contrib's ``get_distribution`` and keep the
real steps with plain indexing of the torch distributions (no sb3_npg maths): the Fisher product of each backend
equals the dense matrix, the step equals the dense natural-gradient step, padding changes nothing, the measured KL
of one update is near ``target_kl``; gSDE with an LSTM runs; save/load keeps predictions and LSTM states;
``CnnLstmPolicy`` learns on images.
"""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer
from sb3_contrib.ppo_recurrent.policies import CnnLstmPolicy
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from stable_baselines3.common.vec_env import VecTransposeImage
from torch import nn
from torch.distributions import Categorical, Normal, kl_divergence
from torch.func import functional_call

from sb3_npg import NPG, RecurrentNPG
from sb3_npg.fisher import make_fisher
from sb3_npg.kl import action_distribution, mean_summed_kl
from sb3_npg.policy_gradient import policy_gradient, policy_jacobian
from sb3_npg.recurrent import SequenceBatch
from tests.dense import actor_names, flat_actor
from tests.torch_safety import UNTRUSTED_LOAD

POLICY_KWARGS = dict(lstm_hidden_size=4, net_arch=[])


def trained_model(env_id: str, **kwargs) -> RecurrentNPG:
    """A tiny LSTM model after one update; its buffer holds a rollout whose episodes end mid-rollout."""
    env = make_vec_env(env_id, n_envs=2, seed=0, env_kwargs=dict(max_episode_steps=11))
    model = RecurrentNPG("MlpLstmPolicy", env, n_steps=16, batch_size=16, seed=0, policy_kwargs=POLICY_KWARGS, **kwargs)
    model.learn(32)
    return model


def rollout(model: RecurrentNPG):
    """
    The whole rollout as one batch of padded sequences, its real-step mask and the real steps' actions.

    The buffer cuts the sequences at a random split, each cut sequence starting from the LSTM state stored at
    collection; the policy has moved since, so the split is fixed (``np.random`` seeded) to give ``train()`` the
    same batch.
    """
    np.random.seed(0)
    data = next(model.rollout_buffer.get(batch_size=None))
    real = data.mask > 1e-8
    assert not real.all(), "the rollout must have padded sequences"
    actions = data.actions[real]
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    return data, real, actions


def real_distribution(policy, data, real, observations=None) -> th.distributions.Distribution:
    """The torch distribution of the real steps, the LSTM run from the stored states (plain indexing)."""
    observations = data.observations if observations is None else observations
    distribution, _ = policy.get_distribution(observations, data.lstm_states.pi, data.episode_starts)
    inner = distribution.distribution
    if isinstance(inner, Normal):
        return Normal(inner.loc[real], inner.scale[real])
    return Categorical(logits=inner.logits[real])


def summed(values: th.Tensor) -> th.Tensor:
    """Per-step values summed over action dimensions (Gaussian) or as they are (categorical)."""
    return values.sum(dim=-1) if values.dim() > 1 else values


class _KL(nn.Module):
    def __init__(self, policy, data, real):
        super().__init__()
        self.policy, self.data, self.real = policy, data, real
        with th.no_grad():
            self.old = real_distribution(policy, data, real)

    def forward(self) -> th.Tensor:
        return summed(kl_divergence(self.old, real_distribution(self.policy, self.data, self.real))).mean()


def dense_hessian(model: RecurrentNPG, data, real) -> th.Tensor:
    """Hessian of the mean KL over real steps with respect to the flat actor parameters."""
    module = _KL(model.policy, data, real)
    names = [f"policy.{name}" for name in actor_names(model)]
    shapes = [p.shape for p in model.actor_parameters]

    def kl_of(flat: th.Tensor) -> th.Tensor:
        chunks = flat.split([shape.numel() for shape in shapes])
        return functional_call(module, {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}, ())

    return th.autograd.functional.hessian(kl_of, flat_actor(model))


def dense_scores(model: RecurrentNPG, data, real, actions) -> th.Tensor:
    """Per-real-step scores ``grad log pi(a_t | history)``, one backward each."""
    log_probs = summed(real_distribution(model.policy, data, real).log_prob(actions))
    rows = []
    for log_prob in log_probs:
        gradients = th.autograd.grad(log_prob, model.actor_parameters, retain_graph=True, materialize_grads=True)
        rows.append(th.cat([g.reshape(-1) for g in gradients]))
    return th.stack(rows)


ENVS = ["CartPole-v1", "Pendulum-v1"]


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("backend", ["gauss_newton", "hessian", "empirical"])
def test_fisher_product_equals_dense(env_id: str, backend: str) -> None:
    model = trained_model(env_id)
    data, real, actions = rollout(model)
    batch = SequenceBatch(model.policy, data.lstm_states.pi, data.episode_starts, real)
    fisher = make_fisher(backend, batch, model.actor_parameters, data.observations, actions, 0.0)  # type: ignore[arg-type]
    if backend == "empirical":
        scores = dense_scores(model, data, real, actions)
        dense = scores.T @ scores / int(real.sum())
    else:
        dense = dense_hessian(model, data, real)
    generator = th.Generator().manual_seed(0)
    for _ in range(3):
        vector = th.randn(dense.shape[0], generator=generator)
        expected = dense @ vector
        assert th.allclose(fisher.matvec(vector), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("backend", ["gauss_newton", "empirical"])
def test_step_equals_dense_natural_gradient_step(env_id: str, backend: str) -> None:
    target_kl, damping = 0.01, 0.1
    model = trained_model(env_id, target_kl=target_kl, cg_damping=damping, fisher=backend)
    model.cg_max_steps = flat_actor(model).numel()  # CG to convergence: the step is the exact solve
    data, real, actions = rollout(model)
    advantages = data.advantages[real]
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_probs = summed(real_distribution(model.policy, data, real).log_prob(actions))
    gradient = th.cat([g.reshape(-1) for g in th.autograd.grad((advantages * log_probs).mean(), model.actor_parameters)])
    if backend == "empirical":  # fewer real steps than parameters: the Woodbury solve
        scores = dense_scores(model, data, real, actions).double()
        hessian = scores.T @ scores / int(real.sum())
        assert scores.shape[0] < scores.shape[1]
    else:
        hessian = dense_hessian(model, data, real).double()
    direction = th.linalg.solve(hessian + damping * th.eye(hessian.shape[0], dtype=th.float64), gradient.double())
    expected = (th.sqrt(2 * target_kl / (direction @ hessian @ direction)) * direction).float()

    before = flat_actor(model)
    np.random.seed(0)  # the batch of rollout()
    model.train()
    step = flat_actor(model) - before
    assert (step - expected).norm() <= 2e-3 * expected.norm()  # float32 CG against a float64 solve


@pytest.mark.parametrize("env_id", ENVS)
def test_padding_changes_nothing(env_id: str) -> None:
    model = trained_model(env_id)
    data, real, actions = rollout(model)
    garbage = data.observations.clone()
    garbage[~real] = 1e3 * th.randn_like(garbage[~real])
    assert not th.equal(garbage, data.observations)
    advantages = data.advantages[real]
    vector = th.randn(flat_actor(model).numel(), generator=th.Generator().manual_seed(1))
    results = []
    for observations in (data.observations, garbage):
        batch = SequenceBatch(model.policy, data.lstm_states.pi, data.episode_starts, real)
        gradient = policy_gradient(policy_jacobian(batch, model.actor_parameters, observations), actions, advantages)  # type: ignore[arg-type]
        products = [
            make_fisher(backend, batch, model.actor_parameters, observations, actions, 0.0).matvec(vector)  # type: ignore[arg-type]
            for backend in ("gauss_newton", "hessian", "empirical")
        ]
        with th.no_grad():
            old = action_distribution(batch, observations)  # type: ignore[arg-type]
            kl = mean_summed_kl(old, shifted_distribution(model, batch, observations, shift=0.1))
        results.append([gradient, *products, kl])
    for first, second in zip(*results, strict=True):
        assert th.allclose(first, second)


def shifted_distribution(model: RecurrentNPG, batch: SequenceBatch, observations, shift: float):
    """The batch's distribution after shifting every actor parameter by ``shift`` (then restored)."""
    with th.no_grad():
        for parameter in model.actor_parameters:
            parameter.add_(shift)
        distribution = action_distribution(batch, observations)  # type: ignore[arg-type]
        for parameter in model.actor_parameters:
            parameter.sub_(shift)
    return distribution


@pytest.mark.parametrize("step_length", ["quadratic", "exact"])
def test_measured_kl_of_one_update_is_near_target(step_length: str) -> None:
    target_kl = 0.01
    model = trained_model("CartPole-v1", target_kl=target_kl, step_length=step_length)
    data, real, _ = rollout(model)
    with th.no_grad():
        old = real_distribution(model.policy, data, real)
    np.random.seed(0)  # the batch of rollout()
    model.train()
    with th.no_grad():
        kl = kl_divergence(old, real_distribution(model.policy, data, real)).mean().item()
    assert model.skipped_updates == 0
    tolerance = 0.05 if step_length == "exact" else 0.5
    assert abs(kl - target_kl) <= tolerance * target_kl, kl
    assert kl == pytest.approx(model.logger.name_to_value["train/kl_divergence"], rel=1e-4)


def test_gsde_with_lstm_runs() -> None:
    model = trained_model("Pendulum-v1", use_sde=True)
    assert model.skipped_updates == 0
    assert 0 < model.logger.name_to_value["train/kl_divergence"] < 0.02


@pytest.mark.parametrize("trusted", [True, UNTRUSTED_LOAD])
def test_save_load_keeps_predictions_and_states(tmp_path, trusted: bool) -> None:
    model = trained_model("CartPole-v1")
    model.save(tmp_path / "model.zip")
    loaded = RecurrentNPG.load(tmp_path / "model.zip", env=model.get_env(), trusted=trusted)
    observations = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    states = [None, None]
    episode_start = np.ones(2, dtype=bool)
    for _ in range(3):
        actions = []
        for index, algorithm in enumerate((model, loaded)):
            action, states[index] = algorithm.predict(observations, states[index], episode_start, deterministic=True)
            actions.append(action)
        np.testing.assert_array_equal(actions[0], actions[1])
        for first, second in zip(states[0], states[1], strict=True):
            np.testing.assert_array_equal(first, second)
        assert np.abs(states[0][0]).sum() > 0
        episode_start = np.zeros(2, dtype=bool)


def test_critic_loss_is_over_real_steps() -> None:
    model = trained_model("CartPole-v1", n_critic_updates=1)
    model.batch_size = model.n_steps * model.n_envs  # one minibatch: the loss reported is the loss before its step
    data, real, _ = rollout(model)
    with th.no_grad():
        values = model.policy.predict_values(data.observations, data.lstm_states.vf, data.episode_starts).flatten()
    expected = (values[real] - data.returns[real]).square().mean().item()
    with_padding = (values - data.returns).square().mean().item()
    assert abs(expected - with_padding) > 1e-3 * expected
    np.random.seed(0)  # the batch of rollout()
    assert model._fit_sequence_critic() == pytest.approx(expected, rel=1e-5)


def test_lstm_options_split_actor_and_critic() -> None:
    model = RecurrentNPG("MlpLstmPolicy", "CartPole-v1", n_steps=16, batch_size=16, policy_kwargs=POLICY_KWARGS)
    actor = {id(p) for p in model.actor_parameters}
    critic = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in model.policy.lstm_actor.parameters()} <= actor
    assert model.policy.lstm_critic is not None  # enable_critic_lstm defaults to True
    assert {id(p) for p in model.policy.lstm_critic.parameters()} <= critic - actor
    with pytest.warns(UserWarning, match="shared_lstm"):
        shared = RecurrentNPG(
            "MlpLstmPolicy",
            "CartPole-v1",
            n_steps=16,
            batch_size=16,
            policy_kwargs=dict(POLICY_KWARGS, shared_lstm=True, enable_critic_lstm=False),
        )
    assert {id(p) for p in shared.policy.lstm_actor.parameters()} <= {id(p) for p in shared.actor_parameters}


def test_sub_sampling_is_refused() -> None:
    with pytest.raises(ValueError, match="sub_sampling_factor"):
        RecurrentNPG("MlpLstmPolicy", "CartPole-v1", n_steps=16, batch_size=16, sub_sampling_factor=2)


def test_dict_observations_run() -> None:
    env = SimpleMultiObsEnv(random_start=True)
    model = RecurrentNPG("MultiInputLstmPolicy", env, n_steps=16, batch_size=16, seed=0, policy_kwargs=POLICY_KWARGS)
    assert isinstance(model.rollout_buffer, RecurrentDictRolloutBuffer)
    model.learn(32)
    assert model.skipped_updates == 0
    assert 0 < model.logger.name_to_value["train/kl_divergence"] < 0.02


def test_cnn_lstm_policy_learns_on_images() -> None:
    """CnnLstmPolicy on a tiny image env (channel-last, so SB3 transposes it): both CNNs and LSTMs move, KL near target."""
    env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=True)
    env.observation_space.seed(0)  # its images are samples of its observation space, which the model's seed does not seed
    policy_kwargs = dict(lstm_hidden_size=8, features_extractor_kwargs=dict(features_dim=16), share_features_extractor=False)
    model = RecurrentNPG("CnnLstmPolicy", env, n_steps=16, batch_size=16, seed=0, policy_kwargs=policy_kwargs)
    assert type(model.policy) is CnnLstmPolicy and isinstance(model.get_env(), VecTransposeImage)
    before = {name: parameter.detach().clone() for name, parameter in model.policy.named_parameters()}
    model.learn(32)
    assert model.skipped_updates == 0
    moved = {
        name.split(".")[0] for name, parameter in model.policy.named_parameters() if not th.equal(parameter, before[name])
    }
    # named_parameters() names the actor's CNN (pi_features_extractor) features_extractor
    assert {"features_extractor", "lstm_actor", "action_net", "vf_features_extractor", "lstm_critic", "value_net"} <= moved
    assert model.logger.name_to_value["train/kl_divergence"] == pytest.approx(model.target_kl, rel=0.5)
    observation = model.observation_space.sample()[None]
    _, states = model.predict(observation, episode_start=np.ones(1, dtype=bool))
    assert states[0].shape == (1, 1, 8)


@pytest.mark.parametrize("trusted", [True, UNTRUSTED_LOAD])
def test_load_with_the_wrong_npg_class_names_the_right_one(tmp_path, trusted: bool) -> None:
    recurrent = RecurrentNPG("MlpLstmPolicy", "CartPole-v1", n_steps=16, batch_size=16, policy_kwargs=POLICY_KWARGS)
    recurrent.save(tmp_path / "recurrent.zip")
    feed_forward = NPG("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16)
    feed_forward.save(tmp_path / "feed_forward.zip")
    with pytest.raises(
        ValueError, match=r"saved by RecurrentNPG \(an LSTM policy\): NPG.load cannot rebuild it, use RecurrentNPG.load"
    ):
        NPG.load(tmp_path / "recurrent.zip", env=feed_forward.get_env(), trusted=trusted)
    with pytest.raises(
        ValueError, match=r"saved by NPG \(a policy without LSTM\): RecurrentNPG.load cannot rebuild it, use NPG.load"
    ):
        RecurrentNPG.load(tmp_path / "feed_forward.zip", env=recurrent.get_env(), trusted=trusted)
    assert type(RecurrentNPG.load(tmp_path / "recurrent.zip", env=recurrent.get_env(), trusted=trusted).policy) is type(
        recurrent.policy
    )
