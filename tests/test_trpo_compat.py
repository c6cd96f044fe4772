"""
``trpo_to_npg_kwargs``: against sb3-contrib's TRPO itself, NPG with the mapped arguments takes TRPO's step.

Each one-update test builds TRPO and NPG with the same weights, lets TRPO collect one rollout and update once, gives
NPG a copy of that rollout buffer and updates it once, then compares the changes of the actor parameters: cosine
>= 0.9999 and the same length within 1e-3, after TRPO's ``0.8^k`` backtracking (``k`` found by TRPO's own
acceptance rule applied to NPG's step). The whole-run test trains both from one seed and compares every rollout and
per-update log. Then the argument handling: defaults, dropped and rejected arguments.
"""

import copy
import inspect
from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import TRPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import kl_divergence
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

import sb3_npg
import sb3_npg.trpo_compat
from sb3_npg import NPG, trpo_to_npg_kwargs
from sb3_npg.trpo_compat import kl_terms, same_name_arguments, trpo_defaults
from tests.envs import ToyEnv

TINY = {"n_steps": 64, "batch_size": 64, "n_critic_updates": 1, "policy_kwargs": {"net_arch": [8]}}

CASES = {
    "box3d": (spaces.Box(-1, 1, (3,), np.float32), {}),
    "box6d": (spaces.Box(-1, 1, (6,), np.float32), {}),
    "gsde": (spaces.Box(-1, 1, (3,), np.float32), {"use_sde": True}),
    "discrete": (spaces.Discrete(3), {}),
    "multidiscrete": (spaces.MultiDiscrete([3, 2, 4]), {}),
    "multibinary": (spaces.MultiBinary(4), {}),
}
EXPECTED_TERMS = {"box3d": 3, "box6d": 6, "gsde": 3, "discrete": 1, "multidiscrete": 1, "multibinary": 4}


class CopyRolloutBuffer(BaseCallback):
    """Keeps a copy of the rollout buffer as collected, before ``train()`` reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer: Any = None

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.buffer = copy.deepcopy(self.model.rollout_buffer)


def actor_vector(policy: Any) -> th.Tensor:
    """TRPO's actor parameters (every parameter not named ``value``), flattened in ``named_parameters`` order."""
    return th.cat([p.detach().reshape(-1) for name, p in policy.named_parameters() if "value" not in name]).clone()


def set_actor_vector(policy: Any, vector: th.Tensor) -> None:
    start = 0
    with th.no_grad():
        for name, parameter in policy.named_parameters():
            if "value" not in name:
                parameter.copy_(vector[start : start + parameter.numel()].view_as(parameter))
                start += parameter.numel()


def trpo_backtracks(trpo: TRPO, buffer: Any, before: th.Tensor, full_step: th.Tensor) -> int:
    """
    How many times TRPO's line search would shrink ``full_step`` (its acceptance rule: mean KL per term below
    ``target_kl`` and a better surrogate objective), evaluated with TRPO's policy (its actor is left at ``before``).
    """
    policy = trpo.policy
    set_actor_vector(policy, before)
    data = next(buffer.get(batch_size=None))
    actions = data.actions.long().flatten() if isinstance(trpo.action_space, spaces.Discrete) else data.actions
    advantages = (data.advantages - data.advantages.mean()) / (data.advantages.std() + 1e-8)
    with th.no_grad():
        old = copy.copy(policy.get_distribution(data.observations))
        objective = (advantages * th.exp(old.log_prob(actions) - data.old_log_prob)).mean()
        for k in range(trpo.line_search_max_iter):
            set_actor_vector(policy, before + trpo.line_search_shrinking_factor**k * full_step)
            new = policy.get_distribution(data.observations)
            new_objective = (advantages * th.exp(new.log_prob(actions) - data.old_log_prob)).mean()
            if kl_divergence(new, old).mean() < trpo.target_kl and new_objective > objective:
                return k
    raise AssertionError("TRPO's line search would reject the step: nothing to compare")


