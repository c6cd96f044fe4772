"""
``target_kl`` as a schedule of the progress remaining (like SB3's ``learning_rate`` and ``clip_range``): each
update's step is scaled to that update's value, logged as ``train/target_kl``; checked at construction; kept by
``save``/``load``; written ``lin_<number>`` in an RL Zoo entry.
"""

import math
import pathlib
import re
import warnings
from typing import Any

import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from sb3_npg import NPG, MaskableNPG, RecurrentNPG
from tests.envs import ACTION_SPACES, MaskedToyEnv
from tests.helpers import tiny_model, toy_env
from tests.torch_safety import needs_safe_torch


def linear(start: float, end: float = 0.0):
    """A schedule from ``start`` (progress remaining 1) to ``end`` (progress remaining 0)."""
    return lambda progress_remaining: end + (start - end) * progress_remaining


class UpdateLogs(BaseCallback):
    """The logs of every update and the actor before and after it, read when the next rollout starts."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: list[dict[str, Any]] = []
        self.progress: list[float] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.model._n_updates > len(self.logs):
            self.logs.append(dict(self.model.logger.name_to_value))
            self.progress.append(self.model._current_progress_remaining)


def train_logged(model: NPG, n_updates: int) -> list[dict[str, Any]]:
    """Train ``n_updates`` updates, the logs of each (the last one's read after ``learn``)."""
    logs = UpdateLogs()
    model.learn(n_updates * model.n_steps * model.n_envs, callback=logs)
    return [*logs.logs, dict(model.logger.name_to_value)]


@pytest.mark.parametrize("damped_step_size", [False, True])
def test_each_quadratic_step_is_scaled_to_its_updates_target(damped_step_size: bool) -> None:
    """
    The step size is ``sqrt(2 target_kl / xFx)`` with the schedule's value at that update's progress (logged): the
    quadratic model of the KL is the scheduled value, which falls from 0.05 to 0.01.
    """
    schedule = linear(0.05, 0.01)
    model = tiny_model("box6d", n_steps=32, target_kl=schedule, damped_step_size=damped_step_size, cg_damping=0.0)
    logs = train_logged(model, 4)
    targets = [log["train/target_kl"] for log in logs]
    # learn() sets the progress before each train(): 1 - timesteps / total, after 1, 2, 3, 4 rollouts
    assert targets == pytest.approx([schedule(1 - k / 4) for k in range(1, 5)], rel=1e-9)
    for log in logs:
        assert 0.5 * log["train/step_size"] ** 2 * log["train/xFx"] == pytest.approx(log["train/target_kl"], rel=1e-4)
    assert model.skipped_updates == 0


def test_exact_step_lands_on_each_updates_target() -> None:
    """``step_length="exact"``: the measured KL of every update is within 5 % of that update's scheduled value."""
    model = tiny_model("box6d", n_steps=64, target_kl=linear(0.04, 0.01), step_length="exact")
    logs = train_logged(model, 3)
    assert len({round(log["train/target_kl"], 9) for log in logs}) == 3
    for log in logs:
        assert log["train/kl_divergence"] == pytest.approx(log["train/target_kl"], rel=0.05)


@pytest.mark.parametrize("algorithm", ["maskable", "recurrent"])
def test_masked_and_recurrent_steps_follow_the_schedule(algorithm: str) -> None:
    schedule = linear(0.02, 0.005)
    if algorithm == "maskable":
        model = tiny_model(ACTION_SPACES["discrete"], n_steps=64, algorithm=MaskableNPG, env_class=MaskedToyEnv)
        model.target_kl = schedule
    else:
        policy_kwargs = {"lstm_hidden_size": 8, "net_arch": [8]}
        model = RecurrentNPG(
            "MlpLstmPolicy", toy_env(), n_steps=32, batch_size=32, target_kl=schedule, policy_kwargs=policy_kwargs
        )
    logs = train_logged(model, 2)
    assert [log["train/target_kl"] for log in logs] == pytest.approx([schedule(0.5), schedule(0.0)])
    for log in logs:
        assert 0.5 * log["train/step_size"] ** 2 * log["train/xFx"] == pytest.approx(log["train/target_kl"], rel=1e-4)


def test_a_schedule_at_zero_leaves_the_actor_and_trains_the_critic() -> None:
    """RL Zoo's ``lin_`` schedules reach 0 at the last update: no actor step, no warning, nothing skipped."""
    model = tiny_model("box6d", n_steps=32, target_kl=linear(0.02))
    train_logged(model, 1)
    actor = [p.detach().clone() for p in model.actor_parameters]
    critic = [p.detach().clone() for p in model.policy.value_net.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(model.n_steps)  # one update, its progress remaining 0: target_kl 0
    assert model.logger.name_to_value["train/target_kl"] == 0.0
    assert all(th.equal(p, before) for p, before in zip(model.actor_parameters, actor, strict=True))
    assert any(not th.equal(p, before) for p, before in zip(model.policy.value_net.parameters(), critic, strict=True))
    assert model.skipped_updates == 0


def test_a_last_rollout_past_the_total_gets_the_schedules_end_value() -> None:
    """
    Asked for 1.5 rollouts, SB3 runs two and the second update's progress remaining is -0.5: the schedule is read at
    0 (the Zoo's ``lin_0.02`` gives 0 there, not -0.01, which would skip the update with a warning).
    """
    model = tiny_model("box6d", n_steps=32, target_kl=linear(0.02))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(int(1.5 * model.n_steps))
    assert model._current_progress_remaining == pytest.approx(-1 / 3)
    assert model.logger.name_to_value["train/target_kl"] == 0.0
    assert model.skipped_updates == 0


def test_a_schedule_that_turns_bad_skips_the_update() -> None:
    """A schedule that gives NaN (or a negative number) mid-run: that update is skipped, warned and counted."""
    schedule = {1.0: 0.02, 0.0: 0.0}
    model = tiny_model("box6d", n_steps=32, target_kl=lambda progress: schedule.get(progress, math.nan))
    actor = [p.detach().clone() for p in model.actor_parameters]
    with pytest.warns(RuntimeWarning, match=r"NPG skipped the policy update 0: target_kl is nan"):
        model.learn(2 * model.n_steps)  # two updates: at progress 0.5 (NaN), then 0 (no step)
    assert model.skipped_updates == 1
    assert all(th.isfinite(p).all() for p in model.actor_parameters)
    assert all(th.equal(p, before) for p, before in zip(model.actor_parameters, actor, strict=True))


@pytest.mark.parametrize(
    "target_kl",
    [lambda _: -0.01, lambda p: 0.01 * p - 0.001, lambda _: math.inf, lambda _: "0.01", lambda _: None],
    ids=["negative", "negative-at-end", "infinite", "string", "none"],
)
def test_bad_schedules_are_refused_at_construction(target_kl) -> None:
    with pytest.raises(ValueError, match=re.escape("Invalid target_kl=") + ".*" + re.escape("or a schedule")):
        NPG("MlpPolicy", toy_env(), target_kl=target_kl)


def test_constant_target_kl_is_logged_and_unchanged() -> None:
    model = tiny_model("box6d", n_steps=32, target_kl=0.03)
    assert [log["train/target_kl"] for log in train_logged(model, 2)] == [0.03, 0.03]
    assert model.target_kl == 0.03


def test_trusted_load_keeps_the_schedule(tmp_path: pathlib.Path) -> None:
    model = tiny_model("box6d", n_steps=32, target_kl=linear(0.04, 0.01))
    model.learn(32)
    model.save(tmp_path / "model.zip")
    loaded = NPG.load(tmp_path / "model.zip", env=toy_env(), trusted=True)
    assert callable(loaded.target_kl) and loaded.target_kl(0.5) == pytest.approx(0.025)
    loaded.learn(32, reset_num_timesteps=False)  # its one update at progress remaining 0
    assert loaded.logger.name_to_value["train/target_kl"] == pytest.approx(0.01)


@needs_safe_torch
def test_untrusted_load_replaces_a_pickled_schedule(tmp_path: pathlib.Path) -> None:
    """The safe load never unpickles: a scheduled ``target_kl`` becomes the default, with a warning, or the caller's."""
    model = tiny_model("box6d", n_steps=32, target_kl=linear(0.04, 0.01))
    model.save(tmp_path / "model.zip")
    with pytest.warns(UserWarning, match="target_kl saved in .* is a pickled schedule: using 0.01"):
        loaded = NPG.load(tmp_path / "model.zip", env=toy_env(), trusted=False)
    assert loaded.target_kl == 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = NPG.load(tmp_path / "model.zip", env=toy_env(), trusted=False, custom_objects={"target_kl": 0.02})
    assert loaded.target_kl == 0.02
    loaded.learn(32)
    assert loaded.logger.name_to_value["train/target_kl"] == 0.02


def test_zoo_entry_with_a_linear_target_kl(tmp_path: pathlib.Path) -> None:
    """``target_kl: lin_0.05`` in an RL Zoo entry trains with RL Zoo's linear schedule; config.yml keeps the string."""
    pytest.importorskip("rl_zoo3")
    import yaml

    from sb3_npg import train as npg_train
    from sb3_npg.zoo import ZooConfigError, check_hyperparameters

    entry = {"policy": "MlpPolicy", "n_timesteps": 128, "n_steps": 64, "batch_size": 64, "target_kl": "lin_0.05"}
    conf = tmp_path / "npg.yml"
    conf.write_text(yaml.safe_dump({"Pendulum-v1": entry}))
    argv = ["--env", "Pendulum-v1", "--conf-file", str(conf), "-f", str(tmp_path / "logs"), "--seed", "0"]
    assert npg_train.main([*argv, "--eval-freq", "-1", "--verbose", "0", "--num-threads", "1"]) == 0
    run = tmp_path / "logs" / "npg" / "Pendulum-v1_1"
    model = NPG.load(run / "Pendulum-v1.zip", trusted=True)
    assert model.target_kl(1.0) == pytest.approx(0.05) and model.target_kl(0.5) == pytest.approx(0.025)
    config = yaml.load((run / "Pendulum-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert dict(config)["target_kl"] == "lin_0.05"
    with pytest.raises(ZooConfigError, match=re.escape("invalid target_kl='lin_-1', must be a number > 0")):
        check_hyperparameters({"policy": "MlpPolicy", "target_kl": "lin_-1"})
