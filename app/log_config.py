"""structlog, configured once: a console renderer in development, JSON lines elsewhere.

Standard-library loggers (uvicorn, alembic, mlflow) go through the same formatter, and the
request's context (`request_id`, method, path) is bound with contextvars so that every line logged
while serving a request carries it.
"""

from __future__ import annotations

import logging
import logging.config
import re
from functools import lru_cache
from typing import Any

import structlog
from structlog.types import EventDict, Processor

_SECRET_KEYS = re.compile(r"(authorization|api[_-]?key|secret|signature|password|token_hash)", re.I)


@lru_cache(maxsize=1024)
def _is_secret(key: str) -> bool:
    # Keys are the names code logs under, a small set: each is matched once, not once a line.
    return _SECRET_KEYS.search(key) is not None


def _redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Secrets, keys and signatures never reach a log line, whoever logs them."""
    for key in list(event_dict):
        if _is_secret(key):
            event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(*, level: str = "INFO", json: bool = False) -> None:
    """Route structlog and the standard library through one formatter."""
    # No renderer here prints a record's thread or process, so the standard library need not
    # look them up for every record (the logging HOWTO's "Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json
        # Plain tracebacks: the default one prints every frame's locals, API keys included.
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            # A line below its logger's level is dropped before anything is done with it; the
            # standard library would drop it only after every processor had run.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    logging.config.dictConfig(_standard_library_config(shared, renderer, level=level, json=json))


def _standard_library_config(
    shared: list[Processor], renderer: Processor, *, level: str, json: bool
) -> dict[str, Any]:
    """The standard library's logging set-up: one handler, our formatter, quieter libraries."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info if json else _keep,
                    renderer,
                ],
                "foreign_pre_chain": shared,
            }
        },
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "structlog"}},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            # uvicorn installs its own handlers unless told otherwise; ours replace them.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            # The access log duplicates our own request line.
            "uvicorn.access": {"handlers": [], "propagate": False},
            "alembic": {"level": "WARNING"},
            "mlflow": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            "sqlalchemy": {"level": "WARNING"},
        },
    }


def _keep(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    return event_dict
