"""
Cost of NPG's NaN/inf check (``sb3_npg.env_checks.FiniteCheck``) on CartPole-v1 with one environment.

Prints the check's own time per step (``timeit`` on the arrays of one CartPole step), and the time per
timestep of ``env.step`` and of ``NPG.learn`` with and without the check (interleaved repeats, min and median).

    python benchmarks/investigations/finite_check_cost.py
"""

import time
import timeit

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sb3_npg import NPG
from sb3_npg.env_checks import FiniteCheck

STEPS = 20_000
LEARN_STEPS = 10_240
REPEATS = 5


def check_per_step() -> float:
    """Microseconds of the checks one CartPole step runs (action, observation, reward, infos)."""
    check = FiniteCheck(make_vec_env("CartPole-v1", n_envs=1))
    observation, reward, action, infos = np.zeros((1, 4), np.float32), np.zeros(1, np.float32), np.zeros(1, np.int64), [{}]

    def one_step() -> None:
        check._check("action", action, during="step")
        check._check("observation", observation, during="step")
        check._check("reward", reward, during="step")
        for info in infos:
            assert "terminal_observation" not in info

    number = 50_000
    return min(timeit.repeat(one_step, number=number, repeat=REPEATS)) / number * 1e6


def env_step_time(checked: bool) -> float:
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    if checked:
        env = FiniteCheck(env)
    env.reset()
    action = np.zeros(1, dtype=np.int64)
    start = time.perf_counter()
    for _ in range(STEPS):
        env.step(action)
    return (time.perf_counter() - start) / STEPS * 1e6


def learn_time(checked: bool) -> float:
    model = NPG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), n_steps=1024, batch_size=64, seed=0)
    if not checked:
        model.env = model.env.venv  # the base VecEnv, below the check NPG inserted
    start = time.perf_counter()
    model.learn(LEARN_STEPS)
    return (time.perf_counter() - start) / LEARN_STEPS * 1e6


def main() -> None:
    th.set_num_threads(1)
    print(f"check alone: {check_per_step():.1f} us per step")
    for name, measure in (("env.step", env_step_time), ("learn", learn_time)):
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(REPEATS):
            for checked in (False, True):
                times[checked].append(measure(checked))
        for checked, values in times.items():
            label = "with check" if checked else "without"
            print(f"{name} {label}: min {min(values):.1f}, median {np.median(values):.1f} us per timestep")


if __name__ == "__main__":
    main()
