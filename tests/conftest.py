"""Shared fixtures: settings per backend (SQLite always; PostgreSQL when the pg layer runs)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from portal import migrate
from portal.app import create_app
from portal.container import Portal, build_portal
from portal.security.sessions import COOKIE_NAME, SubjectKind
from portal.settings import Settings
from tests.support.servers import PostgresServer, RedisServer, start_postgres, start_redis

ORIGIN = "https://portal.test"
BACKENDS = ["sqlite", pytest.param("pg", marks=pytest.mark.pg)]


class FakeClock:
    """A controllable UTC clock for expiry tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path_factory.mktemp("pg"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_settings(tmp_path: Path, request: pytest.FixtureRequest, backend: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path / "var", "origin": ORIGIN, "log_json": True}
    if backend == "pg":
        pg: PostgresServer = request.getfixturevalue("pg_server")
        name = f"t_{uuid.uuid4().hex[:12]}"
        values["database_url"] = pg.create_database(name)
        values["keystore_url"] = pg.create_database(f"{name}_keys")
    values.update(overrides)
    return Settings(**values).complete()  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> Settings:
    return make_settings(tmp_path, request, backend)


@pytest.fixture
def portal(settings: Settings) -> Iterator[Portal]:
    built = build_portal(settings)
    migrate.upgrade_all(settings.database_url, settings.keystore_url)
    built.consent.ensure_defaults()
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def app(settings: Settings, portal: Portal) -> Litestar:
    return create_app(settings, portal)


@pytest.fixture
def client(app: Litestar) -> Iterator[TestClient[Litestar]]:
    with TestClient(app, base_url=ORIGIN) as test_client:
        yield test_client


def sign_in(
    client: TestClient[Litestar],
    portal: Portal,
    *,
    kind: SubjectKind = "patient",
    subject_id: str | None = None,
    roles: frozenset[str] = frozenset(),
) -> str:
    """Start a session directly through the service (the passkey flow is tested on its own)."""
    with portal.db.write() as session:
        token = portal.sessions.create(
            session,
            kind=kind,
            subject_id=subject_id or str(uuid.uuid4()),
            roles=roles,
        )
    client.cookies.set(COOKIE_NAME, token, domain="portal.test")
    return token


def csrf_token(client: TestClient[Litestar]) -> str:
    """Load a page so the CSRF cookie is set, and return the token the page embeds."""
    page = client.get("/")
    marker = '"x-csrftoken": "'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]
