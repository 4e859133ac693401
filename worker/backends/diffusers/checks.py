"""What the diffusers backend needs, checked without importing it: the optional extra,
and the model named by SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL (found, and read enough to
know its native size and whether it has a safety checker).

Read from the disk on every call, like the Core ML checks: `capabilities`, `doctor` and
`generate` see a model the moment `install` has put it in place. Nothing here imports
torch or diffusers; the worker process never does.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, cast

from protocol.models import ModelFamily, ModelHostStatus
from worker.backends.diffusers.host.families import (
    FAMILIES,
    PIPELINE_FAMILIES,
    Identified,
    checkpoint_family,
    directory_family,
)
from worker.backends.diffusers.settings import DEFAULT_MODEL, DiffusersSettings
from worker.backends.diffusers.variables import ENV_MODEL, INSTALL_MODEL

EXTRA_MODULES = ("torch", "diffusers", "transformers", "safetensors")
DISTRIBUTION = "studio-imagegen-worker"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_REVISION = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14"
"""The commit of the default model that `install` downloads and the worker then uses."""
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
DEFAULT_NATIVE_SIDE = 512
"""What Stable Diffusion 1.x makes, for a checkpoint that does not say."""
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

ModelKind = Literal["directory", "single_file", "hub"]


@dataclass(frozen=True)
class ModelLocation:
    """The configured model, found (or not) on this machine."""

    text: str
    """As configured (or the default repository id)."""
    kind: ModelKind
    path: Path | None
    """What the model host loads: a directory or a checkpoint file; None when not found."""
    label: str
    """How results and messages name it: the repository id, or the file or folder name."""
    problem: str = ""
    """Why it cannot be loaded; empty when it looks loadable."""
    fix: str = ""
    native_side: int = DEFAULT_NATIVE_SIDE
    """The side of the square images it was trained on."""
    safety_checker: bool = False
    """It ships a safety checker."""
    family: ModelFamily | None = None
    """sd1, sd2, sdxl, sd3: from its files; None where they do not say (a .ckpt)."""
    refiner: bool = False
    """An SDXL refiner: it makes images from a reference only."""
    inpainting: bool = False
    """An inpainting checkpoint: it makes images with a mask only."""

    @property
    def usable(self) -> bool:
        return self.path is not None and not self.problem


def missing_modules() -> list[str]:
    """The packages of the `diffusers` extra that cannot be imported here (looked up, not
    imported)."""
    missing = []
    for name in EXTRA_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            missing.append(name)
    return missing


@functools.cache
def install_extra_hint() -> str:
    """The commands that add the extra to the environment this worker runs in, from where
    it was installed: the package is not published, so a bare `pip install` of its name
    would fetch whatever else is called so, with a CUDA torch of several GB."""
    python = shlex.quote(sys.executable)
    source = _installed_from()
    extra = (
        f"{python} -m pip install -e {shlex.quote(f'{source}[diffusers]')}"
        if source is not None
        else f"{python} -m pip install '<where you installed {DISTRIBUTION} from>[diffusers]'"
    )
    return (
        f"install torch first (CPU only: {python} -m pip install torch --index-url "
        f"{CPU_TORCH_INDEX}; with an NVIDIA GPU: {python} -m pip install torch), then the "
        f"extra: {extra}"
    )


def _installed_from() -> Path | None:
    """The checkout the worker was installed from (PEP 610's direct_url.json), or the one
    it runs from without being installed."""
    try:
        recorded = importlib.metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
        url = json.loads(recorded or "{}").get("url", "")
    except (importlib.metadata.PackageNotFoundError, ValueError, AttributeError):
        url = ""
    if url.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    checkout = Path(__file__).resolve().parents[3]
    return checkout if (checkout / "pyproject.toml").is_file() else None


def hub_cache() -> Path:
    """Where huggingface_hub keeps models, by its own variables."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "huggingface" / "hub"


def cached_repositories() -> Iterator[tuple[str, Path]]:
    """Each repository of the Hugging Face cache, by id, with the snapshot the worker
    reads of it: the default model's pinned revision, else its main branch's."""
    for repository in sorted(hub_cache().glob("models--*")):
        repo_id = repository.name.removeprefix("models--").replace("--", "/")
        revision = DEFAULT_REVISION if repo_id == DEFAULT_MODEL else None
        if revision is None:
            try:
                revision = (repository / "refs" / "main").read_text("utf-8").strip()
            except OSError:
                continue
        yield repo_id, repository / "snapshots" / revision


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached copy of `repo_id` at `revision` (a commit), else at its main branch."""
    folder = hub_cache() / f"models--{repo_id.replace('/', '--')}"
    if revision is None:
        try:
            revision = (folder / "refs" / "main").read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snapshot = folder / "snapshots" / revision
    return snapshot if (snapshot / "model_index.json").is_file() else None


def locate_model(settings: DiffusersSettings) -> ModelLocation:
    text = settings.model
    path = Path(text).expanduser()
    if path.is_dir():
        return _directory(text, path, path.name)
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            return ModelLocation(
                text,
                "single_file",
                None,
                path.name,
                f"{path} is not a checkpoint (.safetensors or .ckpt)",
                f"point {ENV_MODEL} at a .safetensors checkpoint or a diffusers directory",
            )
        return single_file(text, path, path.stem)
    if _REPO_ID.fullmatch(text) and not text.startswith((".", "~")):
        revision = DEFAULT_REVISION if text == DEFAULT_MODEL else None
        snapshot = cached_snapshot(text, revision)
        if snapshot is None:
            install = (
                INSTALL_MODEL if text == DEFAULT_MODEL else (f"{INSTALL_MODEL} --model {text}")
            )
            return ModelLocation(
                text,
                "hub",
                None,
                text,
                f"the model {text} is not in the Hugging Face cache ({hub_cache()}); the "
                "worker never downloads while generating",
                install,
            )
        return _directory(text, snapshot, text, kind="hub")
    return ModelLocation(
        text,
        "directory",
        None,
        path.name,
        f"{ENV_MODEL}={text!r} names no file or directory",
        f"point {ENV_MODEL} at a diffusers directory, a .safetensors checkpoint or "
        f"a repository id that {INSTALL_MODEL} --model REPO_ID has downloaded",
    )


def _directory(text: str, path: Path, label: str, kind: ModelKind = "directory") -> ModelLocation:
    index = path / "model_index.json"
    try:
        declared = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = "has no model_index.json" if not index.exists() else f"cannot be read ({exc})"
        return ModelLocation(
            text,
            kind,
            None,
            label,
            f"{path} is not a diffusers model: its model_index.json {reason}",
            f"point {ENV_MODEL} at a directory saved by diffusers, or run {INSTALL_MODEL}",
        )
    identified = directory_family(path, declared) if isinstance(declared, dict) else None
    if identified is None:
        found = declared.get("_class_name") if isinstance(declared, dict) else None
        return ModelLocation(
            text,
            kind,
            None,
            label,
            f"{path} holds a {found or 'model of no known class'}, not a pipeline this "
            f"backend runs ({', '.join(PIPELINE_FAMILIES)})",
            f"point {ENV_MODEL} at a Stable Diffusion 1.x, 2.x, XL or 3 model",
        )
    missing = missing_component(path, declared)
    if missing:
        return ModelLocation(
            text,
            kind,
            None,
            label,
            f"{path} is incomplete: {missing}",
            f"download the model again (for a hub model: {INSTALL_MODEL} --model REPO_ID "
            f"resumes it), or point {ENV_MODEL} at a complete diffusers directory",
        )
    checker = declared.get("safety_checker")
    return ModelLocation(
        text,
        kind,
        path,
        label,
        native_side=_native_side(path, identified.family),
        safety_checker=isinstance(checker, list) and checker[:1] != [None],
        family=cast(ModelFamily, identified.family),  # one of FAMILIES' keys
        refiner=identified.refiner,
        inpainting=identified.inpainting,
    )


def read_location(text: str, path: Path, label: str, kind: str) -> ModelLocation:
    """A model found in a folder or the cache, read as the configured one is."""
    if kind == "single_file":
        return single_file(text, path, label)
    return _directory(text, path, label, kind="hub" if kind == "hub" else "directory")


def single_file(text: str, path: Path, label: str) -> ModelLocation:
    """A checkpoint: its family from its tensor names, and whether the configuration it is
    built with is in the Hugging Face cache (the worker never downloads while generating)."""
    identified = _checkpoint_family(path)
    if identified is None:  # a pickled .ckpt: the model host tells its family when loading
        return ModelLocation(text, "single_file", path, label)
    family = FAMILIES[identified.family]
    location = ModelLocation(
        text,
        "single_file",
        path,
        label,
        native_side=family.native_side,
        family=cast(ModelFamily, family.name),  # one of FAMILIES' keys
        refiner=identified.refiner,
    )
    repo = identified.config_repo
    configuration = _cached_configuration(repo)
    if configuration is not None:  # the size it makes is its configuration's
        return replace(location, native_side=_native_side(configuration, family.name))
    return replace(
        location,
        path=None,
        problem=f"{path.name} is a single-file {family.title} checkpoint, "
        f"which diffusers builds with the configuration of {repo} (its json and tokenizer "
        "files, a few MB); that is not in the Hugging Face cache, and the worker never "
        "downloads while generating",
        fix=f"fetch it once: {INSTALL_MODEL} --model {repo} --config-only",
    )


_FAMILIES: dict[Path, tuple[tuple[int, int], Identified | None]] = {}


def _checkpoint_family(path: Path) -> Identified | None:
    """`checkpoint_family`, read once while the file is unchanged (a real checkpoint's
    header is a few hundred kB of JSON)."""
    try:
        status = path.stat()
    except OSError:
        return None
    stamp = (status.st_mtime_ns, status.st_size)
    cached = _FAMILIES.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    identified = checkpoint_family(path)
    _FAMILIES[path] = (stamp, identified)
    return identified


def _cached_configuration(repo: str) -> Path | None:
    """Any cached snapshot of `repo` with its model_index.json (its main branch, or a
    pinned revision)."""
    snapshots = hub_cache() / f"models--{repo.replace('/', '--')}" / "snapshots"
    found = sorted(s for s in snapshots.glob("*") if (s / "model_index.json").is_file())
    return found[0] if found else None


COMPONENT_FILES = {
    "scheduler": (("scheduler_config.json",),),
    "tokenizer": (("tokenizer.json",), ("vocab.json", "merges.txt"), ("spiece.model",)),
    "feature_extractor": (("preprocessor_config.json",),),
}
"""What one of these components needs (any one of the sets); any other component is a
model: its config.json and its weights."""
WEIGHTS = ("*.safetensors", "*.bin")


def missing_component(path: Path, declared: dict[str, object]) -> str:
    """Which component that `model_index.json` lists is absent or lacks its files, in
    words; empty when every one is there (read from the directory, nothing loaded)."""
    for name, entry in declared.items():
        if name.startswith("_") or not isinstance(entry, list) or None in entry[:2]:
            continue
        what = f"{name} ({entry[1]})" if len(entry) > 1 else name
        folder = path / name
        if not folder.is_dir():
            return f"its model_index.json lists {what}, but {name}/ is not there"
        kind = "tokenizer" if name.startswith("tokenizer") else name
        needs = COMPONENT_FILES.get(kind)
        if needs is not None:
            if not any(all((folder / file).is_file() for file in files) for files in needs):
                options = " or ".join(" and ".join(files) for files in needs)
                return f"{name}/ ({what}) has no {options}"
            continue
        if not (folder / "config.json").is_file():
            return f"{name}/ ({what}) has no config.json"
        if not any(any(folder.glob(pattern)) for pattern in WEIGHTS):
            return f"{name}/ ({what}) has no weights (.safetensors or .bin)"
    return ""


def _native_side(path: Path, family: str) -> int:
    """The denoiser's latent size (the UNet's, or SD3's transformer's) times the VAE's
    scale (2 to the number of its levels - 1)."""
    denoiser = "transformer" if family == "sd3" else "unet"
    try:
        config = json.loads((path / denoiser / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((path / "vae" / "config.json").read_text(encoding="utf-8"))
        side = int(config["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return FAMILIES[family].native_side
    return side if side > 0 else FAMILIES[family].native_side


def not_loaded(
    settings: DiffusersSettings, last_load_ms: int | None = None, load_error: str = ""
) -> ModelHostStatus:
    """The model host as `capabilities` shows it while none is running: as configured."""
    return ModelHostStatus(
        loaded=False,
        device=settings.device,
        dtype=settings.dtype,
        last_load_ms=last_load_ms,
        idle_unload_ms=settings.idle_ms,
        pid=None,
        last_load_error=load_error,
    )


def model_id(location: ModelLocation, device: str) -> str:
    """Names the model and the device it ran on, as Core ML's names the compute units."""
    return f"diffusers/{location.label}:{device}"
