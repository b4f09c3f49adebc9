"""Throwaway PostgreSQL and Redis servers for the integration tests.

``start_postgres(base_dir)`` and ``start_redis(base_dir)`` start real servers on
127.0.0.1 on free ports and wait until they answer.  If ``PORTAL_TEST_PG_URL`` /
``PORTAL_TEST_REDIS_URL`` are set, thin wrappers over those already running servers are
returned instead, with the same interface.

PostgreSQL refuses to run as root.  When this process is root the cluster is initialised
and run as the ``postgres`` system user (created with ``useradd --system`` if missing),
switched to with ``setpriv``.  Server processes are direct children of this process and
get a parent-death signal, so they cannot outlive the test session even if it is killed;
``stop()`` and an ``atexit`` hook stop them in the ordinary case.

CI can start both servers once for the whole run::

    python -m tests.support.servers --env-file servers.env &
    # wait until servers.env exists, then: set -a; . ./servers.env; set +a

The command keeps running (and the servers with it) until it gets SIGTERM or SIGINT.
"""

from __future__ import annotations

import abc
import argparse
import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import URL, make_url

__all__ = [
    "PG_BINDIR_ENV",
    "PG_URL_ENV",
    "REDIS_SERVER_ENV",
    "REDIS_URL_ENV",
    "PostgresServer",
    "RedisServer",
    "ServerError",
    "find_pg_bindir",
    "find_redis_server",
    "start_postgres",
    "start_redis",
]

PG_URL_ENV = "PORTAL_TEST_PG_URL"
REDIS_URL_ENV = "PORTAL_TEST_REDIS_URL"
PG_BINDIR_ENV = "PORTAL_TEST_PG_BINDIR"
REDIS_SERVER_ENV = "PORTAL_TEST_REDIS_SERVER"

PG_MAJOR = 15
PG_OS_USER = "postgres"
PG_SUPERUSER = "portal_test"
PG_DATABASE = "portal_test"
DRIVER = "postgresql+psycopg"
LOOPBACK = "127.0.0.1"

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_PORT_ATTEMPTS = 5
_POLL_INTERVAL = 0.02
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL

_INSTALL_HINT = (
    "On Debian/Ubuntu run: apt-get update && apt-get install -y postgresql-15 redis-server "
    f"(or point {PG_URL_ENV} / {REDIS_URL_ENV} at servers that are already running)."
)


class ServerError(RuntimeError):
    """A test server could not be found, started, or used."""


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _child_env() -> dict[str, str]:
    """The environment for server processes: ours, without libpq's PG* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(TZ="UTC", LC_ALL="C")
    return env


@dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def _ensure_os_user(name: str) -> _OsUser:
    """Look up the OS user that runs PostgreSQL, creating it as a system user if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/var/lib/postgresql",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:  # a concurrent process may have won the race; only the end state matters
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ServerError(
                f"OS user {name!r} is missing and `useradd --system {name}` failed "
                f"(exit {result.returncode}): {result.stderr.strip()}"
            ) from None
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def _can_traverse(path: Path, user: _OsUser) -> bool:
    """Whether ``user`` can search (x) ``path`` and each of its ancestors (ignores ACLs)."""
    for part in (path, *path.parents):
        st = part.stat()
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in user.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _make_run_dir(base_dir: Path, prefix: str, owner: _OsUser | None) -> Path:
    """A fresh private directory for one server, owned by ``owner`` when given.

    It is made inside ``base_dir`` (which is chowned to ``owner`` if it is empty and that is
    all that stops ``owner`` from reaching it), unless ``owner`` cannot reach ``base_dir``
    anyway (e.g. pytest's ``/tmp/pytest-of-root`` is mode 0700): then it goes to the first
    world-searchable temp directory instead.
    """
    base_dir = base_dir.resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    parent = base_dir
    if owner is not None and not _can_traverse(base_dir, owner):
        if _can_traverse(base_dir.parent, owner) and not any(base_dir.iterdir()):
            os.chown(base_dir, owner.uid, owner.gid)
        else:
            candidates = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]
            usable = [c for c in candidates if c.is_dir() and _can_traverse(c.resolve(), owner)]
            if not usable:
                raise ServerError(f"no directory that OS user {owner.name!r} can reach for the cluster")
            parent = usable[0].resolve()
            prefix = f"portal-test-{prefix}"
    run_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if owner is not None:
        os.chown(run_dir, owner.uid, owner.gid)
    return run_dir