def one_update_each(action_space: spaces.Space, trpo_kwargs: dict[str, Any], seed: int = 0) -> tuple[th.Tensor, ...]:
    """TRPO's and NPG's changes of the actor parameters after one update from the same weights and rollout."""
    make_env = lambda: make_vec_env(ToyEnv, n_envs=1, seed=seed, env_kwargs={"action_space": action_space})  # noqa: E731
    trpo = TRPO("MlpPolicy", make_env(), seed=seed, **trpo_kwargs)
    npg = NPG(env=make_env(), **trpo_to_npg_kwargs({"policy": "MlpPolicy", "seed": seed, **trpo_kwargs}, action_space))
    npg.policy.load_state_dict(trpo.policy.state_dict())
    npg.set_logger(configure(None, []))
    before = actor_vector(trpo.policy)
    assert th.equal(before, actor_vector(npg.policy))

    rollout = CopyRolloutBuffer()
    trpo.learn(trpo.n_steps, callback=rollout)
    assert trpo.logger.name_to_value["train/is_line_search_success"] == 1.0
    npg.rollout_buffer = rollout.buffer
    npg.train()
    trpo_step = actor_vector(trpo.policy) - before
    npg_step = actor_vector(npg.policy) - before
    return trpo_step, npg_step, trpo_backtracks(trpo, rollout.buffer, before, npg_step)


