"""`doctor` and `install` for the diffusers backend: the extra, the model, one real load.

The download goes into the Hugging Face cache with `huggingface_hub` (its progress bars,
its resume of a partial download; `HF_ENDPOINT` and `HF_HOME` are honoured as everywhere
else). The load check starts the model host exactly as the worker does and waits for it
to say that the model is loaded, so what it verifies is what `generate` will run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from worker.backends.diffusers.checks import (
    DEFAULT_REVISION,
    EXTRA_MODULES,
    ModelLocation,
    install_extra_hint,
    locate_model,
    missing_modules,
)
from worker.backends.diffusers.host import messages
from worker.backends.diffusers.host_process import HOST_ENVIRONMENT, host_command
from worker.backends.diffusers.settings import BACKEND_ID, DEFAULT_MODEL, DiffusersSettings
from worker.backends.diffusers.variables import ENV_MODEL, INSTALL_MODEL
from worker.checks import (
    EXIT_INSTALL_FAILED,
    EXIT_NOT_READY,
    Check,
    DoctorReport,
    check_settings,
)
from worker.host import HostPlatform
from worker.scratch import PREFIX
from worker.settings import ENV_BACKEND, Settings

LOAD_TIMEOUT_SECONDS = 900
"""A first load of a real model can take minutes (imports compiled, weights read)."""
ALLOW_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"]
"""A diffusers layout in safetensors: what `from_pretrained` reads, nothing else."""
CONFIG_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model"]
"""Its configuration alone (as the model host's `single_file_config` reads it)."""
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
            fix=install_extra_hint(),
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


TRIAL_SIDE = 64
"""The trial image: a real step through every component, at the smallest size."""


def check_load(location: ModelLocation, settings: DiffusersSettings, safety: bool) -> Check:
    """Start the model host on the model, as the worker would, and have it render one
    step of a small image: a model that loads can still fail on its first job (a broken
    tokenizer does), and only a render shows it."""
    assert location.path is not None
    command = host_command(
        location.path,
        location.label,
        settings.device,
        settings.dtype,
        idle_ms=0,
        safety=safety,
        family=location.family,
        refiner=location.refiner,
    )
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}host-{os.getpid()}-") as scratch:
        trial = messages.HostJob(
            prompt="a red fox in snow",
            negative_prompt="",
            seed=1,
            count=1,
            width=TRIAL_SIDE,
            height=TRIAL_SIDE,
            strength=None,
            preview_every=0,
            sampling=messages.HostSampling(
                step_count=1, guidance_scale=7.5, scheduler="euler", reduce_memory=False
            ),
            output_dir=scratch,
        )
        # As the worker starts it: its temp files (torch's caches) go with it.
        env = {**os.environ, **HOST_ENVIRONMENT, "TMPDIR": scratch}
        events, stderr, code = _run_trial(command, env, trial)
    loaded = next((e for e in events if isinstance(e, messages.Loaded)), None)
    for event in events:
        if isinstance(event, messages.LoadFailed):
            return Check("model loads", "fail", f"{event.reason}.", fix=event.fix)
        if isinstance(event, messages.Failed) and loaded is not None:
            return Check(
                "model loads",
                "fail",
                f"{location.label} loaded, but rendering one step failed: {event.reason}.",
                fix="its files may be damaged or not all of one model: download it again "
                f"({INSTALL_MODEL} resumes a hub model)",
            )
        if isinstance(event, messages.Done) and loaded is not None:
            return Check(
                "model loads",
                "ok",
                f"{location.label} loaded on {loaded.device} ({loaded.dtype}) in "
                f"{loaded.load_ms / 1000:.1f} s and rendered a {TRIAL_SIDE}x{TRIAL_SIDE} "
                "image in one step.",
            )
    if code is None:
        return Check(
            "model loads",
            "fail",
            f"the model host did not load {location.label} and render one step within "
            f"{LOAD_TIMEOUT_SECONDS} s.",
            fix="check free memory, or try a smaller dtype",
        )
    tail = stderr.strip().splitlines()[-1:] or ["no output"]
    when = "after loading" if loaded is not None else "before loading"
    return Check(
        "model loads",
        "fail",
        f"the model host exited with code {code} {when}: {tail[0]}",
        fix=install_extra_hint(),
    )


def _run_trial(
    command: list[str], env: dict[str, str], job: messages.HostJob
) -> tuple[list[messages.Event], str, int | None]:
    """The host's events for one job (its input stays open until the job ends: end of
    input stops a job), its stderr, and its exit code (None: it ran out of time)."""
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    log = process.stderr
    stderr: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr.append(log.read()), daemon=True)
    drain.start()
    timer = threading.Timer(LOAD_TIMEOUT_SECONDS, process.kill)
    timer.start()
    events: list[messages.Event] = []
    try:
        process.stdin.write(messages.encode(messages.Generate(job=job)))
        process.stdin.flush()
        for line in process.stdout:
            try:
                event = messages.decode_event(line)
            except ValueError:
                continue
            events.append(event)
            if isinstance(event, messages.LoadFailed | messages.JobEnding):
                break
    except OSError:
        pass  # the host died; its exit code and stderr say how
    finally:
        with contextlib.suppress(OSError):
            process.stdin.close()  # end of input: the host exits
        code = process.wait()
        drain.join()
        timed_out = not timer.is_alive()
        timer.cancel()
        process.stdout.close()
        log.close()
    return events, b"".join(stderr).decode("utf-8", "replace"), None if timed_out else code


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


def download(
    repo_id: str,
    revision: str | None,
    out: TextIO = sys.stderr,
    allow_patterns: list[str] = ALLOW_PATTERNS,
) -> Path:
    """Download `repo_id` at `revision` into the Hugging Face cache (resuming what an
    earlier run left); the snapshot's directory."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise DownloadError(
            f"huggingface_hub is not installed; run: {install_extra_hint()}"
        ) from exc
    print(
        f"==> downloading {repo_id} at {revision or 'main'} into the Hugging Face cache",
        file=out,
        flush=True,
    )
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=allow_patterns,
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
    if args.config_only:
        return _install_config(repo_id)
    if not args.verify:
        fetched = _fetch(repo_id)
        if isinstance(fetched, int):
            return fetched
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


def _fetch(repo_id: str, patterns: list[str] = ALLOW_PATTERNS) -> Path | int:
    """The repository (or the files of it `patterns` match) in the cache at its pinned
    revision, or the exit code of a download that failed or was interrupted, said why."""
    try:
        return download(repo_id, default_revision(repo_id), allow_patterns=patterns)
    except DownloadError as exc:
        print(f"install: {exc}", file=sys.stderr)
        return EXIT_INSTALL_FAILED
    except KeyboardInterrupt:
        print("\ninstall: interrupted; run it again to resume the download", file=sys.stderr)
        return 130


def _install_config(repo_id: str) -> int:
    """`--config-only`: the repository's configuration, for the single-file checkpoints
    of its family."""
    path = _fetch(repo_id, CONFIG_PATTERNS)
    if isinstance(path, int):
        return path
    print(
        f"the configuration of {repo_id} is in {path}: single-file checkpoints of its "
        "family now load without a network"
    )
    return 0
