"""Logging set-up shared by the coordinator and the agent: JSON lines in clusters, readable on a TTY.

structlog formats every line, including those of the standard library's ``logging`` (Barge's kube
and rpc adapters, grpc, urllib3): structlog hands its events to ``logging`` and one root handler
renders both through the same processors (``ProcessorFormatter``), so each line is one JSON object
with ``level``, ``timestamp``, ``logger`` and ``event``, and one level (``--log-level``) filters all.

Context that must appear on every line (the CR's namespace/name, the node) is bound with
``structlog.contextvars`` by the code that starts the work, so helpers deeper down need not pass it.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]

# Third-party libraries whose INFO and DEBUG lines are noise (one per HTTP request or RPC); they
# follow --log-level only at debug.
NOISY = ("urllib3", "grpc")
# kubernetes.client.rest logs every response body at DEBUG: Secrets' data, and TokenReviews, which
# echo the agent's token. Never below WARNING, whatever the level.
SECRET_BEARING = ("kubernetes",)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler configure_logging installs (and replaces when called again)."""


def configure_logging(level: str = "info", fmt: LogFormat = "json", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library's logging to ``stream`` (stderr) at ``level``."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error)")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    quiet = max(numeric, logging.WARNING)
    for name in NOISY:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else quiet)
    for name in SECRET_BEARING:
        logging.getLogger(name).setLevel(quiet)
