"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a cluster in a temporary directory.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` user (which the
Debian package creates). The server listens on 127.0.0.1 on a free port with ``trust`` authentication
(loopback only, a throwaway cluster). Each test gets a database of its own (``fresh_database``), so the
tests share one server but never each other's rows. ``stop`` and ``start`` let a test take the database
away mid-traffic and bring it back on the same port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

SKIP_REASON = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<major>/bin), or PATH's."""
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    for directory in sorted(versions, key=lambda p: int(p.parent.name), reverse=True):
        if (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path, root: Path | None = None) -> None:
        """``root``: where the cluster lives; by default a new directory in /tmp that the ``postgres`` user can
        reach (pytest's own temporary directories are private to root)."""
        self.bindir = bindir
        self.root = root or Path(tempfile.mkdtemp(prefix="calibserve-pg-"))
        self.data = self.root / "cluster"
        self.sockets = self.root / "sockets"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, command: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / command[0]), *command[1:]]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.sockets.mkdir(exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        options = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockets}'",
            "fsync": "off",  # a throwaway cluster: durability across an OS crash is not what is tested
            "max_connections": "200",
            "shared_buffers": "64MB",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in options.items())

    def start(self) -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, command: str) -> str:
        result = self._run(["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                            "-d", database, "-v", "ON_ERROR_STOP=1", "-c", command])  # fmt: skip
        return result.stdout.strip()

    def fresh_database(self) -> str:
        """A new empty database's URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        self.psql("postgres", f"CREATE DATABASE {name}")
        return self.url(name)

    def amcheck(self, database: str) -> str:
        """PostgreSQL's own consistency check of every B-tree index of the database (``amcheck``, with heap
        verification): empty output when sound, or the error it raises."""
        self.psql(database, "CREATE EXTENSION IF NOT EXISTS amcheck")
        return self.psql(
            database,
            "SELECT count(*) FROM (SELECT bt_index_check(index => c.oid, heapallindexed => true) "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
            "WHERE a.amname = 'btree' AND c.relkind = 'i') checks",
        )


@contextmanager
def running_postgres(bindir: Path) -> Iterator[PostgresServer]:
    """A started server of its own, stopped (if the test left it running) and removed at the end."""
    server = PostgresServer(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with suppress(Exception):  # already stopped by the test
            server.stop("immediate")
        server.remove()
