"""Types route handlers use to ask for shared parts by name."""

from __future__ import annotations

from litestar.di import NamedDependency

from portal.container import Portal

PortalDep = NamedDependency[Portal]
