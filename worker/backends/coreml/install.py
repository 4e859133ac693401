"""`studio-imagegen-worker install`: from nothing to a working Core ML provider.

Four idempotent steps, each announced and skipped when already done: clone
apple/ml-stable-diffusion at a pinned commit (one that has SDXL and SD3), build
StableDiffusionSample, download and unpack a compiled bundle (SD 2.1 unless `--bundle`
names another of `published.PUBLISHED`), verify with doctor's checks. Every command and
address can be replaced (flags or SYSTEMSCULPT_LOCAL_INSTALL_* variables), which is how it
is tested off a Mac.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from worker.backends.coreml.bundle_files import bundles_below, read_bundle
from worker.backends.coreml.bundles import load_manifest
from worker.backends.coreml.checks import doctor_checks
from worker.backends.coreml.download import DownloadError, PinMismatch, download_verified
from worker.backends.coreml.published import PUBLISHED, SD21, PublishedBundle
from worker.backends.coreml.settings import (
    BACKEND_ID,
    BUNDLE_NAME,
    DEFAULT_CHECKOUT,
    DEFAULT_MODELS_DIR,
    DEFAULT_SAMPLE_BIN,
    ENV_RESOURCE_PATH,
    ENV_SAMPLE_BIN,
    CoreMLSettings,
)
from worker.checks import EXIT_INSTALL_FAILED, EXIT_NOT_READY, DoctorReport, check_settings
from worker.host import HostPlatform
from worker.settings import EnvironmentReader, Settings
from worker.status_line import StatusLine, bar

SAMPLER_REPOSITORY_URL = "https://github.com/apple/ml-stable-diffusion"
SAMPLER_COMMIT = "e12202c1f6405b83918b58a5d097cd61e3e1f702"
"""The sampler's default branch in July 2025: SD3 landed after the last tag (1.1.1), so an
unpinned clone would not be reproducible and a tagged one would lack `--sd3`."""
MODEL_REPOSITORY = SD21.repository
MODEL_REVISION = SD21.revision
MODEL_ARCHIVE_URL = SD21.url
MODEL_ARCHIVE_SIZE = SD21.size
MODEL_ARCHIVE_SHA256 = SD21.sha256
SHA256_HEX_DIGITS = 64

BUILD_PRODUCT = "StableDiffusionSample"
BUILT_BINARY = Path(".build/release") / BUILD_PRODUCT
OUTPUT_TAIL_LINES = 30

ENV_PREFIX = "SYSTEMSCULPT_LOCAL_INSTALL_"


class InstallError(Exception):
    """A step failed; the message says which, why, and what to do."""


def find_bundle(root: Path) -> Path | None:
    """The complete bundle in `root` (itself, or the folder nearest below it that holds a
    UNet, with every file its family needs), however its zip laid it out."""
    nearest = _nearest_bundle(root)
    return nearest if nearest is not None and not read_bundle(nearest).missing else None


def _nearest_bundle(root: Path) -> Path | None:
    found = bundles_below(root)
    return min(found, key=lambda path: len(path.parts)) if found else None


@dataclass(frozen=True)
class InstallPlan:
    """Where things go and which commands and addresses to use."""

    checkout: Path
    models_dir: Path
    repository_url: str
    git: tuple[str, ...]
    swift: tuple[str, ...]
    archive_url: str
    archive_size: int
    archive_sha256: str
    retry_delay_seconds: float = 2.0
    bundle: PublishedBundle = SD21
    sampler_commit: str = SAMPLER_COMMIT

    @property
    def binary(self) -> Path:
        return self.checkout / BUILT_BINARY

    @property
    def bundle_root(self) -> Path:
        """Where the bundle's zip unpacks: a folder of the models folder named for it."""
        return self.models_dir / self.bundle.folder

    @property
    def resource_path(self) -> Path:
        """The bundle's own folder, once unpacked (SD 2.1's is known in advance)."""
        found = find_bundle(self.bundle_root)
        if found is not None or not self.bundle.default:
            return found or self.bundle_root
        return self.models_dir / BUNDLE_NAME / BUNDLE_NAME

    def for_bundle(self, name: str, environ: Mapping[str, str]) -> InstallPlan:
        """The plan for another published bundle: its own pins, unless the environment
        replaces them."""
        bundle = PUBLISHED[name]
        return replace(
            self,
            bundle=bundle,
            archive_url=environ.get(ENV_PREFIX + "MODEL_URL") or bundle.url,
            archive_size=bundle.size
            if not environ.get(ENV_PREFIX + "MODEL_SIZE")
            else self.archive_size,
            archive_sha256=bundle.sha256
            if not environ.get(ENV_PREFIX + "MODEL_SHA256")
            else self.archive_sha256,
        )

    @classmethod
    def defaults(cls, home: Path, environ: Mapping[str, str]) -> InstallPlan:
        """The plan from `SYSTEMSCULPT_LOCAL_INSTALL_*`; InstallError names every unusable
        value, as the worker reports its own settings."""
        reader = EnvironmentReader(environ)
        plan = cls(
            checkout=Path(reader.text(ENV_PREFIX + "PREFIX", str(home / DEFAULT_CHECKOUT))),
            models_dir=Path(reader.text(ENV_PREFIX + "MODELS_DIR", str(home / DEFAULT_MODELS_DIR))),
            repository_url=reader.text(ENV_PREFIX + "REPOSITORY_URL", SAMPLER_REPOSITORY_URL),
            git=reader.command(ENV_PREFIX + "GIT", ("git",)),
            swift=reader.command(ENV_PREFIX + "SWIFT", ("swift",)),
            archive_url=reader.text(ENV_PREFIX + "MODEL_URL", MODEL_ARCHIVE_URL),
            archive_size=reader.number(
                ENV_PREFIX + "MODEL_SIZE", int, 1, 1 << 40, MODEL_ARCHIVE_SIZE
            ),
            archive_sha256=reader.hex_digest(
                ENV_PREFIX + "MODEL_SHA256", SHA256_HEX_DIGITS, MODEL_ARCHIVE_SHA256
            ),
            retry_delay_seconds=reader.number(
                ENV_PREFIX + "RETRY_DELAY_SECONDS", float, 0.0, 600.0, 2.0
            ),
            sampler_commit=reader.text(ENV_PREFIX + "SAMPLER_COMMIT", SAMPLER_COMMIT),
        )
        if reader.problems:
            raise InstallError(
                "; ".join(problem.describe() for problem in reader.problems)
                + ". Fix or unset these variables."
            )
        return plan


