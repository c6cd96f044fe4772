"""
NPG as an SB3 algorithm: every action and observation space, vectorised envs, callbacks, progress bar, argument
guards, the guard against non-finite steps, logged keys and determinism. gSDE, tensorboard and save/load of all three
classes are in ``test_compat.py``; files that are not saved models in ``test_save_load.py``.
"""

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

import sb3_npg.npg
from sb3_npg import NPG
from sb3_npg.conjugate_gradient import CGSolution
from tests.dense import flat_actor
from tests.envs import ACTION_SPACES, image_space
from tests.helpers import TINY, collect, toy_env


def all_parameters(model: NPG) -> th.Tensor:
    return th.cat([p.detach().reshape(-1) for p in model.policy.parameters()]).clone()


@pytest.mark.parametrize("action_space", ACTION_SPACES.values(), ids=ACTION_SPACES.keys())
def test_action_spaces(action_space: spaces.Space) -> None:
    model = NPG("MlpPolicy", toy_env(action_space), **TINY)
    before = flat_actor(model)
    model.learn(32)
    assert model.num_timesteps == 32
    assert model._n_updates == 2
    assert not th.equal(flat_actor(model), before)
    assert th.isfinite(all_parameters(model)).all()


@pytest.mark.parametrize(
    ("policy", "observation_space"),
    [
        ("MlpPolicy", spaces.Box(-1, 1, (5,), np.float32)),
        ("CnnPolicy", image_space((36, 36, 1))),
        ("MultiInputPolicy", spaces.Dict({"vector": spaces.Box(-1, 1, (3,), np.float32), "image": image_space()})),
    ],
    ids=["vector", "image", "dict"],
)
@pytest.mark.parametrize("fisher", ["gauss_newton", "hessian", "empirical"])
def test_observation_spaces(policy: str, observation_space: spaces.Space, fisher: str) -> None:
    """Every backend on every observation space, with the Fisher on every other sample."""
    kwargs = {**TINY, "policy_kwargs": None, "sub_sampling_factor": 2}
    model = NPG(policy, toy_env(spaces.Discrete(2), observation_space), fisher=fisher, **kwargs)
    before = flat_actor(model)
    model.learn(32)
    assert model._n_updates == 2
    assert not th.equal(flat_actor(model), before)
    assert th.isfinite(all_parameters(model)).all()


