"""Alembic environment of the key store, which lives in a database of its own (see portal.migrate)."""

from portal.migrate import run_env
from portal.security.keystore import KeyBase

run_env(KeyBase.metadata)
