"""
``step_length="exact"``: the step along the natural gradient is rescaled until the measured KL equals ``target_kl``.

First the one-dimensional search on analytic KL curves, its worst cases included; then whole ``train()`` calls:
on a nearly deterministic categorical policy, where the quadratic model of the KL overshoots, the exact step lands
within the tolerance along the same direction, with at most 6 forward passes (counted by a hook); every Fisher
backend and action space; the fallbacks when no scale is inside the tolerance.
"""

import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

import sb3_npg.npg
from sb3_npg import NPG
from sb3_npg.step_length import search_step_scale
from tests.dense import flat_actor, summed_kl
from tests.envs import ACTION_SPACES, ToyEnv
from tests.helpers import collect, cosine

TOLERANCE = 0.05
TARGET = 0.01


class CountedKL:
    """An analytic ``alpha -> KL`` curve that counts its evaluations."""

    def __init__(self, curve):
        self.curve = curve
        self.calls: list[float] = []

    def __call__(self, scale: float) -> float:
        self.calls.append(scale)
        return self.curve(scale)


@pytest.mark.parametrize("exponent", [1.0, 1.5, 2.0, 3.0, 4.0])
@pytest.mark.parametrize("misestimate", [0.1, 0.5, 0.9, 1.0, 1.3, 3.0, 10.0])
def test_search_lands_on_power_laws(exponent: float, misestimate: float) -> None:
    """``KL = target (alpha / root)^p`` from a start ``misestimate`` times the root: within the tolerance, <= 6 calls."""
    kl_at = CountedKL(lambda scale: TARGET * (scale / 2.0) ** exponent)
    search = search_step_scale(kl_at, 2.0 * misestimate, TARGET, TOLERANCE, max_evaluations=6)
    assert search.converged
    assert abs(search.kl / TARGET - 1) <= TOLERANCE
    assert search.evaluations == len(kl_at.calls) <= 6
    assert kl_at.calls[0] == 2.0 * misestimate
    assert search.initial_kl == kl_at.curve(2.0 * misestimate)
    assert search.kl == kl_at.curve(search.scale)


def test_search_takes_the_quadratic_estimate_when_it_is_inside_the_tolerance() -> None:
    kl_at = CountedKL(lambda scale: 1.02 * TARGET * scale**2)
    search = search_step_scale(kl_at, 1.0, TARGET, TOLERANCE)
    assert (search.scale, search.evaluations, search.converged) == (1.0, 1, True)


def saturating_categorical(scale: float) -> float:
    """KL of a Bernoulli(0.999) against the one whose logit moved by ``-scale``: quadratic near 0, then ~linear."""
    logit = math.log(0.999 / 0.001)
    p, q = 0.999, 1 / (1 + math.exp(-(logit - scale)))
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def kinked(scale: float) -> float:
    """Linear up to 0.5, then of slope 6 in log-log space (the target at 0.56)."""
    return TARGET * scale if scale <= 0.5 else TARGET * 0.5 * (scale / 0.5) ** 6


@pytest.mark.parametrize(
    ("curve", "start"),
    [
        (saturating_categorical, 8.0),  # far beyond the quadratic region: the KL grows linearly there
        (lambda scale: math.inf if scale > 1.0 else TARGET * scale**2, 3.0),  # non-finite beyond a wall
        (lambda scale: math.nan if scale > 1.03 else TARGET * scale**2, 50.0),  # NaN beyond a wall, far away
        (lambda scale: TARGET * (scale**2 + scale**8), 2.0),  # steep growth past the quadratic region
        (kinked, 0.84),  # a secant across the kink leaves the bracket: bisection brings it back
    ],
    ids=["saturating-categorical", "inf-wall", "nan-wall", "steep", "kinked"],
)
def test_search_recovers_from_overshoots(curve, start: float) -> None:
    kl_at = CountedKL(curve)
    search = search_step_scale(kl_at, start, TARGET, TOLERANCE)
    assert search.converged, kl_at.calls
    assert abs(search.kl / TARGET - 1) <= TOLERANCE
    assert len(kl_at.calls) <= 6


def test_search_without_a_scale_inside_keeps_the_largest_below() -> None:
    """A KL that jumps over the tolerance band: never ends above it, keeps the largest scale below, not converged."""
    kl_at = CountedKL(lambda scale: 0.5 * TARGET * scale**2 if scale < 1.0 else 3 * TARGET)
    search = search_step_scale(kl_at, 1.5, TARGET, TOLERANCE)
    assert not search.converged
    assert search.evaluations == len(kl_at.calls) == 6
    below = [scale for scale in kl_at.calls if scale < 1.0]
    assert search.scale == max(below)
    assert search.kl == kl_at.curve(search.scale) <= TARGET


