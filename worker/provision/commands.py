"""The `doctor` and `install` subcommands of `studio-imagegen-worker`.

Both ask the configured backend's plug-in (install: the one `--backend` names); what
they run loads only when one of them runs, and serving never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from worker.backends.registry import default_installer, installers, read_settings
from worker.checks import EXIT_INSTALL_FAILED, EXIT_NOT_READY
from worker.host import HostPlatform

INSTALL_OPTIONS = "install_options"
"""Where the parser keeps which installer each install option belongs to."""


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

    available = installers()
    install = commands.add_parser(
        "install",
        help="clone and build the sampler, download the model, verify (each step idempotent)",
        description=" ".join(installer.description for installer in available.values()),
    )
    install.add_argument(
        "--backend",
        choices=tuple(available),
        help="what to install for (default: the configured backend's, else "
        f"{default_installer(None).name})",
    )
    install.add_argument("--verify", action="store_true", help="only check; change nothing")
    owners = {
        dest: name
        for name, installer in available.items()
        for dest in installer.add_arguments(install)
    }
    install.set_defaults(**{INSTALL_OPTIONS: owners})
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

    report = examine(read_settings(os.environ), _host(args.platform), load=args.load)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.render())
    return 0 if report.ready else EXIT_NOT_READY


def run_install(args: argparse.Namespace) -> int:
    """The installer `--backend` names, else the configured backend's; an option of
    another backend's installer is a usage error."""
    settings = read_settings(os.environ)
    chosen = installers()[args.backend] if args.backend else default_installer(settings)
    owners: dict[str, str] = getattr(args, INSTALL_OPTIONS)
    for dest, owner in owners.items():
        if owner != chosen.name and getattr(args, dest, None) is not None:
            flag = "--" + dest.replace("_", "-")
            print(f"install: {flag} is for --backend {owner}", file=sys.stderr)
            return EXIT_INSTALL_FAILED
    return chosen.run(args, settings, _host(args.platform))
