"""RL Zoo integration: registration, the train/enjoy/plot entry points, Optuna tuning, the shipped npg.yml."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("rl_zoo3")
pytest.importorskip("optuna")

from sb3_npg import NPG, RecurrentNPG
from sb3_npg import enjoy as npg_enjoy
from sb3_npg import plot as npg_plot
from sb3_npg import train as npg_train
from sb3_npg.zoo import (
    HYPERPARAMS_PATH,
    HYPERPARAMS_PATHS,
    ZooConfigError,
    check_hyperparameters,
    convert_npg_params,
    hub_compatibility,
    is_registered,
    register,
    sample_npg_lstm_params,
    sample_npg_params,
)
from tests.torch_safety import OWN_AGENT_FLAGS, SAFE_TORCH, needs_safe_torch

REPO = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load(HYPERPARAMS_PATH.read_text())
QUIET = ["--verbose", "0", "--num-threads", "1"]


def run_module(*args: str, timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
    """``python -m <args>`` in a fresh interpreter, one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra_env}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False
    )


def write_conf(path: Path, entries: dict[str, dict[str, Any]]) -> str:
    path.write_text(yaml.safe_dump(entries))
    return str(path)


# --------------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------------


def test_importing_sb3_npg_does_not_import_rl_zoo3() -> None:
    code = (
        "import sys, sb3_npg, sb3_npg.zoo, sb3_npg.train, sb3_npg.enjoy, sb3_npg.plot; "
        "assert 'rl_zoo3' not in sys.modules and 'optuna' not in sys.modules, sorted(sys.modules); "
        "assert not sb3_npg.zoo.is_registered()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_register_is_idempotent_and_complete() -> None:
    register()
    from rl_zoo3 import ALGOS
    from rl_zoo3.exp_manager import ExperimentManager
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

    objective = ExperimentManager.objective
    register()
    assert is_registered()
    assert ALGOS["npg"] is NPG
    assert HYPERPARAMS_SAMPLER["npg"] is sample_npg_params
    assert HYPERPARAMS_CONVERTER["npg"] is convert_npg_params
    # Wrapped once, not once per call
    assert ExperimentManager.objective is objective
    assert not hasattr(objective.__wrapped__, "__wrapped__")  # type: ignore[attr-defined]


def test_missing_rl_zoo3_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rl_zoo3", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[zoo\]"'):
        register()


def test_sampler_covers_the_search_space_and_converter_inverts_it() -> None:
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        hyperparams = sample_npg_params(trial, n_actions=1, n_envs=2, additional_args={})
        searched = {
            "target_kl",
            "cg_damping",
            "cg_max_steps",
            "n_steps",
            "batch_size",
            "gamma",
            "gae_lambda",
            "learning_rate",
            "n_critic_updates",
            "preconditioner",
            "policy_kwargs",
        }
        assert set(hyperparams) == searched  # "normalize" is applied to the envs, not passed to NPG
        assert set(hyperparams["policy_kwargs"]) == {"net_arch", "activation_fn"}
        assert "normalize" in trial.params
        assert 1 <= hyperparams["batch_size"] <= hyperparams["n_steps"]
        converted = convert_npg_params(trial.params)
        assert converted["normalize"] == trial.params["normalize"]
        assert {k: v for k, v in converted.items() if k != "normalize"} == hyperparams
        check_hyperparameters({"policy": "MlpPolicy", "n_envs": 2, **converted})
        study.tell(trial, 0.0)


# --------------------------------------------------------------------------------------------------------
# Train -> NPG.load -> enjoy -> plot -> Hub packaging
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """CartPole-v1 and Pendulum-v1 trained a few thousand steps from the shipped YAML, through the train entry point."""
    runs = {}
    for env_id in ("CartPole-v1", "Pendulum-v1"):
        log_folder = tmp_path_factory.mktemp("logs")
        n_steps = SHIPPED[env_id].get("n_steps", 2048) * SHIPPED[env_id].get("n_envs", 1)
        argv = ["--env", env_id, "-n", str(2 * n_steps), "--seed", "0", "-f", str(log_folder), "--eval-freq", "-1", *QUIET]
        assert npg_train.main(argv) == 0
        runs[env_id] = log_folder
    return runs


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_train_writes_a_model_that_npg_load_reads(trained: dict[str, Path], env_id: str) -> None:
    run = trained[env_id] / "npg" / f"{env_id}_1"
    model = NPG.load(run / f"{env_id}.zip", device="cpu")
    entry = SHIPPED[env_id]
    n_envs = entry.get("n_envs", 1)
    assert model.num_timesteps == 2 * entry.get("n_steps", 2048) * n_envs
    for key in ("n_steps", "gamma", "target_kl", "n_critic_updates", "use_sde"):
        if key in entry:
            assert getattr(model, key) == entry[key], key
    config = yaml.load((run / env_id / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert config["policy"] == "MlpPolicy"
    assert config["n_timesteps"] == entry["n_timesteps"]  # the YAML's, -n overrides the run length only
    args = yaml.load((run / env_id / "args.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert args["algo"] == "npg" and args["conf_file"] == str(HYPERPARAMS_PATH)
    if entry.get("normalize"):
        assert (run / env_id / "vecnormalize.pkl").is_file()
    actions, _ = model.predict(model.observation_space.sample(), deterministic=True)
    assert model.action_space.contains(actions)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_enjoy_entry_point_runs_the_trained_agent(
    trained: dict[str, Path], env_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--env", env_id, "-f", str(trained[env_id]), "--no-render", "-n", "450", "--deterministic", "--verbose", "1"]
    assert npg_enjoy.main([*argv, *OWN_AGENT_FLAGS]) == 0
    out = capsys.readouterr().out
    assert f"npg/{env_id}_1/{env_id}.zip" in out
    assert "Mean reward:" in out  # at least one full episode was played


def test_enjoy_module_in_a_fresh_interpreter(trained: dict[str, Path]) -> None:
    args = ["--env", "CartPole-v1", "-f", str(trained["CartPole-v1"]), "--no-render", "-n", "600", *OWN_AGENT_FLAGS]
    result = run_module("sb3_npg.enjoy", *args)
    assert result.returncode == 0, result.stderr
    assert "Episode Reward" in result.stdout


def test_enjoy_without_a_model_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert npg_enjoy.main(["--env", "CartPole-v1", "-f", str(tmp_path), "--no-render"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m sb3_npg.enjoy: error:") and "\n" not in err


def test_plot_writes_a_learning_curve_png(trained: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "curve.png"
    assert npg_plot.main(["-f", str(trained["Pendulum-v1"]), "--env", "Pendulum-v1", "-o", str(output), "-w", "2"]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timesteps, returns = npg_plot.training_curve(trained["Pendulum-v1"] / "npg" / "Pendulum-v1_1", window=2)
    assert len(timesteps) == len(returns) > 0 and np.all(np.diff(timesteps) > 0)
    assert npg_plot.main(["-f", str(trained["Pendulum-v1"]), "--env", "CartPole-v1", "-o", str(tmp_path / "none.png")]) == 2


def test_hub_packaging_is_loadable(trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rl_zoo3's own package_to_hub, with the network calls replaced: the packaged model loads with NPG.load."""
    register()
    hub_compatibility()  # what python -m sb3_npg.push_to_hub does first
    from huggingface_sb3 import EnvironmentName, ModelName, ModelRepoId
    from rl_zoo3 import push_to_hub
    from rl_zoo3.utils import create_test_env, get_saved_hyperparams

    uploads: list[Path] = []

    class OfflineHub:
        def create_repo(self, **kwargs: Any) -> str:
            return f"https://huggingface.co/{kwargs['repo_id']}"

        def snapshot_download(self, repo_id: str, local_dir: Path) -> None:
            Path(local_dir).mkdir(parents=True, exist_ok=True)

        def upload_folder(self, repo_id: str, folder_path: Path, commit_message: str) -> None:
            uploads.append(Path(folder_path))

    monkeypatch.setattr(push_to_hub, "HfApi", OfflineHub)
    env_name = EnvironmentName("CartPole-v1")
    log_path = trained["CartPole-v1"] / "npg" / "CartPole-v1_1"
    hyperparams, stats_path = get_saved_hyperparams(str(log_path / "CartPole-v1"), test_mode=True)
    eval_env = create_test_env(env_name.gym_id, n_envs=1, stats_path=stats_path, seed=0, hyperparams=dict(hyperparams))
    model = NPG.load(log_path / "CartPole-v1.zip", env=eval_env, device="cpu")
    model_name = ModelName("npg", env_name)
    push_to_hub.package_to_hub(
        model,
        model_name,
        "npg",
        "NPG",
        log_path,
        hyperparams,
        {},
        env_name,
        eval_env,
        ModelRepoId("someone", "npg-CartPole-v1"),
        "test",
        n_eval_episodes=2,
        local_repo_path=str(tmp_path / "hub"),
    )
    repo = tmp_path / "hub" / "npg-CartPole-v1"
    assert uploads == [repo]
    assert {"npg-CartPole-v1.zip", "config.yml", "args.yml", "README.md", "results.json"} <= {p.name for p in repo.iterdir()}
    assert "NPG" in (repo / "README.md").read_text()
    assert "mean_reward" in json.loads((repo / "results.json").read_text())
    reloaded = NPG.load(repo / "npg-CartPole-v1.zip", device="cpu")
    assert reloaded.n_steps == model.n_steps


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None, reason="record_video needs moviepy")
@pytest.mark.skipif(importlib.util.find_spec("pygame") is None, reason="CartPole's rgb_array rendering needs pygame")
def test_record_video(trained: dict[str, Path], tmp_path: Path) -> None:
    args = ["--env", "CartPole-v1", "-f", str(trained["CartPole-v1"]), "-n", "50", "-o", str(tmp_path), "--no-render"]
    result = run_module("sb3_npg.record_video", *args, *OWN_AGENT_FLAGS, SDL_VIDEODRIVER="dummy")
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.glob("*.mp4"))


# --------------------------------------------------------------------------------------------------------
# Bad input: one line, naming the key; nothing left in the log folder
# --------------------------------------------------------------------------------------------------------


def assert_one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1
    last = err[-1]
    assert last.startswith("python -m sb3_npg.train: error:"), err
    assert "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in last, (needle, last)


def test_env_without_an_entry_exits_with_rl_zoo3_trains_status(tmp_path: Path) -> None:
    """RL Zoo's own test_default_hyperparameters: an env with no entry (and no 'default') exits with status 1."""
    conf = write_conf(tmp_path / "missing_default.yml", {"CartPole-v1": {"policy": "MlpPolicy", "n_timesteps": 200}})
    argv = ["-n", "100", "--env", "Pendulum-v1", "-conf", conf, "-f", str(tmp_path / "logs"), *QUIET]
    zoo = run_module("rl_zoo3.train", "--algo", "ppo", *argv)
    ours = run_module("sb3_npg.train", *argv)
    assert zoo.returncode == ours.returncode == 1, (zoo.stderr[-2000:], ours.stderr)
    assert "Hyperparameters not found for ppo-Pendulum-v1" in zoo.stderr
    [line] = ours.stderr.strip().splitlines()
    assert line == f"python -m sb3_npg.train: error: Hyperparameters not found for npg-Pendulum-v1 in {conf}"


def test_unknown_env_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs"
    assert npg_train.main(["--env", "CartPol-v1", "-f", str(logs), *QUIET]) == 1
    assert_one_line_error(capsys, "CartPol-v1", "CartPole-v1")
    assert not logs.exists()


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"targt_kl": 0.05}, ["unknown NPG hyperparameter 'targt_kl'", "did you mean 'target_kl'"]),
        ({"clip_range": 0.2}, ["unknown NPG hyperparameter 'clip_range'"]),
        ({"seed": 3}, ["'seed'"]),
        ({"target_kl": -0.01}, ["target_kl=-0.01"]),
        ({"cg_damping": -1.0}, ["cg_damping=-1.0"]),
        ({"gamma": 1.5}, ["gamma=1.5"]),
        ({"n_critic_updates": 0}, ["n_critic_updates=0"]),
        ({"cg_max_steps": 2.5}, ["cg_max_steps=2.5"]),
        ({"fisher": "exact"}, ["fisher='exact'"]),
        ({"step_length": "line_search"}, ["step_length='line_search'"]),
        ({"batch_size": 0}, ["batch_size=0"]),
        ({"policy_kwargs": "dict(net_arch=[8], bogus=1)"}, ["bogus"]),
    ],
)
def test_bad_yaml_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str], override: dict, needles: list[str]) -> None:
    entry = {"policy": "MlpPolicy", "n_timesteps": 1000, "n_envs": 2, "n_steps": 512, **override}
    conf = write_conf(tmp_path / "bad.yml", {"CartPole-v1": entry})
    logs = tmp_path / "logs"
    assert npg_train.main(["--env", "CartPole-v1", "--conf-file", conf, "-f", str(logs), *QUIET]) == 1
    assert_one_line_error(capsys, *needles)
    assert not logs.exists(), list(logs.rglob("*"))


@pytest.mark.parametrize(("threads_option", "expected"), [(["--num-threads", "2"], 2), ([], None)])
def test_num_threads_option_is_the_models_num_threads(tmp_path: Path, threads_option: list[str], expected: int | None) -> None:
    # rl_zoo3 sets torch.set_num_threads(N) for --num-threads N; NPG's learn() uses N too, not its own default
    entry = {"policy": "MlpPolicy", "n_timesteps": 64, "n_envs": 1, "n_steps": 32, "batch_size": 32}
    conf = write_conf(tmp_path / "tiny.yml", {"CartPole-v1": entry})
    argv = ["--env", "CartPole-v1", "--conf-file", conf, "--eval-freq", "-1", "--verbose", "0", "-f", str(tmp_path)]
    assert npg_train.main([*argv, *threads_option]) == 0
    model = NPG.load(tmp_path / "npg" / "CartPole-v1_1" / "CartPole-v1.zip", device="cpu")
    assert model.num_threads == expected


def test_num_threads_in_a_yaml_entry_is_checked() -> None:
    check_hyperparameters({"policy": "MlpPolicy", "num_threads": 2})
    with pytest.raises(ZooConfigError, match="num_threads=0"):
        check_hyperparameters({"policy": "MlpPolicy", "num_threads": 0})


def test_bad_override_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs"
    (logs / "npg").mkdir(parents=True)  # an existing log folder is kept, only this run's folder goes
    argv = ["--env", "CartPole-v1", "-f", str(logs), "--hyperparams", "target_kl:0", *QUIET]
    assert npg_train.main(argv) == 1
    assert_one_line_error(capsys, "npg.yml", "target_kl=0")
    assert list(logs.rglob("*")) == [logs / "npg"]


def test_missing_conf_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = str(tmp_path / "nope.yml")
    assert npg_train.main(["--env", "CartPole-v1", "--conf-file", conf, "-f", str(tmp_path / "logs"), *QUIET]) == 1
    assert_one_line_error(capsys, "nope.yml")


def test_check_hyperparameters_accepts_zoo_keys() -> None:
    check_hyperparameters(
        {
            "policy": "CnnPolicy",
            "n_timesteps": 1e6,
            "normalize": "dict(norm_obs=True, norm_reward=False)",
            "env_wrapper": ["stable_baselines3.common.atari_wrappers.AtariWrapper"],
            "frame_stack": 4,
            "learning_rate": "lin_3e-4",
            "policy_kwargs": "dict(net_arch=[64])",
            "step_length": "exact",
        }
    )
    with pytest.raises(ZooConfigError, match="learning_rate='lin_x'"):
        check_hyperparameters({"policy": "MlpPolicy", "learning_rate": "lin_x"})
    with pytest.raises(ZooConfigError, match="'policy'"):
        check_hyperparameters({"n_timesteps": 10})
    with pytest.raises(ZooConfigError, match="step_length='line_search'"):
        check_hyperparameters({"policy": "MlpPolicy", "step_length": "line_search"})


# --------------------------------------------------------------------------------------------------------
# Optuna: a tiny study through the npg sampler, --trial-id, two workers on one storage
# --------------------------------------------------------------------------------------------------------

TINY = {"CartPole-v1": {"policy": "MlpPolicy", "n_timesteps": 1000, "n_envs": 1}}


def load_study(storage: Path, name: str) -> Any:
    import optuna

    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage)))
    return optuna.load_study(study_name=name, storage=journal)