@pytest.mark.parametrize("curve", [lambda scale: math.inf, lambda scale: 1e6 * TARGET], ids=["inf", "huge"])
def test_search_with_every_scale_above_takes_no_step(curve) -> None:
    search = search_step_scale(CountedKL(curve), 1.0, TARGET, TOLERANCE)
    assert (search.scale, search.kl, search.evaluations, search.converged) == (0.0, 0.0, 6, False)


def nearly_deterministic_cartpole(**kwargs) -> NPG:
    """
    CartPole with a policy choosing action 0 with probability ~0.993 (logit bias 5), its rollout collected, and
    advantages that favour the rare action 1 (-1 for action 0, +1 for action 1, not normalised): the step moves
    probability towards the rare action, where the KL grows faster than its quadratic model (towards the
    dominant action it grows slower), whatever the sampled states.
    """
    model = NPG(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        n_steps=256,
        batch_size=256,
        normalize_advantage=False,
        policy_kwargs={"net_arch": [16]},
        **kwargs,
    )
    with th.no_grad():
        model.policy.action_net.bias.copy_(th.tensor([5.0, 0.0]))
    collect(model)
    buffer = model.rollout_buffer
    buffer.advantages[:] = np.where(buffer.actions[..., 0] == 1, 1.0, -1.0)
    return model


def torch_distributions(model: NPG, observations) -> list[th.distributions.Distribution]:
    """The policy's torch distributions on ``observations`` (a list of categoricals for MultiDiscrete), no graph."""
    with th.no_grad():
        inner = model.policy.get_distribution(observations).distribution
    return list(inner) if isinstance(inner, list) else [inner]


class Update:
    """One ``train()`` from a saved policy state: the actor's change, the KL it moved, the forward passes of the actor."""

    def __init__(self, model: NPG, state: dict, step_length: str):
        model.policy.load_state_dict(state)
        model.step_length = step_length
        observations = next(model.rollout_buffer.get(batch_size=None)).observations
        old = torch_distributions(model, observations)
        before = flat_actor(model)
        forward_passes = []
        hook = model.policy.action_net.register_forward_hook(lambda *_: forward_passes.append(1))
        np.random.seed(0)  # the rollout buffer's shuffle
        model.train()
        hook.remove()
        self.change = flat_actor(model) - before
        self.kl = summed_kl(old, torch_distributions(model, observations)).item()
        self.forward_passes = len(forward_passes)
        self.logs = dict(model.logger.name_to_value)


@pytest.mark.parametrize("fisher", ["gauss_newton", "hessian", "empirical"])
def test_exact_step_lands_where_the_quadratic_model_overshoots(fisher: str) -> None:
    """
    Quadratic misses the tolerance (KL > 1.5 target_kl); exact lands within 5 %, along the same direction
    (cosine 1), with at most 6 forward passes of the actor for the KL, one of which the quadratic mode makes too.
    """
    model = nearly_deterministic_cartpole(fisher=fisher, target_kl=TARGET)
    state = {name: value.clone() for name, value in model.policy.state_dict().items()}
    quadratic = Update(model, state, "quadratic")
    exact = Update(model, state, "exact")

    if fisher == "empirical":  # a sample estimate of F from the few sampled rare actions: the miss may go either way
        assert abs(quadratic.kl / TARGET - 1) > 3 * TOLERANCE
    else:
        assert quadratic.kl / TARGET > 1.5
    assert abs(exact.kl / TARGET - 1) <= TOLERANCE
    assert exact.logs["train/kl_divergence"] == pytest.approx(exact.kl, rel=1e-5)
    assert cosine(exact.change, quadratic.change) == pytest.approx(1.0, abs=1e-6)
    assert exact.change.norm() / quadratic.change.norm() == pytest.approx(
        exact.logs["train/step_size"] / quadratic.logs["train/step_size"], rel=1e-5
    )
    assert 2 <= exact.forward_passes - quadratic.forward_passes + 1 == exact.logs["train/kl_evaluations"] <= 6
    assert exact.logs["train/quadratic_kl_ratio"] == pytest.approx(quadratic.kl / TARGET, rel=1e-4)
    assert exact.logs["train/kl_search_failures"] == model.kl_search_failures == 0


