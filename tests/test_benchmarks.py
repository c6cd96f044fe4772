"""
Tests of the benchmark pipeline's own logic: the per-update log of ``benchmarks/zoo_run.py``, its copy beside the
results (``benchmarks/rewards.py``), the rliable statistics of ``benchmarks/heldout_stats.py`` and the collapse
diagnosis of ``benchmarks/investigations/diagnose_collapse.py`` on tiny synthetic results files, and the policy probe
of ``benchmarks/investigations/probe_policy.py`` on tiny saved models.
"""

import csv
import gzip
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest
import torch as th
from sb3_contrib import TRPO
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from sb3_npg import NPG

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path[:0] = [str(BENCHMARKS), str(BENCHMARKS / "investigations")]

import common  # noqa: E402
import diagnose_collapse  # noqa: E402
import heldout_stats  # noqa: E402
import probe_policy  # noqa: E402
import rewards  # noqa: E402
import same_update  # noqa: E402
import train_time  # noqa: E402
import zoo_run  # noqa: E402


def read_update_log(path: pathlib.Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as file:
        return list(csv.DictReader(file))


def write_update_log(path: pathlib.Path, rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_update_log_has_one_row_per_update_with_that_updates_values(tmp_path: pathlib.Path) -> None:
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = NPG("MlpPolicy", env, n_steps=32, batch_size=64, n_critic_updates=1, seed=0)
    log = zoo_run.UpdateLog(tmp_path / zoo_run.UPDATE_LOG)
    # an evaluation dumps (and so clears) the logger in the middle of a rollout, as the Zoo's EvalCallback does
    evaluation = EvalCallback(make_vec_env("Pendulum-v1", n_envs=1, seed=1), eval_freq=40, n_eval_episodes=1)
    model.learn(4 * 64, callback=[evaluation, log])
    rows = read_update_log(tmp_path / zoo_run.UPDATE_LOG)
    assert [int(row["train/n_updates"]) for row in rows] == [1, 2, 3, 4]
    assert [int(row["time/total_timesteps"]) for row in rows] == [64, 128, 192, 256]
    for row in rows:
        assert float(row["target_kl"]) == model.target_kl
        for key in ("train/kl_divergence", "train/step_size", "train/xFx", "train/std", "train/advantage_std"):
            assert float(row[key]) > 0, key
        assert np.isfinite(float(row["train/explained_variance"]))
    # the last row is the last update's values, as the logger still holds them
    for key in ("train/kl_divergence", "train/xFx", "train/advantage_std", "train/std"):
        assert float(rows[-1][key]) == pytest.approx(model.logger.name_to_value[key], rel=1e-5)


def test_update_log_takes_the_advantage_scale_from_the_buffer_when_the_algorithm_does_not_log_it(
    tmp_path: pathlib.Path,
) -> None:
    model = TRPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), n_steps=32, batch_size=64, seed=0)
    log = zoo_run.UpdateLog(tmp_path / zoo_run.UPDATE_LOG)
    model.learn(2 * 64, callback=log)
    rows = read_update_log(tmp_path / zoo_run.UPDATE_LOG)
    assert len(rows) == 2
    assert "train/kl_divergence_loss" in rows[0]
    expected = np.std(model.rollout_buffer.advantages, ddof=1)
    assert float(rows[-1]["train/advantage_std"]) == pytest.approx(expected, rel=1e-5)


def finished_run(run_dir: pathlib.Path, seed: int, content: bytes) -> None:
    """A log folder as zoo_run.py leaves it (result.json without hyperparameters: counts as current)."""
    run_dir.mkdir(parents=True)
    result = {"algo": "npg", "env": "Hopper-v5", "seed": seed, "n_timesteps": 1000, "steps": 1024, "final_mean_return": 1.0}
    (run_dir / "result.json").write_text(json.dumps(result))
    with gzip.open(run_dir / zoo_run.UPDATE_LOG, "wb") as file:
        file.write(content)


