"""
Tests of the benchmark pipeline's own logic (the maintained scripts of ``benchmarks/README.md`` and their helper
module ``benchmarks/common.py``, importable through the ``pythonpath`` setting of pytest in ``pyproject.toml``): the
per-update log of ``benchmarks/zoo_run.py``, its copy beside the results (``benchmarks/rewards.py``), the rliable
statistics of ``benchmarks/heldout_stats.py`` (with its learning curves and training times per algorithm), the
selection protocol's arithmetic of ``benchmarks/selection_stats.py`` and the training times of
``benchmarks/train_time.py`` and the K-FAC returns' pairing of ``benchmarks/kfac.py --returns`` on tiny synthetic results
files, and records that name no machine.
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
import selection_stats
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


def test_update_log_records_each_updates_value_of_a_target_kl_schedule(tmp_path: pathlib.Path) -> None:
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = NPG("MlpPolicy", env, n_steps=32, batch_size=64, n_critic_updates=1, target_kl=lambda remaining: 0.1 * remaining)
    log = zoo_run.UpdateLog(tmp_path / common.UPDATE_LOG)
    model.learn(4 * 64, callback=log)
    rows = common.read_update_log(tmp_path / common.UPDATE_LOG)
    # progress remaining when each update is made: 1 - (n - 1) / 4 of 4 rollouts, as SB3 counts it after the rollout
    assert [float(row["target_kl"]) for row in rows] == pytest.approx([0.075, 0.05, 0.025, 0.0], abs=1e-6)


def test_update_log_takes_the_advantage_scale_from_the_buffer_when_the_algorithm_does_not_log_it(
    tmp_path: pathlib.Path,
) -> None:
    model = TRPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), n_steps=32, batch_size=64, seed=0)
    log = zoo_run.UpdateLog(tmp_path / common.UPDATE_LOG)
    model.learn(2 * 64, callback=log)
    rows = common.read_update_log(tmp_path / common.UPDATE_LOG)
    assert len(rows) == 2
    assert "train/kl_divergence_loss" in rows[0]
    assert [float(row["target_kl"]) for row in rows] == [model.target_kl] * 2
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


def stats_without_header(path: pathlib.Path) -> str:
    """A ``stats.md`` without its "Generated by" line (the command and date differ from run to run)."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.startswith("Generated by"))


