"""Every setting of the portal, read once from ``PORTAL_*`` environment variables.

Defaults are safe for the embedded single-machine mode. ``Settings.problems()`` lists what
makes a configuration unsafe for production; ``create_app`` refuses to start with any.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

Environment = Literal["development", "production"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
MIN_SECRET_LENGTH = 32


class SettingsError(ValueError):
    """A setting has a value the portal cannot use; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    env: Environment = "development"
    data_dir: Path = Path("var")
    database_url: str = ""
    keystore_url: str = ""
    broker_url: str = "memory://"
    origin: str = "http://localhost:8000"
    extra_hosts: tuple[str, ...] = ()
    secret_key: str = ""
    kek: str = ""
    web_processes: int = 1
    keep_alive_seconds: int = 75
    worker_threads: int = 4
    max_body_bytes: int = 2 * 1024 * 1024
    log_level: str = "INFO"
    log_json: bool = True
    job_lease_seconds: int = 600
    job_max_attempts: int = 5
    watchdog_interval_seconds: float = 30.0
    job_resend_after_seconds: float = 60.0
    erasure_waiting_days: int = 7
    staff_named_in_access_history: bool = True
    smtp_url: str = ""
    mail_from: str = "privacy@portal.example"
    controller_name: str = "Example Health (synthetic demo)"
    mrn_system: str = "urn:oid:2.16.840.1.113883.19.5"
    checkpoint_interval_seconds: float = 300.0
    access_retention_years: int = 6
    demo: bool = False
    # Derived values; not settable from the environment.
    resolved: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``PORTAL_*`` variable once; unknown ``PORTAL_*`` names are an error."""
        env = dict(os.environ if environ is None else environ)
        known = {f"PORTAL_{name.upper()}" for name in _ENV_FIELDS}
        unknown = sorted(k for k in env if k.startswith("PORTAL_") and k not in known)
        unknown = [k for k in unknown if not k.startswith("PORTAL_TEST_")]
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
        values: dict[str, object] = {}
        for name, kind in _ENV_FIELDS.items():
            raw = env.get(f"PORTAL_{name.upper()}")
            if raw is not None:
                values[name] = _parse(name, kind, raw)
        return cls(**values).complete()  # type: ignore[arg-type]

    def complete(self) -> Settings:
        """Fill the defaults that depend on other settings (database paths under data_dir)."""
        data_dir = self.data_dir.resolve()
        database_url = self.database_url or f"sqlite:///{data_dir / 'portal.sqlite3'}"
        keystore_url = self.keystore_url or f"sqlite:///{data_dir / 'keystore.sqlite3'}"
        return replace(self, data_dir=data_dir, database_url=database_url, keystore_url=keystore_url)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def https(self) -> bool:
        return urlsplit(self.origin).scheme == "https"

    @property
    def rp_id(self) -> str:
        """The WebAuthn relying-party id: the origin's host name."""
        return urlsplit(self.origin).hostname or "localhost"

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        return (self.rp_id, *self.extra_hosts)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def uses_memory_broker(self) -> bool:
        return self.broker_url.startswith("memory://")

    def problems(self) -> list[str]:
        """What is wrong with this configuration; production refuses to start with any."""
        found = [*self._shape_problems()]
        if self.is_production:
            found.extend(self._production_problems())
        return found

    def _shape_problems(self) -> list[str]:
        found: list[str] = []
        parts = urlsplit(self.origin)
        if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path not in {"", "/"}:
            found.append("PORTAL_ORIGIN must be a bare origin such as https://portal.example.org")
        if not (self.broker_url.startswith(("memory://", "redis://", "rediss://"))):
            found.append("PORTAL_BROKER_URL must be memory:// or a redis:// URL")
        if self.web_processes < 1 or self.worker_threads < 1:
            found.append("PORTAL_WEB_PROCESSES and PORTAL_WORKER_THREADS must be at least 1")
        if self.keep_alive_seconds < 1:
            found.append("PORTAL_KEEP_ALIVE_SECONDS must be at least 1")
        if self.max_body_bytes < 1024:
            found.append("PORTAL_MAX_BODY_BYTES must be at least 1024")
        if self.access_retention_years < 3:
            found.append("PORTAL_ACCESS_RETENTION_YEARS must be at least 3 (access logs are evidence)")
        if self.erasure_waiting_days < 0:
            found.append("PORTAL_ERASURE_WAITING_DAYS must not be negative")
        return found

    def _production_problems(self) -> list[str]:
        found: list[str] = []
        if not self.https:
            found.append("PORTAL_ORIGIN must use https in production")
        if len(self.secret_key) < MIN_SECRET_LENGTH:
            found.append(f"PORTAL_SECRET_KEY must be set to a random value of at least {MIN_SECRET_LENGTH} characters")
        if not self.kek:
            found.append("PORTAL_KEK must supply the key-encryption key from the secret manager")
        if self.uses_memory_broker and self.web_processes > 1:
            found.append("PORTAL_BROKER_URL memory:// cannot serve more than one web process; use redis://")
        if self.is_sqlite and self.web_processes > 1:
            found.append("PORTAL_DATABASE_URL must be PostgreSQL when PORTAL_WEB_PROCESSES > 1")
        if self.database_url == self.keystore_url:
            found.append("PORTAL_KEYSTORE_URL must be a different database from PORTAL_DATABASE_URL")
        return found


_ENV_FIELDS: dict[str, type] = {
    "env": str,
    "data_dir": Path,
    "database_url": str,
    "keystore_url": str,
    "broker_url": str,
    "origin": str,
    "extra_hosts": tuple,
    "secret_key": str,
    "kek": str,
    "web_processes": int,
    "keep_alive_seconds": int,
    "worker_threads": int,
    "max_body_bytes": int,
    "log_level": str,
    "log_json": bool,
    "job_lease_seconds": int,
    "job_max_attempts": int,
    "watchdog_interval_seconds": float,
    "job_resend_after_seconds": float,
    "erasure_waiting_days": int,
    "staff_named_in_access_history": bool,
    "smtp_url": str,
    "mail_from": str,
    "controller_name": str,
    "mrn_system": str,
    "checkpoint_interval_seconds": float,
    "access_retention_years": int,
}


def _parse(name: str, kind: type, raw: str) -> object:
    variable = f"PORTAL_{name.upper()}"
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"{variable} must be true or false, not {raw!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{variable} must be a number, not {raw!r}") from None
    if kind is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind is Path:
        return Path(raw)
    if name == "env" and raw not in ("development", "production"):
        raise SettingsError(f"PORTAL_ENV must be development or production, not {raw!r}")
    return raw
