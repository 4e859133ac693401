"""Which model bundle makes which aspect ratio: the model manifest, checked against the
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
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ConfigInvalidData
from worker.backends import DIFFUSERS_BACKEND_ID, MOCK_BACKEND_ID
from worker.settings import ENV_MODEL_MANIFEST, ENV_RESOURCE_PATH, Settings

MANIFEST_SCHEMA = "studio.local-diffusion.model-manifest.v1"
STANDARD_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (512, 512),
    "4:3": (768, 576),
    "3:4": (576, 768),
    "16:9": (1024, 576),
    "9:16": (576, 1024),
}
"""The sizes Studio's converted bundles make, per ratio."""
LATENT_SCALE = 8
DECODER = "VAEDecoder.mlmodelc"


@dataclass(frozen=True)
class Bundle:
    """The bundle that makes one aspect ratio."""

    ratio: str
    width: int
    height: int
    resource_path: Path
    source: str
    """Where its path came from: the resource-path variable, the manifest, the default."""
    present: bool
    problem: str = ""
    """Why it cannot be used (its manifest entry disagrees with it); empty when it can."""

    @property
    def usable(self) -> bool:
        return self.present and not self.problem


@dataclass(frozen=True)
class ModelManifest:
    path: Path | None
    """The manifest file read; None when there is none."""
    bundles: dict[str, Bundle]
    problems: tuple[ConfigInvalidData, ...]

    @property
    def usable_ratios(self) -> list[str]:
        return [ratio for ratio, bundle in self.bundles.items() if bundle.usable]


def bundles_for(settings: Settings) -> ModelManifest:
    """The configured backend's bundles: the manifest's for Core ML; every standard size
    for the mock, which draws any of them; for diffusers, every standard ratio at the
    model's native resolution, all made by the one model."""
    if settings.backend == MOCK_BACKEND_ID:
        return ModelManifest(
            None,
            {
                ratio: Bundle(ratio, width, height, Path(), "default", True)
                for ratio, (width, height) in STANDARD_SIZES.items()
            },
            (),
        )
    if settings.backend == DIFFUSERS_BACKEND_ID:
        from worker.backends.diffusers_checks import locate_model

        model = locate_model(settings)
        source = "environment" if settings.diffusers_model_explicit else "default"
        where = model.path or Path(model.text)
        return ModelManifest(
            None,
            {
                ratio: Bundle(ratio, *size_at(ratio, model.native_side), where, source, True)
                for ratio in STANDARD_SIZES
            },
            (),
        )
    return load_manifest(settings)


def size_at(ratio: str, side: int) -> tuple[int, int]:
    """The size of `ratio` with the area of a `side` x `side` square, each side a multiple
    of 8 (what a model trained at that side makes best)."""
    across, down = (int(part) for part in ratio.split(":"))
    width = side * (across / down) ** 0.5
    height = side * (down / across) ** 0.5
    return (
        max(LATENT_SCALE, round(width / LATENT_SCALE) * LATENT_SCALE),
        max(LATENT_SCALE, round(height / LATENT_SCALE) * LATENT_SCALE),
    )


def load_manifest(settings: Settings) -> ModelManifest:
    """The bundles per ratio, from the manifest if there is one."""
    path = settings.model_manifest
    problems: list[ConfigInvalidData] = []
    entries: dict[str, dict[str, object]] = {}
    if path.exists():
        entries = _read_entries(path, problems)
    elif settings.model_manifest_explicit:
        problems.append(_problem(path, "names no file; fix the path or unset it"))
    bundles: dict[str, Bundle] = {}
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
            Bundle("1:1", width, height, settings.resource_path, source, False), problems
        )
    ordered = {ratio: bundles[ratio] for ratio in STANDARD_SIZES if ratio in bundles}
    ordered |= {ratio: bundle for ratio, bundle in bundles.items() if ratio not in ordered}
    return ModelManifest(path if path.exists() else None, ordered, tuple(problems))


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
) -> Bundle | None:
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
    return _checked(Bundle(ratio, width, height, resolved, "manifest", False), problems, manifest)


def _checked(
    bundle: Bundle, problems: list[ConfigInvalidData], manifest: Path | None = None
) -> Bundle:
    """The bundle with `present` and, where it declares its size, the size checked."""
    present = (bundle.resource_path / DECODER).is_dir()
    declared = declared_size(bundle.resource_path)
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
    return Bundle(
        bundle.ratio,
        bundle.width,
        bundle.height,
        bundle.resource_path,
        bundle.source,
        present,
        problem,
    )


def declared_size(resource_path: Path) -> tuple[int, int] | None:
    """The image size a compiled bundle makes, from its VAE decoder's input shape
    (`metadata.json` of the compiled model); None where it does not say."""
    try:
        metadata = json.loads((resource_path / DECODER / "metadata.json").read_text())
        inputs = metadata[0]["inputSchema"]
        shape = next(item["shape"] for item in inputs if item.get("name") == "z")
        dimensions = [int(part) for part in re.findall(r"\d+", str(shape))]
    except (OSError, ValueError, KeyError, IndexError, TypeError, StopIteration):
        return None
    if len(dimensions) != 4:
        return None
    return dimensions[3] * LATENT_SCALE, dimensions[2] * LATENT_SCALE


def ratio_of(width: int, height: int) -> str:
    """`16:9` for 1024x576: the size's ratio in lowest terms."""
    from math import gcd

    divisor = gcd(width, height)
    return f"{width // divisor}:{height // divisor}"
