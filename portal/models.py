"""Imports every model module of the main database so the metadata (and Alembic) sees all tables."""

from portal.access import models as access_models
from portal.accounts import models as accounts_models
from portal.api import models as api_models
from portal.audit import ledger
from portal.consent import models as consent_models
from portal.db import Base
from portal.dsar import models as dsar_models
from portal.evidence import models as evidence_models
from portal.jobs import models as jobs_models
from portal.records import models as records_models
from portal.security import ratelimit as ratelimit_models
from portal.security import sessions as session_models

__all__ = [
    "Base",
    "access_models",
    "accounts_models",
    "api_models",
    "consent_models",
    "dsar_models",
    "evidence_models",
    "jobs_models",
    "ledger",
    "ratelimit_models",
    "records_models",
    "session_models",
]
