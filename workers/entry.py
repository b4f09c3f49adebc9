"""Entry point for ``dramatiq workers.entry:setup`` (the scaled mode's worker processes).

Dramatiq's CLI imports this module in every worker process and calls ``setup``, which builds
the portal from the environment and declares the job actor on its Redis broker.
"""

from __future__ import annotations

import dramatiq

from portal.container import build_portal
from portal.logging import configure_logging
from portal.settings import Settings


def setup() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, json=settings.log_json)
    portal = build_portal(settings)
    dramatiq.set_broker(portal.connect_broker())
