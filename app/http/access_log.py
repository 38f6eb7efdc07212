"""Health-check polls stay out of the access log by default.

Why: a load balancer, ``docker HEALTHCHECK`` or the tests poll ``/ready``, ``/health`` and ``/metrics``
every few seconds; one uvicorn access line per poll buries the lines that matter (requests, errors).
``FLUX_LOG_HEALTH_CHECKS=true`` logs them again. The filter sits on uvicorn's ``uvicorn.access`` logger
(records only; no level is changed), installed when the app is created, i.e. after uvicorn configured
its logging, and works the same under ``flux-service serve`` and plain ``uvicorn app.main:create_app``.
"""

from __future__ import annotations

import logging

HEALTH_PATHS = frozenset({"/health", "/ready", "/metrics"})


class HealthCheckFilter(logging.Filter):
    """Drops uvicorn access records of successful health-check polls (a failing poll is still logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client, method, path with query, http version, status code)
        if isinstance(args, tuple) and len(args) == 5:
            path = str(args[2]).split("?", 1)[0]
            status = args[4]
            if path in HEALTH_PATHS and isinstance(status, int) and status < 400:
                return False
        return True


_FILTER = HealthCheckFilter()


def quiet_health_checks(enabled: bool) -> None:
    """Install (or, for ``enabled=False``, remove) the filter; idempotent."""
    logger = logging.getLogger("uvicorn.access")
    if enabled:
        logger.addFilter(_FILTER)
    else:
        logger.removeFilter(_FILTER)
