"""Types and helpers route handlers use to ask for shared parts."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException

from portal.container import Portal

PortalDep = NamedDependency[Portal]


def patient_id_of(request: Request[Any, Any, Any], portal: Portal) -> str:
    """The record id of the signed-in patient (guards have already checked it is a patient)."""
    account = portal.accounts.account(request.user.subject_id)
    if account is None or account.patient_id is None:
        raise NotFoundException("this account is not linked to a patient record")
    return str(account.patient_id)
