"""
``sb3_npg.envs.MaskedCueEnv`` needs memory and masks: the cue is seen once, the decision pays the cued action, most
actions are invalid; and ``benchmarks/maskable_recurrent.py`` runs every algorithm on it (quick mode) and tabulates.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from sb3_npg.envs import MaskedCueEnv

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_passes_gymnasiums_checker() -> None:
    check_env(MaskedCueEnv(), skip_render_check=True)


def test_cue_once_masks_in_the_observation_and_the_decision_between_the_cue_and_a_decoy() -> None:
    env = MaskedCueEnv(n_actions=6, n_valid=2, delay=3)
    for seed in range(20):
        observation, _ = env.reset(seed=seed)
        cue = int(np.argmax(observation[:6]))
        assert observation[:6].sum() == 1
        for step in range(4):
            mask = env.action_masks()
            np.testing.assert_array_equal(observation[6:12], mask.astype(np.float32))
            assert observation[12] == pytest.approx(step / 3)
            if step > 0:
                assert observation[:6].sum() == 0  # the cue is hidden after the first step
            if step < 3:
                assert mask.sum() == 2
                observation, reward, terminated, _, _ = env.step(int(np.flatnonzero(mask)[0]))
                assert (reward, terminated) == (0.0, False)
        assert mask.sum() == 2 and mask[cue]  # the decision: the cued action and one decoy


def play(env: MaskedCueEnv, choose, episodes: int = 400) -> list[float]:
    """Returns of ``choose(mask, cue_seen)`` over seeded episodes; ``cue_seen`` is the cue of the first observation."""
    returns, rng = [], np.random.default_rng(10**6)  # not an episode's seed: the player's draws are the env's own
    for seed in range(episodes):
        observation, _ = env.reset(seed=seed)
        cue, total, done = int(np.argmax(observation[: env.n_actions])), 0.0, False
        while not done:
            _, reward, done, _, _ = env.step(choose(env.action_masks(), cue, rng))
            total += reward
        returns.append(total)
    return returns


def test_memory_and_masks_are_both_needed() -> None:
    """Remembering the cue and acting validly returns 1 every time; a valid player without memory 0 on average; an
    invalid action costs -1 and ends the episode."""
    env = MaskedCueEnv()
    remembering = play(env, lambda mask, cue, rng: cue if mask[cue] else np.flatnonzero(mask)[0])
    assert remembering == [1.0] * 400
    forgetting = play(env, lambda mask, cue, rng: rng.choice(np.flatnonzero(mask)))
    assert abs(np.mean(forgetting)) < 0.15 and set(forgetting) == {-1.0, 1.0}
    env.reset(seed=0)
    invalid = int(np.flatnonzero(~env.action_masks())[0])
    _, reward, terminated, _, info = env.step(invalid)
    assert (reward, terminated, info["invalid_action"]) == (-1.0, True, True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_actions": 1}, "n_actions"), ({"n_valid": 0}, "n_valid"), ({"n_valid": 7}, "n_valid"), ({"delay": 0}, "delay")],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskedCueEnv(**kwargs)


def test_benchmark_quick_mode_runs_every_algorithm_and_the_table_reads_the_runs(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    script = REPO / "benchmarks" / "maskable_recurrent.py"
    quick = subprocess.run([sys.executable, str(script), "--quick"], env=env, capture_output=True, text=True, timeout=300)
    assert quick.returncode == 0, quick.stderr[-3000:]
    for algo in ("maskable_recurrent_npg", "maskable_npg", "recurrent_npg", "maskable_ppo", "recurrent_ppo"):
        assert f"{algo}: return" in quick.stdout
    runs = tmp_path / "runs.jsonl"
    rows = [
        {"algo": algo, "seed": seed, "timesteps": 100, "episodes": 2, "mean_return": value, "train_time": 2.0}
        | {"date": "2026-01-01", "machine": "test"}
        for algo, values in (("recurrent_ppo", (0.5, 0.0)), ("maskable_recurrent_npg", (1.0, 0.9)))
        for seed, value in enumerate(values)
    ]
    runs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    table = subprocess.run(
        [sys.executable, str(script), "--table", "--out", str(runs)], env=env, capture_output=True, text=True, timeout=120
    )
    assert table.returncode == 0, table.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    lines = [line for line in summary.splitlines() if line.startswith("| maskable") or line.startswith("| recurrent")]
    assert lines == [
        "| maskable_recurrent_npg | 100 | 1.00 / 0.90 | 0.95 | 95 % | 2 |",
        "| recurrent_ppo | 100 | 0.50 / 0.00 | 0.25 | 25 % | 2 |",
    ]
