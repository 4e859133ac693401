"""Assembles a worker from its settings: methods, dispatcher, server."""

from __future__ import annotations

from worker.dispatch import Dispatcher
from worker.host import HostPlatform
from worker.methods import WorkerMethods
from worker.server import Server
from worker.settings import Settings

SHUTDOWN_MARGIN_SECONDS = 0.8
"""Beyond the kill grace, how long shutdown waits for the last answers."""


def build_server(
    settings: Settings, host: HostPlatform, finish_on_eof: bool = False
) -> tuple[Server, WorkerMethods]:
    methods = WorkerMethods(settings, host)
    server = Server(
        Dispatcher(methods.table()),
        settings.max_request_bytes,
        on_stop=methods.shutdown,
        stop_deadline_seconds=settings.kill_grace_ms / 1000 + SHUTDOWN_MARGIN_SECONDS,
        finish_on_eof=finish_on_eof,
    )
    return server, methods
