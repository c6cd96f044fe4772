"""Faults: an environment that raises, NaN and inf from an environment, an RL Zoo run killed and resumed."""

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_npg import NPG, env_checks
from sb3_npg.env_checks import FiniteCheck, NonFiniteError

REPO = Path(__file__).resolve().parents[1]
FAULT_STEP = 37  # with n_steps=16 and one env: in the third rollout (the second after a learn(16))


class FaultyEnv(gym.Env):
    """
    Short episodes of random observations; at its ``fault_step``-th step (counted over its whole life) it raises
    or returns ``bad_value`` in the observation, the reward or the terminal observation.

    :param fault: ``"raise"``, ``"observation"``, ``"reward"``, ``"reset"`` (the first reset's observation),
        ``"terminal"`` (the last observation of an episode, which SB3 bootstraps from) or ``None`` (a good env)
    :param bad_value: the value put in the observation or the reward
    :param fault_step: the step that fails
    """

    episode_length = 10

    def __init__(self, fault: str | None = None, bad_value: float = np.nan, fault_step: int = FAULT_STEP):
        self.observation_space = spaces.Box(-1, 1, (3,), np.float32)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)
        self.fault, self.bad_value, self.fault_step = fault, bad_value, fault_step
        self.steps = 0
        self.episode_steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.episode_steps = 0
        observation = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        if self.fault == "reset":
            observation[0] = self.bad_value
        return observation, {}

    def step(self, action):
        self.steps += 1
        self.episode_steps += 1
        observation = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        reward = float(observation[0] * action[0])
        truncated = self.episode_steps >= self.episode_length
        if self.steps == self.fault_step:
            if self.fault == "raise":
                raise RuntimeError(f"boom at step {self.steps}")
            if self.fault == "observation" or (self.fault == "terminal" and truncated):
                observation[1] = self.bad_value
            elif self.fault == "reward":
                reward = self.bad_value
        return observation, reward, False, truncated, {}


def make_model(env: gym.Env | DummyVecEnv) -> NPG:
    return NPG("MlpPolicy", env, n_steps=16, batch_size=16, n_critic_updates=2, seed=0)


def all_finite(model: NPG) -> bool:
    return all(bool(th.isfinite(parameter).all()) for parameter in model.policy.parameters())


# --------------------------------------------------------------------------------------------------------
# An environment that raises in step()
# --------------------------------------------------------------------------------------------------------


def test_env_error_reaches_the_caller_and_the_model_trains_again(tmp_path: Path) -> None:
    model = make_model(FaultyEnv("raise"))
    model.learn(16)  # one update before the save
    observations = np.random.default_rng(0).uniform(-1, 1, (8, 3)).astype(np.float32)
    saved_actions, _ = model.predict(observations, deterministic=True)
    model.save(tmp_path / "before")

    with pytest.raises(RuntimeError, match=f"boom at step {FAULT_STEP}"):
        model.learn(64)
    assert model.num_timesteps == FAULT_STEP - 16 - 1  # stopped mid-rollout: learn() counts from 0, the env from its creation
    assert all_finite(model)

    loaded = NPG.load(tmp_path / "before")
    np.testing.assert_array_equal(loaded.predict(observations, deterministic=True)[0], saved_actions)

    model.set_env(FaultyEnv())
    model.learn(64)
    assert model.num_timesteps == 64
    assert all_finite(model)
    model.learn(32, reset_num_timesteps=False)
    assert model.num_timesteps == 96


def test_progress_bar_is_closed_when_the_env_raises() -> None:
    pytest.importorskip("rich")
    pytest.importorskip("tqdm")
    model = make_model(FaultyEnv("raise"))
    threads_before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="boom"):
        model.learn(64, progress_bar=True)
    # An open rich progress bar keeps its refresh thread running for good; other threads of the process may come
    # and go (tqdm's shared monitor, other tests' helpers), so only rich's are asked to be gone
    started = [thread for thread in threading.enumerate() if thread not in threads_before]
    for thread in started:
        thread.join(timeout=2.0)
    left = [thread for thread in started if thread.is_alive() and type(thread).__module__.startswith("rich")]
    assert left == []
    model.set_env(FaultyEnv())
    model.learn(32, progress_bar=True)


# --------------------------------------------------------------------------------------------------------
# NaN and inf from the environment
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "vecnormalize"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("quantity", ["observation", "reward"])
def test_non_finite_values_stop_training_before_the_weights(quantity: str, bad_value: float, normalize: bool) -> None:
    env = DummyVecEnv([lambda: FaultyEnv(quantity, bad_value)])
    if normalize:
        env = VecNormalize(env)
    model = make_model(env)
    with pytest.raises(NonFiniteError) as caught:
        model.learn(64)
    found = "nan" if np.isnan(bad_value) else "inf"
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == (
        f"Training stopped: the environment returned {found} in the {quantity} (env index 0) at timestep {FAULT_STEP}"
    )
    assert (caught.value.quantity, caught.value.timestep) == (quantity, FAULT_STEP)
    # Found before any update used it: nothing skipped, every weight finite, the running statistics too
    assert model.skipped_updates == 0
    assert all_finite(model)
    if normalize:
        assert np.isfinite(env.obs_rms.mean).all() and np.isfinite(env.obs_rms.var).all()
        assert np.isfinite(env.ret_rms.mean) and np.isfinite(env.ret_rms.var)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64, np.int64, np.bool_])
