"""Start and stop a private PostgreSQL + PostGIS + pgstac for tests (or dev.sh): own data dir, own port,
own socket dir, stopped by PID.

    pg = Postgres(location=Path(".pgdata")).start()   # initdb (first time), postgres, CREATE DATABASE,
    pg.dsn, pg.settings                                # CREATE EXTENSION postgis, pypgstac migrate
    pg.stop()

``postgres`` runs in the foreground of its own process (not daemonised by pg_ctl), so ``self.process``
is the postmaster itself: ``stop()`` sends it SIGINT (PostgreSQL's "fast" shutdown), then SIGQUIT,
then SIGKILL to its process group. Run as root, the server runs as the ``postgres`` OS user (PostgreSQL
refuses root): the data directory is pre-created and handed to that user, in ``location`` when that
user can reach it, else in a private folder under the system temp dir (removed by ``stop()``).

Command line (for dev.sh): ``python tests/postgres_proc.py --location .pgdata [--port 5439]`` starts,
prints the DSN (password masked), and stops cleanly on SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN_CANDIDATES = [Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin"),
                     Path("/usr/lib/postgresql/17/bin")]
SUPERUSER = "postgres"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bin() -> Path:
    """The folder holding initdb/postgres/psql (PG_BIN overrides; else Debian's layout)."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    for candidate in PG_BIN_CANDIDATES:
        if (candidate / "postgres").exists():
            return candidate
    raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin: "
                       "apt-get install postgresql-15 postgresql-15-postgis-3 (./dev.sh does), or set PG_BIN")


def test_password() -> str:
    """Random, with characters that need quoting in a DSN (the settings must quote them)."""
    return f"pw {secrets.token_hex(6)}'q\\=@:/"


