"""Self-test of tests/support/servers.py against a real PostgreSQL and a real Redis."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.support.servers import (
    PG_URL_ENV,
    REDIS_URL_ENV,
    LocalPostgres,
    LocalRedis,
    PostgresServer,
    RedisServer,
    start_postgres,
    start_redis,
)

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path_factory.mktemp("pg"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


def scalar(url: str, query: str) -> object:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query)).scalar_one()
    finally:
        engine.dispose()


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def test_postgres_urls_and_select_1(pg: PostgresServer) -> None:
    assert pg.url.startswith("postgresql+psycopg://")
    assert f":{pg.port}/" in pg.url
    assert scalar(pg.url, "select 1") == 1
    assert scalar(pg.url, "select current_database()") == pg.database
    assert scalar(pg.admin_url, "select rolsuper from pg_roles where rolname = current_user") is True
    assert str(scalar(pg.url, "show server_version_num")).startswith("15")


def test_two_databases_are_isolated(pg: PostgresServer) -> None:
    main_url = pg.create_database(unique("main"))
    keys_url = pg.create_database(unique("keys"))
    assert main_url != keys_url
    for url in (main_url, keys_url):
        assert scalar(url, "select 1") == 1

    engine = sa.create_engine(main_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("create table only_in_main (id int primary key)"))
            conn.execute(sa.text("insert into only_in_main values (1)"))
    finally:
        engine.dispose()
    assert scalar(main_url, "select count(*) from only_in_main") == 1
    assert scalar(keys_url, "select to_regclass('only_in_main') is null") is True


def test_non_superuser_role_can_log_in(pg: PostgresServer) -> None:
    role, password = unique("app"), secrets.token_urlsafe(12)
    pg.create_role(role, password)
    url = pg.url_for(pg.database, user=role, password=password)
    assert scalar(url, "select current_user") == role
    assert scalar(url, "select rolsuper from pg_roles where rolname = current_user") is False
    if not pg.is_external:  # our own cluster enforces scram-sha-256 on TCP
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            scalar(pg.url_for(pg.database, user=role, password="wrong"), "select 1")


def test_redis_ping_set_get(rds: RedisServer) -> None:
    assert rds.url == f"redis://{rds.host}:{rds.port}/0"
    client = rds.client()
    try:
        assert client.ping() is True
        key = unique("servers-selftest")
        assert client.set(key, "value", ex=60)
        assert client.get(key) == b"value"
        client.delete(key)
    finally:
        client.close()


def test_stop_closes_ports_and_removes_dirs(tmp_path: Path) -> None:
    pg = start_postgres(tmp_path / "pg", reuse_env=False)
    try:
        rds = start_redis(tmp_path / "redis", reuse_env=False)
        try:
            assert isinstance(pg, LocalPostgres)
            assert isinstance(rds, LocalRedis)
            assert port_open(pg.port)
            assert port_open(rds.port)
            assert pg.data_dir.is_dir()
        finally:
            rds.stop()
    finally:
        pg.stop()

    assert pg.process.returncode is not None
    assert rds.process.returncode is not None
    assert not port_open(pg.port)
    assert not port_open(rds.port)
    assert not pg.run_dir.exists()
    assert not rds.run_dir.exists()
    pg.stop()  # idempotent
    rds.stop()


def test_env_urls_reuse_running_servers(
    pg: PostgresServer, rds: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PG_URL_ENV, pg.admin_url)
    monkeypatch.setenv(REDIS_URL_ENV, rds.url)

    ext_pg = start_postgres(tmp_path)
    try:
        assert ext_pg.is_external
        assert ext_pg.port == pg.port
        assert ext_pg.database != pg.database
        assert scalar(ext_pg.url, "select current_database()") == ext_pg.database
        extra = ext_pg.create_database(unique("extra"))
        assert scalar(extra, "select 1") == 1
    finally:
        ext_pg.stop()
    names = {ext_pg.database, extra.rsplit("/", 1)[1]}
    with pg.admin_connection() as conn:
        query = "select datname from pg_database where datname = any(%s)"
        left = conn.execute(query, [list(names)]).fetchall()
    assert left == [], "the external wrapper drops the databases it made"

    ext_rds = start_redis(tmp_path)
    try:
        assert ext_rds.is_external
        client = ext_rds.client()
        try:
            assert client.ping() is True
        finally:
            client.close()
    finally:
        ext_rds.stop()
    assert port_open(pg.port), "stopping a wrapper leaves the server running"
    assert port_open(rds.port)
