"""
Tests of the investigations' scripts on tiny synthetic inputs: the collapse diagnosis of ``diagnose_collapse.py``,
the update-by-update comparison of ``same_update.py`` and the policy probes of ``probe_policy.py``. They are not part
of the test suite (``tests/``): run them with ``python -m pytest benchmarks/investigations`` after changing one of
these scripts.
"""

import csv
import gzip
import json
import math
import pathlib

import diagnose_collapse
import probe_policy
import pytest
import same_update
import torch as th
from sb3_contrib import TRPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from sb3_npg import NPG


def write_update_log(path: pathlib.Path, rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def result_line(algo: str, env: str, seed: int, final: float, **extra: object) -> str:
    return json.dumps({"algo": algo, "env": env, "seed": seed, "n_timesteps": 1_000_000, "final_mean_return": final, **extra})


def test_same_update_sets_npg_beside_trpo_in_per_dimension_kl_and_tests_over_the_seeds(tmp_path: pathlib.Path) -> None:
    npg_results, trpo_results = tmp_path / "npg" / "rewards.jsonl", tmp_path / "trpo" / "rewards.jsonl"
    npg_lines, trpo_lines = [], []
    for seed in (4, 5, 6):
        # NPG logs the KL summed over 3 dimensions (target 0.03), TRPO the mean (target 0.01)
        npg_rows = [
            {
                "target_kl": 0.03,
                "train/kl_divergence": 0.018 + 0.003 * seed,
                "train/value_loss": 0.5,
                "train/explained_variance": 0.9,
                "train/advantage_std": 0.1,
                "rollout/ep_rew_mean": 10.0 * update,
            }
            for update in range(1, 201)
        ]
        trpo_rows = [
            {
                "target_kl": 0.01,
                "train/kl_divergence_loss": 0.006,
                "train/value_loss": 0.25,
                "train/explained_variance": 0.95,
                "train/advantage_std": 0.2,
                "rollout/ep_rew_mean": 20.0 * update,
            }
            for update in range(1, 201)
        ]
        write_update_log(npg_results.parent / "updates" / f"{seed}.csv.gz", npg_rows)
        write_update_log(trpo_results.parent / "updates" / f"{seed}.csv.gz", trpo_rows)
        npg_lines.append(result_line("npg", "Hopper-v5", seed, 1000.0 + seed, update_log=f"updates/{seed}.csv.gz"))
        trpo_lines.append(result_line("trpo", "Hopper-v5", seed, 3000.0 + seed, update_log=f"updates/{seed}.csv.gz"))
    trpo_lines.append(result_line("trpo", "Hopper-v5", 3, 3000.0))  # no log: left out
    npg_results.write_text("\n".join(npg_lines) + "\n")
    trpo_results.write_text("\n".join(trpo_lines) + "\n")
    out = tmp_path / "per_update.md"
    text = same_update.main(
        ["--npg-results", str(npg_results), "--trpo-results", str(trpo_results), "--envs", "Hopper-v5", "--out", str(out)]
    )
    assert out.read_text() == text and "action dimension 3" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| 4 |") or line.startswith("| 5 |")]
    assert [row[1] for row in rows] == ["NPG", "TRPO", "NPG", "TRPO"]
    assert rows[0][3] == "0.01000" and rows[2][3] == "0.01100" and rows[1][3] == "0.00600"  # per dimension
    assert rows[0][5] == "1.00" and rows[1][5] == "0.60"  # KL / target
    assert rows[0][9] == "1505" and rows[1][9] == "3010"  # mean of the last 100 updates' training returns
    assert "NPG below TRPO on 3 of 3 seeds" in text and "seed | algorithm" in text and "| 3 |" not in text


def test_collapse_finds_runs_that_end_below_the_threshold_of_their_best_evaluation(tmp_path: pathlib.Path) -> None:
    steps = [100_000 * i for i in range(1, 11)]
    fell = [1000, 3000, 3500, 3600, 3400, 1200, 900, 800, 700, 600]
    run = {"algo": "npg", "env": "Hopper-v5", "seed": 5, "steps": 1_001_472, "curve_steps": steps, "curve_returns": fell}
    assert diagnose_collapse.collapse({**run, "final_mean_return": 2200}, 0.6) is None  # 2200 >= 0.6 * 3600
    fall = diagnose_collapse.collapse({**run, "final_mean_return": 600}, 0.6)
    assert fall == {"best_step": 400_000, "best": 3600, "fall_start": 500_000, "fall_end": 600_000}
    # only the final evaluation is below: the fall is in the last interval
    late = diagnose_collapse.collapse(
        {**run, "curve_returns": [*fell[:4], 3600, 3600, 3600, 3600, 3600, 3500], "final_mean_return": 900}, 0.6
    )
    assert late is not None and (late["fall_start"], late["fall_end"]) == (1_000_000, 1_001_472)

    # the whole command on a results file whose collapsed run has a per-update log: a figure, the run returned
    rows = [{"time/total_timesteps": s, "target_kl": 0.1, "train/kl_divergence": 0.05, "train/xFx": 1.0} for s in steps]
    results = tmp_path / "rewards.jsonl"
    write_update_log(tmp_path / "updates" / "log.csv.gz", rows)
    results.write_text(
        json.dumps({**run, "final_mean_return": 600, "n_timesteps": 1_000_000, "update_log": "updates/log.csv.gz"}) + "\n"
    )
    (found,) = diagnose_collapse.main(["--results", str(results)])
    assert found["run"]["seed"] == 5 and found["fall_end"] == 600_000
    assert (tmp_path / "diagnosis" / "npg_Hopper-v5_seed5.png").is_file()
    with pytest.raises(SystemExit):
        diagnose_collapse.main(["--results", str(results), "--threshold", "1.5"])


def test_comparison_sets_each_run_beside_the_other_algorithms_run_on_the_same_seed(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def update_log(name: str, samples: int, kl_key: str, kl: float, target_kl: float) -> str:
        rows = [
            {
                "time/total_timesteps": samples * (i + 1),
                "target_kl": target_kl,
                kl_key: kl * (1 + i % 2),  # alternating kl, 2 kl: median 1.5 kl
                "train/std": 1.0 - i / 100,
                "rollout/ep_rew_mean": 10.0 * i,
                "rollout/ep_len_mean": 5.0 * i,
            }
            for i in range(40_960 // samples)
        ]
        (tmp_path / "updates").mkdir(exist_ok=True)
        with gzip.open(tmp_path / "updates" / name, "wt", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return f"updates/{name}"

    curve = {"curve_steps": [20_480, 40_960], "curve_returns": [100.0, 200.0], "n_timesteps": 40_960, "steps": 40_960}
    runs = [
        {"algo": "npg", "seed": 5, "update_log": update_log("npg5.csv.gz", 4096, "train/kl_divergence", 0.08, 0.1)},
        {"algo": "trpo", "seed": 5, "update_log": update_log("trpo5.csv.gz", 2048, "train/kl_divergence_loss", 0.006, 0.01)},
        # another seed's TRPO run, which must not be paired with NPG's seed 5
        {"algo": "trpo", "seed": 6, "update_log": update_log("trpo6.csv.gz", 1024, "train/kl_divergence_loss", 0.5, 0.01)},
    ]
    results = tmp_path / "rewards.jsonl"
    results.write_text(
        "".join(json.dumps({**run, "env": "Hopper-v5", "final_mean_return": 200.0, **curve}) + "\n" for run in runs)
    )

    diagnose_collapse.main(["--results", str(results), "--algos", "npg", "--compare", "trpo"])
    assert (tmp_path / "diagnosis" / "npg_vs_trpo_Hopper-v5_seed5.png").stat().st_size > 10_000
    assert not (tmp_path / "diagnosis" / "npg_vs_trpo_Hopper-v5_seed6.png").exists()
    printed = capsys.readouterr().out
    assert printed.count(" against trpo") == 1
    assert "trpo's logged KL times 3" in printed  # TRPO's KL is a mean over Hopper's 3 action dimensions

    npg_rows = diagnose_collapse.read_update_log(tmp_path / runs[0]["update_log"])
    summary = diagnose_collapse.comparison_summary({"final_mean_return": 200.0}, npg_rows)
    assert summary["samples per update"] == 4096 and summary["updates"] == 10
    assert summary["KL per update"] == pytest.approx(0.12)
    assert summary["KL per 1000 samples"] == pytest.approx(0.12 / 4.096)
    assert summary["summed KL"] == pytest.approx(5 * 0.08 + 5 * 0.16)
    assert (summary["first std"], summary["last std"]) == (1.0, pytest.approx(0.91))
    assert (summary["last training return"], summary["last training ep. length"]) == (90.0, 45.0)
    trpo_rows = diagnose_collapse.read_update_log(tmp_path / runs[1]["update_log"])
    assert diagnose_collapse.summed_kl_factor("Hopper-v5", npg_rows) == 1
    assert diagnose_collapse.summed_kl_factor("Hopper-v5", trpo_rows) == 3
    assert diagnose_collapse.summed_kl_factor("CartPole-v1", trpo_rows) == 1  # Discrete: one KL per state already
    ppo_log = update_log("ppo5.csv.gz", 512, "train/approx_kl", 0.01, math.nan)
    ppo_rows = diagnose_collapse.read_update_log(tmp_path / ppo_log)
    assert diagnose_collapse.summed_kl_factor("Hopper-v5", ppo_rows) == 1  # PPO estimates the KL of whole actions
    assert diagnose_collapse.comparison_summary({"final_mean_return": 0.0}, ppo_rows)["KL per update"] == pytest.approx(0.015)
    series = diagnose_collapse.comparison_series(trpo_rows, 3)
    assert series["KL per update"][:2] == pytest.approx([0.018, 0.036])
    assert series["summed KL"][-1] == pytest.approx(3 * (10 * 0.006 + 10 * 0.012))


def test_probe_tells_episodes_that_reach_the_time_limit_from_those_that_fall(tmp_path: pathlib.Path) -> None:
    # an rl_zoo3 log folder's layout, with a model and VecNormalize statistics
    for env_id, algo in (("Pendulum-v1", TRPO), ("InvertedPendulum-v5", NPG), ("CartPole-v1", NPG)):
        run_dir = tmp_path / env_id / algo.__name__.lower() / f"{env_id}_1"
        (run_dir / env_id).mkdir(parents=True)
        env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=0), norm_reward=False)
        algo("MlpPolicy", env, n_steps=64, batch_size=64, seed=0).save(run_dir / f"{env_id}.zip")
        env.save(str(run_dir / env_id / "vecnormalize.pkl"))
    with pytest.raises(ValueError, match="checkpoint"):
        probe_policy.run_paths(tmp_path / "Pendulum-v1", "last")
    with pytest.raises(ValueError, match="Box actions"):
        probe_policy.main(["noise", str(tmp_path / "CartPole-v1"), "--episodes", "1"])

    # Pendulum never ends before its time limit of 200 steps; an untrained policy drops the inverted pendulum early
    rows = probe_policy.main(["noise", str(tmp_path / "Pendulum-v1"), "--episodes", "2", "--noise-scales", "0.5"])
    assert [row["noise_scale"] for row in rows] == [0.0, 0.5]
    assert all(row["timeouts"] == 1.0 and row["length"] == 200 for row in rows)
    algo_name, env_id, model, vecnormalize = probe_policy.run_paths(tmp_path / "InvertedPendulum-v5", "final")
    assert (algo_name, env_id, model.name) == ("npg", "InvertedPendulum-v5", "InvertedPendulum-v5.zip")
    assert vecnormalize.is_file()
    rows = probe_policy.main(["noise", str(tmp_path / "InvertedPendulum-v5"), "--episodes", "3", "--noise-scales", "1"])
    assert all(row["timeouts"] == 0.0 and row["length"] < 1000 for row in rows)


def test_pairwise_cosines_of_step_directions() -> None:
    vectors = [th.tensor([1.0, 0.0]), th.tensor([2.0, 0.0]), th.tensor([0.0, -3.0])]
    assert probe_policy.pairwise_cosines(vectors) == pytest.approx([1.0, 0.0, 0.0])


def test_probe_figure_draws_the_continue_lines_and_refuses_a_file_without_any(tmp_path: pathlib.Path) -> None:
    base = {"algo": "trpo", "env": "Hopper-v5", "log_dir": "runs/seed5_1000000", "checkpoint": "final", "mode": "continue"}
    result = {"return": 3600.0, "training_return": 2500.0}
    rows = [
        {**base, **result, "seed": 1, "target_kl": kl, **damping, "n_steps": 2048, "steps": steps}
        for kl, damping in ((0.01, {}), (0.1, {"cg_damping": 0.3}))  # a row without cg_damping had the default
        for steps in (0, 8192)
    ]
    lines = tmp_path / "probes.jsonl"
    lines.write_text("".join(json.dumps(row) + "\n" for row in rows))
    probe_policy.main(["figure", str(lines), "--figure", str(tmp_path / "continue.png")])
    assert (tmp_path / "continue.png").stat().st_size > 10_000
    lines.write_text(json.dumps({**base, "mode": "noise"}) + "\n")
    with pytest.raises(ValueError, match="no 'continue' lines"):
        probe_policy.main(["figure", str(lines), "--figure", str(tmp_path / "none.png")])
