"""Settings: read once from PORTAL_*, safe defaults, and production refuses unsafe values by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from portal.app import create_app
from portal.serving import served_options
from portal.settings import Settings, SettingsError

SAFE_PRODUCTION = {
    "PORTAL_ENV": "production",
    "PORTAL_ORIGIN": "https://portal.example.org",
    "PORTAL_SECRET_KEY": "k" * 48,
    "PORTAL_KEK": '{"version":1,"current":"a","keys":{"a":"AAAA"}}',
    "PORTAL_DATABASE_URL": "postgresql+psycopg://portal@db/portal",
    "PORTAL_KEYSTORE_URL": "postgresql+psycopg://keys@keydb/keys",
    "PORTAL_BROKER_URL": "redis://redis:6379/0",
    "PORTAL_WEB_PROCESSES": "4",
}


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = Settings.from_env({"PORTAL_DATA_DIR": str(tmp_path)})
    assert settings.env == "development"
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'portal.sqlite3'}"
    assert settings.keystore_url == f"sqlite:///{tmp_path.resolve() / 'keystore.sqlite3'}"
    assert settings.broker_url == "memory://"
    assert settings.origin == "http://localhost:8000"
    assert settings.rp_id == "localhost"
    assert settings.problems() == []


def test_unknown_portal_variable_is_an_error() -> None:
    with pytest.raises(SettingsError, match="PORTAL_DATABSE_URL"):
        Settings.from_env({"PORTAL_DATABSE_URL": "sqlite://"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORTAL_WEB_PROCESSES", "many", "PORTAL_WEB_PROCESSES must be a number"),
        ("PORTAL_KEEP_ALIVE_SECONDS", "long", "PORTAL_KEEP_ALIVE_SECONDS must be a number"),
        ("PORTAL_LOG_JSON", "perhaps", "PORTAL_LOG_JSON must be true or false"),
        ("PORTAL_ENV", "staging", "PORTAL_ENV must be development or production"),
    ],
)
def test_malformed_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({name: value})


def test_safe_production_settings_have_no_problems() -> None:
    assert Settings.from_env(SAFE_PRODUCTION).problems() == []


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"PORTAL_ORIGIN": "http://portal.example.org"}, "PORTAL_ORIGIN must use https in production"),
        ({"PORTAL_SECRET_KEY": "short"}, "PORTAL_SECRET_KEY must be set"),
        ({"PORTAL_KEK": ""}, "PORTAL_KEK must supply the key-encryption key"),
        ({"PORTAL_BROKER_URL": "memory://"}, "PORTAL_BROKER_URL memory:// cannot serve more than one web process"),
        ({"PORTAL_DATABASE_URL": "sqlite:///x.db"}, "PORTAL_DATABASE_URL must be PostgreSQL"),
        ({"PORTAL_KEYSTORE_URL": SAFE_PRODUCTION["PORTAL_DATABASE_URL"]}, "PORTAL_KEYSTORE_URL must be a different"),
    ],
)
def test_production_refuses_each_unsafe_setting(override: dict[str, str], problem: str) -> None:
    settings = Settings.from_env({**SAFE_PRODUCTION, **override})
    assert any(p.startswith(problem) for p in settings.problems()), settings.problems()
    with pytest.raises(SettingsError, match="refusing to start"):
        create_app(settings)


def test_keep_alive_must_be_at_least_a_second() -> None:
    assert Settings.from_env({"PORTAL_KEEP_ALIVE_SECONDS": "0"}).problems() == [
        "PORTAL_KEEP_ALIVE_SECONDS must be at least 1"
    ]


def test_web_processes_keep_idle_connections_longer_than_proxies_and_client_pools() -> None:
    """nginx keeps idle upstream connections 60 s and httpx its pool's 5 s: they, not the portal,
    close an idle connection, so no request is sent into one the portal is closing."""
    options = served_options(Settings())
    assert options["timeout_keep_alive"] == 75


def test_origin_must_be_bare() -> None:
    problems = Settings.from_env({"PORTAL_ORIGIN": "https://portal.example.org/app"}).problems()
    assert problems == ["PORTAL_ORIGIN must be a bare origin such as https://portal.example.org"]