@cache
def _setpriv() -> tuple[str | None, bool]:
    """Path of ``setpriv`` (util-linux) and whether it supports ``--pdeathsig``."""
    path = shutil.which("setpriv")
    if path is None:
        return None, False
    helptext = subprocess.run([path, "--help"], capture_output=True, text=True, check=False).stdout
    return path, "--pdeathsig" in helptext


def _popen(
    argv: Sequence[str],
    *,
    run_as: _OsUser | None,
    log_path: Path,
    death_signal: signal.Signals,
) -> subprocess.Popen[bytes]:
    """Start a server process as a direct child in its own session.

    With ``setpriv`` the child switches user (if ``run_as``) and gets ``death_signal`` when
    this process dies, whatever the cause.  Without it, Popen switches the user itself.
    The kernel sends that signal when the *thread* that forked the child ends, so it is only
    asked for from the main thread (elsewhere the ``atexit`` hook is the only backstop).
    """
    setpriv, has_pdeathsig = _setpriv()
    has_pdeathsig = has_pdeathsig and threading.current_thread() is threading.main_thread()
    command = list(argv)
    popen_user = None
    if setpriv is not None:
        prefix = [setpriv]
        if run_as is not None:
            prefix += [f"--reuid={run_as.uid}", f"--regid={run_as.gid}", "--init-groups"]
        if has_pdeathsig:
            prefix += ["--pdeathsig", death_signal.name]
        command = [*prefix, "--", *command]
    else:
        popen_user = run_as
    with log_path.open("wb") as log:  # one log per attempt, so a retry's checks see only its own
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            start_new_session=True,  # a terminal's Ctrl-C must not hit the servers before teardown
            user=None if popen_user is None else popen_user.uid,
            group=None if popen_user is None else popen_user.gid,
            extra_groups=None if popen_user is None else sorted(popen_user.groups),
        )


def _run(argv: Sequence[str], *, run_as: _OsUser | None, what: str) -> None:
    setpriv, _ = _setpriv()
    command = list(argv)
    popen_user = None
    if run_as is not None:
        if setpriv is not None:
            command = [setpriv, f"--reuid={run_as.uid}", f"--regid={run_as.gid}", "--init-groups", "--", *command]
        else:
            popen_user = run_as
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_child_env(),
        timeout=120,
        check=False,
        user=None if popen_user is None else popen_user.uid,
        group=None if popen_user is None else popen_user.gid,
        extra_groups=None if popen_user is None else sorted(popen_user.groups),
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise ServerError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n{output}")


