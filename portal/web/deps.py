"""Types and helpers route handlers use to ask for shared parts."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException

from portal.container import Portal

PortalDep = NamedDependency[Portal]


def patient_id_of(request: Request[Any, Any, Any]) -> str:
    """The record id of the signed-in patient (guards have already checked it is a patient)."""
    patient_id: str | None = request.user.patient_id
    if patient_id is None:
        raise NotFoundException("this account is not linked to a patient record")
    return patient_id