def test_heldout_statistics_add_every_baseline_with_runs(
    tmp_path: pathlib.Path, results_files: tuple[pathlib.Path, ...]
) -> None:
    problem = common.rliable_problem()
    if problem is not None:
        pytest.skip(problem)
    heldout, tuning = results_files
    argv = ["--heldout", str(heldout), "--tuning", str(tuning), "--reps", "200"]
    # without PPO runs, the default (npg trpo ppo) writes the tables of npg against trpo alone
    heldout_stats.main([*argv, "--out-dir", str(tmp_path / "default")])
    heldout_stats.main([*argv, "--algos", "npg", "trpo", "--out-dir", str(tmp_path / "two")])
    table = stats_without_header(tmp_path / "default" / "stats.md")
    assert table == stats_without_header(tmp_path / "two" / "stats.md")
    assert table.startswith("# Final returns: IQM, 95 % intervals, P(NPG > TRPO)\n") and "PPO" not in table
    # PPO runs on Hopper: a PPO column group, P(NPG > PPO) beside P(NPG > TRPO)
    curve = {"curve_steps": [1000, 2000], "curve_returns": [0.0, 1.0]}
    ppo = [
        result_line("ppo", "Hopper-v5", seed, final, **curve) for seed, final in zip((3, 4, 5), (0.0, 2.5, 50.0), strict=True)
    ]
    with_ppo = tmp_path / "with_ppo.jsonl"
    with_ppo.write_text(heldout.read_text() + "\n".join(ppo) + "\n")
    report = heldout_stats.main(
        ["--heldout", str(with_ppo), "--tuning", str(tuning), "--reps", "200", "--out-dir", str(tmp_path)]
    )
    hopper = report["sets"]["held-out"]["envs"]["Hopper-v5"]
    assert hopper["ppo"]["seeds"] == [3, 4, 5] and hopper["ppo"]["iqm"] == pytest.approx(52.5 / 3)  # 3 seeds: the mean
    # NPG (1, 2, 3, 4, 100) against PPO (0, 2.5, 50): 1 beats one, 2 one, 3 two, 4 two, 100 three, of 15 pairs
    assert hopper["p_npg_over_ppo"] == pytest.approx(9 / 15)
    assert hopper["p_npg_over_trpo"] == pytest.approx((0.5 + 1.5 + 2 + 3 + 4) / 20)  # unchanged by the PPO runs
    low, high = hopper["p_npg_over_ppo_ci"]
    assert low <= hopper["p_npg_over_ppo"] <= high and low < high
    walker = report["sets"]["held-out"]["envs"]["Walker2d-v5"]
    assert walker["ppo"]["n"] == 0 and walker["p_npg_over_ppo"] is None
    table = (tmp_path / "stats.md").read_text()
    assert (
        "P(NPG > TRPO) [95 % CI] | PPO IQM [95 % CI] | NPG - PPO (IQM) | P(NPG > PPO) [95 % CI] | seeds NPG / TRPO / PPO |"
        in table
    )
    assert "| Hopper-v5 | **3** [" in table and "| -14 | **0.60** [" in table and "| 5 / 4 / 3 |" in table
    assert "- Hopper-v5 PPO: 3: 0, 4: 2, 5: 50" in table


def test_heldout_learning_curves_and_training_times(tmp_path: pathlib.Path) -> None:
    problem = common.rliable_problem()
    if problem is not None:
        pytest.skip(problem)
    lines = [
        # NPG seeds 3-6: at step 1000 returns 1, 2, 3, 100 (IQM: the mean of 2 and 3); seed 6 was also evaluated at 1500
        *(
            result_line(
                "npg", "Hopper-v5", seed, 0.0, curve_steps=[1000, 2000], curve_returns=[first, 10.0], train_time_s=time
            )
            for seed, first, time in zip((3, 4, 5), (1.0, 2.0, 3.0), (100.0, 300.0, 200.0), strict=True)
        ),
        result_line(
            "npg", "Hopper-v5", 6, 0.0, curve_steps=[1000, 1500, 2000], curve_returns=[100.0, 5.0, 10.0], train_time_s=900.0
        ),
        *(
            result_line(
                "trpo", "Hopper-v5", seed, 0.0, curve_steps=[1000, 2000], curve_returns=[0.0, 4.0 * seed], train_time_s=400.0
            )
            for seed in (3, 4)
        ),
        result_line("ppo", "Hopper-v5", 3, 0.0, curve_steps=[1000, 2000], curve_returns=[7.0, 8.0], train_time_s=1000.0),
    ]
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("\n".join(lines) + "\n")
    argv = ["--heldout", str(heldout), "--tuning", str(tmp_path / "none.jsonl"), "--reps", "200", "--envs", "Hopper-v5"]
    heldout_stats.main([*argv, "--out-dir", str(tmp_path / "out")])
    costs = json.loads((tmp_path / "out" / "costs.json").read_text())
    npg = costs["learning_curves"]["Hopper-v5"]["npg"]
    assert npg["seeds"] == [3, 4, 5, 6] and npg["steps"] == [1000, 2000]  # the steps every run has
    assert npg["iqm"] == pytest.approx([2.5, 10.0])
    assert npg["iqm_ci_low"][0] < 2.5 < npg["iqm_ci_high"][0] and npg["iqm_ci_low"][1] == npg["iqm_ci_high"][1] == 10.0
    trpo = costs["learning_curves"]["Hopper-v5"]["trpo"]
    assert trpo["iqm"] == pytest.approx([0.0, 14.0]) and trpo["iqm_ci_low"][1] == 12.0 and trpo["iqm_ci_high"][1] == 16.0
    times = costs["train_time"]["Hopper-v5"]
    assert times["npg"]["median_s"] == 250.0 and times["trpo"]["median_s"] == 400.0 and times["ppo"]["n"] == 1
    text = (tmp_path / "out" / "costs.md").read_text()
    assert "| Hopper-v5 | 250 (4) | 400 (2) | 1000 (1) | 0.62 | 0.25 |" in text and "two at a time, one per core" in text
    assert (tmp_path / "out" / "learning_curves.png").stat().st_size > 10_000
    # NPG runs from another file (the held-out runs of the chosen entries) replace the NPG runs of the results file
    npg_file = tmp_path / "npg" / "rewards.jsonl"
    npg_file.parent.mkdir()
    npg_file.write_text(
        "\n".join(
            result_line("npg", "Hopper-v5", seed, 50.0 + seed, curve_steps=[2000], curve_returns=[1.0]) for seed in (3, 9)
        )
    )
    report = heldout_stats.main([*argv, "--npg-results", str(npg_file), "--out-dir", str(tmp_path / "chosen")])
    hopper = report["sets"]["held-out"]["envs"]["Hopper-v5"]
    assert hopper["npg"]["seeds"] == [3, 9] and hopper["npg"]["iqm"] == pytest.approx(56.0)
    assert hopper["trpo"]["seeds"] == [3, 4] and hopper["p_npg_over_trpo"] == 1.0
    costs = json.loads((tmp_path / "chosen" / "costs.json").read_text())
    assert costs["seeds"] == [3, 4, 5, 6, 9] and costs["learning_curves"]["Hopper-v5"]["npg"]["steps"] == [2000]
    # two NPG entries' runs on the same seeds cannot both count
    npg_file.write_text(npg_file.read_text() + "\n" + result_line("npg", "Hopper-v5", 3, 1.0, variant=["gamma:0.999"]) + "\n")
    with pytest.raises(ValueError, match="several npg entries"):
        heldout_stats.main([*argv, "--npg-results", str(npg_file), "--out-dir", str(tmp_path / "chosen")])