def test_the_fast_finite_test_is_the_elementwise_test(dtype: type) -> None:
    # every pattern of NaN/inf/-inf, and finite values whose sum overflows (3e38 in float32, 6e4 in float16)
    big = np.finfo(dtype).max if np.issubdtype(dtype, np.inexact) else 1
    patterns = [[1.0, 2.0], [big, big], [np.nan, 1.0], [np.inf, 1.0], [-np.inf, 1.0], [np.inf, -np.inf], [np.nan, np.inf]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the test itself raises no floating-point warning
        for pattern in patterns:
            if not np.issubdtype(dtype, np.inexact) and not np.isfinite(pattern).all():
                continue
            value = np.array([pattern, [0, 0]], dtype=dtype)
            expected = bool(np.isfinite(value).all())
            for shaped in (value, value[:, :1], value.reshape(-1)[0], np.empty((0, 2), dtype)):
                assert env_checks.all_finite(np.asarray(shaped)) == bool(np.isfinite(shaped).all())
            assert env_checks.all_finite({"a": value, "b": np.zeros(3)}) == expected
    assert not env_checks.all_finite([1.0, 2.0])  # not an array: FiniteCheck's elementwise test looks at it


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("reset", "returned nan in the observation (env index 1) at reset, after timestep 0"),
        ("terminal", "returned nan in the terminal observation (env index 1) at timestep 80"),
    ],
    ids=["reset", "terminal"],
)
def test_non_finite_reset_and_terminal_observations(fault: str, message: str) -> None:
    # Two envs: env 1 fails at its 40th step, the end of its 4th episode, which is timestep 2 x 40
    env = DummyVecEnv([lambda: FaultyEnv(), lambda: FaultyEnv(fault, fault_step=40)])
    model = make_model(env)
    with pytest.raises(NonFiniteError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.learn(128)
    assert all_finite(model)


def test_set_env_and_load_keep_the_check(tmp_path: Path) -> None:
    model = make_model(FaultyEnv())
    model.learn(16)
    model.set_env(VecNormalize(DummyVecEnv([lambda: FaultyEnv("reward")])))
    with pytest.raises(NonFiniteError, match=f"reward .* at timestep {16 + FAULT_STEP}"):
        model.learn(64, reset_num_timesteps=False)
    assert all_finite(model)

    model.save(tmp_path / "model")
    loaded = NPG.load(tmp_path / "model", env=FaultyEnv("observation", np.inf))
    with pytest.raises(NonFiniteError, match=f"inf in the observation .* at timestep {FAULT_STEP}"):
        loaded.learn(64)
    assert all_finite(loaded)


def test_the_check_is_transparent_to_eval_callback_and_env_access() -> None:
    # SB3's EvalCallback syncs VecNormalize statistics by walking the training and evaluation wrappers in step:
    # the check must not add a wrapper that only the training env has
    train_env = VecNormalize(DummyVecEnv([FaultyEnv]))
    eval_env = VecNormalize(DummyVecEnv([lambda: Monitor(FaultyEnv())]), training=False, norm_reward=False)
    model = make_model(train_env)
    model.learn(64, callback=EvalCallback(eval_env, eval_freq=32, n_eval_episodes=1, verbose=0))
    np.testing.assert_array_equal(eval_env.obs_rms.mean, train_env.obs_rms.mean)
    assert model.get_vec_normalize_env() is train_env

    model = make_model(FaultyEnv())
    env = model.get_env()
    assert env is not None
    assert isinstance(env.envs[0].unwrapped, FaultyEnv)  # DummyVecEnv's own attribute
    assert env.get_attr("episode_length") == [FaultyEnv.episode_length]
    assert env.env_is_wrapped(Monitor) == [True]
    assert isinstance(env, DummyVecEnv)  # get_env() gives the env as built, the check stays inside the model
    model.set_env(env)  # the same env again: checked once
    assert model.get_env() is env
    assert isinstance(model.env, FiniteCheck) and not isinstance(model.env.venv, FiniteCheck)


# --------------------------------------------------------------------------------------------------------
# RL Zoo: a run killed with SIGKILL, resumed from its last checkpoint
# --------------------------------------------------------------------------------------------------------

ZOO_RUN = [
    "--algo",
    "npg",
    "--env",
    "Pendulum-v1",
    "--seed",
    "0",
    "--eval-freq",
    "-1",
    "--num-threads",
    "1",
    "--save-freq",
    "256",
    "--hyperparams",
    "normalize:True",
    "n_steps:64",
    "batch_size:64",
]
RESUMED_STEPS = 512  # 4 rollouts of 2 envs x 64 steps


def digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*.*")}


def is_complete_save(path: Path) -> bool:
    """Whether SB3 has finished writing the model file at ``path``: its last member is in the zip's directory."""
    # (zipfile.is_zipfile is not enough: while the outer archive is written, its tail can be a member's own
    # zip directory, torch.save's)
    try:
        with zipfile.ZipFile(path) as archive:
            return "system_info.txt" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def load_statistics(path: Path) -> VecNormalize:
    with path.open("rb") as file:
        return pickle.load(file)


def test_zoo_run_killed_then_resumed_from_its_last_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("rl_zoo3")
    logs = tmp_path / "logs"
    killed_run, resumed_run = logs / "npg" / "Pendulum-v1_1", logs / "npg" / "Pendulum-v1_2"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sb3_npg.train", *ZOO_RUN, "-f", str(logs), "--verbose", "0"]
    stderr = tmp_path / "killed_run.stderr"
    with stderr.open("w") as stderr_file:
        process = subprocess.Popen(
            [*command, "-n", "1000000"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file
        )
        try:
            # Killed as soon as a checkpoint is complete; the next one is 256 steps (2 rollouts and updates) away
            deadline = time.monotonic() + 120
            while not any(is_complete_save(path) for path in killed_run.glob("rl_model_*_steps.zip")):
                assert process.poll() is None, stderr.read_text()
                assert time.monotonic() < deadline, "no checkpoint after 120 s"
                time.sleep(0.02)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed_run / "Pendulum-v1.zip").exists()  # killed mid-training

    checkpoints = sorted(killed_run.glob("rl_model_*_steps.zip"), key=lambda path: int(path.stem.split("_")[2]))
    last = checkpoints[-1]
    last_steps = int(last.stem.split("_")[2])
    statistics = load_statistics(killed_run / f"rl_model_vecnormalize_{last_steps}_steps.pkl")
    before = digests(killed_run)

    resumed = subprocess.run(
        [*command, "-n", str(RESUMED_STEPS), "-i", str(last)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr

    # The final model loads, and counted on from the checkpoint's timesteps
    final = NPG.load(resumed_run / "Pendulum-v1.zip")
    assert final.num_timesteps == last_steps + RESUMED_STEPS
    final.predict(np.zeros(3, np.float32))
    assert (resumed_run / f"rl_model_{last_steps + 256}_steps.zip").is_file()
    # It started from the checkpoint's VecNormalize statistics: the final ones add this run's samples to them
    # (observations: one per step plus the 2 of the first reset; returns: one per step)
    final_statistics = load_statistics(resumed_run / "Pendulum-v1" / "vecnormalize.pkl")
    assert final_statistics.ret_rms.count == pytest.approx(statistics.ret_rms.count + RESUMED_STEPS)
    assert final_statistics.obs_rms.count == pytest.approx(statistics.obs_rms.count + RESUMED_STEPS + 2)
    # Nothing saved before the kill is lost or changed, and every checkpoint has its statistics and loads
    assert digests(killed_run) == before
    for checkpoint in checkpoints:
        steps = checkpoint.stem.split("_")[2]
        assert (killed_run / f"rl_model_vecnormalize_{steps}_steps.pkl").is_file()
        assert NPG.load(checkpoint).num_timesteps == int(steps)


def test_zoo_resume_without_the_checkpoints_statistics_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("rl_zoo3")
    from sb3_npg import train as npg_train
    from sb3_npg.zoo import checkpoint_statistics_path

    assert checkpoint_statistics_path("run/rl_model_768_steps.zip") == Path("run/rl_model_vecnormalize_768_steps.pkl")
    assert checkpoint_statistics_path("run/Pendulum-v1.zip") is None
    logs = tmp_path / "logs"
    assert npg_train.main([*ZOO_RUN, "-f", str(logs), "--verbose", "0", "-n", "256"]) == 0
    run = logs / "npg" / "Pendulum-v1_1"
    assert (run / "rl_model_vecnormalize_256_steps.pkl").is_file()
    (run / "rl_model_512_steps.zip").write_bytes((run / "rl_model_256_steps.zip").read_bytes())  # no statistics
    capsys.readouterr()

    assert (
        npg_train.main([*ZOO_RUN, "-f", str(logs), "--verbose", "0", "-n", "256", "-i", str(run / "rl_model_512_steps.zip")])
        == 1
    )
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "rl_model_vecnormalize_512_steps.pkl is missing" in error[0]
    assert "resume from one that has them (rl_model_256_steps.zip)" in error[0]
    assert not (logs / "npg" / "Pendulum-v1_2").exists()  # nothing half-written
