"""Every model the worker can run, across the backends, and the one a request asks for.

Each backend's plug-in lists its own models, the configured one first; that one of the
configured backend is the default (what a `generate` without `model` runs, exactly as
before there was a choice). The test-only mock is listed only when it is configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from protocol.errors import BackendUnavailableData, UnsupportedFeatureData
from worker.backends.registry import PLUGINS, plugin_for
from worker.errors import BackendUnavailable, UnsupportedFeature
from worker.host import HostPlatform
from worker.models import Model
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.backends.base import Backend


def list_models(
    settings: Settings, host: HostPlatform, running: Mapping[str, Backend] | None = None
) -> list[Model]:
    """Every model of every backend, from the disk now; `running`: the backends jobs have
    loaded, by id (what they hold in memory)."""
    configured = plugin_for(settings)
    running = running or {}
    models: list[Model] = []
    for plugin in PLUGINS:
        if plugin.test_only and plugin is not configured:
            continue
        found = plugin.models(settings, host, running.get(plugin.id))
        if plugin is configured and found:
            found = [replace(found[0], default=True), *found[1:]]
        models += found
    return models


def default_model(models: list[Model]) -> Model | None:
    return next((model for model in models if model.default), None)


def choose_model(models: list[Model], requested: str | None) -> Model:
    """The model a request names, or the default: -32001 for an id that is no model here,
    -32002 for one that cannot run now (each naming the ids that can). The default is
    taken as it is; its backend says what is missing, as it always has."""
    if requested is None:
        chosen = default_model(models)
        assert chosen is not None, "a configured backend lists its model first"
        return chosen
    usable = [model.id for model in models if model.usable]
    listed = ", ".join(usable) or "none"
    chosen = next((model for model in models if model.id == requested), None)
    if chosen is None:
        raise UnsupportedFeature(
            f"Unsupported feature: model {requested!r} is not one of this worker's models; "
            f"the usable ones are {listed} (capabilities.models lists every one).",
            UnsupportedFeatureData(feature="model", supported=usable),
        )
    if not chosen.usable:
        raise BackendUnavailable(
            f"Model {requested!r} cannot run now: {chosen.problem.rstrip('.')}. To fix: "
            f"{chosen.fix.rstrip('.')}. The usable models are {listed}.",
            BackendUnavailableData(
                backend=chosen.backend,
                reason=chosen.problem,
                missing=[],
                install_hint=chosen.fix,
            ),
        )
    return chosen