PPO_NET = "policy_kwargs:" + selection_stats.PPO_NET


@pytest.fixture
def protocol(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "selection.md"
    rows = ["| env | candidate | overrides | why |", "|---|---|---|---|", "| Hopper-v5 | shipped | none | x |"]
    rows += [f"| Hopper-v5 | {name} | x | x |" for name in ("long", "traces", "ppo_net")]
    path.write_text("# Protocol\n\n## Candidates\n\n" + "\n".join(rows) + "\n\n## Results\n\n| Hopper-v5 | c | x |\n")
    return path


def selection_lines(variant: list[str], returns: dict[int, float]) -> list[str]:
    extra = {"variant": variant} if variant else {}
    return [result_line("npg", "Hopper-v5", seed, final, **extra) for seed, final in returns.items()]


def test_selection_statistics_follow_the_protocol(
    tmp_path: pathlib.Path, protocol: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problem = common.rliable_problem()
    if problem is not None:
        pytest.skip(problem)
    assert selection_stats.protocol_candidates(protocol) == {"Hopper-v5": 3}
    long, traces, net = ["gamma:0.999"], ["gae_lambda:0.99"], [PPO_NET, "n_steps:1024"]
    stage_1 = [
        *selection_lines([], {0: 10.0, 1: 20.0, 2: 30.0, 5: 1e6, 12: 1e6}),  # seeds 5 and 12 are not tuning seeds
        *selection_lines(long, {0: 30.0, 1: 30.0, 2: 30.0}),
        *selection_lines(traces, {0: 20.0, 1: 20.0, 2: 20.0}),  # IQM equal to the shipped entry's: goes on
    ]
    results = tmp_path / "selection" / "rewards.jsonl"
    results.parent.mkdir()
    results.write_text("\n".join(stage_1) + "\n")
    argv = ["--results", str(results), "--protocol", str(protocol), "--reps", "200"]
    hopper = selection_stats.main(argv)["envs"]["Hopper-v5"]
    assert not hopper["stage_1_complete"] and hopper["choice"] is None  # the third candidate has no runs yet
    assert "seed 5: seeds 3-19 are not tuning seeds" in capsys.readouterr().err
    # the third candidate: 40, 0, 0 (IQM 13.3, below the shipped entry's 20)
    results.write_text(results.read_text() + "\n".join(selection_lines(net, {0: 40.0, 1: 0.0, 2: 0.0})) + "\n")
    record = selection_stats.main(argv)
    hopper = record["envs"]["Hopper-v5"]
    cells = {cell["entry"]: cell for cell in hopper["stage_1"]}
    assert cells["shipped"]["seeds"] == [0, 1, 2] and cells["shipped"]["iqm"] == pytest.approx(20.0)
    assert cells["ppo_net, n_steps:1024"]["iqm"] == pytest.approx(40 / 3)
    # P(candidate > shipped): each 30 beats 10 and 20 and ties 30, over the 9 seed pairs
    assert cells["gamma:0.999"]["p_over_shipped"] == pytest.approx(7.5 / 9) and cells["shipped"]["p_over_shipped"] is None
    assert hopper["stage_1_complete"] and hopper["to_stage_2"] == ["gamma:0.999", "gae_lambda:0.99"]
    assert hopper["choice"] is None and not hopper["stage_2_complete"]
    assert [(run["seed"], run["why"][:9]) for run in record["ignored_runs"]] == [(5, "seeds 3-1"), (12, "seeds 3-1")]
    table = (results.parent / "stats.md").read_text()
    assert "| `gamma:0.999` | 0, 1, 2 | 30, 30, 30 | **30** [30, 30] | **0.83** [" in table and "| yes |" in table
    assert (
        "| `ppo_net, n_steps:1024` | 0, 1, 2 | 40, 0, 0 | **13** [" in table
        and "To stage 2: `gamma:0.999`, `gae_lambda:0.99`." in table
    )
    # stage 2: the shipped entry 20 on seeds 20-24 (eight-seed IQM 20); gamma 10 (IQM 15); gae_lambda 21 (IQM 20.75)
    stage_2 = [
        *selection_lines([], dict.fromkeys(range(20, 25), 20.0)),
        *selection_lines(long, dict.fromkeys(range(20, 25), 10.0)),
    ]
    results.write_text(results.read_text() + "\n".join(stage_2) + "\n")
    staged = results.read_text()
    for traces_return, choice in ((21.0, "gae_lambda:0.99"), (20.0, "shipped")):  # a tie keeps the entry
        results.write_text(staged + "\n".join(selection_lines(traces, dict.fromkeys(range(20, 25), traces_return))) + "\n")
        hopper = selection_stats.main(argv)["envs"]["Hopper-v5"]
        cells = {cell["entry"]: cell for cell in hopper["stage_2"]}
        assert cells["shipped"]["iqm"] == pytest.approx(20.0) and cells["gamma:0.999"]["iqm"] == pytest.approx(15.0)
        assert cells["gae_lambda:0.99"]["seeds"] == [0, 1, 2, 20, 21, 22, 23, 24]
        assert hopper["stage_2_complete"] and hopper["choice"]["entry"] == choice
    assert (
        "Choice: **shipped**; the best candidate (gae_lambda:0.99) has IQM 20.0" in (results.parent / "stats.md").read_text()
    )
    # a second run of an entry on a seed is refused
    results.write_text(staged + "\n".join(selection_lines(long, {0: 1.0})) + "\n")
    with pytest.raises(ValueError, match=r"two runs of Hopper-v5 gamma:0\.999 on seed 0"):
        selection_stats.main(argv)


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


def test_kfac_returns_pair_each_kfac_run_with_the_cg_run_of_its_seed(tmp_path: pathlib.Path) -> None:
    problem = common.rliable_problem()
    if problem is not None:
        pytest.skip(problem)
    import kfac

    machine = {"machine": {"sb3_npg_commit": "abc"}}
    kfac_step = {"variant": ["preconditioner:'kfac'", "cg_max_steps:1"], **machine}
    kfac_lines = [
        result_line("npg", "Hopper-v5", seed, final, train_time_s=50.0, **kfac_step)
        for seed, final in ((0, 30.0), (1, 40.0), (2, 5.0))
    ]
    kfac_lines.append(result_line("npg", "Hopper-v5", 0, 1e6, variant=["preconditioner:'kfac'"], **machine))  # PCG: not it
    cg_lines = [
        result_line("npg", "Hopper-v5", seed, final, train_time_s=100.0, **machine)
        for seed, final in ((0, 10.0), (1, 20.0), (2, 50.0), (20, 1e6))  # seed 20 has no K-FAC run: left out
    ]
    cg_lines.append(result_line("npg", "Hopper-v5", 1, 1e6, variant=["target_kl:0.5"], **machine))  # a candidate: not CG
    paths = tmp_path / "kfac.jsonl", tmp_path / "cg.jsonl"
    for path, lines in zip(paths, (kfac_lines, cg_lines), strict=True):
        path.write_text("\n".join(lines) + "\n")
    record = kfac.returns_record(*paths, reps=200, bootstrap_seed=0)
    hopper = record["envs"]["Hopper-v5"]
    assert hopper["seeds"] == [0, 1, 2]
    assert hopper["kfac"]["final_returns"] == [30.0, 40.0, 5.0] and hopper["cg"]["final_returns"] == [10.0, 20.0, 50.0]
    assert hopper["kfac"]["iqm"] == pytest.approx(25.0) and hopper["cg"]["iqm"] == pytest.approx(80 / 3)
    assert hopper["p_kfac_over_cg"] == pytest.approx(4 / 9)  # pairs won of 9: 30 > 10, 20; 40 > 10, 20; 5 > none
    record = {"command": "python benchmarks/kfac.py --returns", "date": "2026-12-07", **record}
    assert "| Hopper-v5 | 0, 1, 2 | 30 vs 10 / 40 vs 20 / 5 vs 50 |" in kfac.returns_markdown(record)
    assert "50 / 100 (0.50x)" in kfac.returns_markdown(record)


def test_steps_to_residual_counts_the_preconditioned_steps_that_separate_solves_would() -> None:
    import torch as th

    from sb3_npg.conjugate_gradient import conjugate_gradient

    generator = th.Generator().manual_seed(0)
    for _ in range(3):
        factor = th.randn(40, 40, generator=generator, dtype=th.float64)
        matrix = factor @ factor.T / 40 + 0.01 * th.eye(40, dtype=th.float64)
        right = th.randn(40, generator=generator, dtype=th.float64)
        inverse_diagonal = matrix.diagonal().reciprocal()

        def matvec(vector: th.Tensor, matrix: th.Tensor = matrix) -> th.Tensor:
            return matrix @ vector

        def jacobi(vector: th.Tensor, inverse_diagonal: th.Tensor = inverse_diagonal) -> th.Tensor:
            return inverse_diagonal * vector

        target = conjugate_gradient(matvec, right, 10, residual_tol=0).residual.norm().item()
        separate = next(
            steps
            for steps in range(1, 41)
            if conjugate_gradient(matvec, right, steps, residual_tol=0, preconditioner=jacobi).residual.norm() <= target
        )
        assert common.steps_to_residual(matvec, right, jacobi, target, 40) == separate
        assert common.steps_to_residual(matvec, right, jacobi, target, separate - 1) is None
