"""A real PostgreSQL for the tests: Debian's server, initdb into a temporary folder, its own port,
its unix socket in that folder, stopped at the end.

initdb and the server refuse to run as root (the tests run as root here and in CI): they run as
the `postgres` system user that Debian's package creates, owning the data folder. When the
tests are not root they run as the current user. A missing PostgreSQL fails the tests with what
to install, never skips them (scripts/setup.sh installs it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.support.ports import free_port

SUPERUSER = "postgres"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda path: int(Path(path).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                           "run scripts/setup.sh, or apt-get install postgresql")
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="rtgw-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError as error:
                raise RuntimeError("the tests run as root and PostgreSQL refuses to: the "
                                   "`postgres` system user (Debian's postgresql package) is "
                                   "missing; run scripts/setup.sh") from error
            os.chown(self.root, account.pw_uid, account.pw_gid)
            os.chmod(self.root, 0o755)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True,
                              check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                  "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
        # fsync off: a test database need not survive a power cut, and it is much faster.
        # Listening on the socket in our folder and on loopback at our own port.
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                  "-l", str(self.root / "server.log"), "-o", self._options, "start")

    @property
    def _options(self) -> str:
        return (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")

    def pause(self) -> None:
        """The server stops (fast: its clients are cut off) and keeps its data: an outage."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """The server starts again on its port, with what it held."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                  "-l", str(self.root / "server.log"), "-o", self._options, "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                      "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.root} port={self.port} user={SUPERUSER} dbname={dbname}"

    def create_database(self) -> str:
        """A new empty database (from template0: cheap, nothing of another test's), its conninfo."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.conninfo(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.conninfo(name)

    def drop_database(self, conninfo: str) -> None:
        name = conninfo.rsplit("dbname=", 1)[1]
        with psycopg.connect(self.conninfo(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