def cosine(a: th.Tensor, b: th.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


@pytest.mark.parametrize("case", list(CASES))
def test_npg_takes_trpos_step(case: str) -> None:
    """Same direction and length as TRPO's update (up to its 0.8^k backtracking), for every action space."""
    action_space, extra = CASES[case]
    trpo_step, npg_step, backtracks = one_update_each(action_space, {**TINY, **extra})
    assert trpo_step.norm() > 0
    assert cosine(trpo_step, npg_step) >= 0.9999
    expected_length = npg_step.norm() * 0.8**backtracks
    assert trpo_step.norm() / expected_length == pytest.approx(1.0, abs=1e-3)


def test_npg_takes_trpos_step_with_zoo_like_settings() -> None:
    """TRPO's Zoo MuJoCo settings (more CG steps, a non-default damping and KL) on a 6-D Box: the same step."""
    settings = {**TINY, "cg_max_steps": 25, "cg_damping": 0.05, "target_kl": 0.02}
    trpo_step, npg_step, backtracks = one_update_each(CASES["box6d"][0], settings, seed=1)
    assert cosine(trpo_step, npg_step) >= 0.9999
    assert trpo_step.norm() / (npg_step.norm() * 0.8**backtracks) == pytest.approx(1.0, abs=1e-3)


def test_npg_takes_trpos_step_after_trpo_backtracks() -> None:
    """A KL budget the quadratic model overshoots: TRPO shrinks its step, NPG's full step times 0.8^k is TRPO's."""
    trpo_step, npg_step, backtracks = one_update_each(CASES["box3d"][0], {**TINY, "target_kl": 30.0})
    assert backtracks >= 1
    assert cosine(trpo_step, npg_step) >= 0.9999
    assert trpo_step.norm() / (npg_step.norm() * 0.8**backtracks) == pytest.approx(1.0, abs=1e-3)


class RolloutsAndLogs(BaseCallback):
    """Keeps each rollout's observations, and the per-update logs as they stand when the next rollout ends."""

    def __init__(self) -> None:
        super().__init__()
        self.observations: list[np.ndarray] = []
        self.logs: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.observations.append(self.model.rollout_buffer.observations.copy())
        if self.model._n_updates > len(self.logs):
            self.logs.append(dict(self.model.logger.name_to_value))


def test_whole_run_equals_trpos(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Seeded alike, NPG with TRPO's settings trains as TRPO does, rollout after rollout: the critic's minibatches are
    numpy's permutations of ``RolloutBuffer.get(batch_size)``, as TRPO's, so both draw the same numbers from numpy's
    and torch's generators (TRPO's conjugate gradient, which starts from ``1e-4 * randn``, starts from 0 here, as
    NPG's). What is left is float rounding (a different CG code and KL direction), which Hopper's dynamics amplify
    slowly: observations within 5e-3 over six rollouts (a different random stream parts them by > 1 at once).
    """
    pytest.importorskip("mujoco")
    env_id, n_rollouts = "Hopper-v5", 6
    settings = {"n_steps": 512, "batch_size": 128, "policy_kwargs": {"net_arch": [32, 32]}, "seed": 3}
    with monkeypatch.context() as patch:  # TRPO's CG start, 1e-4 * randn_like(b), at 0 (and no draw)
        patch.setattr(th, "randn_like", lambda tensor, **_: th.zeros_like(tensor))
        trpo = TRPO("MlpPolicy", env_id, **settings)
        trpo_run = RolloutsAndLogs()
        trpo.learn(n_rollouts * trpo.n_steps, callback=trpo_run)
    npg = NPG(env=env_id, **trpo_to_npg_kwargs({"policy": "MlpPolicy", **settings}, trpo.action_space))
    npg_run = RolloutsAndLogs()
    npg.learn(n_rollouts * npg.n_steps, callback=npg_run)

    assert len(trpo_run.observations) == len(npg_run.observations) == n_rollouts
    for trpo_observations, npg_observations in zip(trpo_run.observations, npg_run.observations, strict=True):
        np.testing.assert_allclose(npg_observations, trpo_observations, rtol=0, atol=5e-3)
    assert len(trpo_run.logs) == len(npg_run.logs) == n_rollouts - 1
    d = kl_terms(trpo.action_space)
    for trpo_logs, npg_logs in zip(trpo_run.logs, npg_run.logs, strict=True):
        assert trpo_logs["train/is_line_search_success"] == 1.0  # TRPO took its full step, as NPG does
        assert npg_logs["train/n_updates"] == trpo_logs["train/n_updates"]
        assert npg_logs["train/value_loss"] == pytest.approx(trpo_logs["train/value_loss"], rel=1e-4)
        assert npg_logs["train/explained_variance"] == pytest.approx(trpo_logs["train/explained_variance"], abs=1e-4)
        assert npg_logs["train/std"] == pytest.approx(trpo_logs["train/std"], rel=1e-4)
        # TRPO logs KL(new || old) per action dimension, NPG KL(old || new) summed over them: equal to second order
        # (they differ by up to 6 % here)
        assert npg_logs["train/kl_divergence"] == pytest.approx(d * trpo_logs["train/kl_divergence_loss"], rel=0.1)


@pytest.mark.parametrize("case", list(CASES))
def test_target_kl_and_damping_scale_with_the_kl_terms(case: str) -> None:
    action_space, _ = CASES[case]
    assert kl_terms(action_space) == EXPECTED_TERMS[case]
    npg_kwargs = trpo_to_npg_kwargs({"target_kl": 0.02, "cg_damping": 0.05}, action_space)
    d = EXPECTED_TERMS[case]
    assert npg_kwargs["target_kl"] == pytest.approx(0.02 * d, rel=1e-12)
    assert npg_kwargs["cg_damping"] == pytest.approx(0.05 * d, rel=1e-12)
    assert npg_kwargs["damped_step_size"] is True
    assert npg_kwargs["step_length"] == "quadratic"


def test_scaled_values_read_as_written() -> None:
    """0.1 * 3 is saved as 0.3, not 0.30000000000000004 (what a config.yml shows)."""
    npg_kwargs = trpo_to_npg_kwargs({"cg_damping": 0.1}, spaces.Box(-1, 1, (3,)))
    assert repr(npg_kwargs["cg_damping"]) == "0.3"


def test_defaults_are_trpos_when_absent() -> None:
    """Every update argument is in the result with TRPO's default (from its signature), not NPG's."""
    signature = inspect.signature(TRPO.__init__).parameters
    npg_kwargs = trpo_to_npg_kwargs({}, spaces.Discrete(2))
    for name in same_name_arguments():
        assert npg_kwargs[name] == signature[name].default, name
    assert npg_kwargs["target_kl"] == signature["target_kl"].default
    assert npg_kwargs["cg_damping"] == signature["cg_damping"].default
    assert {"learning_rate", "n_steps", "batch_size", "gamma", "gae_lambda", "cg_max_steps", "n_critic_updates"} <= set(
        npg_kwargs
    )


def trpo_with_signature(parameters: list[inspect.Parameter]) -> type[TRPO]:
    """Another version of TRPO, as the mapping sees it: a subclass whose constructor has the signature ``parameters``."""

    class OtherTRPO(TRPO):
        pass

    OtherTRPO.__init__ = lambda self, *args, **kwargs: None  # type: ignore[method-assign]  # never called
    OtherTRPO.__init__.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return OtherTRPO


def test_defaults_follow_the_installed_trpo(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TRPO whose signature has other defaults gives other values: they are read, not copied."""
    parameters = dict(inspect.signature(TRPO.__init__).parameters)
    parameters["target_kl"] = parameters["target_kl"].replace(default=0.5)
    parameters["n_steps"] = parameters["n_steps"].replace(default=7)
    monkeypatch.setattr(sb3_npg.trpo_compat, "TRPO", trpo_with_signature(list(parameters.values())))
    assert trpo_defaults()["target_kl"] == 0.5
    npg_kwargs = trpo_to_npg_kwargs({}, spaces.Box(-1, 1, (2,)))
    assert (npg_kwargs["target_kl"], npg_kwargs["n_steps"]) == (1.0, 7)


def test_given_values_are_carried_over() -> None:
    given = {
        "learning_rate": 3e-4,
        "n_steps": 1024,
        "batch_size": 256,
        "gamma": 0.995,
        "gae_lambda": 0.9,
        "cg_max_steps": 25,
        "n_critic_updates": 20,
        "normalize_advantage": False,
        "use_sde": True,
        "sde_sample_freq": 4,
        "policy": "MlpPolicy",
        "policy_kwargs": {"net_arch": [32]},
        "seed": 3,
        "verbose": 1,
        "device": "cpu",
    }
    npg_kwargs = trpo_to_npg_kwargs(given, spaces.Box(-1, 1, (2,)))
    assert {name: npg_kwargs[name] for name in given} == given
    NPG(env=make_vec_env(ToyEnv, env_kwargs={"action_space": spaces.Box(-1, 1, (2,))}), **npg_kwargs)  # NPG takes them


def test_run_arguments_are_not_filled_in() -> None:
    """Logging, seed, device and the like are passed on when given only (RL Zoo sets them itself)."""
    npg_kwargs = trpo_to_npg_kwargs({}, spaces.Discrete(2))
    assert not {"policy", "env", "seed", "verbose", "device", "tensorboard_log", "policy_kwargs"} & set(npg_kwargs)


def test_line_search_arguments_are_dropped() -> None:
    npg_kwargs = trpo_to_npg_kwargs({"line_search_shrinking_factor": 0.5, "line_search_max_iter": 3}, spaces.Discrete(2))
    assert not {"line_search_shrinking_factor", "line_search_max_iter"} & set(npg_kwargs)
    assert "line search" in (trpo_to_npg_kwargs.__doc__ or "")


def test_every_argument_of_the_installed_trpo_is_mapped() -> None:
    """A TRPO argument this mapping does not know would be rejected: the installed TRPO has none."""
    known = {*same_name_arguments(), *sb3_npg.trpo_compat.SCALED_BY_KL_TERMS, *sb3_npg.trpo_compat.LINE_SEARCH_ARGUMENTS}
    known |= set(sb3_npg.trpo_compat.RUN_ARGUMENTS)
    assert set(inspect.signature(TRPO.__init__).parameters) - {"self"} == known


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"clip_range": 0.2, "n_epochs": 10}, ["'clip_range' (a PPO/A2C argument)", "'n_epochs' (a PPO/A2C argument)"]),
        ({"ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5}, ["'ent_coef'", "'vf_coef'", "'max_grad_norm'"]),
        ({"clip_range_vf": None, "target_kl": 0.01}, ["'clip_range_vf' (a PPO/A2C argument)"]),
        ({"cg_iters": 10}, ["'cg_iters'"]),
        ({"damped_step_size": True}, ["'damped_step_size'"]),  # NPG's own, not TRPO's
    ],
)
def test_arguments_trpo_does_not_take_are_rejected_by_name(arguments: dict[str, Any], named: list[str]) -> None:
    with pytest.raises(ValueError, match="Invalid TRPO arguments") as error:
        trpo_to_npg_kwargs(arguments, spaces.Discrete(2))
    for name in named:
        assert name in str(error.value)
    assert "target_kl" not in str(error.value).split(":")[0]


