"""
Tests of the benchmark pipeline's own logic (the maintained scripts of ``benchmarks/README.md`` and their helper
module ``benchmarks/common.py``, importable through the ``pythonpath`` setting of pytest in ``pyproject.toml``): the
per-update log of ``benchmarks/zoo_run.py``, its copy beside the results (``benchmarks/rewards.py``), the rliable
statistics of ``benchmarks/heldout_stats.py`` and the training times of ``benchmarks/train_time.py`` on tiny
synthetic results files, and records that name no machine.
"""

import gzip
import json
import pathlib
import shutil

import common
import heldout_stats
import numpy as np
import pytest
import rewards
import train_time
import zoo_run
from sb3_contrib import TRPO
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_npg import NPG


def test_update_log_has_one_row_per_update_with_that_updates_values(tmp_path: pathlib.Path) -> None:
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = NPG("MlpPolicy", env, n_steps=32, batch_size=64, n_critic_updates=1, seed=0)
    log = zoo_run.UpdateLog(tmp_path / common.UPDATE_LOG)
    # an evaluation dumps (and so clears) the logger in the middle of a rollout, as the Zoo's EvalCallback does
    evaluation = EvalCallback(make_vec_env("Pendulum-v1", n_envs=1, seed=1), eval_freq=40, n_eval_episodes=1)
    model.learn(4 * 64, callback=[evaluation, log])
    rows = common.read_update_log(tmp_path / common.UPDATE_LOG)
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
    log = zoo_run.UpdateLog(tmp_path / common.UPDATE_LOG)
    model.learn(2 * 64, callback=log)
    rows = common.read_update_log(tmp_path / common.UPDATE_LOG)
    assert len(rows) == 2
    assert "train/kl_divergence_loss" in rows[0]
    expected = np.std(model.rollout_buffer.advantages, ddof=1)
    assert float(rows[-1]["train/advantage_std"]) == pytest.approx(expected, rel=1e-5)


def finished_run(run_dir: pathlib.Path, seed: int, content: bytes) -> None:
    """A log folder as zoo_run.py leaves it (result.json without hyperparameters: counts as current)."""
    run_dir.mkdir(parents=True)
    result = {"algo": "npg", "env": "Hopper-v5", "seed": seed, "n_timesteps": 1000, "steps": 1024, "final_mean_return": 1.0}
    (run_dir / "result.json").write_text(json.dumps(result))
    with gzip.open(run_dir / common.UPDATE_LOG, "wb") as file:
        file.write(content)


def test_recorded_run_keeps_its_update_log_beside_the_results(tmp_path: pathlib.Path) -> None:
    results = tmp_path / "results" / "rewards.jsonl"
    finished_run(tmp_path / "run3", seed=3, content=b"time/total_timesteps\n1024\n")
    assert rewards.adopt_run(tmp_path / "run3", results) == []
    (line,) = common.read_jsonl(results)
    assert line["adopted_from"] == "run3" and "host" not in line["machine"]  # no folder or host of the machine
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


def test_heldout_statistics_reject_a_bad_number_of_replications(results_files: tuple[pathlib.Path, ...]) -> None:
    with pytest.raises(SystemExit):
        heldout_stats.main(["--heldout", str(results_files[0]), "--reps", "0"])


def test_records_name_the_machine_kind_and_the_code_but_no_folder_or_host(tmp_path: pathlib.Path) -> None:
    import sb3_npg

    found = common.machine()
    assert "host" not in found and found["kind"].endswith("CPU machine") and found["sb3_npg"] == sb3_npg.__version__
    line = common.machine_line()
    assert line.startswith(found["kind"]) and f"sb3_npg {sb3_npg.__version__}" in line
    assert str(common.REPOSITORY) not in line and str(pathlib.Path(sb3_npg.__file__).parent) not in line
    # paths inside the repository are recorded relative to it; outside it, by their name alone
    assert common.repository_path(common.RESULTS / "heldout" / "rewards.jsonl") == "benchmarks/results/heldout/rewards.jsonl"
    assert common.repository_path(tmp_path / "run3") == "run3"
