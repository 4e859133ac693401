"""The worker's settings: read once from the `SYSTEMSCULPT_LOCAL_*` environment variables.

A value that cannot be used never raises: the setting keeps its default and the problem
is recorded, so the worker can report it at start, in `capabilities`, and in `generate`
(which refuses to run, -32007, while any problem stands). `EnvironmentReader` is the one
reader of environment variables, for the installer's too, so every bad value is
reported the same way.

What every backend shares is read here: the sampling defaults a request may override,
the queue, the limits of the transport. Each backend reads its own variables into a
section of its own (`Settings.section`); `worker.backends.registry.read_settings` puts
the two together, so this module names no backend.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from protocol.errors import ConfigInvalidData
from protocol.models import (
    COMPUTE_UNITS,
    GUIDANCE_SCALE_MAX,
    GUIDANCE_SCALE_MIN,
    STEP_COUNT_MAX,
    STEP_COUNT_MIN,
    TIMEOUT_MS_MAX,
    ComputeUnits,
    Defaults,
    Scheduler,
)

ENV_BACKEND = "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND"
ENV_LOG_LEVEL = "SYSTEMSCULPT_LOCAL_IMAGEGEN_LOG_LEVEL"
ENV_MAX_REQUEST_BYTES = "SYSTEMSCULPT_LOCAL_IMAGEGEN_MAX_REQUEST_BYTES"
ENV_COMPUTE_UNITS = "SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS"
ENV_STEP_COUNT = "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT"
ENV_GUIDANCE_SCALE = "SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE"
ENV_SCHEDULER = "SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER"
ENV_DISABLE_SAFETY = "SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY"
ENV_REDUCE_MEMORY = "SYSTEMSCULPT_LOCAL_DIFFUSION_REDUCE_MEMORY"
ENV_TIMEOUT_MS = "SYSTEMSCULPT_LOCAL_DIFFUSION_TIMEOUT_MS"
ENV_MAX_CONCURRENCY = "SYSTEMSCULPT_LOCAL_DIFFUSION_MAX_CONCURRENCY"
ENV_MAX_QUEUE = "SYSTEMSCULPT_LOCAL_DIFFUSION_MAX_QUEUE"
ENV_KILL_GRACE_MS = "SYSTEMSCULPT_LOCAL_DIFFUSION_KILL_GRACE_MS"

SAMPLING_VARIABLES = {
    "step_count": ENV_STEP_COUNT,
    "guidance_scale": ENV_GUIDANCE_SCALE,
    "scheduler": ENV_SCHEDULER,
    "compute_units": ENV_COMPUTE_UNITS,
    "disable_safety": ENV_DISABLE_SAFETY,
    "reduce_memory": ENV_REDUCE_MEMORY,
    "timeout_ms": ENV_TIMEOUT_MS,
}
"""Each sampling parameter (a field of `SamplingParameters`) and the variable that sets it."""

DEFAULT_STEP_COUNT = 20
DEFAULT_GUIDANCE_SCALE = 7.5
DEFAULT_TIMEOUT_MS = 480_000
ENV_TIMEOUT_MS_MIN = 30_000
DEFAULT_COMPUTE_UNITS: ComputeUnits = "cpuAndNeuralEngine"
DEFAULT_SCHEDULER: Scheduler = "pndm"
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONCURRENCY = 1
DEFAULT_MAX_QUEUE = 32
DEFAULT_KILL_GRACE_MS = 2_000
LOG_LEVELS = ("debug", "info", "warning", "error")

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})

T = TypeVar("T")
Section = TypeVar("Section")
Number = TypeVar("Number", int, float)


@dataclass(frozen=True)
class Settings:
    """Everything the worker takes from its environment, already checked."""

    backend: str | None
    """The configured backend's id; None when the name is not one the worker knows."""
    backend_name: str
    compute_units: ComputeUnits = DEFAULT_COMPUTE_UNITS
    step_count: int = DEFAULT_STEP_COUNT
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    scheduler: Scheduler = DEFAULT_SCHEDULER
    disable_safety: bool = True
    reduce_memory: bool = False
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_queue: int = DEFAULT_MAX_QUEUE
    kill_grace_ms: int = DEFAULT_KILL_GRACE_MS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    log_level: str = "info"
    sections: tuple[object, ...] = ()
    """Each backend's own settings (the variables only it reads), one object a backend."""
    pinned: frozenset[str] = frozenset()
    """The sampling parameters (by field name) that the environment set."""
    problems: tuple[ConfigInvalidData, ...] = ()
    """Values that could not be used; the setting kept its default, and `generate` answers
    -32007 until they are fixed."""
    adjustments: tuple[str, ...] = ()
    """Values that were usable after clamping, described for the log."""

    def sampling_defaults(self) -> Defaults:
        """What a job uses for each sampling parameter its request leaves out."""
        return Defaults.model_validate(
            {name: getattr(self, name) for name in SAMPLING_VARIABLES}, by_name=True
        )

    def section(self, kind: type[Section]) -> Section:
        """The section of type `kind`: a backend's own settings."""
        for section in self.sections:
            if isinstance(section, kind):
                return section
        raise LookupError(f"no {kind.__name__} in these settings")

    def with_section(self, section: object) -> Settings:
        """These settings with `section` in place of the one of its type."""
        others = tuple(s for s in self.sections if type(s) is not type(section))
        return replace(self, sections=(*others, section))

    @classmethod
    def read(
        cls,
        reader: EnvironmentReader,
        *,
        backend: str | None,
        backend_name: str,
        schedulers: tuple[Scheduler, ...],
        read_sections: Callable[[EnvironmentReader], tuple[object, ...]] = lambda _: (),
    ) -> Settings:
        """The shared variables, then the backends' sections, from the same reader (so
        their problems are reported in that order). The environment may pin only a
        scheduler of `schedulers`, the configured backend's."""
        return cls(
            backend=backend,
            backend_name=backend_name,
            compute_units=reader.choice(ENV_COMPUTE_UNITS, COMPUTE_UNITS, DEFAULT_COMPUTE_UNITS),
            step_count=reader.number(
                ENV_STEP_COUNT, int, STEP_COUNT_MIN, STEP_COUNT_MAX, DEFAULT_STEP_COUNT
            ),
            guidance_scale=reader.number(
                ENV_GUIDANCE_SCALE,
                float,
                GUIDANCE_SCALE_MIN,
                GUIDANCE_SCALE_MAX,
                DEFAULT_GUIDANCE_SCALE,
            ),
            scheduler=reader.choice(ENV_SCHEDULER, schedulers, DEFAULT_SCHEDULER),
            disable_safety=reader.boolean(ENV_DISABLE_SAFETY, True),
            reduce_memory=reader.boolean(ENV_REDUCE_MEMORY, False),
            timeout_ms=reader.number(
                ENV_TIMEOUT_MS, int, ENV_TIMEOUT_MS_MIN, TIMEOUT_MS_MAX, DEFAULT_TIMEOUT_MS
            ),
            max_concurrency=reader.number(ENV_MAX_CONCURRENCY, int, 1, 16, DEFAULT_MAX_CONCURRENCY),
            max_queue=reader.number(ENV_MAX_QUEUE, int, 0, 10_000, DEFAULT_MAX_QUEUE),
            kill_grace_ms=reader.number(ENV_KILL_GRACE_MS, int, 0, 60_000, DEFAULT_KILL_GRACE_MS),
            max_request_bytes=reader.number(
                ENV_MAX_REQUEST_BYTES, int, 1024, 1024**3, DEFAULT_MAX_REQUEST_BYTES
            ),
            log_level=reader.choice(ENV_LOG_LEVEL, LOG_LEVELS, "info"),
            # Read after the shared variables (keyword arguments are evaluated in order),
            # so that problems are reported in the order a person reads the settings.
            sections=read_sections(reader),
            pinned=frozenset(
                name
                for name, variable in SAMPLING_VARIABLES.items()
                if reader.raw(variable) and not reader.has_problem(variable)
            ),
            problems=tuple(reader.problems),
            adjustments=tuple(reader.adjustments),
        )