def test_recorded_run_keeps_its_update_log_beside_the_results(tmp_path: pathlib.Path) -> None:
    results = tmp_path / "results" / "rewards.jsonl"
    finished_run(tmp_path / "run3", seed=3, content=b"time/total_timesteps\n1024\n")
    assert rewards.adopt_run(tmp_path / "run3", results) == []
    (line,) = common.read_jsonl(results)
    kept = results.parent / line["update_log"]
    assert line["update_log"].startswith("updates/npg_Hopper-v5_seed3_1000_")
    shutil.rmtree(tmp_path / "run3")  # what the suite does to a log folder whose run starts over
    with gzip.open(kept, "rb") as file:
        assert file.read() == b"time/total_timesteps\n1024\n"
    # a rerun of the same run (another date) does not overwrite the first one's log
    finished_run(tmp_path / "rerun3", seed=3, content=b"time/total_timesteps\n2048\n")
    rerun = {**json.loads((tmp_path / "rerun3" / "result.json").read_text()), "date": "2030-01-01T00:00:00+00:00"}
    rewards.keep_update_log(tmp_path / "rerun3", rerun, results)
    assert rerun["update_log"] == "updates/npg_Hopper-v5_seed3_1000_20300101T000000Z.csv.gz"
    assert (results.parent / rerun["update_log"]).is_file() and kept.is_file()


def result_line(algo: str, env: str, seed: int, final: float, **extra: object) -> str:
    return json.dumps({"algo": algo, "env": env, "seed": seed, "n_timesteps": 1_000_000, "final_mean_return": final, **extra})


