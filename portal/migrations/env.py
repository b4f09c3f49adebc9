"""Alembic environment of the main database (see portal.migrate)."""

from portal.migrate import run_env
from portal.models import Base

run_env(Base.metadata)