def _stop_process(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def _port_in_use_error(log_text: str) -> bool:
    return any(s in log_text for s in ("Address already in use", "could not bind", "could not create listen"))


# ----------------------------------------------------------- process-wide clean-up


_LIVE: dict[int, tuple[int, PostgresServer | RedisServer]] = {}  # id -> (starting pid, server)
_LIVE_LOCK = threading.Lock()


def _register(server: PostgresServer | RedisServer) -> None:
    with _LIVE_LOCK:
        _LIVE[id(server)] = (os.getpid(), server)


def _unregister(server: PostgresServer | RedisServer) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(id(server), None)


@atexit.register
def _stop_all() -> None:
    """Backstop: stop whatever a crashed or careless caller left running."""
    with _LIVE_LOCK:  # a forked child must not tear down its parent's servers
        servers = [server for pid, server in _LIVE.values() if pid == os.getpid()]
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


# ------------------------------------------------------------------------ PostgreSQL


def find_pg_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``.

    Tried in order: ``$PORTAL_TEST_PG_BINDIR``, ``/usr/lib/postgresql/15/bin``,
    ``pg_config --bindir``, and ``postgres`` on ``PATH``.
    """
    tried: list[str] = []

    def usable(candidate: Path) -> bool:
        tried.append(str(candidate))
        return all(os.access(candidate / exe, os.X_OK) for exe in ("initdb", "postgres"))

    override = os.environ.get(PG_BINDIR_ENV)
    if override:
        if usable(Path(override)):
            return Path(override)
        raise ServerError(f"{PG_BINDIR_ENV}={override} has no executable initdb and postgres")
    debian = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
    if usable(debian):
        return debian
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0 and usable(Path(result.stdout.strip())):
            return Path(result.stdout.strip())
    on_path = shutil.which("postgres")
    if on_path is not None and usable(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    raise ServerError(
        f"PostgreSQL {PG_MAJOR} server binaries (initdb, postgres) not found; tried: "
        f"{', '.join(tried)}. {_INSTALL_HINT}"
    )


def _connect(url: URL, *, connect_timeout: int = 5) -> psycopg.Connection[tuple[Any, ...]]:
    params: dict[str, Any] = {k: v for k, v in url.query.items() if isinstance(v, str)}
    if url.host:
        params["host"] = url.host
    if url.port:
        params["port"] = url.port
    if url.username:
        params["user"] = url.username
    if url.password is not None:
        params["password"] = url.password
    if url.database:
        params["dbname"] = url.database
    params.setdefault("connect_timeout", connect_timeout)
    return psycopg.connect(autocommit=True, **params)


class PostgresServer(abc.ABC):
    """A PostgreSQL server the tests may use (the base of the spawned and external kinds).

    ``url`` is a SQLAlchemy URL for a test database, with superuser credentials;
    ``admin_url`` the same credentials on the maintenance database.
    """

    is_external: bool = False

    def __init__(self, admin_url: URL, database: str) -> None:
        self._admin = admin_url.set(drivername=DRIVER)
        self.database = database
        self._stopped = False
        self._objects: list[tuple[str, str]] = []  # (kind, name) made through this object

    # -- URLs
    @property
    def host(self) -> str:
        return self._admin.host or "localhost"

    @property
    def port(self) -> int:
        return self._admin.port or 5432

    @property
    def user(self) -> str:
        return self._admin.username or ""

    @property
    def admin_url(self) -> str:
        return self._admin.render_as_string(hide_password=False)

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str, *, user: str | None = None, password: str | None = None) -> str:
        """A SQLAlchemy URL for ``database``, as the superuser or as ``user``/``password``."""
        url = self._admin.set(database=database)
        if user is not None:
            url = url.set(username=user, password=password)
        return url.render_as_string(hide_password=False)

    # -- administration
    @contextlib.contextmanager
    def admin_connection(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """An autocommit psycopg connection to the maintenance database, as superuser."""
        self._check_running()
        with _connect(self._admin) as conn:
            yield conn

    def create_database(self, name: str, *, owner: str | None = None) -> str:
        """Create an empty database and return its URL (superuser credentials)."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner is not None:
            query = sql.SQL("{} OWNER {}").format(query, sql.Identifier(owner))
        with self.admin_connection() as conn:
            conn.execute(query)
        self._objects.append(("database", name))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its sessions."""
        with self.admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        with contextlib.suppress(ValueError):
            self._objects.remove(("database", name))

    def create_role(self, name: str, password: str, *, superuser: bool = False) -> None:
        """Create a login role; see ``url_for(db, user=..., password=...)`` to use it."""
        query = sql.SQL("CREATE ROLE {} WITH LOGIN {} PASSWORD {}").format(
            sql.Identifier(name),
            sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"),
            sql.Literal(password),
        )
        with self.admin_connection() as conn:
            conn.execute(query)
        self._objects.append(("role", name))

    def _check_running(self) -> None:
        if self._stopped:
            raise ServerError(f"{self!r} has been stopped")

    # -- lifetime
    @abc.abstractmethod
    def stop(self) -> None:
        """Release the server (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        url = self._admin.set(database=self.database).render_as_string(hide_password=True)
        return f"<{type(self).__name__} {url}{' stopped' if self._stopped else ''}>"


class LocalPostgres(PostgresServer):
    """A throwaway cluster started by ``start_postgres``; ``stop()`` removes it."""

    def __init__(
        self,
        admin_url: URL,
        database: str,
        *,
        process: subprocess.Popen[bytes],
        run_dir: Path,
        socket_dir: Path | None,
    ) -> None:
        super().__init__(admin_url, database)
        self.process = process
        self.run_dir = run_dir
        self.data_dir = run_dir / "data"
        self.socket_dir = socket_dir
        self.log_path = run_dir / "postgres.log"

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    def stop(self) -> None:
        """Immediate shutdown (what ``pg_ctl stop -m immediate`` sends), then delete the cluster."""
        if self._stopped:
            return
        self._stopped = True
        try:
            _stop_process(self.process, signal.SIGQUIT)
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            _unregister(self)


class ExternalPostgres(PostgresServer):
    """A server someone else runs (``PORTAL_TEST_PG_URL``).

    Its test database gets a unique name; ``stop()`` drops the databases and roles made
    through this object and leaves the server running.
    """

    is_external = True

    def __init__(self, admin_url: URL) -> None:
        super().__init__(admin_url, f"{PG_DATABASE}_{secrets.token_hex(4)}")

    @classmethod
    def open(cls, admin_url: URL) -> ExternalPostgres:
        """Wrap the server and create this object's own test database on it."""
        server = cls(admin_url)
        _register(server)
        try:
            server.create_database(server.database)
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        if self._stopped:
            return
        try:
            with _connect(self._admin) as conn:
                # databases first: a role cannot be dropped while it owns one
                for kind, name in sorted(self._objects, key=lambda o: o[0] != "database"):
                    stmt = "DROP DATABASE IF EXISTS {} WITH (FORCE)" if kind == "database" else "DROP ROLE IF EXISTS {}"
                    try:
                        conn.execute(sql.SQL(stmt).format(sql.Identifier(name)))
                    except psycopg.Error as exc:
                        warnings.warn(f"could not drop {kind} {name!r}: {exc}", stacklevel=2)
        except psycopg.Error as exc:
            warnings.warn(f"could not clean up on {self!r}: {exc}", stacklevel=2)
        finally:
            self._objects.clear()
            self._stopped = True
            _unregister(self)


def _wait_for_postgres(proc: subprocess.Popen[bytes], admin: URL, log_path: Path, deadline: float) -> bool:
    """Poll until the server accepts a login.  False if it exited because the port was taken."""
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _log_tail(log_path)
            if _port_in_use_error(tail):
                return False
            raise ServerError(f"postgres exited with code {proc.returncode}; log tail:\n{tail}")
        try:
            with _connect(admin, connect_timeout=2):
                return True
        except psycopg.OperationalError as exc:  # refused, or "the database system is starting up"
            last_error = exc
            time.sleep(_POLL_INTERVAL)
    raise ServerError(
        f"postgres did not accept connections within {STARTUP_TIMEOUT:.0f}s "
        f"(last error: {last_error}); log tail:\n{_log_tail(log_path)}"
    )


def start_postgres(base_dir: Path, *, reuse_env: bool = True) -> PostgresServer:
    """Start a throwaway PostgreSQL cluster (or wrap ``$PORTAL_TEST_PG_URL`` if set).

    The cluster has a superuser ``portal_test`` with a random password (scram-sha-256 over
    TCP) and a database ``portal_test``; it listens on 127.0.0.1 only.  Pass
    ``reuse_env=False`` to always start a new cluster.  Call ``stop()`` when done.
    """
    external = os.environ.get(PG_URL_ENV) if reuse_env else None
    if external:
        return ExternalPostgres.open(make_url(external))

    bindir = find_pg_bindir()
    run_as = _ensure_os_user(PG_OS_USER) if os.geteuid() == 0 else None
    run_dir = _make_run_dir(base_dir, "postgres-", run_as)
    try:
        return _start_local_postgres(bindir, run_dir, run_as)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _start_local_postgres(bindir: Path, run_dir: Path, run_as: _OsUser | None) -> LocalPostgres:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    password = secrets.token_urlsafe(18)
    data_dir = run_dir / "data"
    log_path = run_dir / "postgres.log"

    pwfile = run_dir / "pwfile"
    pwfile.write_text(password + "\n", encoding="utf-8")
    pwfile.chmod(0o600)
    if run_as is not None:
        os.chown(pwfile, run_as.uid, run_as.gid)
    try:
        _run(
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(data_dir),
                "--username",
                PG_SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            run_as=run_as,
            what="initdb",
        )
    finally:
        pwfile.unlink(missing_ok=True)

    socket_dir: Path | None = None  # if the path is too long for a unix socket: TCP only
    if len(f"{run_dir}/sock/.s.PGSQL.65535") < _UNIX_PATH_MAX:
        socket_dir = run_dir / "sock"
        socket_dir.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(socket_dir, run_as.uid, run_as.gid)

    for _attempt in range(_PORT_ATTEMPTS):
        port = _free_port()
        admin = URL.create(
            DRIVER, username=PG_SUPERUSER, password=password, host=LOOPBACK, port=port, database="postgres"
        )
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(port),
            "unix_socket_directories": str(socket_dir or ""),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "jit": "off",
        }
        argv = [str(bindir / "postgres"), "-D", str(data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        proc = _popen(argv, run_as=run_as, log_path=log_path, death_signal=signal.SIGQUIT)
        server = LocalPostgres(admin, PG_DATABASE, process=proc, run_dir=run_dir, socket_dir=socket_dir)
        _register(server)
        try:
            ready = _wait_for_postgres(proc, admin, log_path, deadline)
            if ready:
                with server.admin_connection() as conn:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE)))
                return server
        except BaseException:
            server.stop()
            raise
        _stop_process(proc, signal.SIGQUIT)  # port was taken between picking and binding
        _unregister(server)
    raise ServerError(f"postgres could not bind a free port in {_PORT_ATTEMPTS} attempts")


