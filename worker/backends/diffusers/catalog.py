"""The diffusers models on this machine: the configured one, every model directory and
single-file checkpoint in the models folder (`SYSTEMSCULPT_LOCAL_DIFFUSERS_MODELS_DIR`),
and every pipeline of a family it runs in the Hugging Face cache. Read from their files
(no model is loaded to list it), and cached by their modification times."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from worker.backends.diffusers.checks import (
    CHECKPOINT_SUFFIXES,
    ModelLocation,
    cached_repositories,
    install_extra_hint,
    locate_model,
    read_location,
)
from worker.backends.diffusers.controlnets import FoundControlNet, controls_for, find_controlnets
from worker.backends.diffusers.host.families import FAMILIES
from worker.backends.diffusers.loras import find_loras, fit_loras
from worker.backends.diffusers.settings import BACKEND_ID, DEFAULT_MODEL, DiffusersSettings
from worker.backends.diffusers.tiny_autoencoders import find_tiny_autoencoders
from worker.loras import Lora
from worker.models import Model
from worker.sizes import standard_table

_CACHE: dict[Path, tuple[int, ModelLocation]] = {}


def find_models(
    settings: DiffusersSettings, missing_extra: list[str], loaded: Path | None
) -> list[Model]:
    """The configured model first, then the models folder's and the cache's, by name;
    each once, whichever way it was found."""
    configured = locate_model(settings)
    models = [_model(configured, missing_extra, loaded, default_source(settings))]
    seen = {configured.path.resolve() if configured.path else None}
    for location in [*_folder_models(settings.models_dir), *_cached_pipelines()]:
        where = (location.path or Path(location.text)).resolve()  # no path: it is broken
        if where in seen:
            continue
        seen.add(where)
        models.append(_model(location, missing_extra, loaded, "models folder"))
    controlnets = find_controlnets(settings.models_dir)
    loras = find_loras(settings.loras_dir)
    tiny_autoencoders = find_tiny_autoencoders(settings.models_dir)
    labels: set[str] = set()
    unique = []
    for model in models:
        if model.label in labels:  # the same name in the folder and the cache
            model = replace(model, id=f"{model.id}@{len(labels)}")
        labels.add(model.label)
        model = _with_extras(model, controlnets, settings.models_dir, loras, settings)
        unique.append(_with_tiny_autoencoder(model, tiny_autoencoders.get(model.family or "")))
    return unique


def _with_extras(
    model: Model,
    found: list[FoundControlNet],
    models_dir: Path,
    loras: list[Lora],
    settings: DiffusersSettings,
) -> Model:
    """The model with what it can use beside it: its ControlNets and LoRAs."""
    assert isinstance(model.details, ModelLocation)
    family = FAMILIES.get(model.family or "sd1", FAMILIES["sd1"])
    nets, problem = controls_for(model.details, family, found, models_dir)
    fit = fit_loras(model.details, family, loras, settings.loras_dir)
    return replace(
        model,
        controlnets=nets,
        controls_problem=problem,
        control_weights=True,
        applies_loras=fit.applies,
        loras=fit.fitting,
        other_loras=fit.others,
        loras_problem=fit.problem,
    )


def _with_tiny_autoencoder(model: Model, path: Path | None) -> Model:
    """The model offering TAESD previews, where its family's is installed: after the
    latent ones (the cheapest), before full decodes."""
    if path is None or model.variant == "refiner":
        return model
    cheapest = [d for d in model.preview_decoders if d == "latent"]
    return replace(
        model,
        preview_decoders=(*cheapest, "taesd", "vae"),
        preview_note=model.preview_note + f"; taesd: a tiny decoder ({path.name}) each, "
        "near a VAE decode's look at a few percent of its time",
        tiny_autoencoder=path,
    )


def default_source(settings: DiffusersSettings) -> str:
    return "environment" if settings.model_explicit else "default"


def _model(
    location: ModelLocation, missing_extra: list[str], loaded: Path | None, source: str
) -> Model:
    if location.family is None and location.text == DEFAULT_MODEL:  # known, if not there
        location = replace(location, family="sd1")
    family = FAMILIES.get(location.family or "sd1", FAMILIES["sd1"])
    where = location.path or Path(location.text)
    problem, fix = location.problem, location.fix
    if missing_extra:
        problem = f"the diffusers extra is not installed (missing: {', '.join(missing_extra)})"
        fix = install_extra_hint()
    notes = []
    if location.refiner:
        notes.append("an SDXL refiner: it makes images only from a reference (inputImages)")
    if location.inpainting:
        notes.append("an inpainting model: it makes images only with a mask or outpaint")
    if location.family is None and location.path is not None:
        notes.append("a pickled checkpoint: its family is told when it loads (SD 1.x assumed)")
    return Model(
        id=f"{BACKEND_ID}/{location.label}",
        label=location.label,
        backend=BACKEND_ID,
        family=location.family,
        path=where,
        sizes=standard_table(where, source, location.native_side),
        schedulers=family.schedulers,
        scheduler_note=f"{location.label} is a {family.title} model, which takes "
        f"{', '.join(family.schedulers)}",
        native=(location.native_side, location.native_side),
        variant="refiner" if location.refiner else "inpainting" if location.inpainting else "base",
        inpainting="none" if location.refiner or not family.inpainting else "native",
        preview_decoders=("latent", "vae") if family.latent_rgb else ("vae",),
        preview_note="latent: a few milliseconds of the host's time each, from the latents; "
        "vae: a full decode each, about as long as the final image's"
        if family.latent_rgb
        else f"a full VAE decode each ({family.title} has no latent factors here)",
        prompt_weights=True,
        clip_skip=family.name in ("sd1", "sd2"),
        inpainting_problem=_inpainting_problem(location, family.title, family.inpainting),
        problem=problem,
        fix=fix,
        notes=tuple(notes),
        result_id=f"{BACKEND_ID}/{location.label}",
        loaded=loaded is not None and location.path is not None and location.path == loaded,
        details=location,
    )


def _inpainting_problem(location: ModelLocation, title: str, pipeline: str) -> str:
    if location.refiner:
        return "an SDXL refiner does not inpaint here; choose a base model"
    if not pipeline:
        return (
            f"masked editing is not offered for {title} yet (SD 1.x/2.x and SDXL have it); "
            "choose a model of one of those"
        )
    return ""


def _folder_models(folder: Path) -> list[ModelLocation]:
    """The model directories and checkpoints directly in `folder`."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.is_dir() and (entry / "model_index.json").is_file():
            found.append(_read(entry, entry.name, "directory"))
        elif entry.is_file() and entry.suffix.lower() in CHECKPOINT_SUFFIXES:
            found.append(_read(entry, entry.stem, "single_file"))
    return found


def _cached_pipelines() -> list[ModelLocation]:
    """Each repository of the Hugging Face cache whose snapshot (its main branch, or the
    default model's pinned revision) is a pipeline of a family this backend runs."""
    found = []
    for repo_id, snapshot in cached_repositories():
        if not (snapshot / "model_index.json").is_file():
            continue
        location = _read(snapshot, repo_id, "hub")
        if location.family is not None:  # other pipelines (not this backend's) are left out
            found.append(location)
    return found


def _read(path: Path, label: str, kind: str) -> ModelLocation:
    if kind == "single_file":  # its family is cached; its configuration may come any time
        return read_location(str(path), path, label, kind)
    stamp = _mtime(path / "model_index.json" if path.is_dir() else path)
    cached = _CACHE.get(path)
    if cached is not None and cached[0] == stamp:
        return replace(cached[1], label=label)
    location = read_location(str(path), path, label, kind)
    _CACHE[path] = (stamp, location)
    return location


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
