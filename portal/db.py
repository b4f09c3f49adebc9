"""Engines, sessions and the declarative base.

Services run synchronously (shared by web handlers in worker threads, Dramatiq actors and the
CLI). On SQLite we take the write lock at BEGIN for write transactions: a deferred transaction
that reads and then writes can fail with SQLITE_BUSY without waiting when another writer got in
between, which would surface as random errors under load.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    any_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    text,
)
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, QueryableAttribute, Session, sessionmaker
from sqlalchemy.schema import ColumnCollectionConstraint
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 10_000
IDLE_PING_SECONDS = 5.0

T = TypeVar("T")
log = structlog.get_logger(__name__)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def create_db_engine(url: str | URL) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    engine = create_engine(parsed, pool_size=10, max_overflow=20)
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Check a pooled connection before use when it sat idle, so a database restart costs no request.

    A connection handed back moments ago is alive; pinging it on every checkout (``pool_pre_ping``)
    would add a round trip to every request. Should one still have died, the error invalidates the
    whole pool, so only the request that met it fails.
    """

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("returned_at", 0.0) < IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(str(exc)) from exc
        if not alive:
            raise DisconnectionError("the connection did not answer a ping")


def _sqlite_engine(url: URL) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is lazy
        # and skips SELECTs, which breaks transactional reads).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("portal_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class Database:
    """One database: an engine plus read and write session factories."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader = sessionmaker(engine, expire_on_commit=False)
        self._writer = sessionmaker(engine.execution_options(portal_write=True), expire_on_commit=False)
        # PostgreSQL answers a lone statement consistently without BEGIN and ROLLBACK round trips;
        # SQLite keeps its deferred transaction (its autocommit mode would bypass the BEGIN hook).
        self._lone = (
            engine if engine.dialect.name == "sqlite" else engine.execution_options(isolation_level="AUTOCOMMIT")
        )

    @classmethod
    def from_url(cls, url: str) -> Database:
        return cls(create_db_engine(url))

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; rolled back at the end."""
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose changes commit together at the end, or not at all."""
        with self._writer() as session, session.begin():
            yield session

    @contextmanager
    def lone_read(self) -> Iterator[Connection]:
        """A connection for reads on a hot path: no ORM session, no transaction (on PostgreSQL), so each
        statement sees what was committed when it started; for reads that need no common snapshot."""
        with self._lone.connect() as conn:
            yield conn

    def conninfo(self) -> str:
        """The libpq connection string of this (PostgreSQL) database, for psycopg connections of our own."""
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def among(self, column: ColumnElement[Any] | QueryableAttribute[Any], values: Iterable[Any]) -> ColumnElement[bool]:
        """``column IN values``, for long lists: on PostgreSQL ``column = ANY(array)``, one parameter.

        An IN list has a parameter per value, which SQLAlchemy renders and psycopg rewrites on every
        call: 15 µs an event for the look-ups of a 1,000-event ingest (``tests/bench/bench_access.py``).
        """
        listed = list(values)
        if self.is_sqlite:
            return column.in_(listed)
        if _plain_strings(column, listed):
            # As one string the server splits: psycopg builds an array parameter in Python, 3.4 µs a
            # value (the 1,000 source keys an ingest batch looks up: 3.4 ms).
            joined = bindparam(None, ",".join(listed), type_=Text())
            return column == any_(func.string_to_array(joined, ",", type_=ARRAY(Text())))
        return column == any_(bindparam(None, listed, type_=ARRAY(column.type)))

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def _plain_strings(column: ColumnElement[Any] | QueryableAttribute[Any], values: list[Any]) -> bool:
    """Whether ``values`` are strings without a comma, for a plain string column (no type of ours that
    changes what is bound)."""
    if type(column.type) not in (String, Text) or not all(type(value) is str for value in values):
        return False
    return bool(values) and ",".join(values).count(",") == len(values) - 1


def insert_rows(conn: Connection, table: Table, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert many rows with the same keys in the connection's transaction: COPY on PostgreSQL, else
    one executemany. ``rows`` may be a generator: on PostgreSQL each row is sent as soon as it is made.

    COPY stores a batch in about half the time of SQLAlchemy's executemany (1,000 access events: 24
    against 42 µs a row, ``tests/bench/bench_access.py``), and the server parses the rows already
    sent while the rest are made. Errors are raised as SQLAlchemy's, as for any other statement.
    """
    if conn.dialect.name != "postgresql":
        if batch := list(rows):
            conn.execute(insert(table), batch)
        return
    remaining = iter(rows)
    first = next(remaining, None)
    if first is None:
        return
    names = list(first)
    preparer = conn.dialect.identifier_preparer
    sql = f"COPY {preparer.format_table(table)} ({', '.join(preparer.quote(name) for name in names)}) FROM STDIN"
    binders = [(name, _bind_param(table.c[name].type, conn.dialect)) for name in names]
    driver_error = conn.dialect.loaded_dbapi.Error
    try:
        with conn.connection.dbapi_connection.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[union-attr]
            for row in itertools.chain([first], remaining):
                copy.write_row([row[name] if bind is None else bind(row[name]) for name, bind in binders])
    except driver_error as exc:
        raise DBAPIError.instance(sql, None, exc, driver_error) from exc


