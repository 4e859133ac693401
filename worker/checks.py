"""The verdicts that `doctor`, `install` and `capabilities` share: one `Check` per thing
looked at, and a `DoctorReport` of them that says ready or not."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from worker.settings import Settings

CheckStatus = Literal["ok", "warn", "fail"]
EXIT_NOT_READY = 1
"""What `doctor` and `install` exit with when a check failed."""
EXIT_INSTALL_FAILED = 2
"""What `install` exits with when a step of it failed (or cannot run here)."""
_MARKS = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}


@dataclass(frozen=True)
class Check:
    """One thing looked at: its verdict, what was found, and the command that fixes it."""

    name: str
    status: CheckStatus
    detail: str
    fix: str = ""
    by_hand: str = ""
    """The steps `fix` takes, for a person who would rather run them one by one."""
    missing: tuple[str, ...] = ()

    @property
    def fix_text(self) -> str:
        return self.fix + (f" (or by hand: {self.by_hand})" if self.by_hand else "")


@dataclass(frozen=True)
class DoctorReport:
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "checks": [{**asdict(check), "missing": list(check.missing)} for check in self.checks],
        }

    def render(self) -> str:
        width = max(len(check.name) for check in self.checks)
        lines = []
        for check in self.checks:
            lines.append(f"{_MARKS[check.status]} {check.name:<{width}}  {check.detail}")
            if check.fix and check.status != "ok":
                lines.append(f"{'':>6} {'':<{width}}  fix: {check.fix_text}")
        failed = [check.name for check in self.checks if check.status == "fail"]
        lines.append(
            "ready: the local provider can generate images"
            if self.ready
            else f"not ready: {', '.join(failed)} failed"
        )
        return "\n".join(lines)


def check_settings(settings: Settings, backend_summary: str) -> Check:
    """The settings line: every unusable value, or what the backend runs with."""
    if settings.problems:
        return Check(
            "settings",
            "fail",
            "; ".join(problem.describe() for problem in settings.problems),
            fix="fix or unset those variables, then restart the worker",
        )
    return Check(
        "settings",
        "ok",
        f"backend {settings.backend_name}, {settings.step_count} steps, guidance "
        f"{settings.guidance_scale:g}, {settings.scheduler}, {backend_summary}.",
    )