@pytest.fixture
def results_files(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    heldout = [
        *(result_line("npg", "Hopper-v5", seed, final) for seed, final in zip(range(3, 8), (1, 2, 3, 4, 100), strict=True)),
        *(result_line("trpo", "Hopper-v5", seed, final) for seed, final in zip(range(3, 7), (1, 2, 3.5, 7), strict=True)),
        result_line("npg", "Walker2d-v5", 3, 10.0),
        result_line("trpo", "Walker2d-v5", 3, 20.0),
        # a run of an entry Hopper no longer has (stale: left out) and a run on a tuning seed (not held out)
        result_line("npg", "Hopper-v5", 8, 1e6, hyperparams={"target_kl": "0.5"}),
        result_line("npg", "Hopper-v5", 1, 1e6),
    ]
    tuning = [result_line("npg", "Hopper-v5", seed, 10.0 * seed) for seed in (0, 1, 2)]
    tuning += [result_line("trpo", "Hopper-v5", seed, 5.0 + 10.0 * seed) for seed in (0, 1, 2, 3)]
    paths = tmp_path / "heldout.jsonl", tmp_path / "tuning.jsonl"
    for path, lines in zip(paths, (heldout, tuning), strict=True):
        path.write_text("\n".join(lines) + "\n")
    return paths


def test_heldout_statistics_on_a_tiny_results_file(tmp_path: pathlib.Path, results_files: tuple[pathlib.Path, ...]) -> None:
    problem = heldout_stats.rliable_problem()
    if problem is not None:
        pytest.skip(problem)
    heldout, tuning = results_files
    argv = ["--heldout", str(heldout), "--tuning", str(tuning), "--reps", "200", "--out-dir", str(tmp_path / "out")]
    report = heldout_stats.main(argv)
    hopper = report["sets"]["held-out"]["envs"]["Hopper-v5"]
    assert hopper["npg"]["seeds"] == [3, 4, 5, 6, 7]  # not the stale seed 8, not the tuning seed 1
    assert report["sets"]["held-out"]["stale_runs_left_out"] == 1
    # IQM: the 25 % trimmed mean, so the outlier 100 is cut: mean of (2, 3, 4); with 4 seeds, mean of (2, 3.5)
    assert hopper["npg"]["iqm"] == pytest.approx(3.0)
    assert hopper["trpo"]["iqm"] == pytest.approx(2.75)
    # P(NPG > TRPO) over the 5 x 4 seed pairs: 1 ties 1; 2 beats 1, ties 2; 3 beats two, 4 three, 100 all four
    assert hopper["p_npg_over_trpo"] == pytest.approx((0.5 + 1.5 + 2 + 3 + 4) / 20)
    for low, high, point in (
        (*hopper["npg"]["iqm_ci"], hopper["npg"]["iqm"]),
        (*hopper["trpo"]["iqm_ci"], hopper["trpo"]["iqm"]),
        (*hopper["p_npg_over_trpo_ci"], hopper["p_npg_over_trpo"]),
    ):
        assert low <= point <= high and low < high  # a real interval around the point
    assert hopper["npg"]["iqm_ci"][0] >= 1 and hopper["npg"]["iqm_ci"][1] <= 100
    walker = report["sets"]["held-out"]["envs"]["Walker2d-v5"]
    assert walker["npg"]["iqm_ci"] == [10.0, 10.0] and walker["p_npg_over_trpo"] == 0.0
    assert report["sets"]["held-out"]["envs"]["HalfCheetah-v5"]["npg"]["n"] == 0
    # the tuning seeds apart: TRPO's seed 3 is not a tuning seed
    tuning_hopper = report["sets"]["tuning"]["envs"]["Hopper-v5"]
    assert tuning_hopper["trpo"]["seeds"] == [0, 1, 2]
    assert tuning_hopper["npg"]["iqm"] == pytest.approx(10.0) and tuning_hopper["trpo"]["iqm"] == pytest.approx(15.0)
    assert tuning_hopper["p_npg_over_trpo"] == pytest.approx(3 / 9)
    # the same numbers on disk, the table, the figure; the same seed gives the same intervals
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["sets"] == report["sets"]
    table = (tmp_path / "out" / "stats.md").read_text()
    assert "| Hopper-v5 | **3** [" in table and "| Walker2d-v5 | **10** (one seed: no interval)" in table
    assert (tmp_path / "out" / "performance_profiles.png").stat().st_size > 10_000
    assert heldout_stats.main(argv)["sets"] == report["sets"]


def test_train_time_compares_only_the_runs_recorded_since_the_date_and_subtracts_the_pauses(tmp_path: pathlib.Path) -> None:
    results = tmp_path / "runs.jsonl"
    lines = [
        result_line("npg", "Ant-v5", 4, 1800.0, train_time_s=800.0, run_time_s=810.0, date="2026-12-02T01:00:00+00:00"),
        result_line("npg", "Ant-v5", 5, 1700.0, train_time_s=600.0, run_time_s=610.0, date="2026-12-02T01:20:00+00:00"),
        result_line("trpo", "Ant-v5", 5, 500.0, train_time_s=1500.0, run_time_s=1510.0, date="2026-12-02T01:30:00+00:00"),
        result_line("trpo", "Ant-v5", 4, 400.0, train_time_s=1300.0, run_time_s=1310.0, date="2026-12-02T01:10:00+00:00"),
        # an earlier run (other load: left out) and an env with one algorithm only (no row)
        result_line("trpo", "Ant-v5", 3, 441.0, train_time_s=9999.0, run_time_s=9999.0, date="2026-12-01T23:45:00+00:00"),
        result_line("npg", "Swimmer-v5", 4, 116.0, train_time_s=300.0, run_time_s=310.0, date="2026-12-02T01:40:00+00:00"),
    ]
    results.write_text("\n".join(lines) + "\n")
    # one 100 s pause inside NPG seed 4's run (00:46:30-01:00) and TRPO seed 4's (00:48:10-01:10); none in the others
    pauses = tmp_path / "pauses.txt"
    pauses.write_text("2026-12-02T00:50:00 paused (1 2) for: x\n2026-12-02T00:51:40 resumed (1 2)\n")
    out = tmp_path / "train_time.md"
    argv = ["--results", str(results), "--since", "2026-12-02", "--out", str(out)]
    text = train_time.main(argv)
    assert out.read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| Ant-v5")]
    assert rows == [
        "| Ant-v5 | 4: 800, 5: 600 | 4: 1300, 5: 1500 | 700 / 1400 | 0.50 | 4: 1800, 5: 1700 | 4: 400, 5: 500 | 0 |"
    ]
    assert "Swimmer-v5" not in text.split("|---|")[-1]
    rows = [line for line in train_time.main([*argv, "--pauses", str(pauses)]).splitlines() if line.startswith("| Ant-v5")]
    assert rows == [
        "| Ant-v5 | 4: 700, 5: 600 | 4: 1200, 5: 1500 | 650 / 1350 | 0.48 | 4: 1800, 5: 1700 | 4: 400, 5: 500 | 200 |"
    ]


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


def test_heldout_statistics_reject_a_bad_number_of_replications(results_files: tuple[pathlib.Path, ...]) -> None:
    with pytest.raises(SystemExit):
        heldout_stats.main(["--heldout", str(results_files[0]), "--reps", "0"])


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
