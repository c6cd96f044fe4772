"""Environments in parallel processes: NPG with SB3's ``SubprocVecEnv``, from Python and through ``--vec-env subproc``."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from sb3_npg import NPG

SMALL = {"n_steps": 64, "batch_size": 64, "n_critic_updates": 2, "policy_kwargs": {"net_arch": [16]}, "seed": 0}


def cartpoles(vec_env_cls: type[VecEnv], n_envs: int = 2) -> VecEnv:
    return make_vec_env("CartPole-v1", n_envs=n_envs, seed=0, vec_env_cls=vec_env_cls)


def parameters(model: NPG) -> th.Tensor:
    return th.cat([p.detach().reshape(-1) for p in model.policy.parameters()])


def test_subproc_vec_env_trains_saves_and_loads_like_dummy(tmp_path: Path) -> None:
    """The same seed in processes or in one process: the same rollouts, hence the same parameters."""
    # (one model after the other: the seed also seeds torch's global generator, which samples the actions)
    in_processes = NPG("MlpPolicy", cartpoles(SubprocVecEnv), **SMALL)
    four_processes = cartpoles(SubprocVecEnv, n_envs=4)
    try:
        assert isinstance(in_processes.get_env(), SubprocVecEnv)
        in_processes.learn(256)
        in_one_process = NPG("MlpPolicy", cartpoles(DummyVecEnv), **SMALL)
        untrained = parameters(in_one_process).clone()
        in_one_process.learn(256)
        assert in_processes.num_timesteps == in_one_process.num_timesteps == 256
        th.testing.assert_close(parameters(in_processes), parameters(in_one_process))
        assert not th.equal(parameters(in_processes), untrained)

        in_processes.save(tmp_path / "npg_subproc.zip")
        loaded = NPG.load(tmp_path / "npg_subproc.zip", env=four_processes, device="cpu")
        observations = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
        np.testing.assert_array_equal(
            loaded.predict(observations, deterministic=True)[0], in_processes.predict(observations, deterministic=True)[0]
        )
        loaded.learn(256, reset_num_timesteps=False)
        assert loaded.num_timesteps == 256 + 4 * 64
        assert th.isfinite(parameters(loaded)).all()
    finally:
        four_processes.close()
        env = in_processes.get_env()
        if env is not None:
            env.close()


def test_zoo_vec_env_subproc_trains_and_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rl_zoo3")
    import rl_zoo3.exp_manager

    from sb3_npg import train as npg_train

    made: list[int] = []

    class RecordingSubprocVecEnv(SubprocVecEnv):
        """SB3's own SubprocVecEnv, recording how many env processes the Zoo starts."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(sum(process.is_alive() for process in self.processes))

    monkeypatch.setattr(rl_zoo3.exp_manager, "SubprocVecEnv", RecordingSubprocVecEnv)
    argv = ["--env", "CartPole-v1", "--vec-env", "subproc", "-n", "1024", "--eval-freq", "-1", "--seed", "0"]
    assert npg_train.main([*argv, "-f", str(tmp_path), "--verbose", "0", "--num-threads", "1"]) == 0
    assert made == [2]  # npg.yml's n_envs for CartPole-v1, each in a live process
    model = NPG.load(tmp_path / "npg" / "CartPole-v1_1" / "CartPole-v1.zip", device="cpu")
    assert model.num_timesteps == 1024
    assert th.isfinite(parameters(model)).all()