def test_optuna_two_trials_then_train_from_a_trial(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    conf = write_conf(tmp_path / "tiny.yml", TINY)
    storage = tmp_path / "optuna" / "study.log"
    common = ["--env", "CartPole-v1", "--conf-file", conf, "--storage", str(storage), "--study-name", "tiny", *QUIET]
    tune = ["-optimize", "--n-trials", "2", "-n", "64", "--n-evaluations", "1", "--eval-episodes", "1", "--no-optim-plots"]
    assert npg_train.main([*common, *tune, "--sampler", "random", "--seed", "3", "-f", str(tmp_path / "tune")]) == 0

    study = load_study(storage, "tiny")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        assert {"target_kl", "cg_damping", "cg_max_steps", "n_steps_pow", "normalize", "net_arch"} <= set(trial.params)
        assert np.isfinite(trial.value)
    assert list((tmp_path / "tune" / "npg").glob("report_CartPole-v1_2-trials-64-random-median_*.csv"))

    # --trial-id (the Zoo skips trial 0, a falsy id): train with trial 1's values through the converter
    assert npg_train.main([*common, "--trial-id", "1", "-n", "64", "--eval-freq", "-1", "-f", str(tmp_path / "train")]) == 0
    params = study.trials[1].params
    run = tmp_path / "train" / "npg" / "CartPole-v1_1"
    model = NPG.load(run / "CartPole-v1.zip", device="cpu")
    assert model.target_kl == pytest.approx(params["target_kl"])
    assert model.n_steps == 2 ** params["n_steps_pow"]
    assert model.gamma == pytest.approx(1 - params["one_minus_gamma"])
    assert (run / "CartPole-v1" / "vecnormalize.pkl").is_file() == params["normalize"]


def test_sampled_normalize_is_applied_to_the_trial_envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna
    from rl_zoo3.exp_manager import ExperimentManager
    from stable_baselines3.common.vec_env import VecNormalize

    register()
    conf = write_conf(tmp_path / "tiny.yml", TINY)
    args = argparse.Namespace(algo="npg", env="CartPole-v1", env_kwargs=None)
    manager = ExperimentManager(
        args, "npg", "CartPole-v1", str(tmp_path), n_timesteps=64, eval_freq=-1, config=conf, verbose=0, seed=0,
        optimize_hyperparameters=True, n_evaluations=1, n_eval_episodes=1,
    )  # fmt: skip
    assert manager.setup_experiment() is None
    made: list[tuple[bool, float | None]] = []
    create_envs = manager.create_envs

    def recording_create_envs(*args: Any, **kwargs: Any) -> Any:
        env = create_envs(*args, **kwargs)
        made.append((isinstance(env, VecNormalize), getattr(env, "gamma", None)))
        return env

    monkeypatch.setattr(manager, "create_envs", recording_create_envs)
    point = {
        "n_steps_pow": 5, "batch_size_pow": 5, "one_minus_gamma": 0.02, "one_minus_gae_lambda": 0.05,
        "learning_rate": 1e-3, "n_critic_updates": 5, "cg_max_steps": 5, "cg_damping": 0.1, "target_kl": 0.01,
        "net_arch": "tiny", "activation_fn": "tanh", "preconditioner": "none",
    }  # fmt: skip
    for normalize in (True, False):
        made.clear()
        value = manager.objective(optuna.trial.FixedTrial({**point, "normalize": normalize}))
        assert np.isfinite(value)
        assert made and all(is_normalized == normalize for is_normalized, _ in made)
        if normalize:
            assert made[0][1] == pytest.approx(0.98)  # the sampled gamma, not the YAML's


def test_two_workers_share_one_journal_storage(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    conf = write_conf(tmp_path / "tiny.yml", TINY)
    storage = tmp_path / "optuna" / "shared.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(seed: int) -> list[str]:
        tune = ["-optimize", "--n-trials", "1", "-n", "64", "--n-evaluations", "1", "--eval-episodes", "1", "--no-optim-plots"]
        study = ["--storage", str(storage), "--study-name", "shared", "--sampler", "random", "--seed", str(seed)]
        return [sys.executable, "-m", "sb3_npg.train", "--env", "CartPole-v1", "--conf-file", conf, *tune, *study,
                "-f", str(tmp_path / f"worker{seed}"), *QUIET]  # fmt: skip

    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env, "cwd": REPO}
    workers = [subprocess.Popen(command(seed), **options) for seed in (1, 2)]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    study = load_study(storage, "shared")
    assert sorted(t.number for t in study.trials) == [0, 1]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert study.trials[0].params != study.trials[1].params  # different seeds, different samples


# --------------------------------------------------------------------------------------------------------
# Every shipped entry builds a model with the Zoo's own preprocessing
# --------------------------------------------------------------------------------------------------------

ENTRY_ENV = {"atari": "PongNoFrameskip-v4", "default": "MountainCar-v0"}


def require_env(env_id: str) -> None:
    """Skip, naming the missing package, when the environment cannot be made here."""
    import gymnasium as gym

    if env_id.startswith("PongNoFrameskip"):
        ale_py = pytest.importorskip("ale_py", reason="Atari entries need ale-py")
        gym.register_envs(ale_py)
    entry_point = str(gym.spec(env_id).entry_point)
    if "mujoco" in entry_point:
        pytest.importorskip("mujoco", reason=f"{env_id} needs gymnasium[mujoco]")
    if "box2d" in entry_point:
        pytest.importorskip("Box2D", reason=f"{env_id} needs gymnasium[box2d]")


def assert_every_entry_has_provenance(path: Path) -> None:
    """Every top-level entry of a hyperparameter file has a 'Provenance:' line in the comment block just above it."""
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line[0].isspace() and not line.startswith("#"):
            comments = []
            for previous in reversed(lines[:index]):
                if not previous.startswith("#"):
                    break
                comments.append(previous)
            assert any("Provenance:" in comment for comment in comments), f"{line.split(':')[0]} has no 'Provenance:' comment"


def test_shipped_file_has_the_required_entries_with_provenance() -> None:
    required = {
        "CartPole-v1",
        "Pendulum-v1",
        "Acrobot-v1",
        "MountainCarContinuous-v0",
        "LunarLander-v3",
        "LunarLanderContinuous-v3",
        "BipedalWalker-v3",
        "HalfCheetah-v5",
        "Hopper-v5",
        "Walker2d-v5",
        "Ant-v5",
        "Swimmer-v5",
        "atari",
    }
    assert required <= set(SHIPPED)
    assert SHIPPED["atari"]["policy"] == "CnnPolicy"
    assert_every_entry_has_provenance(HYPERPARAMS_PATH)


@pytest.mark.parametrize("entry", sorted(SHIPPED))
def test_every_shipped_entry_builds_a_model(entry: str, tmp_path: Path) -> None:
    register()
    from rl_zoo3.exp_manager import ExperimentManager
    from stable_baselines3.common.vec_env import VecNormalize

    env_id = ENTRY_ENV.get(entry, entry)
    require_env(env_id)
    args = argparse.Namespace(algo="npg", env=env_id, env_kwargs=None)
    manager = ExperimentManager(
        args, "npg", env_id, str(tmp_path), n_timesteps=-1, eval_freq=-1, config=str(HYPERPARAMS_PATH), verbose=0, seed=0
    )
    model, saved = manager.setup_experiment()
    try:
        values = SHIPPED[entry]
        assert isinstance(model, NPG)
        assert model.env is not None and model.env.num_envs == values.get("n_envs", 1)
        assert manager.n_timesteps == int(values["n_timesteps"])
        for key in ("target_kl", "n_steps", "batch_size", "gamma", "gae_lambda", "cg_damping", "cg_max_steps"):
            if key in values:
                assert getattr(model, key) == values[key], key
        assert (model.get_vec_normalize_env() is not None) == bool(values.get("normalize", False))
        if entry == "atari":
            assert model.observation_space.shape == (4, 84, 84)
            assert type(model.policy) is NPG.policy_aliases["CnnPolicy"]
        assert saved["policy"] == values["policy"]
        assert not isinstance(model.env, VecNormalize) or model.env.training
    finally:
        model.env.close()


# --------------------------------------------------------------------------------------------------------
# RecurrentNPG as npg_lstm: registration, sampler, shipped npg_lstm.yml, train -> enjoy, a tuning trial
# --------------------------------------------------------------------------------------------------------

SHIPPED_LSTM = yaml.safe_load(HYPERPARAMS_PATHS["npg_lstm"].read_text())
LSTM_POLICY_OPTIONS = {"lstm_hidden_size", "n_lstm_layers", "enable_critic_lstm", "shared_lstm"}


def test_register_adds_npg_lstm() -> None:
    register()
    from rl_zoo3 import ALGOS
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

    assert ALGOS["npg_lstm"] is RecurrentNPG
    assert HYPERPARAMS_SAMPLER["npg_lstm"] is sample_npg_lstm_params
    assert HYPERPARAMS_CONVERTER["npg_lstm"] is convert_npg_params
    assert ALGOS["ppo_lstm"] is not RecurrentNPG  # the Zoo's own entry is left alone


def test_lstm_sampler_covers_the_lstm_options_and_every_point_builds() -> None:
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set] = {option: set() for option in LSTM_POLICY_OPTIONS}
    for _ in range(20):
        trial = study.ask()
        hyperparams = sample_npg_lstm_params(trial, n_actions=1, n_envs=2, additional_args={})
        assert {"lstm_hidden_size", "n_lstm_layers", "critic_lstm"} <= set(trial.params)
        assert "preconditioner" not in trial.params  # K-FAC does not cover the LSTM
        assert LSTM_POLICY_OPTIONS | {"net_arch", "activation_fn"} == set(hyperparams["policy_kwargs"])
        for option in LSTM_POLICY_OPTIONS:
            seen[option].add(hyperparams["policy_kwargs"][option])
        converted = convert_npg_params(trial.params)
        assert {k: v for k, v in converted.items() if k != "normalize"} == hyperparams
        check_hyperparameters({"policy": "MlpLstmPolicy", "n_envs": 2, **converted}, algorithm=RecurrentNPG)
        study.tell(trial, 0.0)
    assert seen["enable_critic_lstm"] == seen["shared_lstm"] == {False, True}
    assert len(seen["lstm_hidden_size"]) > 1 and seen["n_lstm_layers"] == {1, 2}
    # Every way of giving the critic memory is one sb3-contrib accepts (it refuses shared_lstm with a critic LSTM)
    for critic_lstm in ("own", "shared", "none"):
        policy_kwargs = convert_npg_params({"critic_lstm": critic_lstm, "lstm_hidden_size": 4})["policy_kwargs"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # shared_lstm's warning (tested in test_recurrent.py)
            model = RecurrentNPG("MlpLstmPolicy", "CartPole-v1", n_steps=8, batch_size=8, policy_kwargs=policy_kwargs)
        assert (model.policy.lstm_critic is not None) == (critic_lstm == "own")
        assert model.policy.shared_lstm == (critic_lstm == "shared")


def test_shipped_npg_lstm_file_has_the_required_entries_with_provenance() -> None:
    required = {"CartPoleNoVel-v1", "PendulumNoVel-v1", "MountainCarContinuousNoVel-v0", "MountainCarNoVel-v0"}
    assert required <= set(SHIPPED_LSTM)
    assert_every_entry_has_provenance(HYPERPARAMS_PATHS["npg_lstm"])


@pytest.mark.parametrize("entry", sorted(SHIPPED_LSTM))
def test_every_shipped_npg_lstm_entry_builds_a_model(entry: str, tmp_path: Path) -> None:
    from torch import nn

    register()
    from rl_zoo3.exp_manager import ExperimentManager

    args = argparse.Namespace(algo="npg_lstm", env=entry, env_kwargs=None)
    config = str(HYPERPARAMS_PATHS["npg_lstm"])
    manager = ExperimentManager(
        args, "npg_lstm", entry, str(tmp_path), n_timesteps=-1, eval_freq=-1, config=config, verbose=0, seed=0
    )
    model, _ = manager.setup_experiment()
    try:
        values = SHIPPED_LSTM[entry]
        assert type(model) is RecurrentNPG and type(model.policy) is RecurrentNPG.policy_aliases[values["policy"]]
        assert model.env is not None and model.env.num_envs == values.get("n_envs", 1)
        assert manager.n_timesteps == int(values["n_timesteps"])
        for key in ("target_kl", "n_steps", "batch_size", "gamma", "gae_lambda", "n_critic_updates", "use_sde", "step_length"):
            if key in values:
                assert getattr(model, key) == values[key], key
        assert (model.get_vec_normalize_env() is not None) == bool(values.get("normalize", False))
        policy_kwargs = eval(values.get("policy_kwargs", "dict()"), {"nn": nn})  # as the Zoo reads it
        if "lstm_hidden_size" in policy_kwargs:
            assert model.policy.lstm_actor.hidden_size == policy_kwargs["lstm_hidden_size"]
        assert (model.policy.lstm_critic is not None) == policy_kwargs.get("enable_critic_lstm", True)
    finally:
        model.env.close()


@pytest.fixture(scope="module")
def trained_lstm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CartPoleNoVel-v1 trained two rollouts from the shipped npg_lstm.yml, through the train entry point."""
    log_folder = tmp_path_factory.mktemp("logs_lstm")
    entry = SHIPPED_LSTM["CartPoleNoVel-v1"]
    n_steps = entry["n_steps"] * entry["n_envs"]
    argv = ["--algo", "npg_lstm", "--env", "CartPoleNoVel-v1", "-n", str(2 * n_steps), "--seed", "0", "-f", str(log_folder)]
    assert npg_train.main([*argv, "--eval-freq", "-1", *QUIET]) == 0
    return log_folder


def test_train_npg_lstm_writes_a_model_that_recurrent_npg_load_reads(trained_lstm: Path) -> None:
    run = trained_lstm / "npg_lstm" / "CartPoleNoVel-v1_1"
    entry = SHIPPED_LSTM["CartPoleNoVel-v1"]
    args = yaml.load((run / "CartPoleNoVel-v1" / "args.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert args["algo"] == "npg_lstm" and args["conf_file"] == str(HYPERPARAMS_PATHS["npg_lstm"])
    # trusted=False where the installed torch runs it (below 2.10 it refuses: the file is this test's own)
    model = RecurrentNPG.load(run / "CartPoleNoVel-v1.zip", device="cpu", trusted=not SAFE_TORCH, env=make_novel_env())
    assert model.num_timesteps == 2 * entry["n_steps"] * entry["n_envs"]
    assert (model.n_steps, model.target_kl, model.step_length) == (entry["n_steps"], entry["target_kl"], entry["step_length"])
    assert model.policy.lstm_actor.hidden_size == 64 and model.policy.lstm_critic is not None
    observation = model.observation_space.sample()
    _, state = model.predict(observation, episode_start=np.ones(1, dtype=bool))
    _, next_state = model.predict(observation, state=state, episode_start=np.zeros(1, dtype=bool))
    assert state[0].shape == (1, 1, 64) and not np.allclose(state[0], next_state[0])  # the memory is carried
    assert (run / "CartPoleNoVel-v1" / "vecnormalize.pkl").is_file()


def make_novel_env() -> Any:
    import rl_zoo3.import_envs  # noqa: F401  (registers the NoVel envs)
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env("CartPoleNoVel-v1", n_envs=1)


@pytest.mark.parametrize("trusted", [pytest.param(False, marks=needs_safe_torch), True])
def test_enjoy_runs_the_trained_npg_lstm_agent(trained_lstm: Path, trusted: bool, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--algo", "npg_lstm", "--env", "CartPoleNoVel-v1", "-f", str(trained_lstm), "--no-render", "-n", "300"]
    assert npg_enjoy.main([*argv, "--deterministic", "--verbose", "1", *(["--trusted"] if trusted else [])]) == 0
    out = capsys.readouterr().out
    assert "npg_lstm/CartPoleNoVel-v1_1/CartPoleNoVel-v1.zip" in out
    assert "Mean reward:" in out


def test_npg_lstm_entry_with_a_feedforward_policy_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path / "bad.yml", {"CartPoleNoVel-v1": {"policy": "MlpPolicy", "n_timesteps": 1000}})
    logs = tmp_path / "logs"
    assert (
        npg_train.main(["--algo", "npg_lstm", "--env", "CartPoleNoVel-v1", "--conf-file", conf, "-f", str(logs), *QUIET]) == 1
    )
    assert_one_line_error(capsys, "policy='MlpPolicy'", "RecurrentNPG takes one of 'MlpLstmPolicy'")
    assert not logs.exists()


def test_npg_lstm_optuna_trials_then_train_from_a_trial(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    tiny = {"CartPoleNoVel-v1": {"policy": "MlpLstmPolicy", "n_timesteps": 1000, "n_envs": 1}}
    conf = write_conf(tmp_path / "tiny.yml", tiny)
    storage = tmp_path / "optuna" / "study.log"
    common = ["--algo", "npg_lstm", "--env", "CartPoleNoVel-v1", "--conf-file", conf, "--storage", str(storage)]
    common += ["--study-name", "tiny_lstm", *QUIET]
    tune = ["-optimize", "--n-trials", "2", "-n", "64", "--n-evaluations", "1", "--eval-episodes", "1", "--no-optim-plots"]
    assert npg_train.main([*common, *tune, "--sampler", "random", "--seed", "5", "-f", str(tmp_path / "tune")]) == 0

    study = load_study(storage, "tiny_lstm")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        assert {"lstm_hidden_size", "n_lstm_layers", "critic_lstm", "target_kl", "n_steps_pow"} <= set(trial.params)
        assert np.isfinite(trial.value)

    assert npg_train.main([*common, "--trial-id", "1", "-n", "64", "--eval-freq", "-1", "-f", str(tmp_path / "train")]) == 0
    params = study.trials[1].params
    model = RecurrentNPG.load(tmp_path / "train" / "npg_lstm" / "CartPoleNoVel-v1_1" / "CartPoleNoVel-v1.zip", device="cpu")
    assert model.policy.lstm_actor.hidden_size == params["lstm_hidden_size"]
    assert model.policy.lstm_actor.num_layers == params["n_lstm_layers"]
    assert (model.policy.lstm_critic is not None) == (params["critic_lstm"] == "own")
    assert model.target_kl == pytest.approx(params["target_kl"])