@dataclass
class Postgres:
    """One PostgreSQL server with a pgstac database, its files under ``location``."""

    location: Path
    port: int = field(default_factory=free_port)
    dbname: str = "pgstac_test"
    password: str = field(default_factory=test_password)
    process: subprocess.Popen | None = None
    data_root: Path | None = None
    _private_root: bool = False

    # ------------------------------------------------------------------------------------ public
    @property
    def dsn(self) -> str:
        """libpq connection string (password quoted), with search_path=pgstac,public."""
        return self.settings.dsn

    @property
    def settings(self):
        """``repository_pgstac.PgstacSettings`` for this server."""
        from repository_pgstac import PgstacSettings
        return PgstacSettings(host="127.0.0.1", port=self.port, dbname=self.dbname, user=SUPERUSER,
                              password=self.password)

    def start(self) -> Postgres:
        """initdb if needed, start the server, create the database + postgis, run pypgstac migrate."""
        self.location = Path(self.location).resolve()
        self.location.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare_data_dir()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._launch()
            self._create_database()
            self._migrate()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the postmaster by PID (fast shutdown; SIGQUIT then SIGKILL if it lingers)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 15), (signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
                try:
                    if sig == signal.SIGKILL:
                        os.killpg(proc.pid, sig)  # the postmaster and any orphaned backends
                    else:
                        proc.send_signal(sig)
                    proc.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._private_root and self.data_root is not None:
            shutil.rmtree(self.data_root, ignore_errors=True)
            self.data_root, self._private_root = None, False

    @property
    def data_dir(self) -> Path:
        """PGDATA."""
        return self._root() / "pgdata"

    @property
    def socket_dir(self) -> Path:
        """unix_socket_directories (private, so two servers never collide)."""
        return self._root() / "socket"

    # ----------------------------------------------------------------------------------- private
    def _root(self) -> Path:
        if self.data_root is None:
            raise RuntimeError("start() first")
        return self.data_root

    def _run_as(self) -> dict:
        """subprocess kwargs that drop root to the postgres OS user (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return {}
        pg = pwd.getpwnam(SUPERUSER)
        return {"user": pg.pw_uid, "group": pg.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": pg.pw_dir, "USER": SUPERUSER, "LOGNAME": SUPERUSER}}

    def _prepare_data_dir(self) -> None:
        """Pick a root the server's OS user can write; hand it (and the data dir) to that user."""
        self.data_root = self.location / "postgres"
        self.data_root.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam(SUPERUSER)
            os.chown(self.data_root, pg.pw_uid, pg.pw_gid)
            probe = subprocess.run(["test", "-w", str(self.data_root)], check=False, **self._run_as())
            reachable = probe.returncode == 0
            if not reachable:  # e.g. under pytest's 0700 /tmp/pytest-of-root
                self.data_root = Path(tempfile.mkdtemp(prefix="pgtest-"))
                self._private_root = True
                os.chown(self.data_root, pg.pw_uid, pg.pw_gid)
        for sub in (self.data_dir, self.socket_dir):
            sub.mkdir(mode=0o700, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(sub, pwd.getpwnam(SUPERUSER).pw_uid, pwd.getpwnam(SUPERUSER).pw_gid)

    def _initdb(self) -> None:
        self._run([str(pg_bin() / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                   "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
                   "--locale=C.UTF-8", "--no-instructions"], "initdb")

    def _launch(self) -> None:
        with open(self.location / "postgres.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(pg_bin() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                 "-k", str(self.socket_dir), "-c", "listen_addresses=127.0.0.1",
                 # test server: durability off for speed (never for real data)
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=50", "-c", "shared_buffers=64MB"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._run_as())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}; see "
                                   f"{self.location / 'postgres.log'}")
            ready = subprocess.run([str(pg_bin() / "pg_isready"), "-q", "-h", "127.0.0.1",
                                    "-p", str(self.port)], check=False)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"postgres did not accept connections on {self.port} within 30 s")

    def _psql(self, sql: str, dbname: str = "postgres") -> str:
        return self._run([str(pg_bin() / "psql"), "-h", str(self.socket_dir), "-p", str(self.port),
                          "-U", SUPERUSER, "-d", dbname, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], "psql")

    def _create_database(self) -> None:
        """Set the superuser's password (every start: the data dir may be older), create the database
        and the postgis extension if missing. Over the private unix socket, where auth is trust."""
        self._psql("ALTER ROLE postgres PASSWORD '" + self.password.replace("'", "''") + "'")
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.dbname}'")
        if not exists.strip():
            self._psql(f'CREATE DATABASE "{self.dbname}"')
        self._psql("CREATE EXTENSION IF NOT EXISTS postgis", dbname=self.dbname)

    def _migrate(self) -> None:
        """``pypgstac migrate`` from the same environment as the tests (no-op when up to date)."""
        cli = Path(sys.executable).parent / "pypgstac"
        command = [str(cli)] if cli.exists() else [sys.executable, "-m", "pypgstac.pypgstac"]
        env = {**os.environ, "PGPASSWORD": self.password}
        dsn = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{self.dbname}"
        result = subprocess.run([*command, "migrate", "--dsn", dsn], env=env, capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pypgstac migrate failed ({result.returncode}): {result.stderr[-2000:]}")

    def _run(self, command: list[str], what: str) -> str:
        result = subprocess.run(command, capture_output=True, text=True, check=False, **self._run_as())
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result.stdout


def main() -> None:
    """Run a server in the foreground until SIGINT/SIGTERM (for dev.sh)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--location", type=Path, default=Path(".pgdata"))
    parser.add_argument("--port", type=int, default=5439)
    parser.add_argument("--password", default=os.environ.get("PGSTAC_PASSWORD", "pgstac-dev"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    server = Postgres(location=args.location, port=args.port, password=args.password)
    stop = {"now": False}

    def request_stop(*_):
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    print(f"pgstac ready: {server.settings.safe_dsn} (pid {server.process.pid})", flush=True)
    try:
        while not stop["now"] and server.process.poll() is None:
            time.sleep(0.5)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