@dataclass
class EnvironmentReader:
    """Reads variables, keeps the default for an unusable value and records why."""

    environ: Mapping[str, str]
    problems: list[ConfigInvalidData] = field(default_factory=list)
    adjustments: list[str] = field(default_factory=list)

    def raw(self, variable: str) -> str:
        return self.environ.get(variable, "").strip()

    def text(self, variable: str, default: str) -> str:
        return self.raw(variable) or default

    def command(self, variable: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A command and its arguments, split as a POSIX shell would."""
        text = self.raw(variable)
        if not text:
            return default
        try:
            words = tuple(shlex.split(text))
        except ValueError as exc:
            self.problem(variable, f"is not a command line ({exc}); quote it as in a shell")
            return default
        if not words:
            self.problem(variable, "is empty after splitting; name a command")
            return default
        return words

    def pattern(self, variable: str, pattern: re.Pattern[str], default: str, spelled: str) -> str:
        """A value of a fixed form (case ignored), such as a device name."""
        text = self.raw(variable)
        if not text:
            return default
        if not pattern.fullmatch(text.lower()):
            self.problem(variable, f"must be {spelled}; unset it for the default {default}")
            return default
        return text

    def hex_digest(self, variable: str, length: int, default: T) -> str | T:
        """A checksum written in hexadecimal, `length` digits."""
        text = self.raw(variable).lower()
        if not text:
            return default
        if len(text) != length or any(c not in "0123456789abcdef" for c in text):
            self.problem(variable, f"is not {length} hexadecimal digits")
            return default
        return text

    def has_problem(self, variable: str) -> bool:
        return any(problem.variable == variable for problem in self.problems)

    def problem(self, variable: str, reason: str) -> None:
        value = self.environ.get(variable, "")
        self.problems.append(ConfigInvalidData(variable=variable, value=value, reason=reason))

    def choice(self, variable: str, allowed: tuple[T, ...], default: T) -> T:
        text = self.raw(variable)
        if not text:
            return default
        for option in allowed:
            if str(option).lower() == text.lower():
                return option
        names = ", ".join(str(option) for option in allowed)
        self.problem(variable, f"must be one of {names}; unset it for the default {default}")
        return default

    def boolean(self, variable: str, default: bool) -> bool:
        text = self.raw(variable).lower()
        if not text:
            return default
        if text in _TRUE_WORDS:
            return True
        if text in _FALSE_WORDS:
            return False
        word = "true" if default else "false"
        self.problem(
            variable, f"is not a boolean; use 1/true/yes/on or 0/false/no/off (default {word})"
        )
        return default

    def number(
        self,
        variable: str,
        kind: Callable[[float], Number],
        low: Number,
        high: Number,
        default: Number,
    ) -> Number:
        text = self.raw(variable)
        if not text:
            return default
        what = "a whole number" if kind is int else "a number"
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            self.problem(
                variable, f"is not {what}; use {what} from {low} to {high} (default {default})"
            )
            return default
        number = kind(math.floor(value) if kind is int else value)
        clamped = min(max(number, low), high)
        if clamped != number:
            self.adjustments.append(f"{variable}={text} is outside {low}..{high}; using {clamped}")
        return clamped
