"""The data folder of the embedded mode: created on first run with private permissions."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from portal.settings import Settings

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SUBDIRS = ("keys", "files", "outbox", "exports", "backups")


def prepare_data_dir(settings: Settings) -> Path:
    """Create the data folder and its subfolders (0700) if they are missing."""
    root = settings.data_dir
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(PRIVATE_DIR)
    for name in SUBDIRS:
        sub = root / name
        sub.mkdir(exist_ok=True)
        sub.chmod(PRIVATE_DIR)
    return root


def write_private_file(path: Path, data: bytes) -> None:
    """Write a new file readable by the owner only; refuses to overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read_private_file(path: Path) -> bytes:
    """Read a secret file, refusing one that others can read."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    return path.read_bytes()


def instance_secret(settings: Settings) -> str:
    """The secret that keys CSRF tokens and blind indexes.

    Production supplies it (``PORTAL_SECRET_KEY``); the embedded mode generates one on first
    run into the data folder so no default secret is ever shared between installations.
    """
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / "keys" / "secret.key"
    if not path.exists():
        write_private_file(path, secrets.token_urlsafe(48).encode())
    return read_private_file(path).decode().strip()