class Installer:
    """Runs the install steps of one `InstallPlan`, announcing each on `out`, and reports
    with doctor's checks at the end."""

    def __init__(
        self,
        plan: InstallPlan,
        settings: Settings,
        host: HostPlatform,
        home: Path,
        out: TextIO = sys.stderr,
    ) -> None:
        self._plan = plan
        self._settings = settings
        self._host = host
        self._home = home
        self._out = out
        self._moved_checkout = False
        """The clone was moved to the pinned commit: what was built is out of date."""

    def run(self, verify_only: bool = False) -> DoctorReport:
        if not verify_only:
            if not self._host.runs_core_ml:
                raise InstallError(
                    f"this machine runs {self._host.system} {self._host.os_version}; the Core "
                    "ML sampler needs macOS 13.1 or later. Nothing was changed."
                )
            self._clone()
            self._build()
            self._fetch_model()
        return self._verify()

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def _clone(self) -> None:
        plan = self._plan
        self._say(f"[1/4] apple/ml-stable-diffusion in {plan.checkout}")
        git = [*plan.git, "-C", str(plan.checkout)]
        if (plan.checkout / ".git").exists():
            head = self._output([*git, "rev-parse", "HEAD"], "git rev-parse")
            if head == plan.sampler_commit:
                self._say("      already cloned: reusing it")
                return
            if self._output([*git, "status", "--porcelain"], "git status"):
                raise InstallError(
                    f"{plan.checkout} is at {head[:12]}, not the pinned {plan.sampler_commit[:12]} "
                    "(which has --xl and --sd3), and has local changes; commit or stash them "
                    "and run install again, or keep that commit with --sampler-commit "
                    f"{head}"
                )
            self._say(f"      cloned at {head[:12]}: moving it to {plan.sampler_commit[:12]}")
            self._stream([*git, "fetch", "--quiet", "origin"], "git fetch")
        else:
            if plan.checkout.exists() and any(plan.checkout.iterdir()):
                raise InstallError(
                    f"{plan.checkout} exists and is not a git clone; move it away or choose "
                    "another place with --prefix"
                )
            plan.checkout.parent.mkdir(parents=True, exist_ok=True)
            self._stream([*plan.git, "clone", plan.repository_url, str(plan.checkout)], "git clone")
        self._stream([*git, "checkout", "--quiet", "--detach", plan.sampler_commit], "git checkout")
        self._moved_checkout = True

    def _build(self) -> None:
        plan = self._plan
        self._say(f"[2/4] build {BUILD_PRODUCT} (release)")
        built = plan.binary.is_file() and os.access(plan.binary, os.X_OK)
        if built and not self._moved_checkout:
            self._say(f"      already built: {plan.binary}")
            return
        self._stream(
            [*plan.swift, "build", "-c", "release", "--product", BUILD_PRODUCT],
            "swift build",
            cwd=plan.checkout,
        )
        if not plan.binary.is_file():
            raise InstallError(f"swift build succeeded but {plan.binary} is not there")

    def _fetch_model(self) -> None:
        plan = self._plan
        self._say(f"[3/4] Core ML model bundle ({plan.bundle.title}) in {plan.bundle_root}")
        if find_bundle(plan.bundle_root) is not None:
            self._say("      already in place")
            return
        plan.models_dir.mkdir(parents=True, exist_ok=True)
        archive = plan.models_dir / plan.bundle.file
        bar = ProgressBar(self._out)
        try:
            download_verified(
                plan.archive_url,
                archive,
                size=plan.archive_size,
                sha256=plan.archive_sha256,
                progress=bar.update,
                retry_delay=plan.retry_delay_seconds,
            )
        except PinMismatch as exc:
            bar.finish()
            raise InstallError(
                f"the bundle at {plan.archive_url} is not the pinned one: {exc}. If the "
                "file was replaced on purpose, check where it comes from, then pass "
                f"--model-size {exc.actual_size} --model-sha256 "
                f"{exc.actual_sha256 or '<its SHA-256>'} (or "
                f"{ENV_PREFIX}MODEL_SIZE and {ENV_PREFIX}MODEL_SHA256)"
            ) from exc
        except DownloadError as exc:
            bar.finish()
            raise InstallError(f"download failed: {exc}") from exc
        bar.finish()
        try:
            self._unpack(archive)
        finally:
            archive.unlink(missing_ok=True)

    def _unpack(self, archive: Path) -> None:
        """Extract next to the target, find the bundle in it and check it, then move it
        into place in one rename."""
        plan = self._plan
        target = plan.bundle_root
        name = plan.bundle.folder
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.unpacking-", dir=plan.models_dir))
        try:
            with zipfile.ZipFile(archive) as bundle:
                root = staging.resolve()
                for member in bundle.namelist():
                    if not (staging / member).resolve().is_relative_to(root):
                        raise InstallError(f"the archive has an unsafe path: {member}")
                bundle.extractall(staging)
            if find_bundle(staging) is None:
                raise InstallError(f"the archive does not hold a usable bundle: {_why(staging)}")
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=plan.models_dir))
                os.replace(target, old / name)
                os.replace(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, target)
        except zipfile.BadZipFile as exc:
            raise InstallError(f"the archive is not a valid zip: {exc}") from exc
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _verify(self) -> DoctorReport:
        plan = self._plan
        self._say("[4/4] verify")
        default_binary = self._home / DEFAULT_SAMPLE_BIN
        configured = self._settings.section(CoreMLSettings)
        installed = replace(
            configured,
            sample_bin=None if plan.binary == default_binary else plan.binary,
            resource_path=plan.resource_path,
        )
        checks = doctor_checks(installed, self._host, load_manifest(installed))
        report = DoctorReport(
            (*checks, check_settings(self._settings, self._settings.compute_units))
        )
        self._say(report.render())
        lines = []
        if plan.binary != default_binary:
            lines.append(f"export {ENV_SAMPLE_BIN}={shlex.quote(str(plan.binary))}")
        default_bundle = plan.bundle.default
        if default_bundle and plan.resource_path != configured.resource_path:
            lines.append(f"export {ENV_RESOURCE_PATH}={shlex.quote(str(plan.resource_path))}")
        if lines:
            self._say("\nThese locations are not the defaults; start the worker with:")
            for line in lines:
                self._say("  " + line)
        if not default_bundle:
            model = f"{BACKEND_ID}/{plan.bundle.folder}"
            self._say(
                f'\nThe bundle is the model {model}: ask for it with "model": '
                f'"{model}" in a generate (studio-imagegen --model {model}), or make it '
                f"the default with\n  export {ENV_RESOURCE_PATH}="
                f"{shlex.quote(str(plan.resource_path))}"
            )
        return report

    def _output(self, argv: Sequence[str], what: str) -> str:
        """A quick command's stdout, stripped; InstallError with its stderr if it fails."""
        try:
            done = subprocess.run(
                list(argv), capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            raise InstallError(f"{what} could not start ({exc.strerror or exc})") from exc
        if done.returncode != 0:
            raise InstallError(
                f"{what} failed with exit code {done.returncode}: {done.stderr.strip()}"
            )
        return done.stdout.strip()

    def _stream(self, argv: Sequence[str], what: str, cwd: Path | None = None) -> None:
        """Run a command, echoing its output as it comes; fail with its tail."""
        self._say(f"      $ {shlex.join(argv)}")
        tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        try:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise InstallError(
                f"{what} could not start ({exc.strerror or exc}); is {argv[0]} installed? "
                "(Xcode's command line tools provide git and swift: xcode-select --install)"
            ) from exc
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                tail.append(line.rstrip("\n"))
                self._say("      | " + line.rstrip("\n"))
        code = process.wait()
        if code != 0:
            last = "\n".join(tail)
            raise InstallError(f"{what} failed with exit code {code}; its last lines:\n{last}")


def _why(staging: Path) -> str:
    """What is wrong with an unpacked archive that holds no complete bundle."""
    nearest = _nearest_bundle(staging)
    if nearest is None:
        return "no folder in it holds Unet.mlmodelc, its chunks or a diffusion transformer"
    return f"{nearest.relative_to(staging)} is missing {', '.join(read_bundle(nearest).missing)}"


class ProgressBar:
    """`downloading  45% [#########-----------]  512.0/1141.4 MiB  12.3 MiB/s`.

    Redrawn in place on a terminal (at most five times a second); one line per tenth in
    a log.
    """

    WIDTH = 30

    def __init__(self, out: TextIO) -> None:
        self._line = StatusLine(out)
        self._started = time.monotonic()
        self._first: int | None = None
        self._last_draw = 0.0
        self._last_tenth = -1

    def update(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = done
        finished = done == total
        if self._line.live:
            if now - self._last_draw < 0.2 and not finished:
                return
        elif total:
            tenth = 10 * done // total
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
        self._last_draw = now
        rate = (done - self._first) / max(now - self._started, 1e-6) / (1 << 20)
        if total:
            self._line.show(
                f"      downloading {100 * done / total:5.1f}% "
                f"[{bar(done / total, self.WIDTH, '#', '-')}] "
                f"{done / (1 << 20):.1f}/{total / (1 << 20):.1f} MiB  {rate:.1f} MiB/s"
            )
        else:
            self._line.show(f"      downloading {done / (1 << 20):.1f} MiB  {rate:.1f} MiB/s")

    def finish(self) -> None:
        self._line.finish()


def run_install(args: argparse.Namespace, settings: Settings, host: HostPlatform) -> int:
    """`install --backend coreml`, with the plan's defaults replaced by the options given."""
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
    if args.bundle:
        plan = plan.for_bundle(args.bundle, os.environ)
    overrides["sampler_commit"] = args.sampler_commit
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    installer = Installer(plan, settings, host, home)
    try:
        report = installer.run(verify_only=args.verify)
    except InstallError as exc:
        print(f"install: {exc}", file=sys.stderr)
        return EXIT_INSTALL_FAILED
    except KeyboardInterrupt:
        print("\ninstall: interrupted; run it again to continue where it stopped", file=sys.stderr)
        return 130
    return 0 if report.ready else EXIT_NOT_READY