def unique_key(table: Table, *columns: str) -> ColumnCollectionConstraint:
    """``table``'s primary key or unique constraint over exactly these columns."""
    wanted = [table.c[name] for name in columns]
    for constraint in table.constraints:
        if isinstance(constraint, PrimaryKeyConstraint | UniqueConstraint) and list(constraint.columns) == wanted:
            return constraint
    raise LookupError(f"{table.name} has no unique key on {', '.join(columns)}")


def retried_on_collision(attempt: Callable[[], T], *keys: ColumnCollectionConstraint, attempts: int = 3) -> T:
    """``attempt()``, again when a concurrent transaction committed a row with one of these unique ``keys``
    after this one looked for it: a write that looks before inserting (an idempotent import) then finds
    that row, instead of failing on it. On SQLite the write lock, taken before the look, prevents this."""
    for number in itertools.count(1):
        try:
            return attempt()
        except IntegrityError as exc:
            key = next((key for key in keys if _collided(exc, key)), None)
            if key is None or number == attempts:
                raise
            log.info("db.write_met_a_concurrent_one", key=key.name, attempt=number)
    raise AssertionError("unreachable")


def _collided(exc: IntegrityError, key: ColumnCollectionConstraint) -> bool:
    diag = getattr(exc.orig, "diag", None)
    if diag is not None:  # psycopg names the constraint
        return bool(diag.constraint_name == key.name)
    assert key.table is not None
    columns = ", ".join(f"{key.table.name}.{column.name}" for column in key.columns)
    return str(exc.orig) == f"UNIQUE constraint failed: {columns}"


def _bind_param(column_type: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """What a column's own type does to a value before the driver sees it (a TypeDecorator's check), if
    anything; the driver adapts plain values itself, except bytes (see ``_bytea_text``)."""
    if isinstance(column_type, TypeDecorator):
        return lambda value: column_type.process_bind_param(value, dialect)
    if isinstance(column_type, LargeBinary):
        return _bytea_text
    return None


def _bytea_text(value: bytes | None) -> str | None:
    """Bytes as bytea's hex text, which COPY passes on as it is: psycopg escapes bytes for COPY one at a
    time, 4.4 µs for a 600-byte access event's body against 2.5 µs this way."""
    return None if value is None else "\\x" + value.hex()


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once this session's transaction has committed (never on rollback)."""
    pending: list[Callable[[], None]] = session.info.setdefault("after_commit", [])
    if not pending:
        event.listen(session, "after_commit", _run_after_commit, once=True)
        event.listen(session, "after_soft_rollback", _drop_after_commit, once=True)
    pending.append(callback)


def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop("after_commit", []):
        callback()


def _drop_after_commit(session: Session, _previous_transaction: Any) -> None:
    session.info.pop("after_commit", None)
