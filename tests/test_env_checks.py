"""
NPG's NaN/inf check (:class:`~sb3_npg.env_checks.FiniteCheck`) is transparent: every ``VecEnv`` method and attribute
behaves as on the environment it checks, for ``DummyVecEnv`` and ``SubprocVecEnv``, and under SB3's wrappers, on the
installed SB3 (``has_attr`` is a ``VecEnv`` method from SB3 2.6 on: below, the check has none either), and MaskableNPG
answers an environment without action masks as the installed sb3-contrib's MaskablePPO does.
"""

import contextlib
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib import MaskablePPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper, VecNormalize

from sb3_npg import NPG, MaskableNPG
from sb3_npg.env_checks import FiniteCheck, with_finite_check

VEC_ENV_CLASSES = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
SB3_HAS_ATTR = hasattr(VecEnv, "has_attr")
"""Whether the installed SB3's VecEnv has ``has_attr`` (added in SB3 2.6)."""


class StateImage(gym.Wrapper):
    """CartPole's ``rgb_array`` rendering without pygame (which the core install lacks): the state as a 2x2 image."""

    def render(self) -> np.ndarray:
        state = np.asarray(self.unwrapped.state, dtype=np.float64)  # type: ignore[attr-defined]
        return np.clip(128 + 100 * state, 0, 255).astype(np.uint8).reshape(2, 2, 1).repeat(3, axis=2)


def make_env(
    vec_env_cls: type[VecEnv], env_id: str = "CartPole-v1", wrapper_class: type[gym.Wrapper] | None = None, **env_kwargs
) -> VecEnv:
    # fork: the workers start in milliseconds (they import nothing; torch is not used in them)
    vec_env_kwargs = {"start_method": "fork"} if vec_env_cls is SubprocVecEnv else None
    return make_vec_env(
        env_id,
        n_envs=2,
        seed=0,
        vec_env_cls=vec_env_cls,
        vec_env_kwargs=vec_env_kwargs,
        env_kwargs=env_kwargs,
        wrapper_class=wrapper_class,
    )


@pytest.fixture(params=list(VEC_ENV_CLASSES))
def venv(request: pytest.FixtureRequest) -> Iterator[VecEnv]:
    env = make_env(VEC_ENV_CLASSES[request.param], wrapper_class=StateImage, render_mode="rgb_array")
    yield env
    env.close()


def test_every_vec_env_wrapper_method_is_forwarded() -> None:
    """Each method SB3's VecEnvWrapper forwards (this SB3's list, so a new one is caught) is FiniteCheck's own."""
    forwarded = {name for name, value in vars(VecEnvWrapper).items() if callable(value) and not name.startswith("__")}
    forwarded -= {"getattr_recursive", "getattr_depth_check", "_get_all_attributes"}  # a wrapper's lookup machinery
    assert {"get_attr", "set_attr", "env_method", "env_is_wrapped", "seed", "set_options"} <= forwarded
    assert ("has_attr" in forwarded) is SB3_HAS_ATTR
    assert forwarded <= set(vars(FiniteCheck)), forwarded - set(vars(FiniteCheck))


def assert_same_has_attr(checked: VecEnv, venv: VecEnv) -> None:
    """``has_attr`` as on ``venv``: its answers where it has one (a SubprocVecEnv's worker survives a missing
    attribute), else none (``AttributeError``, as ``venv``'s)."""
    assert hasattr(checked, "has_attr") is hasattr(venv, "has_attr") is SB3_HAS_ATTR
    if SB3_HAS_ATTR:
        assert checked.has_attr("spec") and venv.has_attr("spec")
        assert not checked.has_attr("action_masks") and not venv.has_attr("action_masks")
    else:
        with pytest.raises(AttributeError, match="has_attr"):
            checked.has_attr  # noqa: B018


def test_methods_behave_as_on_the_checked_env(venv: VecEnv) -> None:
    checked = FiniteCheck(venv)
    assert checked.unwrapped is venv
    assert_same_has_attr(checked, venv)
    assert [spec.id for spec in checked.get_attr("spec")] == ["CartPole-v1"] * 2  # the workers answer the next question
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
    assert len(images) == 2 and images[0] is not None and images[0].shape == (2, 2, 3)
    np.testing.assert_array_equal(images[1], venv.get_images()[1])
    np.testing.assert_array_equal(checked.render(), venv.render())  # tiled images
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
    assert_same_has_attr(normalized, VecNormalize(make_env(DummyVecEnv)))
    with pytest.raises(AttributeError):
        normalized.no_such_attribute  # noqa: B018


def learn_without_masks(algorithm: type[MaskablePPO] | type[MaskableNPG]) -> tuple[BaseException, bool]:
    """``algorithm`` learns with masking on a SubprocVecEnv whose environments have no ``action_masks``: the exception
    raised, and whether the workers still answer afterwards (then learning without masking works)."""
    env = make_env(SubprocVecEnv)
    try:
        model = algorithm("MlpPolicy", env, n_steps=16, batch_size=32, seed=0)
        with pytest.raises(Exception) as raised:
            model.learn(32)
        try:
            assert [spec.id for spec in env.get_attr("spec")] == ["CartPole-v1"] * 2
        except (EOFError, BrokenPipeError, ConnectionResetError):  # the masking check killed the workers
            return raised.value, False
        env.reset()
        model.learn(32, use_masking=False)  # the environments are still usable
        assert model.num_timesteps == 32
        return raised.value, True
    finally:
        with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):
            env.close()


def test_maskable_npg_on_subproc_env_without_masks_answers_as_maskable_ppo() -> None:
    """As the installed sb3-contrib's MaskablePPO: from sb3-contrib 2.6 (VecEnv.has_attr) a ValueError from the masking
    check, the workers kept; sb3-contrib 2.4's check asks get_attr, whose missing attribute kills the workers (EOFError)."""
    expected, expected_alive = learn_without_masks(MaskablePPO)
    error, alive = learn_without_masks(MaskableNPG)
    assert (type(error), alive) == (type(expected), expected_alive), (error, expected)
    if SB3_HAS_ATTR:
        assert isinstance(error, ValueError) and "does not support action masking" in str(error) and alive
    else:
        assert isinstance(error, EOFError) and not alive


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
        assert_same_has_attr(model.env, env)
        assert model.env.unwrapped is env
        model.learn(32)
        assert model.env.env_is_wrapped(gym.Wrapper) == [True, True]
    finally:
        env.close()
