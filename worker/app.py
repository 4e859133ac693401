"""Assembles a worker from its settings: methods, dispatcher, server."""

from __future__ import annotations

from worker.dispatch import Dispatcher
from worker.host import HostPlatform
from worker.methods import WorkerMethods
from worker.server import Server
from worker.settings import Settings


def build_server(settings: Settings, host: HostPlatform) -> Server:
    methods = WorkerMethods(settings, host)
    return Server(Dispatcher(methods.table()), settings.max_request_bytes)