# ----------------------------------------------------------------------------- Redis


def find_redis_server() -> Path:
    """``$PORTAL_TEST_REDIS_SERVER``, else ``redis-server`` on PATH or in /usr/bin."""
    override = os.environ.get(REDIS_SERVER_ENV)
    candidates = [override] if override else [shutil.which("redis-server"), "/usr/bin/redis-server"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ServerError(f"redis-server not found (tried {[c for c in candidates if c]}). {_INSTALL_HINT}")


class RedisServer(abc.ABC):
    """A Redis server the tests may use; ``url`` points at database 0."""

    is_external: bool = False

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlsplit(url)
        self.host: str = parsed.hostname or "localhost"
        self.port: int = parsed.port or 6379
        self._stopped = False

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis-py client for ``url`` (close it when done)."""
        return redis.Redis.from_url(self.url, **kwargs)

    @abc.abstractmethod
    def stop(self) -> None:
        """Release the server (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port}{' stopped' if self._stopped else ''}>"


class LocalRedis(RedisServer):
    """A redis-server child process without persistence; ``stop()`` ends it and removes its dir."""

    def __init__(self, url: str, *, process: subprocess.Popen[bytes], run_dir: Path) -> None:
        super().__init__(url)
        self.process = process
        self.run_dir = run_dir
        self.log_path = run_dir / "redis.log"

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            _stop_process(self.process, signal.SIGTERM)
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            _unregister(self)


class ExternalRedis(RedisServer):
    """A server someone else runs (``PORTAL_TEST_REDIS_URL``); ``stop()`` leaves it alone."""

    is_external = True

    def stop(self) -> None:
        self._stopped = True
        _unregister(self)


def _wait_for_redis(proc: subprocess.Popen[bytes], url: str, log_path: Path, deadline: float) -> bool:
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _log_tail(log_path)
            if _port_in_use_error(tail):
                return False
            raise ServerError(f"redis-server exited with code {proc.returncode}; log tail:\n{tail}")
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            if client.ping():
                return True
        except redis.RedisError as exc:  # refused, or BusyLoadingError
            last_error = exc
            time.sleep(_POLL_INTERVAL)
        finally:
            client.close()
    raise ServerError(
        f"redis-server did not answer PING within {STARTUP_TIMEOUT:.0f}s "
        f"(last error: {last_error}); log tail:\n{_log_tail(log_path)}"
    )


def start_redis(base_dir: Path, *, reuse_env: bool = True) -> RedisServer:
    """Start a redis-server on 127.0.0.1 (or wrap ``$PORTAL_TEST_REDIS_URL`` if set)."""
    external = os.environ.get(REDIS_URL_ENV) if reuse_env else None
    if external:
        return ExternalRedis(external)

    executable = find_redis_server()
    run_dir = _make_run_dir(base_dir, "redis-", None)
    log_path = run_dir / "redis.log"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        for _attempt in range(_PORT_ATTEMPTS):
            port = _free_port()
            url = f"redis://{LOOPBACK}:{port}/0"
            argv = [
                str(executable),
                "--port",
                str(port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(run_dir),
                "--logfile",
                "",
            ]
            proc = _popen(argv, run_as=None, log_path=log_path, death_signal=signal.SIGTERM)
            server = LocalRedis(url, process=proc, run_dir=run_dir)
            _register(server)
            try:
                if _wait_for_redis(proc, url, log_path, deadline):
                    return server
            except BaseException:
                server.stop()
                raise
            _stop_process(proc, signal.SIGTERM)
            _unregister(server)
        raise ServerError(f"redis-server could not bind a free port in {_PORT_ATTEMPTS} attempts")
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Start both servers, write their URLs as env assignments, and run until signalled."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.servers", description=main.__doc__)
    parser.add_argument("--base-dir", type=Path, default=None, help="where to put the servers' dirs")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="write PORTAL_TEST_PG_URL=... lines here (atomically) once both are ready",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    base_dir: Path = args.base_dir or Path(tempfile.mkdtemp(prefix="portal-test-servers-"))
    started = time.monotonic()
    pg = start_postgres(base_dir, reuse_env=False)
    try:
        rd = start_redis(base_dir, reuse_env=False)
        try:
            assert isinstance(pg, LocalPostgres) and isinstance(rd, LocalRedis)
            lines = f"{PG_URL_ENV}={pg.admin_url}\n{REDIS_URL_ENV}={rd.url}\n"
            if args.env_file is not None:
                tmp = args.env_file.with_name(args.env_file.name + ".tmp")
                tmp.write_text(lines, encoding="utf-8")
                tmp.replace(args.env_file)
            sys.stdout.write(lines)
            sys.stdout.write(f"# ready in {time.monotonic() - started:.2f}s; SIGTERM to stop\n")
            sys.stdout.flush()
            while not stop.wait(1.0):
                if pg.process.poll() is not None or rd.process.poll() is not None:
                    sys.stderr.write("a server exited unexpectedly\n")
                    return 1
        finally:
            rd.stop()
    finally:
        pg.stop()
        if args.env_file is not None:
            args.env_file.unlink(missing_ok=True)
        if args.base_dir is None:
            shutil.rmtree(base_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
