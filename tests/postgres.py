"""
A throwaway PostgreSQL server for the tests of distributed tuning (``tests/test_cluster.py``).

:func:`running_postgres` makes a fresh data directory, starts the server on a free port of 127.0.0.1 with
password authentication, creates one database, and always stops the server and removes the directory
afterwards. ``initdb`` refuses to run as root, so under root the server runs as the ``postgres`` account
(Debian's package creates it) or, failing that, as ``nobody``; its directory is created in the system's
temporary directory (pytest's own ``tmp_path`` is private to root) and handed to that account.

The server binaries are found on ``PATH`` (``initdb``) or in Debian's ``/usr/lib/postgresql/<version>/bin``.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEBIAN_SERVER_DIRS = "/usr/lib/postgresql/*/bin"


@dataclass(frozen=True)
class PostgresServer:
    """
    A running server.

    :param bin_dir: the directory of its binaries (``initdb``, ``pg_ctl``, ``createdb``, ...)
    :param host: the address it listens on
    :param port: the TCP port it listens on
    :param user: a superuser that logs in with ``password``
    :param password: that user's password
    :param database: a database created for the tests
    :param version: the server's version (``postgres --version``)
    """

    bin_dir: Path
    host: str
    port: int
    user: str
    password: str
    database: str
    version: str

    def url(self, database: str | None = None, password: str | None = None) -> str:
        """
        A SQLAlchemy URL (``postgresql+psycopg2://user[:password]@host:port/database``).

        :param database: the database (``None``: the one created for the tests)
        :param password: the password to put in the URL (``None``: none, libpq then reads ``PGPASSWORD``)
        """
        credentials = self.user if password is None else f"{self.user}:{password}"
        return f"postgresql+psycopg2://{credentials}@{self.host}:{self.port}/{database or self.database}"

    def client_environment(self) -> dict[str, str]:
        """The current environment with ``PGPASSWORD`` set: clients (libpq, psycopg2) log in with it."""
        return {**os.environ, "PGPASSWORD": self.password}


def find_server_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (``PATH`` first, then Debian's), or ``None``."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []

    def version(bin_dir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in bin_dir.parent.name.split(".") if part.isdigit())

    candidates += sorted(Path("/").glob(DEBIAN_SERVER_DIRS.lstrip("/")), key=version, reverse=True)
    for bin_dir in candidates:
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    return None


def server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: ``None`` (the current one) unless root, else ``postgres`` or ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' account exists to run PostgreSQL")


def free_port(host: str) -> int:
    """A TCP port nothing listens on at the moment (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_postgres(
    database: str = "sb3_npg_tests", user: str = "optuna", start_attempts: int = 3
) -> Iterator[PostgresServer]:
    """
    Start a fresh server, create ``database``, yield the server, then stop it and delete its files.

    :param database: the database to create
    :param user: the superuser's name (the password is generated)
    :param start_attempts: ports to try (another process may take the free port before the server does)
    :raise FileNotFoundError: when no server binaries are installed
    """
    bin_dir = find_server_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError(f"no PostgreSQL server binaries (initdb on PATH or in {DEBIAN_SERVER_DIRS})")
    account = server_account()
    as_account: dict[str, Any] = {}
    if account is not None:
        as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    base = Path(tempfile.mkdtemp(prefix="sb3_npg_postgres_"))
    data = base / "data"
    password = os.urandom(12).hex()
    started = False

    def run_as_server(*command: str | Path) -> None:
        words = [str(part) for part in command]
        result = subprocess.run(words, cwd=base, capture_output=True, text=True, timeout=120, check=False, **as_account)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(words)} failed ({result.returncode}): {result.stderr.strip()}")

    try:
        if account is not None:
            os.chown(base, account.pw_uid, account.pw_gid)
        password_file = base / "password"
        password_file.write_text(password + "\n")
        if account is not None:
            os.chown(password_file, account.pw_uid, account.pw_gid)
        run_as_server(
            bin_dir / "initdb", "--pgdata", data, "--username", user, "--pwfile", password_file,
            "--auth", "scram-sha-256", "--encoding", "UTF8", "--no-sync",
        )  # fmt: skip
        for attempt in range(start_attempts):
            port = free_port("127.0.0.1")
            options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} -c fsync=off"
            try:
                run_as_server(bin_dir / "pg_ctl", "--pgdata", data, "--log", base / "server.log", "-o", options, "-w", "start")
            except RuntimeError:
                if attempt == start_attempts - 1:
                    log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
                    raise RuntimeError(f"PostgreSQL did not start; its log:\n{log}") from None
                continue
            started = True
            break
        version = subprocess.run([bin_dir / "postgres", "--version"], capture_output=True, text=True, check=True).stdout
        server = PostgresServer(bin_dir, "127.0.0.1", port, user, password, database, version.strip())
        subprocess.run(
            [bin_dir / "createdb", "--host", server.host, "--port", str(port), "--username", user, database],
            env=server.client_environment(), check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        yield server
    finally:
        if started:
            try:
                run_as_server(bin_dir / "pg_ctl", "--pgdata", data, "--mode", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pid_file = data / "postmaster.pid"
                if pid_file.exists():  # the postmaster's pid is the file's first line
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
