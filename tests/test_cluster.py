"""
Distributed tuning on a real PostgreSQL server: the cluster recipe of ``docs/zoo.md``, run as written.

The commands are read out of the documentation's ``cluster-recipe`` block; only values change (CartPole-v1,
a few thousand steps per trial, the throwaway server's address), never the set of flags. The server comes
from :mod:`tests.postgres`; without server binaries the tests skip (or fail, under
``SB3_NPG_REQUIRE_POSTGRES=1``, which CI sets).
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rl_zoo3")
optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason='the PostgreSQL driver: pip install -e ".[cluster]"')

from optuna.trial import FrozenTrial, TrialState  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from sb3_npg import NPG  # noqa: E402
from sb3_npg import train as npg_train  # noqa: E402
from sb3_npg.zoo import hide_password  # noqa: E402
from tests.postgres import PostgresServer, find_server_bin_dir, free_port, running_postgres  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "zoo.md"
MAX_TOTAL_TRIALS = 5  # the killed worker's trial included
TRIAL_STEPS = "2000"
FINISHED = re.compile(r"Trial (\d+) finished with value: (\S+) and parameters")


# --------------------------------------------------------------------------------------------------------
# The documentation's commands
# --------------------------------------------------------------------------------------------------------


def doc_block(marker: str) -> str:
    """The fenced code block that follows ``<!-- <marker>`` in ``docs/zoo.md``, without its fences."""
    text = DOC.read_text()
    assert f"<!-- {marker}" in text, f"docs/zoo.md lost its '<!-- {marker}' block"
    fenced = text.split(f"<!-- {marker}", 1)[1].split("```", 2)[1]
    return fenced.split("\n", 1)[1]


def recipe() -> dict[str, list[str]]:
    """The shell commands of the cluster recipe, by kind: export, createdb, create-study, worker, train-best."""
    commands: dict[str, list[str]] = {}
    for line in doc_block("cluster-recipe").replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        kinds = {
            "export": words[0] == "export",
            "createdb": words[0] == "createdb",
            "create-study": words[:2] == ["optuna", "create-study"],
            "worker": words[:3] == ["python", "-m", "sb3_npg.train"] and "-optimize" in words,
            "train-best": words[:3] == ["python", "-m", "sb3_npg.train"] and "--trial-id" in words,
        }
        kind = [name for name, matches in kinds.items() if matches]
        assert len(kind) == 1 and kind[0] not in commands, f"unexpected command in the recipe: {line}"
        commands[kind[0]] = words
    assert set(commands) == {"export", "createdb", "create-study", "worker", "train-best"}
    return commands


def doc_storage_urls(commands: dict[str, list[str]]) -> set[str]:
    return {word for words in commands.values() for word in words if word.startswith("postgresql")}


def adapted(words: list[str], server: PostgresServer, values: dict[str, str]) -> list[str]:
    """
    ``words`` with the values of ``values``' flags replaced and the database URL pointed at ``server``.

    Every flag in ``values`` must already be in the documented command: the test changes values, not flags.
    """
    words = list(words)
    for flag, value in values.items():
        assert flag in words, f"{flag} is no longer in the docs/zoo.md command {shlex.join(words)}"
        words[words.index(flag) + 1] = value
    words = [server.url(database="npg_studies") if word.startswith("postgresql") else word for word in words]
    programs = {
        "python": [sys.executable],
        "optuna": [str(Path(sys.executable).parent / "optuna")],
        "createdb": [str(server.bin_dir / "createdb")],
    }
    return [*programs.get(words[0], [words[0]]), *words[1:]]


# --------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this test process, stopped and deleted at the end (also when a test fails)."""
    if find_server_bin_dir() is None:
        reason = "no PostgreSQL server binaries (initdb): apt-get install postgresql"
        if os.environ.get("SB3_NPG_REQUIRE_POSTGRES"):
            pytest.fail(f"{reason} (SB3_NPG_REQUIRE_POSTGRES is set)")
        pytest.skip(reason)
    with running_postgres() as server:
        yield server


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """A list to put started processes in: those still running at the end of the test are killed."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    """Poll ``condition`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def finished_trials(stderr: str) -> dict[int, float]:
    """The trials a worker finished, from Optuna's log lines: number -> value."""
    return {int(number): float(value) for number, value in FINISHED.findall(stderr)}


# --------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------


def test_the_documented_recipe_keeps_the_password_out_of_the_url_and_names_the_driver() -> None:
    commands = recipe()
    urls = doc_storage_urls(commands)
    assert len(urls) == 1, f"the recipe's commands should share one URL: {urls}"
    url = make_url(urls.pop())
    assert url.drivername == "postgresql+psycopg2"  # SQLAlchemy >= 2.1 reads a bare postgresql:// as psycopg 3
    assert url.password is None  # libpq reads PGPASSWORD: the password stays out of ps, args.yml, the study
    assert commands["export"][1].startswith("PGPASSWORD=")


def test_cluster_recipe_workers_share_one_study_and_survive_a_killed_worker(
    postgres: PostgresServer,
    processes: list[subprocess.Popen],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands = recipe()
    study_name = commands["create-study"][commands["create-study"].index("--study-name") + 1]
    env = {**postgres.client_environment(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    options: dict[str, Any] = {"env": env, "cwd": tmp_path, "text": True}
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    server_flags = {"--host": postgres.host, "--port": str(postgres.port)}
    subprocess.run(adapted(commands["createdb"], postgres, server_flags), check=True, timeout=60, **options)
    subprocess.run(adapted(commands["create-study"], postgres, {}), check=True, timeout=120, capture_output=True, **options)

    def worker(seed: int, steps: str | None = TRIAL_STEPS) -> list[str]:
        values = {"--env": "CartPole-v1", "--max-total-trials": str(MAX_TOTAL_TRIALS), "--n-evaluations": "1"}
        values |= {"--seed": str(seed), "-f": str(tmp_path / f"worker{seed}")}
        if steps is not None:
            values["-n"] = steps
        return adapted(commands["worker"], postgres, values)

    storage = optuna.storages.RDBStorage(postgres.url(database="npg_studies", password=postgres.password))
    study_id = storage.get_study_id_from_name(study_name)

    def trials(*states: TrialState) -> list[FrozenTrial]:
        return [trial for trial in storage.get_all_trials(study_id) if not states or trial.state in states]

    # The worker to kill: the documented -n (1e6 steps), so its first trial is still running when killed.
    doomed = subprocess.Popen(worker(3, steps=None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **options)
    processes.append(doomed)
    killed_trial = wait_for(lambda: trials(TrialState.RUNNING), "the first worker's trial")[0].number
    workers = [subprocess.Popen(worker(seed), **pipes, **options) for seed in (1, 2)]
    processes.extend(workers)
    wait_for(lambda: len(trials()) > 1, "a trial of the other workers")
    doomed.send_signal(signal.SIGKILL)
    assert doomed.wait(timeout=30) == -signal.SIGKILL
    assert [trial.state for trial in trials() if trial.number == killed_trial] == [TrialState.RUNNING]
    logs = []
    for process in workers:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        logs.append(finished_trials(err))

    # Every trial of both workers is in the database, under a number no other trial has
    everything = trials()
    by_number = {trial.number: trial for trial in everything}
    assert sorted(by_number) == list(range(len(everything))), "trial numbers repeat or skip"
    first, second = (set(log) for log in logs)
    assert first and second and not first & second, logs
    assert first | second | {killed_trial} == set(by_number)
    for log in logs:
        for number, value in log.items():
            assert by_number[number].state == TrialState.COMPLETE
            assert by_number[number].value == pytest.approx(value)
    # rl_zoo3 counts running trials towards --max-total-trials; two workers may both start the last one
    assert MAX_TOTAL_TRIALS <= len(everything) <= MAX_TOTAL_TRIALS + 1
    # The killed trial: still RUNNING (no heartbeat through rl_zoo3), no value, no end, never the best
    dead = by_number[killed_trial]
    assert (dead.state, dead.value, dead.datetime_complete) == (TrialState.RUNNING, None, None)

    # The documented Python block: the study reads, the best trial is a complete one, the dead trial fails
    code = doc_block("cluster-inspect").replace(doc_storage_urls(commands).pop(), postgres.url(database="npg_studies"))
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    exec(compile(code, str(DOC), "exec"), {})  # the documentation's own code
    best = optuna.load_study(study_name=study_name, storage=storage).best_trial
    assert best.state == TrialState.COMPLETE
    assert f"best: {best.number} {best.params}" in capsys.readouterr().out
    assert [trial.state for trial in trials() if trial.number == killed_trial] == [TrialState.FAIL]

    # Resume after all workers stopped: the failed trial no longer counts, a new worker fills the budget.
    # Meanwhile, the best trial's hyperparameters train again with --trial-id (the Zoo ignores --trial-id 0).
    counted = len(trials(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    assert best.number != 0, "trial 0 was the killed worker's"
    run_dir = tmp_path / "best"
    values = {"--env": "CartPole-v1", "-n": TRIAL_STEPS, "--trial-id": str(best.number), "-f": str(run_dir)}
    training = subprocess.Popen(adapted(commands["train-best"], postgres, values), **pipes, **options)
    processes.append(training)
    resumed = subprocess.run(worker(4), capture_output=True, timeout=300, check=False, **options)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(finished_trials(resumed.stderr)) == max(0, MAX_TOTAL_TRIALS - counted)
    assert len(trials(TrialState.COMPLETE)) == max(MAX_TOTAL_TRIALS, counted)
    _, err = training.communicate(timeout=300)
    assert training.returncode == 0, err[-3000:]
    model = NPG.load(run_dir / "npg" / "CartPole-v1_1" / "CartPole-v1.zip", device="cpu")
    assert model.target_kl == pytest.approx(best.params["target_kl"])
    assert model.n_steps == 2 ** best.params["n_steps_pow"]
    assert model.gamma == pytest.approx(1 - best.params["one_minus_gamma"])


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg2://optuna:s3cret@db:5432/studies", "postgresql+psycopg2://optuna:***@db:5432/studies"),
        ("postgresql://optuna:p@ss:w/rd@db/studies", "postgresql://optuna:***@db/studies"),  # unescaped @ and /
        ("postgresql+psycopg2://optuna@db:5432/studies", "postgresql+psycopg2://optuna@db:5432/studies"),
        ("sqlite:///studies.db", "sqlite:///studies.db"),
    ],
)
def test_hide_password(url: str, shown: str) -> None:
    assert hide_password(url) == shown


def wrong_password(server: PostgresServer) -> tuple[str, str]:
    return server.url(password="not-the-password"), "password authentication failed"


def nobody_listening(server: PostgresServer) -> tuple[str, str]:
    return server.url(password=server.password).replace(f":{server.port}/", f":{free_port(server.host)}/"), "refused"


def no_such_database(server: PostgresServer) -> tuple[str, str]:
    return server.url(database="no_such_database", password=server.password), 'database "no_such_database" does not exist'


@pytest.mark.parametrize("bad_url", [wrong_password, nobody_listening, no_such_database])
def test_a_wrong_storage_url_is_one_line_naming_it_without_the_password(
    postgres: PostgresServer,
    bad_url: Callable[[PostgresServer], tuple[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, reason = bad_url(postgres)
    password = make_url(url).password
    assert password
    values = {"--env": "CartPole-v1", "-n": TRIAL_STEPS, "--seed": "1", "-f": str(tmp_path)}
    command = adapted(recipe()["worker"], postgres, values)
    argv = [url if word.startswith("postgresql") else word for word in command[3:]]  # after python -m sb3_npg.train
    assert npg_train.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith("python -m sb3_npg.train: error: the Optuna storage ")
    assert make_url(url).render_as_string(hide_password=True) in line
    assert reason in line
    assert password not in err


def test_a_storage_url_whose_driver_is_missing_says_how_to_install_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    if importlib.util.find_spec("pg8000") is not None:
        pytest.skip("pg8000 is installed: no missing driver to report")
    url = "postgresql+pg8000://optuna:secret@127.0.0.1:5432/npg_studies"
    argv = ["--env", "CartPole-v1", "-optimize", "--n-trials", "1", "-n", TRIAL_STEPS, "--storage", url]
    assert npg_train.main([*argv, "--study-name", "s", "--no-optim-plots", "-f", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "error:" in line]
    assert "postgresql+pg8000://optuna:***@127.0.0.1:5432/npg_studies" in line
    assert "pg8000" in line and "sb3_npg[cluster]" in line
    assert "secret" not in err and "Traceback" not in err
