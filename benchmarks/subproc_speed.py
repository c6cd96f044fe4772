"""
Environments in parallel processes: steps per second with SB3's ``DummyVecEnv`` (1, 2 and 4 envs, stepped one
after the other in the training process) against ``SubprocVecEnv`` (1, 2 and 4 envs, one process each), on
CartPole-v1 and HalfCheetah-v5. Comparing the two at the same number of envs separates what the processes
bring from what batching several envs brings (one policy call per step of all the envs).

Two consumers, each timed over the same number of env steps:

* ``random``: stepping with random actions (sampled in the main process), nothing else: what the env
  processes can deliver, inter-process messages included;
* ``npg``: ``NPG.learn`` (default ``MlpPolicy``, 2048 samples per update whatever the number of envs,
  ``n_steps = 2048 / n_envs``, 10 critic epochs of minibatches of 128): the policy's forward pass per step
  and the update come on top, and do not get faster with more env processes.

Configurations are interleaved round-robin (``--rounds`` times) so that other load on the machine hits
every one alike; the tables give the median. Results go to ``benchmarks/results/subproc_speed.json`` and
``.md``.

Usage::

    python benchmarks/subproc_speed.py                 # both envs, 3 rounds (about 15 minutes on 2 busy cores)
    python benchmarks/subproc_speed.py --quick         # a tenth of the steps, 1 round: a check that it runs
"""

import argparse
import os
import statistics
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch as th
from common import machine_line, markdown_table, write_record
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from sb3_npg import NPG

CONFIGS = (("dummy", 1), ("dummy", 2), ("dummy", 4), ("subproc", 1), ("subproc", 2), ("subproc", 4))
SAMPLES_PER_UPDATE = 2048
TIMES = "\u00d7"  # the multiplication sign of the tables
STEPS = {"random": {"CartPole-v1": 40_000, "HalfCheetah-v5": 20_000}, "npg": {"CartPole-v1": 8192, "HalfCheetah-v5": 8192}}


def make_envs(env_id: str, kind: str, n_envs: int) -> VecEnv:
    """``n_envs`` copies of ``env_id``, in this process (``dummy``) or one process each (``subproc``)."""
    return make_vec_env(env_id, n_envs=n_envs, seed=0, vec_env_cls=DummyVecEnv if kind == "dummy" else SubprocVecEnv)


def random_steps_per_second(env: VecEnv, steps: int) -> float:
    """Env steps per second (summed over the envs) with random actions."""
    rng = np.random.default_rng(0)
    space = env.action_space
    env.reset()
    n_calls = steps // env.num_envs
    start = time.perf_counter()
    for _ in range(n_calls):
        if hasattr(space, "n"):
            actions = rng.integers(space.n, size=env.num_envs)  # type: ignore[attr-defined]
        else:
            actions = rng.uniform(space.low, space.high, size=(env.num_envs, *space.shape))  # type: ignore[attr-defined,misc]
        env.step(actions)
    return n_calls * env.num_envs / (time.perf_counter() - start)


def npg_steps_per_second(env: VecEnv, steps: int) -> float:
    """Env steps per second of ``NPG.learn`` (rollouts and updates), 2048 samples per update."""
    model = NPG("MlpPolicy", env, n_steps=SAMPLES_PER_UPDATE // env.num_envs, batch_size=128, n_critic_updates=10, seed=0)
    start = time.perf_counter()
    model.learn(steps)
    return model.num_timesteps / (time.perf_counter() - start)


def measure(env_id: str, consumer: str, kind: str, n_envs: int, scale: float = 1.0) -> float:
    """Steps per second of ``consumer`` (``random`` or ``npg``) on fresh envs, ``scale`` times the usual steps."""
    env = make_envs(env_id, kind, n_envs)
    steps = int(STEPS[consumer][env_id] * scale)
    try:
        if consumer == "random":
            return random_steps_per_second(env, steps)
        return npg_steps_per_second(env, steps)
    finally:
        env.close()


def markdown(results: dict[str, Any]) -> str:
    """The steps per second as a Markdown table, each relative to one env stepped in the training process."""
    rows = []
    for env_id, by_consumer in results["steps_per_second"].items():
        for consumer, by_config in by_consumer.items():
            base = by_config[f"dummy {TIMES} 1"]
            rows.append([env_id, consumer, *(f"{value:,.0f} ({value / base:.2f}{TIMES})" for value in by_config.values())])
    lines = [
        f"Command: `{results['command']}`, {results['date']}; {results['machine']}; "
        f"load average at the start {results['load_average']}; median of {results['rounds']} rounds.",
        "",
        *markdown_table(["env", "consumer", *(f"{kind} {TIMES} {n}" for kind, n in CONFIGS)], rows),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "HalfCheetah-v5"])
    parser.add_argument("--rounds", type=int, default=3, help="round-robin repeats of every configuration")
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps and one round (results not saved)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    th.set_num_threads(1)
    load_average = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    samples: dict[tuple[str, str, str], list[float]] = {}
    for round_index in range(args.rounds):
        for env_id in args.envs:
            for consumer in ("random", "npg"):
                for kind, n_envs in CONFIGS:
                    value = measure(env_id, consumer, kind, n_envs, scale=0.1 if args.quick else 1.0)
                    samples.setdefault((env_id, consumer, f"{kind} {TIMES} {n_envs}"), []).append(value)
                    print(
                        f"round {round_index + 1}: {env_id} {consumer} {kind} {TIMES} {n_envs}: {value:,.0f} steps/s",
                        flush=True,
                    )
    steps_per_second: dict[str, dict[str, dict[str, float]]] = {}
    for (env_id, consumer, config), values in samples.items():
        steps_per_second.setdefault(env_id, {}).setdefault(consumer, {})[config] = statistics.median(values)
    results = {
        "command": "python benchmarks/subproc_speed.py" + (f" --rounds {args.rounds}" if args.rounds != 3 else ""),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_line(),
        "load_average": load_average,
        "rounds": args.rounds,
        "steps_per_second": steps_per_second,
        "samples": {" / ".join(key): values for key, values in samples.items()},
    }
    print(markdown(results))
    if args.quick:
        return
    write_record("subproc_speed", results, markdown(results))


if __name__ == "__main__":
    main()
