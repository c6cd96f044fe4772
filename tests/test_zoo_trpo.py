"""
``python -m sb3_npg.train --trpo-hyperparams``: NPG trained from RL Zoo's own ``trpo.yml`` entries, converted.

Short real runs through the train entry point: Hopper-v5 (no entry of its own: the ``-v4`` one, 3-D actions) and
Pendulum-v1 (gSDE, 1-D), whose saved ``config.yml``, printed output and saved model hold the converted values;
``--hyperparams`` on top; the errors (no entry, a non-TRPO key, another algorithm). Then the entry lookup itself.
"""

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from gymnasium import spaces

pytest.importorskip("rl_zoo3")
pytest.importorskip("optuna")

from sb3_npg import NPG
from sb3_npg import train as npg_train
from sb3_npg.zoo import npg_entry_from_trpo, trpo_hyperparams_path, zoo_entry

QUIET = ["--verbose", "0", "--num-threads", "1", "--eval-freq", "-1", "--seed", "0"]
TRPO_ENTRIES = yaml.safe_load(trpo_hyperparams_path().read_text())


def train(argv: list[str]) -> tuple[int, str, str]:
    """Run the train entry point; its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = npg_train.main(argv)
    return status, out.getvalue(), err.getvalue()


def saved_config(run: Path, env_id: str) -> dict[str, Any]:
    return dict(yaml.load((run / env_id / "config.yml").read_text(), Loader=yaml.UnsafeLoader))


@pytest.fixture(scope="module")
def hopper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Hopper-v5 from TRPO's Hopper-v4 entry, one update of 2 x 128 steps; the run folder and the printed output."""
    pytest.importorskip("mujoco", reason="Hopper-v5 needs gymnasium[mujoco]")
    logs = tmp_path_factory.mktemp("logs")
    argv = ["--env", "Hopper-v5", "--trpo-hyperparams", "-n", "256", "--hyperparams", "n_steps:128", "-f", str(logs)]
    status, out, err = train([*argv, *QUIET])
    assert status == 0, err
    return logs / "npg" / "Hopper-v5_1", out


def test_hopper_v5_config_holds_the_converted_v4_entry(hopper: tuple[Path, str]) -> None:
    """target_kl and cg_damping times 3 (Hopper's action dimension), TRPO's step, the Zoo's keys unchanged."""
    run, _ = hopper
    config = saved_config(run, "Hopper-v5")
    assert "Hopper-v5" not in TRPO_ENTRIES
    trpo_entry = TRPO_ENTRIES["Hopper-v4"]
    assert "target_kl" not in trpo_entry and trpo_entry["cg_damping"] == 0.1  # TRPO's default 0.01 and the entry's 0.1
    assert config["target_kl"] == 0.03
    assert config["cg_damping"] == 0.3
    assert config["damped_step_size"] is True
    assert config["step_length"] == "quadratic"
    for key in ("n_envs", "normalize", "policy", "n_timesteps", "cg_max_steps", "n_critic_updates", "batch_size"):
        assert config[key] == trpo_entry[key], key
    assert config["n_steps"] == 128  # --hyperparams, on top
    assert config == {**npg_entry_from_trpo(trpo_entry, spaces.Box(-1, 1, (3,), np.float32)), "n_steps": 128}


def test_hopper_v5_model_was_built_with_the_converted_values(hopper: tuple[Path, str]) -> None:
    run, _ = hopper
    model = NPG.load(run / "Hopper-v5.zip", device="cpu")
    assert (model.target_kl, model.cg_damping, model.damped_step_size, model.step_length) == (0.03, 0.3, True, "quadratic")
    assert (model.cg_max_steps, model.n_critic_updates, model.n_steps) == (25, 20, 128)


def test_hopper_v5_prints_the_conversion(hopper: tuple[Path, str]) -> None:
    _, out = hopper
    assert "NPG from the TRPO entry Hopper-v4" in out
    assert "converted for Hopper-v5 (KL terms per sample d = 3" in out
    assert "target_kl: 0.01 (TRPO's default) -> 0.03" in out
    assert "cg_damping: 0.1 -> 0.3" in out
    assert "damped_step_size: True (TRPO's step)" in out
    assert "('target_kl', 0.03)" in out  # RL Zoo's own listing of what it trains with


def test_hyperparams_overrides_apply_to_the_converted_values(tmp_path: Path) -> None:
    """Pendulum-v1 (gSDE, d = 1): --hyperparams target_kl:0.05 is NPG's value, kept as given."""
    overrides = ["n_steps:64", "target_kl:0.05"]
    argv = ["--env", "Pendulum-v1", "--trpo-hyperparams", "-n", "128", "--hyperparams", *overrides, "-f", str(tmp_path)]
    status, out, err = train([*argv, *QUIET])
    assert status == 0, err
    config = saved_config(tmp_path / "npg" / "Pendulum-v1_1", "Pendulum-v1")
    trpo_entry = TRPO_ENTRIES["Pendulum-v1"]
    assert config["target_kl"] == 0.05
    assert config["cg_damping"] == 0.1
    assert (config["use_sde"], config["sde_sample_freq"], config["gamma"]) == (True, 4, trpo_entry["gamma"])
    assert config["damped_step_size"] is True
    assert "KL terms per sample d = 1" in out


