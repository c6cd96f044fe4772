"""
MaskableNPG, RecurrentNPG and MaskableRecurrentNPG as NPG's variants: one constructor, whose arguments they pass
through and declare as their signature (what code written for MaskablePPO / RecurrentPPO, the RL Zoo bridge and the
documentation read), and sb3-contrib's rollout loops, which MaskableNPG and RecurrentNPG call on themselves: every
attribute those loops read must exist on the model.
"""

import inspect
import re

import numpy as np
import pytest
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete

from sb3_npg import NPG, MaskableNPG, MaskableRecurrentNPG, RecurrentNPG
from sb3_npg.maskable_recurrent import MaskableRecurrentActorCriticPolicy
from sb3_npg.zoo.validation import npg_arguments


def invalid_action_env() -> InvalidActionEnvDiscrete:
    return InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10)


def parameters(algorithm: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(algorithm).parameters)


def test_maskable_signature_is_npgs_without_gsde() -> None:
    npg = parameters(NPG)
    expected = [(name, p.kind, p.default) for name, p in npg.items() if name not in ("use_sde", "sde_sample_freq")]
    assert [(name, p.kind, p.default) for name, p in parameters(MaskableNPG).items()] == expected
    assert "use_sde" not in parameters(MaskablePPO)  # as MaskablePPO, which takes PPO's arguments but these


def test_recurrent_signature_is_npgs_with_recurrentppos_rollout_length() -> None:
    recurrent = parameters(RecurrentNPG)
    assert list(recurrent) == list(parameters(NPG))
    assert recurrent["n_steps"].default == parameters(RecurrentPPO)["n_steps"].default != parameters(NPG)["n_steps"].default
    assert all(recurrent[name].default == p.default for name, p in parameters(NPG).items() if name != "n_steps")


def test_maskable_recurrent_signature_is_recurrent_npgs_with_its_policy() -> None:
    """RecurrentNPG's order and defaults (RecurrentPPO's n_steps; use_sde kept for RecurrentPPO's code, False only)."""
    recurrent, maskable_recurrent = parameters(RecurrentNPG), parameters(MaskableRecurrentNPG)
    assert [(name, p.kind, p.default) for name, p in maskable_recurrent.items()] == [
        (name, p.kind, p.default) for name, p in recurrent.items()
    ]
    assert maskable_recurrent["policy"].annotation == str | type[MaskableRecurrentActorCriticPolicy]
    with pytest.raises(ValueError, match="use_sde"):
        MaskableRecurrentNPG("MlpLstmPolicy", invalid_action_env(), use_sde=True)


def test_the_zoo_bridge_reads_the_variants_arguments() -> None:
    assert npg_arguments(RecurrentNPG) == npg_arguments(NPG) == npg_arguments(MaskableRecurrentNPG)
    assert npg_arguments(MaskableNPG) == npg_arguments(NPG) - {"use_sde", "sde_sample_freq"}
    assert {"fisher", "cg_damping", "target_kl", "step_length", "num_threads"} <= npg_arguments(MaskableNPG)


def test_positional_arguments_bind_as_in_maskableppo() -> None:
    """``policy, env, learning_rate, n_steps, batch_size`` by position, as code written for MaskablePPO passes them."""
    env = invalid_action_env()
    positional = ("MlpPolicy", env, 3e-4, 64, 32)
    bound = inspect.signature(MaskableNPG).bind(*positional).arguments
    assert bound == inspect.signature(MaskablePPO).bind(*positional).arguments
    model = MaskableNPG(*positional, seed=0)
    assert (model.learning_rate, model.n_steps, model.batch_size) == (3e-4, 64, 32)


@pytest.mark.parametrize(
    ("algorithm", "policy", "env_id", "kwargs"),
    [
        (MaskableNPG, "MlpPolicy", None, {"use_sde": True}),  # not an argument of MaskableNPG, nor of MaskablePPO
        (MaskableNPG, "MlpPolicy", None, {"n_epochs": 5}),  # a PPO argument
        (RecurrentNPG, "MlpLstmPolicy", "CartPole-v1", {"clip_range": 0.2}),
        (MaskableRecurrentNPG, "MlpLstmPolicy", None, {"n_epochs": 5}),
    ],
)
def test_an_unknown_argument_is_a_type_error(algorithm: type[NPG], policy: str, env_id: str | None, kwargs: dict) -> None:
    env = env_id or invalid_action_env()
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        algorithm(policy, env, **kwargs)
    with pytest.raises(TypeError):
        algorithm(policy)  # env is missing
    with pytest.raises(TypeError):
        algorithm(policy, env, *range(len(parameters(algorithm))))  # too many positional arguments


def test_variant_arguments_reach_npg() -> None:
    model = RecurrentNPG("MlpLstmPolicy", "CartPole-v1", 3e-4, cg_damping=0.2, fisher="hessian", seed=0)
    assert (model.learning_rate, model.cg_damping, model.fisher, model.n_steps) == (3e-4, 0.2, "hessian", 128)
    with pytest.raises(ValueError, match="sub_sampling_factor"):
        RecurrentNPG("MlpLstmPolicy", "CartPole-v1", sub_sampling_factor=2)
    masked = MaskableRecurrentNPG("MlpLstmPolicy", invalid_action_env(), 3e-4, 64, cg_damping=0.2, seed=0)
    assert (masked.learning_rate, masked.n_steps, masked.cg_damping, masked.batch_size) == (3e-4, 64, 0.2, 128)
    with pytest.raises(ValueError, match="sub_sampling_factor"):  # RecurrentNPG's check, reached through it
        MaskableRecurrentNPG("MlpLstmPolicy", invalid_action_env(), sub_sampling_factor=2)
    with pytest.raises(ValueError, match="fisher"):
        MaskableNPG("MlpPolicy", invalid_action_env(), fisher="exact")


def attributes_read(method) -> set[str]:
    """The names ``self.<name>`` that a method's source reads."""
    return set(re.findall(r"\bself\.(\w+)", inspect.getsource(method)))


@pytest.mark.parametrize(
    ("borrowed", "model"),
    [
        (MaskablePPO.collect_rollouts, lambda: MaskableNPG("MlpPolicy", invalid_action_env())),
        (RecurrentPPO.collect_rollouts, lambda: RecurrentNPG("MlpLstmPolicy", "CartPole-v1")),
    ],
    ids=["MaskablePPO", "RecurrentPPO"],
)
def test_borrowed_rollout_loop_reads_only_what_the_model_has(borrowed, model) -> None:
    """
    The installed sb3-contrib's rollout loop, called on the NPG model, reads only attributes the model has (before its
    first ``learn``, ``_last_obs`` and ``_last_episode_starts`` are set up by ``learn``, as for sb3-contrib).
    """
    instance = model()
    instance._setup_learn(total_timesteps=1)
    read = attributes_read(borrowed)
    assert "policy" in read and "num_timesteps" in read  # the source was read
    missing = sorted(name for name in read if not hasattr(instance, name))
    assert not missing, f"{borrowed.__qualname__} reads what {type(instance).__name__} lacks: {missing}"
    assert instance.collect_rollouts(instance.env, *rollout_arguments(instance)) is True


def rollout_arguments(model: NPG) -> tuple:
    """A callback, the model's buffer and its size, as ``learn`` passes them to ``collect_rollouts``."""
    callback = model._init_callback(None)
    callback.on_training_start(locals(), globals())
    np.random.seed(0)
    return callback, model.rollout_buffer, model.n_steps
