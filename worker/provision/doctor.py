"""`studio-imagegen-worker doctor`: every check, one line each, and a verdict.

The platform, sampler and resource checks are the ones `capabilities` summarises
(`locate_installation`); doctor adds what only a person asking needs: the sampler
actually starting, free disk, and the settings.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from worker.backends import DIFFUSERS_BACKEND_ID
from worker.backends.coreml_checks import Check, check_image_encoder, locate_installation
from worker.host import HostPlatform
from worker.manifest import ModelManifest, load_manifest
from worker.settings import ENV_MODEL_MANIFEST, Settings

SAMPLER_HELP_TIMEOUT_SECONDS = 20
MIN_FREE_BYTES_INSTALLED = 1 << 30
"""Room for outputs and temporary files once the bundle is in place."""
MIN_FREE_BYTES_TO_INSTALL = 5 << 30
"""The zip (about 1.1 GB), its unpacked copy, and the sampler's build."""

_MARKS = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}


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


def examine(settings: Settings, host: HostPlatform, load: bool = False) -> DoctorReport:
    """The checks of the configured backend; `load`: also load the diffusers model."""
    if settings.backend == DIFFUSERS_BACKEND_ID:
        from worker.provision.diffusers_model import diffusers_checks

        return DoctorReport((*diffusers_checks(settings, load), check_settings(settings)))
    installation = locate_installation(settings, host)
    checks = list(installation.checks)
    sampler_ok = next(c for c in checks if c.name == "sampler").status == "ok"
    if installation.sample_binary is not None and sampler_ok:
        checks.insert(2, check_sampler_starts([str(installation.sample_binary), "--help"]))
    resources_ok = next(c for c in checks if c.name == "resources").status == "ok"
    if resources_ok:
        encoder = check_image_encoder(settings.resource_path)
        # text-to-image works without it: a warning, with the fix
        checks.append(replace(encoder, status="warn") if encoder.status == "fail" else encoder)
    checks.append(check_aspect_ratios(load_manifest(settings)))
    checks.append(check_free_disk(settings.resource_path, installed=resources_ok))
    checks.append(check_settings(settings))
    return DoctorReport(tuple(checks))


def check_aspect_ratios(manifest: ModelManifest) -> Check:
    """Which ratios have their bundle; a manifest entry that disagrees with its bundle, or
    a manifest that cannot be read, fails."""
    where = f"model manifest {manifest.path}" if manifest.path else "no model manifest"
    ratios = ", ".join(
        f"{ratio} {'ok' if bundle.usable else 'missing' if not bundle.present else 'wrong'}"
        for ratio, bundle in manifest.bundles.items()
    )
    if manifest.problems:
        return Check(
            "aspect ratios",
            "fail",
            f"{where}: " + "; ".join(problem.reason for problem in manifest.problems),
            fix=f"fix the manifest ({ENV_MODEL_MANIFEST}) or the bundles it names",
        )
    missing = [ratio for ratio, bundle in manifest.bundles.items() if not bundle.present]
    if missing and manifest.path is not None:
        return Check(
            "aspect ratios",
            "warn",
            f"{where}: {ratios}.",
            fix="convert and install the bundles for " + ", ".join(missing),
        )
    return Check("aspect ratios", "ok", f"{where}: {ratios}.")


def check_sampler_starts(argv: Sequence[str]) -> Check:
    """The sampler answers `--help`: it is a program this machine can run."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=SAMPLER_HELP_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Check(
            "sampler runs",
            "fail",
            f"`{' '.join(argv)}` did not answer within {SAMPLER_HELP_TIMEOUT_SECONDS} s.",
            fix="rebuild it: studio-imagegen-worker install",
        )
    except OSError as exc:
        return Check(
            "sampler runs",
            "fail",
            f"`{' '.join(argv)}` could not start: {exc.strerror or exc}.",
            fix="rebuild it for this machine: studio-imagegen-worker install",
        )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return Check(
            "sampler runs",
            "fail",
            f"`{' '.join(argv)}` exited with code {result.returncode}: {tail[0]}",
            fix="rebuild it: studio-imagegen-worker install",
        )
    return Check("sampler runs", "ok", "`--help` answers.")


def check_free_disk(resource_path: Path, installed: bool) -> Check:
    probe = resource_path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    needed = MIN_FREE_BYTES_INSTALLED if installed else MIN_FREE_BYTES_TO_INSTALL
    detail = f"{free / (1 << 30):.1f} GiB free on the volume of {probe}"
    if free < needed:
        purpose = "to run" if installed else "to install the model"
        return Check(
            "free disk",
            "warn",
            f"{detail}; {needed / (1 << 30):.0f} GiB or more is advised {purpose}.",
            fix="free some space on that volume",
        )
    return Check("free disk", "ok", detail + ".")


def check_settings(settings: Settings) -> Check:
    if settings.problems:
        return Check(
            "settings",
            "fail",
            "; ".join(problem.describe() for problem in settings.problems),
            fix="fix or unset those variables, then restart the worker",
        )
    where = (
        f"model {settings.diffusers_model}, idle unload {settings.diffusers_idle_ms} ms"
        if settings.backend == DIFFUSERS_BACKEND_ID
        else settings.compute_units
    )
    return Check(
        "settings",
        "ok",
        f"backend {settings.backend_name}, {settings.step_count} steps, guidance "
        f"{settings.guidance_scale:g}, {settings.scheduler}, {where}.",
    )
