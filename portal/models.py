"""Imports every model module so the metadata (and Alembic) sees all tables."""

from portal.db import Base
from portal.jobs import models as jobs_models
from portal.security import sessions as session_models

__all__ = ["Base", "jobs_models", "session_models"]