@pytest.mark.parametrize(
    ("policy", "observation_space", "policy_kwargs", "warns"),
    [
        ("CnnPolicy", image_space((36, 36, 1)), None, True),
        ("CnnPolicy", image_space((36, 36, 1)), {"share_features_extractor": False}, False),
        ("MlpPolicy", spaces.Box(-1, 1, (5,), np.float32), None, False),  # a Flatten extractor has nothing to train
    ],
    ids=["shared-cnn", "separate-cnn", "mlp"],
)
def test_shared_trainable_extractor_warns(
    policy: str, observation_space: spaces.Space, policy_kwargs: dict[str, Any] | None, warns: bool
) -> None:
    """A shared extractor with parameters gets a warning naming the fix: NPG's critic cannot train it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = NPG(policy, toy_env(spaces.Discrete(2), observation_space), **{**TINY, "policy_kwargs": policy_kwargs})
    messages = [str(warning.message) for warning in caught if "share_features_extractor=False" in str(warning.message)]
    assert len(messages) == int(warns)
    # the critic's extractor is trainable by the critic exactly when it is not an actor parameter
    built = model.policy
    critic_features = built.features_extractor if built.share_features_extractor else built.vf_features_extractor
    actor_ids = {id(parameter) for parameter in model.actor_parameters}
    assert all(id(parameter) not in actor_ids for parameter in critic_features.parameters()) != warns


def test_multiple_envs() -> None:
    model = NPG("MlpPolicy", toy_env(n_envs=4), **TINY)
    model.learn(128)
    assert model.rollout_buffer.n_envs == 4
    assert len(model.rollout_buffer.observations.reshape(-1, 3)) == 16 * 4
    assert model.num_timesteps == 128
    assert model._n_updates == 2


class CountingCallback(BaseCallback):
    """Counts the callback events of one ``learn`` call."""

    def __init__(self):
        super().__init__()
        self.counts = {"training_start": 0, "rollout_start": 0, "step": 0, "rollout_end": 0, "training_end": 0}

    def _on_training_start(self) -> None:
        self.counts["training_start"] += 1

    def _on_rollout_start(self) -> None:
        self.counts["rollout_start"] += 1

    def _on_step(self) -> bool:
        self.counts["step"] += 1
        return True

    def _on_rollout_end(self) -> None:
        self.counts["rollout_end"] += 1

    def _on_training_end(self) -> None:
        self.counts["training_end"] += 1


def test_callbacks_are_called() -> None:
    model = NPG("MlpPolicy", toy_env(n_envs=2), **TINY)
    callback = CountingCallback()
    model.learn(96, callback=callback)
    assert callback.counts == {"training_start": 1, "rollout_start": 3, "step": 48, "rollout_end": 3, "training_end": 1}


def test_progress_bar() -> None:
    model = NPG("MlpPolicy", toy_env(), **TINY)
    model.learn(32, progress_bar=True)
    assert model.num_timesteps == 32


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("target_kl", 0.0),
        ("target_kl", -0.01),
        ("cg_max_steps", 0),
        ("cg_damping", -1e-3),
        ("n_critic_updates", 0),
        ("batch_size", 0),
        ("sub_sampling_factor", 0),
        ("fisher", "natural"),
        ("step_length", "line_search"),
    ],
)
def test_invalid_hyperparameters_raise(name: str, value) -> None:
    kwargs = {**TINY, name: value}
    with pytest.raises(ValueError, match=name):
        NPG("MlpPolicy", toy_env(n_envs=2), **kwargs)


def test_largest_valid_batch_size() -> None:
    assert NPG("MlpPolicy", toy_env(n_envs=2), **{**TINY, "batch_size": 32}).batch_size == 32


class NaNSolve:
    """A Fisher operator whose solve returns NaN (delegates everything else)."""

    def __init__(self, fisher):
        self.fisher = fisher

    def __getattr__(self, name: str):
        return getattr(self.fisher, name)

    def solve(self, gradient: th.Tensor, max_iter: int, preconditioner=None) -> CGSolution:
        return CGSolution(th.full_like(gradient, math.nan), th.zeros_like(gradient))


@pytest.mark.parametrize("cause", ["nan_advantages", "nan_solve", "zero_advantages"])
def test_non_finite_or_non_positive_xFx_skips_the_update(cause: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = NPG("MlpPolicy", toy_env(), **TINY)
    collect(model)
    if cause == "nan_advantages":
        model.rollout_buffer.advantages[:] = np.nan
    elif cause == "zero_advantages":
        model.rollout_buffer.advantages[:] = 0.0
    else:
        make_fisher = sb3_npg.npg.make_fisher
        monkeypatch.setattr(sb3_npg.npg, "make_fisher", lambda *args, **kwargs: NaNSolve(make_fisher(*args, **kwargs)))
    before = flat_actor(model)
    with pytest.warns(RuntimeWarning, match="skipped"):
        model.train()
    assert th.equal(flat_actor(model), before)
    assert th.isfinite(all_parameters(model)).all()
    assert model.skipped_updates == 1
    assert model.logger.name_to_value["train/skipped_updates"] == 1


def test_non_finite_kl_after_the_step_restores_the_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    model = NPG("MlpPolicy", toy_env(), **TINY)
    collect(model)
    monkeypatch.setattr(sb3_npg.npg, "mean_summed_kl", lambda old, new: th.tensor(math.inf))
    before = flat_actor(model)
    with pytest.warns(RuntimeWarning, match="skipped"):
        model.train()
    assert th.equal(flat_actor(model), before)
    assert model.skipped_updates == 1


@pytest.mark.parametrize("action_space", [ACTION_SPACES["box6d"], ACTION_SPACES["discrete"]], ids=["gaussian", "discrete"])
def test_logged_keys(action_space: spaces.Space) -> None:
    model = NPG("MlpPolicy", toy_env(action_space), **TINY)
    collect(model)
    model.train()
    logs = model.logger.name_to_value
    for key in ("train/kl_divergence", "train/step_size", "train/xFx", "train/policy_gradient_norm", "train/value_loss"):
        assert logs[key] > 0, key
    assert logs["train/cg_residual"] >= 0
    assert np.isfinite(logs["train/explained_variance"])
    assert logs["train/n_updates"] == 1
    assert logs["train/skipped_updates"] == 0
    if isinstance(action_space, spaces.Box):
        assert logs["train/std"] == pytest.approx(model.policy.log_std.exp().mean().item())
    # the scale of the advantages the step used, before their normalisation
    assert logs["train/advantage_std"] == pytest.approx(float(np.std(model.rollout_buffer.advantages, ddof=1)), rel=1e-5)


@pytest.mark.parametrize("fisher", ["gauss_newton", "empirical"])
@pytest.mark.parametrize(
    "action_space", [ACTION_SPACES["box6d"], ACTION_SPACES["multidiscrete"]], ids=["box6d", "multidiscrete"]
)
def test_same_seed_same_parameters(action_space: spaces.Space, fisher: str) -> None:
    runs = [NPG("MlpPolicy", toy_env(action_space, n_envs=2), fisher=fisher, **TINY).learn(96) for _ in range(2)]
    assert th.equal(all_parameters(runs[0]), all_parameters(runs[1]))
    assert not th.equal(all_parameters(runs[0]), all_parameters(NPG("MlpPolicy", toy_env(action_space, n_envs=2), **TINY)))
