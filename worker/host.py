"""What the worker runs on: the facts `capabilities` reports and Core ML depends on."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass

from protocol.models import PlatformInfo

MIN_MACOS = (13, 1)


@dataclass(frozen=True)
class HostPlatform:
    system: str
    """`platform.system()`: Darwin, Linux, Windows."""
    os_version: str
    """The macOS product version on a Mac (e.g. 14.5), else the kernel release."""
    machine: str
    python: str

    @classmethod
    def current(cls) -> HostPlatform:
        mac_version = platform.mac_ver()[0] if sys.platform == "darwin" else ""
        return cls(
            system=platform.system(),
            os_version=mac_version or platform.release(),
            machine=platform.machine(),
            python=platform.python_version(),
        )

    @property
    def is_macos(self) -> bool:
        return self.system == "Darwin"

    @property
    def version(self) -> tuple[int, ...]:
        """The OS version as numbers: (14, 5) for macOS 14.5."""
        return _version_tuple(self.os_version)

    @property
    def runs_core_ml(self) -> bool:
        """macOS 13.1 or later, where StableDiffusionSample can run."""
        return self.is_macos and _version_tuple(self.os_version) >= MIN_MACOS

    def describe(self) -> PlatformInfo:
        return PlatformInfo(
            os=self.system, os_version=self.os_version, machine=self.machine, python=self.python
        )


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)
