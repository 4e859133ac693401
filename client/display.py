"""What a person sees: a progress bar, a capabilities summary, the model menu, an error
with its hint."""

from __future__ import annotations

from typing import Any, TextIO

from protocol.errors import ErrorCode
from protocol.models import FAMILY_NAMES, CapabilitiesResult, ProgressParams
from worker.status_line import StatusLine, bar
from worker.text import terminal_safe

BAR_WIDTH = 24


def progress_bar(progress: ProgressParams) -> str:
    """One line: phase, bar, step i/M, steps/s and ETA when known, the worker's message."""
    parts = [f"{progress.phase:<8}", bar(progress.fraction, BAR_WIDTH)]
    if progress.phase == "queued" and progress.queue_position is not None:
        parts.append(f"position {progress.queue_position}")
    elif progress.total_steps:
        parts.append(f"{progress.step:>3}/{progress.total_steps}")
    if progress.steps_per_second:
        parts.append(f"{progress.steps_per_second:.2f} step/s")
    if progress.eta_ms is not None:
        seconds = round(progress.eta_ms / 1000)
        parts.append(f"ETA {seconds // 60}:{seconds % 60:02d}")
    parts.append(progress.message)
    return "  ".join(parts)


class ProgressDisplay:
    """A job's progress on one status line."""

    def __init__(self, stream: TextIO) -> None:
        self._line = StatusLine(stream)

    def update(self, progress: ProgressParams) -> None:
        self._line.show(terminal_safe(progress_bar(progress)))

    def log(self, line: str) -> None:
        """A line the worker logged, above the bar rather than through it."""
        self._line.above(terminal_safe(line))

    def finish(self) -> None:
        self._line.finish()


def capabilities_summary(caps: CapabilitiesResult) -> str:
    backend = caps.backend
    state = "available" if backend.available else "NOT available"
    test_only = " (test only)" if backend.test_only else ""
    lines = [f"Backend    {backend.id}{test_only}: {state}", f"           {backend.reason}"]
    if backend.missing:
        lines.append("Missing    " + "\n           ".join(backend.missing))
    if backend.install_hint:
        lines.append(f"Fix        {backend.install_hint}")
    lines.append(f"Model      {backend.model_id or '-'}")
    usable = sum(model.usable for model in caps.models)
    lines.append(
        f"Models     {len(caps.models)} listed, {usable} can run, default "
        f"{caps.default_model or '-'} (studio-imagegen models)"
    )
    host = backend.model_host
    if host is not None:
        if host.loaded:
            state = f"loaded on {host.device} ({host.dtype}), pid {host.pid}"
        else:
            state = f"not loaded (device {host.device}, dtype {host.dtype})"
        last = f"{host.last_load_ms / 1000:.1f} s" if host.last_load_ms is not None else "-"
        idle = f"after {host.idle_unload_ms / 1000:g} s idle" if host.idle_unload_ms else "never"
        lines.append(f"Model host {state} · last load {last} · unloads {idle}")
        lines.append(f"Model path {backend.resource_path or '-'}")
    elif backend.sample_binary or backend.resource_path:
        lines.append(f"Sampler    {backend.sample_binary or '-'}")
        lines.append(f"Resources  {backend.resource_path or '-'}")
    limits, features, defaults = caps.limits, caps.features, caps.defaults
    lines.append(
        f"Limits     images 1..{limits.max_image_count} · steps {limits.step_count.min}.."
        f"{limits.step_count.max} · guidance {limits.guidance_scale.min:g}.."
        f"{limits.guidance_scale.max:g} · timeout {limits.timeout_ms.min}.."
        f"{limits.timeout_ms.max} ms · queue {limits.max_queue} · concurrent "
        f"{limits.max_concurrency}"
    )
    lines.append(
        f"Features   text-to-image {_yes(features.text_to_image)} · image-to-image "
        f"{_yes(features.image_to_image)} · negative prompt {_yes(features.negative_prompt)} · "
        f"ratios {', '.join(features.aspect_ratios)} · progress {_yes(features.progress)} · "
        f"cancel {_yes(features.cancel)}"
    )
    lines.append(
        f"           schedulers {', '.join(features.schedulers)} · compute units "
        f"{', '.join(features.compute_units) or '- (not Core ML)'}"
    )
    lines.append(
        f"Defaults   {defaults.step_count} steps · guidance {defaults.guidance_scale:g} · "
        f"{defaults.scheduler} · {defaults.compute_units} · safety checker "
        f"{'off' if defaults.disable_safety else 'on'} · reduce memory "
        f"{_yes(defaults.reduce_memory)} · timeout {defaults.timeout_ms} ms"
    )
    lines.append(
        "Quality    "
        + " · ".join(
            f"{p.name} {p.step_count} steps, guidance {p.guidance_scale:g}"
            for p in features.quality_presets
        )
    )
    for problem in caps.config_errors:
        lines.append(f"Config     {problem.variable}={problem.value!r} {problem.reason}")
    platform = caps.platform
    lines.append(
        f"Worker     {caps.worker.name} {caps.worker.version} · protocol {caps.protocol_version}"
        f" · {platform.os} {platform.os_version} ({platform.machine}) · Python {platform.python}"
    )
    return "\n".join(lines)


def models_table(caps: CapabilitiesResult) -> str:
    """The model menu: one line per model (`*` the default, `-` one that cannot run now,
    with why and the fix below it), as `--model` takes their ids."""
    if not caps.models:
        return "No models."
    width = max(len(model.id) for model in caps.models)
    lines = []
    for model in caps.models:
        mark = "*" if model.default else " " if model.usable else "-"
        family = FAMILY_NAMES[model.family] if model.family else "family unknown"
        traits = [family, f"{model.native_width}x{model.native_height}"]
        if model.variant == "refiner":
            traits.append("refiner")
        if model.loaded:
            traits.append("loaded")
        lines.append(f"{mark} {model.id:<{width}}  {' · '.join(traits)}")
        if not model.usable:
            lines.append(f"  {'':<{width}}  cannot run: {model.problem}")
            if model.fix:
                lines.append(f"  {'':<{width}}  fix: {model.fix}")
    lines.append("* the default (what a request without --model runs); - cannot run now")
    return "\n".join(lines)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def error_report(error: dict[str, Any]) -> str:
    """`NAME (code): message`, then what `data` says to do about it."""
    code = error.get("code")
    known = ErrorCode.from_code(code)
    name = known.name if known else "UNKNOWN"
    lines = [f"error {name} ({code}): {error.get('message', '')}"]
    data = error.get("data")
    if isinstance(data, dict):
        for field_error in data.get("errors", []):
            lines.append(f"  {field_error.get('field')}: {field_error.get('message')}")
        if data.get("missing"):
            lines.append("  missing: " + ", ".join(map(str, data["missing"])))
        if data.get("installHint"):
            lines.append(f"  fix: {data['installHint']}")
        if "supported" in data:
            lines.append(f"  supported: {', '.join(data['supported']) or 'none'}")
        if data.get("stderr"):
            tail = str(data["stderr"]).strip().splitlines()[-5:]
            lines.append("  sampler stderr:\n    " + "\n    ".join(tail))
        if "variable" in data:
            lines.append(f"  {data['variable']}={data.get('value')!r}: {data.get('reason')}")
    return "\n".join(lines)