@pytest.mark.parametrize(
    ("action_space", "use_sde"),
    [
        (ACTION_SPACES["box6d"], False),
        (ACTION_SPACES["box1d"], True),
        (ACTION_SPACES["multidiscrete"], False),
        (ACTION_SPACES["multibinary"], False),
        (ACTION_SPACES["discrete"], False),
    ],
    ids=["gaussian", "gsde", "multidiscrete", "multibinary", "discrete"],
)
def test_exact_step_every_action_space(action_space: spaces.Space, use_sde: bool) -> None:
    """A ``target_kl`` of 1 (far outside the quadratic region): the search runs and lands within 5 %."""
    env = make_vec_env(ToyEnv, n_envs=1, seed=0, env_kwargs={"action_space": action_space})
    model = NPG("MlpPolicy", env, n_steps=64, batch_size=64, target_kl=1.0, use_sde=use_sde, seed=0, step_length="exact")
    collect(model)
    state = {name: value.clone() for name, value in model.policy.state_dict().items()}
    update = Update(model, state, "exact")
    assert abs(update.logs["train/quadratic_kl_ratio"] - 1) > TOLERANCE  # the search had work to do
    assert abs(update.kl - 1) <= TOLERANCE
    assert update.logs["train/kl_divergence"] == pytest.approx(update.kl, rel=1e-5)
    assert update.logs["train/kl_evaluations"] <= 6


def test_damped_step_size_only_moves_the_start_of_the_search() -> None:
    """With ``damped_step_size`` the exact step starts lower and lands on the same KL, along the same direction."""
    env = make_vec_env(ToyEnv, n_envs=1, seed=0, env_kwargs={"action_space": ACTION_SPACES["box6d"]})
    model = NPG("MlpPolicy", env, n_steps=64, batch_size=64, target_kl=0.05, cg_damping=0.5, seed=0)
    collect(model)
    state = {name: value.clone() for name, value in model.policy.state_dict().items()}
    undamped = Update(model, state, "exact")
    model.damped_step_size = True
    damped = Update(model, state, "exact")
    assert damped.logs["train/quadratic_kl_ratio"] < undamped.logs["train/quadratic_kl_ratio"] - TOLERANCE
    assert abs(damped.kl / 0.05 - 1) <= TOLERANCE
    assert cosine(damped.change, undamped.change) == pytest.approx(1.0, abs=1e-6)


def test_without_a_scale_inside_the_tolerance_the_actor_keeps_the_largest_safe_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A tolerance no step can meet, and 4 evaluations of which the last lands just above the target: the actor ends at
    the largest scale measured below the target (not the last one tried), its KL is the logged one, the failure counted.
    """
    monkeypatch.setattr(sb3_npg.npg, "EXACT_KL_TOLERANCE", 1e-12)
    monkeypatch.setattr(sb3_npg.npg, "EXACT_MAX_KL_EVALUATIONS", 4)
    tried: list[tuple[float, float]] = []

    def recording_search(kl_at, *args):
        def recorded_kl_at(scale: float) -> float:
            tried.append((scale, kl_at(scale)))
            return tried[-1][1]

        return search_step_scale(recorded_kl_at, *args)

    monkeypatch.setattr(sb3_npg.npg, "search_step_scale", recording_search)
    model = nearly_deterministic_cartpole(target_kl=TARGET)
    state = {name: value.clone() for name, value in model.policy.state_dict().items()}
    update = Update(model, state, "exact")
    assert len(tried) == update.logs["train/kl_evaluations"] == 4
    assert tried[-1][1] > TARGET  # the last scale tried is not the one to keep
    assert update.logs["train/step_size"] == max(scale for scale, kl in tried if kl <= TARGET)
    assert update.kl <= TARGET
    assert update.logs["train/kl_divergence"] == pytest.approx(update.kl, rel=1e-5)
    assert model.kl_search_failures == update.logs["train/kl_search_failures"] == 1
    assert model.skipped_updates == 0


def test_exact_step_with_every_scale_above_restores_the_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nearly_deterministic_cartpole(target_kl=TARGET, step_length="exact")
    monkeypatch.setattr(sb3_npg.npg, "mean_summed_kl", lambda old, new: th.tensor(math.inf))
    before = flat_actor(model)
    with pytest.warns(RuntimeWarning, match="skipped"):
        model.train()
    assert th.equal(flat_actor(model), before)
    assert model.skipped_updates == model.kl_search_failures == 1
    assert model.logger.name_to_value["train/kl_evaluations"] == 6