def test_an_argument_of_a_newer_trpo_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """An argument the installed TRPO takes but the mapping does not know has no counterpart: not silently dropped."""

    parameters = list(inspect.signature(TRPO.__init__).parameters.values())
    newer = inspect.Parameter("trust_region_shape", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="ball")
    monkeypatch.setattr(sb3_npg.trpo_compat, "TRPO", trpo_with_signature([*parameters[:-1], newer, parameters[-1]]))
    with pytest.raises(ValueError, match="'trust_region_shape' have no NPG counterpart"):
        trpo_to_npg_kwargs({"trust_region_shape": "ball"}, spaces.Discrete(2))


@pytest.mark.parametrize(
    "action_space", [spaces.Dict({"a": spaces.Discrete(2)}), spaces.Tuple([spaces.Discrete(2)])], ids=["dict", "tuple"]
)
def test_unsupported_action_space_is_rejected(action_space: spaces.Space) -> None:
    with pytest.raises(ValueError, match=r"Invalid action_space=.*Box, Discrete, MultiDiscrete or MultiBinary"):
        trpo_to_npg_kwargs({}, action_space)


def test_exported_from_the_package() -> None:
    assert "trpo_to_npg_kwargs" in sb3_npg.__all__
    assert sb3_npg.trpo_to_npg_kwargs is trpo_to_npg_kwargs


def test_input_is_not_modified() -> None:
    given = {"target_kl": 0.02, "line_search_max_iter": 3}
    trpo_to_npg_kwargs(given, spaces.Box(-1, 1, (3,)))
    assert given == {"target_kl": 0.02, "line_search_max_iter": 3}
