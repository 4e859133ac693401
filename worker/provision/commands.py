"""The `doctor` and `install` subcommands of `studio-imagegen-worker`.

Their modules load only when one of them runs; serving never imports them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from worker.backends import DIFFUSERS_BACKEND_ID
from worker.host import HostPlatform
from worker.settings import DEFAULT_DIFFUSERS_MODEL, Settings

EXIT_NOT_READY = 1
EXIT_INSTALL_FAILED = 2


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = commands.add_parser(
        "doctor", help="check this machine, one line per check, and say ready or not"
    )
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.add_argument(
        "--load",
        action="store_true",
        help="diffusers backend: also load the model once, in the model host (takes the "
        "model's memory for a moment)",
    )
    _add_platform_option(doctor)

    install = commands.add_parser(
        "install",
        help="clone and build the sampler, download the model, verify (each step idempotent)",
        description="Core ML: every step is skipped when already done. Commands and addresses "
        "can also be set with SYSTEMSCULPT_LOCAL_INSTALL_{PREFIX,MODELS_DIR,GIT,SWIFT,"
        "REPOSITORY_URL,MODEL_URL,MODEL_SIZE,MODEL_SHA256}. diffusers: downloads the model into "
        "the Hugging Face cache (resumable; HF_ENDPOINT and HF_HOME apply), then loads it once.",
    )
    install.add_argument(
        "--backend",
        choices=("coreml", "diffusers"),
        help="what to install for (default: the configured backend, else coreml)",
    )
    install.add_argument(
        "--model",
        metavar="REPO_ID",
        help=f"diffusers: the hub repository to download (default: {DEFAULT_DIFFUSERS_MODEL} at "
        "a pinned revision)",
    )
    install.add_argument("--verify", action="store_true", help="only check; change nothing")
    install.add_argument("--prefix", type=Path, help="where to clone apple/ml-stable-diffusion")
    install.add_argument("--models-dir", type=Path, help="where to unpack the model bundle")
    install.add_argument("--git", help="the git command (default: git)")
    install.add_argument("--swift", help="the swift command (default: swift)")
    install.add_argument("--repository-url", help="where to clone the sampler from")
    install.add_argument("--model-url", help="where to download the bundle zip from")
    install.add_argument(
        "--model-size", type=int, help="override the pinned size of the bundle zip, in bytes"
    )
    install.add_argument("--model-sha256", help="override the pinned SHA-256 of the bundle zip")
    _add_platform_option(install)


def _add_platform_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--platform",
        metavar="OS:VERSION:MACHINE",
        help="answer for this platform instead of the real one, e.g. macos:14.5:arm64 "
        "(for testing off a Mac)",
    )


def _host(spec: str | None) -> HostPlatform:
    current = HostPlatform.current()
    if not spec:
        return current
    try:
        system, version, machine = spec.split(":")
    except ValueError:
        raise SystemExit(  # noqa: B904 -- argparse-style usage error, no traceback wanted
            f"--platform takes OS:VERSION:MACHINE, e.g. macos:14.5:arm64; not {spec!r}"
        )
    names = {"macos": "Darwin", "darwin": "Darwin", "linux": "Linux", "windows": "Windows"}
    return HostPlatform(names.get(system.lower(), system), version, machine, current.python)


def run_doctor(args: argparse.Namespace) -> int:
    from worker.provision.doctor import examine

    report = examine(Settings.from_environ(os.environ), _host(args.platform), load=args.load)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.render())
    return 0 if report.ready else EXIT_NOT_READY


def run_install(args: argparse.Namespace) -> int:
    settings = Settings.from_environ(os.environ)
    backend = args.backend or (
        "diffusers" if settings.backend == DIFFUSERS_BACKEND_ID else "coreml"
    )
    if backend == "diffusers":
        return _install_diffusers(settings, args)
    if args.model:
        print("install: --model is for --backend diffusers", file=sys.stderr)
        return EXIT_INSTALL_FAILED
    from worker.provision.install import Installer, InstallError, InstallPlan

    home = Path.home()
    try:
        plan = InstallPlan.defaults(home, os.environ)
    except InstallError as exc:
        print(f"install: {exc}", file=sys.stderr)
        return EXIT_INSTALL_FAILED
    overrides = {
        "checkout": args.prefix and args.prefix.expanduser().resolve(),
        "models_dir": args.models_dir and args.models_dir.expanduser().resolve(),
        "git": args.git and tuple(args.git.split()),
        "swift": args.swift and tuple(args.swift.split()),
        "repository_url": args.repository_url,
        "archive_url": args.model_url,
        "archive_size": args.model_size,
        "archive_sha256": args.model_sha256,
    }
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    installer = Installer(plan, settings, _host(args.platform), home)
    try:
        report = installer.run(verify_only=args.verify)
    except InstallError as exc:
        print(f"install: {exc}", file=sys.stderr)
        return EXIT_INSTALL_FAILED
    except KeyboardInterrupt:
        print("\ninstall: interrupted; run it again to continue where it stopped", file=sys.stderr)
        return 130
    return 0 if report.ready else EXIT_NOT_READY


def _install_diffusers(settings: Settings, args: argparse.Namespace) -> int:
    """Download the model (unless --verify), load it once, report as doctor does."""
    from worker.provision.diffusers_model import (
        DownloadError,
        default_revision,
        download,
        model_variable_hint,
    )
    from worker.provision.doctor import examine

    repo_id = args.model or (
        settings.diffusers_model if settings.diffusers_model_explicit else DEFAULT_DIFFUSERS_MODEL
    )
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
        settings,
        backend=DIFFUSERS_BACKEND_ID,
        diffusers_model=repo_id,
        diffusers_model_explicit=True,
    )
    report = examine(target, _host(args.platform), load=True)
    print(report.render())
    hint = model_variable_hint(repo_id)
    if report.ready:
        print(
            "to use it: export SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=diffusers"
            + (f" and {hint}" if hint else "")
        )
    return 0 if report.ready else EXIT_NOT_READY
