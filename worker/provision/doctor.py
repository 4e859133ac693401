"""`studio-imagegen-worker doctor`: the configured backend's checks, one line each, then
the settings, and a verdict."""

from __future__ import annotations

from worker.backends.registry import plugin_for
from worker.checks import DoctorReport, check_settings
from worker.host import HostPlatform
from worker.settings import Settings


def examine(settings: Settings, host: HostPlatform, load: bool = False) -> DoctorReport:
    """The checks the configured backend's plug-in makes (`load`: also load its model,
    where it has one to load), then the settings line."""
    plugin = plugin_for(settings)
    if plugin is None:  # the settings line says which name is not a backend
        return DoctorReport((check_settings(settings, ""),))
    checks = plugin.doctor_checks(settings, host, load)
    return DoctorReport((*checks, check_settings(settings, plugin.settings_summary(settings))))
