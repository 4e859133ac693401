"""Which Core ML bundle makes which aspect ratio: the model manifest, checked against the
bundles themselves.

Core ML bundles have their output size fixed at conversion, so each ratio is its own
bundle, declared in a `studio.local-diffusion.model-manifest.v1` file (as Studio's later
provider had it): `{"schema": ..., "ratios": {"16:9": {"width": 1024, "height": 576,
"resourcePath": ...}}}`. `${HOME}` in a path is the home directory, and a relative path
is relative to the manifest's folder. Without a manifest, 1:1 is the resource path.
A compiled bundle declares its size (the VAE decoder's input, in latents of 8 pixels);
where it does, an entry that disagrees is a configuration error for that ratio.
Read from the disk on every call, like the installation checks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from protocol.errors import ConfigInvalidData
from worker.backends.coreml.bundle_files import DECODER, decoder_size
from worker.backends.coreml.settings import ENV_MODEL_MANIFEST, ENV_RESOURCE_PATH, CoreMLSettings
from worker.sizes import STANDARD_SIZES, SizeOption, SizeTable

MANIFEST_SCHEMA = "studio.local-diffusion.model-manifest.v1"
FIXED_SIZES = "Core ML bundles make the size they were converted for"
OTHER_SIZES = "use the diffusers backend, which makes any size"


def load_manifest(settings: CoreMLSettings) -> SizeTable:
    """The bundles per ratio, from the manifest if there is one."""
    path = settings.model_manifest
    problems: list[ConfigInvalidData] = []
    entries: dict[str, dict[str, object]] = {}
    if path.exists():
        entries = _read_entries(path, problems)
    elif settings.model_manifest_explicit:
        problems.append(_problem(path, "names no file; fix the path or unset it"))
    bundles: dict[str, SizeOption] = {}
    for ratio, entry in entries.items():
        bundle = _bundle(ratio, entry, path, problems)
        if bundle is not None:
            bundles[ratio] = bundle
    square = bundles.get("1:1")
    if settings.resource_path_explicit or square is None:
        # The resource-path variable names the square bundle (only that one).
        width, height = STANDARD_SIZES["1:1"]
        source = "environment" if settings.resource_path_explicit else "default"
        bundles["1:1"] = _checked(
            SizeOption("1:1", width, height, settings.resource_path, source, False), problems
        )
    ordered = {ratio: bundles[ratio] for ratio in STANDARD_SIZES if ratio in bundles}
    ordered |= {ratio: bundle for ratio, bundle in bundles.items() if ratio not in ordered}
    return SizeTable(
        ordered,
        manifest_path=path if path.exists() else None,
        problems=tuple(problems),
        configured_by=ENV_MODEL_MANIFEST,
        fixed_sizes_reason=FIXED_SIZES,
        fixed_sizes_alternative=OTHER_SIZES,
    )


def _problem(path: Path, reason: str) -> ConfigInvalidData:
    return ConfigInvalidData(variable=ENV_MODEL_MANIFEST, value=str(path), reason=reason)


def _read_entries(path: Path, problems: list[ConfigInvalidData]) -> dict[str, dict[str, object]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(_problem(path, f"cannot be read as JSON ({exc})"))
        return {}
    if not isinstance(document, dict) or document.get("schema") != MANIFEST_SCHEMA:
        problems.append(_problem(path, f'is not a manifest: "schema" must be {MANIFEST_SCHEMA}'))
        return {}
    ratios = document.get("ratios")
    if not isinstance(ratios, dict) or not all(isinstance(v, dict) for v in ratios.values()):
        problems.append(_problem(path, '"ratios" must map each ratio to an object'))
        return {}
    return ratios


def _bundle(
    ratio: str, entry: dict[str, object], manifest: Path, problems: list[ConfigInvalidData]
) -> SizeOption | None:
    width, height, where = entry.get("width"), entry.get("height"), entry.get("resourcePath")
    if not re.fullmatch(r"\d+:\d+", ratio):
        problems.append(_problem(manifest, f"{ratio!r} is not a ratio like 16:9"))
        return None
    if not (isinstance(width, int) and isinstance(height, int) and isinstance(where, str)):
        problems.append(
            _problem(manifest, f"the {ratio} entry needs width, height (numbers) and resourcePath")
        )
        return None
    resolved = Path(where.replace("${HOME}", str(Path.home()))).expanduser()
    if not resolved.is_absolute():
        resolved = manifest.parent / resolved
    return _checked(
        SizeOption(ratio, width, height, resolved, "manifest", False), problems, manifest
    )


def _checked(
    bundle: SizeOption, problems: list[ConfigInvalidData], manifest: Path | None = None
) -> SizeOption:
    """The bundle with `present` and, where it declares its size, the size checked."""
    present = (bundle.resource_path / DECODER).is_dir()
    declared = decoder_size(bundle.resource_path)
    problem = ""
    if declared is not None and declared != (bundle.width, bundle.height):
        problem = (
            f"the {bundle.ratio} bundle {bundle.resource_path} makes {declared[0]}x{declared[1]} "
            f"images, not the {bundle.width}x{bundle.height} its entry says"
        )
        variable_value = str(manifest) if manifest else str(bundle.resource_path)
        problems.append(
            ConfigInvalidData(
                variable=ENV_MODEL_MANIFEST if manifest else ENV_RESOURCE_PATH,
                value=variable_value,
                reason=problem,
            )
        )
    return SizeOption(
        bundle.ratio,
        bundle.width,
        bundle.height,
        bundle.resource_path,
        bundle.source,
        present,
        problem,
    )
