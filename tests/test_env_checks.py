"""
NPG's NaN/inf check (:class:`~sb3_npg.env_checks.FiniteCheck`) is transparent: every ``VecEnv`` method and attribute
behaves as on the environment it checks, for ``DummyVecEnv`` and ``SubprocVecEnv``, and under SB3's wrappers.
"""

from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper, VecNormalize

from sb3_npg import NPG, MaskableNPG
from sb3_npg.env_checks import FiniteCheck, with_finite_check

VEC_ENV_CLASSES = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}


def make_env(vec_env_cls: type[VecEnv], env_id: str = "CartPole-v1", **env_kwargs) -> VecEnv:
    # fork: the workers start in milliseconds (they import nothing; torch is not used in them)
    vec_env_kwargs = {"start_method": "fork"} if vec_env_cls is SubprocVecEnv else None
    return make_vec_env(
        env_id, n_envs=2, seed=0, vec_env_cls=vec_env_cls, vec_env_kwargs=vec_env_kwargs, env_kwargs=env_kwargs
    )


@pytest.fixture(params=list(VEC_ENV_CLASSES))
def venv(request: pytest.FixtureRequest) -> Iterator[VecEnv]:
    env = make_env(VEC_ENV_CLASSES[request.param], render_mode="rgb_array")
    yield env
    env.close()


def test_every_vec_env_wrapper_method_is_forwarded() -> None:
    """Each method SB3's VecEnvWrapper forwards (this SB3's list, so a new one is caught) is FiniteCheck's own."""
    forwarded = {name for name, value in vars(VecEnvWrapper).items() if callable(value) and not name.startswith("__")}
    forwarded -= {"getattr_recursive", "getattr_depth_check", "_get_all_attributes"}  # a wrapper's lookup machinery
    assert {"has_attr", "get_attr", "set_attr", "env_method", "env_is_wrapped", "seed", "set_options"} <= forwarded
    assert forwarded <= set(vars(FiniteCheck)), forwarded - set(vars(FiniteCheck))


def test_methods_behave_as_on_the_checked_env(venv: VecEnv) -> None:
    checked = FiniteCheck(venv)
    assert checked.unwrapped is venv
    assert checked.has_attr("spec") and venv.has_attr("spec")
    assert not checked.has_attr("action_masks")  # a SubprocVecEnv's worker survives the question ...
    assert [spec.id for spec in checked.get_attr("spec")] == ["CartPole-v1"] * 2  # ... and answers the next one
    if isinstance(venv, DummyVecEnv):  # (a SubprocVecEnv's worker dies on get_attr of a missing attribute, as SB3's)
        with pytest.raises(AttributeError):
            checked.get_attr("no_such_attribute")
    checked.set_attr("custom", 3, indices=1)
    assert venv.get_attr("custom", indices=1) == [3]
    assert checked.env_method("get_wrapper_attr", "custom", indices=[1]) == [3]
    assert checked.env_is_wrapped(Monitor) == venv.env_is_wrapped(Monitor) == [True, True]
    assert checked.seed(5) == [5, 6]
    checked.set_options({"low": -0.01, "high": 0.01})
    observations = checked.reset()
    assert np.abs(observations).max() <= 0.01  # the options reached the environments
    assert checked.reset_infos == venv.reset_infos
    checked.seed(7)
    np.testing.assert_array_equal(checked.reset(), make_and_reset(type(venv), seed=7))
    images = checked.get_images()
    assert len(images) == 2 and images[0] is not None and images[0].ndim == 3
    assert checked.render().shape == venv.render().shape  # tiled images
    assert checked.render_mode == venv.render_mode == "rgb_array"
    assert checked.metadata == venv.metadata
    checked.close()
    assert venv.closed if isinstance(venv, SubprocVecEnv) else True


def make_and_reset(vec_env_cls: type[VecEnv], seed: int) -> np.ndarray:
    env = make_env(vec_env_cls)
    env.seed(seed)
    try:
        return env.reset()  # type: ignore[return-value]
    finally:
        env.close()


def test_attributes_through_wrappers_above() -> None:
    """VecNormalize above the check: its own attributes, the base env's through it, and SB3's unwrapped."""
    base = make_env(DummyVecEnv)
    normalized = with_finite_check(VecNormalize(base))
    assert isinstance(normalized, VecNormalize) and isinstance(normalized.venv, FiniteCheck)
    assert normalized.envs is base.envs  # DummyVecEnv's attribute, through VecNormalize and the check
    assert normalized.unwrapped is base
    assert normalized.obs_rms.mean.shape == (4,)
    assert normalized.has_attr("spec") and not normalized.has_attr("action_masks")
    with pytest.raises(AttributeError):
        normalized.no_such_attribute  # noqa: B018


def test_maskable_npg_on_subproc_env_without_masks_raises_and_keeps_the_workers() -> None:
    """As MaskablePPO: ValueError from the masking check; the worker processes still answer afterwards."""
    env = make_env(SubprocVecEnv)
    try:
        model = MaskableNPG("MlpPolicy", env, n_steps=16, batch_size=32, seed=0)
        with pytest.raises(ValueError, match="does not support action masking"):
            model.learn(32)
        assert [spec.id for spec in env.get_attr("spec")] == ["CartPole-v1"] * 2
        env.reset()
        model.learn(32, use_masking=False)  # the environments are still usable
        assert model.num_timesteps == 32
    finally:
        env.close()


def test_maskable_npg_on_subproc_env_with_masks_trains() -> None:
    env = make_vec_env(
        InvalidActionEnvDiscrete,
        n_envs=2,
        seed=0,
        env_kwargs={"dim": 4, "n_invalid_actions": 2},
        vec_env_cls=SubprocVecEnv,
        vec_env_kwargs={"start_method": "fork"},
    )
    try:
        model = MaskableNPG("MlpPolicy", env, n_steps=16, batch_size=32, seed=0).learn(64)
        assert model.num_timesteps == 64
    finally:
        env.close()


def test_npg_keeps_the_check_and_the_wrapped_env_answers() -> None:
    env = make_env(SubprocVecEnv)
    try:
        model = NPG("MlpPolicy", env, n_steps=16, batch_size=32, seed=0)
        assert isinstance(model.env, FiniteCheck) and model.get_env() is env
        assert not model.env.has_attr("action_masks")
        assert model.env.unwrapped is env
        model.learn(32)
        assert model.env.env_is_wrapped(gym.Wrapper) == [True, True]
    finally:
        env.close()
