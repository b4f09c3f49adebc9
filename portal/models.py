"""Imports every model module of the main database so the metadata (and Alembic) sees all tables."""

from portal.audit import ledger
from portal.db import Base
from portal.jobs import models as jobs_models
from portal.records import models as records_models
from portal.security import sessions as session_models

__all__ = ["Base", "jobs_models", "ledger", "records_models", "session_models"]
