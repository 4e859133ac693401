"""`studio-imagegen-worker doctor`: the configured backend's checks, one line each, then
one line for each model the worker lists, the settings, and a verdict."""

from __future__ import annotations

from protocol.models import FAMILY_NAMES
from worker.backends.registry import plugin_for
from worker.catalog import list_models
from worker.checks import Check, DoctorReport, check_settings
from worker.host import HostPlatform
from worker.models import Model
from worker.settings import Settings


def examine(settings: Settings, host: HostPlatform, load: bool = False) -> DoctorReport:
    """The checks the configured backend's plug-in makes (`load`: also load its model,
    where it has one to load), each model's status, then the settings line."""
    plugin = plugin_for(settings)
    if plugin is None:  # the settings line says which name is not a backend
        return DoctorReport((check_settings(settings, ""),))
    checks = plugin.doctor_checks(settings, host, load)
    models = [model_check(model) for model in list_models(settings, host)]
    summary = check_settings(settings, plugin.settings_summary(settings))
    return DoctorReport((*checks, *models, summary))


def model_check(model: Model) -> Check:
    """One model of the menu: what it is and whether it can run. One that cannot is a
    warning: the checks above, of the configured backend, decide readiness (the default
    model's problem is theirs, with its fix)."""
    family = FAMILY_NAMES[model.family] if model.family else "family not yet known"
    width, height = model.native
    what = f"{model.id}: {family}, {width}x{height}{', the default' if model.default else ''}"
    if model.usable:
        return Check("listed model", "ok", f"{what}; ready{_editing(model)}")
    if model.default:
        return Check("listed model", "warn", f"{what}; cannot run: see the checks above")
    return Check("listed model", "warn", f"{what}; {model.problem}", fix=model.fix)


def _editing(model: Model) -> str:
    """What it offers beyond text- and image-to-image: its inpainting, ControlNets and
    LoRAs."""
    said = ""
    if model.inpainting != "none":
        said += f"; inpaints ({model.inpainting})"
    if model.controlnets:
        said += f"; ControlNets: {', '.join(net.name for net in model.controlnets)}"
    if model.loras:
        said += f"; LoRAs: {', '.join(lora.name for lora in model.loras)}"
    return said