def test_a_trpo_file_given_with_conf_file_is_converted(tmp_path: Path) -> None:
    """
    --conf-file names the user's own TRPO file: its line-search settings are dropped, the rest converted; TRPO's
    default batch_size 128 (above the rollout of 64: one minibatch of the whole rollout) is kept, as NPG takes it.
    """
    conf = tmp_path / "my_trpo.yml"
    entry = {
        "policy": "MlpPolicy",
        "n_timesteps": 64,
        "n_envs": 1,
        "n_steps": 64,
        "target_kl": 0.02,
        "line_search_max_iter": 5,
    }
    conf.write_text(yaml.safe_dump({"Pendulum-v1": entry}))
    argv = ["--env", "Pendulum-v1", "--trpo-hyperparams", "--conf-file", str(conf), "-n", "64", "-f", str(tmp_path)]
    status, out, err = train([*argv, *QUIET])
    assert status == 0, err
    config = saved_config(tmp_path / "npg" / "Pendulum-v1_1", "Pendulum-v1")
    assert config["target_kl"] == 0.02  # d = 1
    assert "line_search_max_iter" not in config
    assert config["batch_size"] == 128
    assert "dropped (NPG has no line search): line_search_max_iter=5" in out


def test_missing_entry_is_a_one_line_error(tmp_path: Path) -> None:
    """InvertedPendulum-v5 has no TRPO entry, nor a -v4 one: a clear error, nothing written."""
    argv = ["--env", "InvertedPendulum-v5", "--trpo-hyperparams", "-f", str(tmp_path)]
    status, _, err = train([*argv, *QUIET])
    assert status == 1
    assert err.count("\n") == 1
    assert "trpo.yml has no TRPO entry for InvertedPendulum-v5 (nor for its -v4 sibling)" in err
    assert not (tmp_path / "npg").exists() or not any((tmp_path / "npg").iterdir())


def test_a_key_trpo_does_not_take_is_named(tmp_path: Path) -> None:
    conf = tmp_path / "ppo_like.yml"
    conf.write_text(yaml.safe_dump({"Pendulum-v1": {"policy": "MlpPolicy", "n_steps": 64, "clip_range": 0.2}}))
    argv = ["--env", "Pendulum-v1", "--trpo-hyperparams", "--conf-file", str(conf), "-f", str(tmp_path)]
    status, _, err = train([*argv, *QUIET])
    assert status == 1
    assert "'clip_range' (a PPO/A2C argument)" in err


def test_trpo_hyperparams_train_npg_only(tmp_path: Path) -> None:
    status, _, err = train(["--algo", "npg_lstm", "--env", "CartPole-v1", "--trpo-hyperparams", "-f", str(tmp_path)])
    assert status == 2
    assert "--trpo-hyperparams trains NPG (--algo npg)" in err


def test_without_the_flag_npg_yml_is_read(tmp_path: Path) -> None:
    """The conversion is scoped to its run: a later run without the flag trains from the shipped npg.yml."""
    train(["--env", "InvertedPendulum-v5", "--trpo-hyperparams", "-f", str(tmp_path), *QUIET])
    status, out, err = train(
        ["--env", "CartPole-v1", "-n", "64", "--hyperparams", "n_steps:32", "batch_size:32", "-f", str(tmp_path), *QUIET]
    )
    assert status == 0, err
    assert "TRPO entry" not in out
    assert "damped_step_size" not in saved_config(tmp_path / "npg" / "CartPole-v1_1", "CartPole-v1")


@pytest.mark.parametrize(
    "env_id, entry",
    [("Hopper-v4", "Hopper-v4"), ("Hopper-v5", "Hopper-v4"), ("CartPoleNoVel-v1", "CartPole-v1"), ("Hopper-v3", "Hopper-v4")],
)
def test_zoo_entry_falls_back_to_v4_and_to_the_full_observation_env(env_id: str, entry: str) -> None:
    entries = {"Hopper-v4": {"n_steps": 1}, "CartPole-v1": {"n_steps": 2}, "default": {"n_steps": 3}}
    assert zoo_entry(entries, env_id) == (entry, entries[entry])


def test_zoo_entry_never_uses_the_default_entry() -> None:
    assert zoo_entry({"default": {"policy": "MlpPolicy"}, "Hopper-v4": {}}, "InvertedPendulum-v5") is None


def test_help_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        npg_train.main(["--help"])
    out = capsys.readouterr().out
    assert "--trpo-hyperparams: train NPG from a TRPO entry" in out
    assert "usage: python -m sb3_npg.train" in out  # RL Zoo's own help follows
