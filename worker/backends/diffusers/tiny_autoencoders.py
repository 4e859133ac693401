"""TAESD, the tiny autoencoders that decode previews almost as a VAE would at a small
part of its cost: `madebyollin/taesd` (SD 1.x/2.x), `taesdxl` (SDXL) and `taesd3` (SD 3),
found as a directory of that name in the models folder or as that repository in the
Hugging Face cache, its `config.json` naming `AutoencoderTiny`. A model whose family has
one offers `previewDecoder: "taesd"`. Read from the files only; nothing is loaded to
list them.
"""

from __future__ import annotations

from pathlib import Path

from worker.backends.diffusers.checks import cached_repositories
from worker.backends.diffusers.host.families import json_object

TINY_AUTOENCODER_CLASS = "AutoencoderTiny"
FAMILIES_OF: dict[str, tuple[str, ...]] = {
    "taesd": ("sd1", "sd2"),
    "taesdxl": ("sdxl",),
    "taesd3": ("sd3",),
}
"""Each tiny autoencoder by its published name, and the families whose latents it reads."""


def find_tiny_autoencoders(models_dir: Path) -> dict[str, Path]:
    """The tiny autoencoder of each family that has one here (the models folder's
    first, then the Hugging Face cache's)."""
    try:
        folder = [(entry.name, entry) for entry in sorted(models_dir.iterdir()) if entry.is_dir()]
    except OSError:
        folder = []
    candidates = folder + [(repo.rsplit("/", 1)[-1], path) for repo, path in cached_repositories()]
    found: dict[str, Path] = {}
    for name, path in candidates:
        families = FAMILIES_OF.get(name.lower(), ())
        if families and json_object(path / "config.json").get("_class_name") == (
            TINY_AUTOENCODER_CLASS
        ):
            for family in families:
                found.setdefault(family, path)
    return found
