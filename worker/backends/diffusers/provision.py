"""`doctor` and `install` for the diffusers backend: the extra, the model, one real load.

The download goes into the Hugging Face cache with `huggingface_hub` (its progress bars,
its resume of a partial download; `HF_ENDPOINT` and `HF_HOME` are honoured as everywhere
else). The load check starts the model host exactly as the worker does and waits for it
to say that the model is loaded, so what it verifies is what `generate` will run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from worker.backends.diffusers.checks import (
    DEFAULT_REVISION,
    EXTRA_MODULES,
    INSTALL_EXTRA,
    ModelLocation,
    locate_model,
    missing_modules,
)
from worker.backends.diffusers.host import messages
from worker.backends.diffusers.host_process import HOST_ENVIRONMENT, host_command
from worker.backends.diffusers.settings import BACKEND_ID, DEFAULT_MODEL, DiffusersSettings
from worker.backends.diffusers.variables import ENV_MODEL
from worker.checks import (
    EXIT_INSTALL_FAILED,
    EXIT_NOT_READY,
    Check,
    DoctorReport,
    check_settings,
)
from worker.host import HostPlatform
from worker.settings import ENV_BACKEND, Settings

LOAD_TIMEOUT_SECONDS = 900
"""A first load of a real model can take minutes (imports compiled, weights read)."""
ALLOW_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"]
"""A diffusers layout in safetensors: what `from_pretrained` reads, nothing else."""
IGNORE_PATTERNS = ["*.fp16.safetensors", "*.non_ema.safetensors", "*/*.bin", "*.ckpt"]


class DownloadError(Exception):
    """The model could not be downloaded; says why and what to try."""


def check_extra() -> Check:
    missing = missing_modules()
    if missing:
        return Check(
            "diffusers extra",
            "fail",
            f"not installed here (missing: {', '.join(missing)}).",
            fix=INSTALL_EXTRA,
            missing=tuple(missing),
        )
    versions = ", ".join(f"{name} {_version(name)}" for name in EXTRA_MODULES)
    return Check("diffusers extra", "ok", f"{versions}.")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def check_model(location: ModelLocation) -> Check:
    if not location.usable:
        return Check(
            "model",
            "fail",
            f"{location.problem}.",
            fix=location.fix,
            missing=(location.text,) if location.path is None else (),
        )
    side = location.native_side
    checker = "with a safety checker" if location.safety_checker else "no safety checker"
    return Check(
        "model",
        "ok",
        f"{location.label} ({location.kind}) at {location.path}: {side}x{side} native, {checker}.",
    )


def check_load(location: ModelLocation, settings: DiffusersSettings, safety: bool) -> Check:
    """Start the model host on the model, as the worker would, and wait for its verdict."""
    assert location.path is not None
    command = host_command(
        location.path, location.label, settings.device, settings.dtype, idle_ms=0, safety=safety
    )
    try:
        with tempfile.TemporaryDirectory(prefix="studio-imagegen-host-") as scratch:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,  # end of input: the host exits once loaded
                capture_output=True,
                timeout=LOAD_TIMEOUT_SECONDS,
                # As the worker starts it: its temp files (torch's caches) go with it.
                env={**os.environ, **HOST_ENVIRONMENT, "TMPDIR": scratch},
                check=False,
            )
    except subprocess.TimeoutExpired:
        return Check(
            "model loads",
            "fail",
            f"the model host did not load {location.label} within {LOAD_TIMEOUT_SECONDS} s.",
            fix="check free memory, or try a smaller dtype",
        )
    for line in result.stdout.splitlines():
        try:
            event = messages.decode_event(line)
        except ValueError:
            continue
        if isinstance(event, messages.Loaded):
            return Check(
                "model loads",
                "ok",
                f"{location.label} loaded on {event.device} ({event.dtype}) in "
                f"{event.load_ms / 1000:.1f} s.",
            )
        if isinstance(event, messages.LoadFailed):
            return Check("model loads", "fail", f"{event.reason}.", fix=event.fix)
    tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    return Check(
        "model loads",
        "fail",
        f"the model host exited with code {result.returncode} before loading: {tail[0]}",
        fix=INSTALL_EXTRA,
    )


def doctor_checks(settings: Settings, load: bool) -> list[Check]:
    """doctor's checks of the diffusers backend; the load only when asked (it takes
    seconds to minutes and the memory of the model)."""
    section = settings.section(DiffusersSettings)
    checks = [check_extra()]
    location = locate_model(section)
    checks.append(check_model(location))
    device = section.device
    checks.append(
        Check(
            "device",
            "ok",
            f"{device}"
            + (" (cuda, then mps, then cpu)" if device == "auto" else "")
            + f", dtype {section.dtype}; `doctor --load` shows where it runs.",
        )
    )
    if load and checks[0].status == "ok" and location.usable:
        checks.append(check_load(location, section, safety=not settings.disable_safety))
    return checks


def download(repo_id: str, revision: str | None, out: TextIO = sys.stderr) -> Path:
    """Download `repo_id` at `revision` into the Hugging Face cache (resuming what an
    earlier run left); the snapshot's directory."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise DownloadError(f"huggingface_hub is not installed; run: {INSTALL_EXTRA}") from exc
    print(
        f"==> downloading {repo_id} at {revision or 'main'} into the Hugging Face cache",
        file=out,
        flush=True,
    )
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=ALLOW_PATTERNS,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except Exception as exc:  # the library's reason, whichever it is
        raise DownloadError(
            f"{repo_id} could not be downloaded ({type(exc).__name__}: {exc}); check the "
            "network and the repository id, then run install again (it resumes)"
        ) from exc
    return Path(path)


def default_revision(repo_id: str) -> str | None:
    """The pinned commit of the default model; other models at their main branch."""
    return DEFAULT_REVISION if repo_id == DEFAULT_MODEL else None


def model_variable_hint(repo_id: str) -> str:
    if repo_id == DEFAULT_MODEL:
        return ""
    return f"export {ENV_MODEL}={repo_id}"


def run_install(args: argparse.Namespace, settings: Settings, host: HostPlatform) -> int:
    """Download the model (unless --verify), load it once, report as doctor does."""
    section = settings.section(DiffusersSettings)
    repo_id = args.model or (section.model if section.model_explicit else DEFAULT_MODEL)
    if not args.verify:
        try:
            download(repo_id, default_revision(repo_id))
        except DownloadError as exc:
            print(f"install: {exc}", file=sys.stderr)
            return EXIT_INSTALL_FAILED
        except KeyboardInterrupt:
            print("\ninstall: interrupted; run it again to resume the download", file=sys.stderr)
            return 130
    print(f"==> loading {repo_id} once to verify it", file=sys.stderr, flush=True)
    target = replace(
        settings.with_section(replace(section, model=repo_id, model_explicit=True)),
        backend=BACKEND_ID,
        backend_name=BACKEND_ID,
    )
    report = DoctorReport(
        (
            *doctor_checks(target, load=True),
            check_settings(target, target.section(DiffusersSettings).summary()),
        )
    )
    print(report.render())
    hint = model_variable_hint(repo_id)
    if report.ready:
        print(f"to use it: export {ENV_BACKEND}={BACKEND_ID}" + (f" and {hint}" if hint else ""))
    return 0 if report.ready else EXIT_NOT_READY
