"""The table of backends: each id and the plug-in that answers for it.

The only place that lists the backends. The core asks it which plug-in serves the
configured backend and never names one itself; the plug-ins' faces are light, and each
loads what rendering needs only when its `load` runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.models import SCHEDULERS, BackendStatus
from worker.backends.coreml.plugin import PLUGIN as COREML
from worker.backends.diffusers.plugin import PLUGIN as DIFFUSERS
from worker.backends.mock import PLUGIN as MOCK
from worker.settings import ENV_BACKEND, EnvironmentReader, Settings

if TYPE_CHECKING:
    from worker.backends.base import Backend, BackendPlugin, Installer
    from worker.host import HostPlatform

PLUGINS: tuple[BackendPlugin, ...] = (COREML, DIFFUSERS, MOCK)
DEFAULT: BackendPlugin = COREML
"""What an unset SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND means, as with the original provider."""
BY_NAME: dict[str, BackendPlugin] = {
    "": DEFAULT,
    **{name: plugin for plugin in PLUGINS for name in (plugin.id, *plugin.names)},
}
"""What SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND may say (lower-cased)."""
BY_ID: dict[str, BackendPlugin] = {plugin.id: plugin for plugin in PLUGINS}


def read_settings(environ: Mapping[str, str], home: Path | None = None) -> Settings:
    """The worker's settings: which backend, the shared variables, and every backend's
    own section (so that a bad value of any of them is reported, whichever runs)."""
    reader = EnvironmentReader(environ)
    home = home if home is not None else Path.home()
    name = reader.raw(ENV_BACKEND).lower()
    plugin = BY_NAME.get(name)
    if plugin is None:
        reader.problem(ENV_BACKEND, f"is not a backend; set it to {_spelled_out()}")
    return Settings.read(
        reader,
        backend=plugin.id if plugin else None,
        backend_name=name or DEFAULT.id,
        schedulers=plugin.schedulers if plugin else SCHEDULERS,
        read_sections=lambda reader: tuple(p.read_settings(reader, home) for p in PLUGINS),
    )


def _spelled_out() -> str:
    names = [
        plugin.id
        + (" (default)" if plugin is DEFAULT else "")
        + (" (tests only)" if plugin.test_only else "")
        for plugin in PLUGINS
    ]
    return ", ".join(names[:-1]) + " or " + names[-1]


def plugin_for(settings: Settings) -> BackendPlugin | None:
    """The configured backend's plug-in; None when the configured name is unknown."""
    return BY_ID[settings.backend] if settings.backend is not None else None


def installers() -> dict[str, Installer]:
    """The backends `install` can set up, by the name `--backend` takes."""
    return {p.installer.name: p.installer for p in PLUGINS if p.installer is not None}


def default_installer(settings: Settings | None) -> Installer:
    """`install` without `--backend`: the configured backend's, else the default's."""
    plugin = plugin_for(settings) if settings is not None else None
    installer = plugin.installer if plugin is not None else None
    if installer is None:
        installer = DEFAULT.installer
    assert installer is not None
    return installer


def describe_backend(
    settings: Settings, host: HostPlatform, running: Backend | None = None
) -> BackendStatus:
    """The configured backend's state, read from the disk now, and from `running`, the
    backend that serves `generate` once one has run."""
    plugin = plugin_for(settings)
    if plugin is not None:
        return plugin.describe(settings, host, running)
    reason = next(p.reason for p in settings.problems if p.variable == ENV_BACKEND)
    return BackendStatus(
        id=settings.backend_name,
        available=False,
        reason=f"{ENV_BACKEND}={settings.backend_name!r} {reason}.",
        missing=[],
        install_hint=f"export {ENV_BACKEND}={DEFAULT.id}",
        model_id="",
        sample_binary=None,
        resource_path=None,
        test_only=False,
    )
