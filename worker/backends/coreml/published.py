"""The compiled bundles `install` can fetch, each pinned by its zip's size and SHA-256.

Apple publishes compiled Core ML bundles on the Hugging Face hub; each zip unpacks into a
layout of its own (`<name>/<name>/`, `<name>/compiled/`, ...), so the bundle is found in
it by the folder that holds the UNet, never assumed. The SHA-256 decides; the size lets a
wrong file be refused before it is downloaded whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.backends.coreml.settings import BUNDLE_NAME

HUB = "https://huggingface.co"


@dataclass(frozen=True)
class PublishedBundle:
    name: str
    """What `install --bundle` calls it."""
    title: str
    repository: str
    revision: str
    """A commit where one is known (then the checksum cannot drift), else `main`."""
    file: str
    size: int
    sha256: str
    default: bool = False
    """The bundle the worker runs when nothing is configured (SD 2.1)."""

    @property
    def url(self) -> str:
        return f"{HUB}/{self.repository}/resolve/{self.revision}/{self.file}"

    @property
    def folder(self) -> str:
        """The folder of the models folder it unpacks into: the zip's name."""
        return self.file.removesuffix(".zip")


SD21 = PublishedBundle(
    name="sd21",
    title="Stable Diffusion 2.1 base (6-bit palettized, split-einsum)",
    repository="apple/coreml-stable-diffusion-2-1-base-palettized",
    revision="bf4734c9f67dc7b7f9ced335d1cee9a860bf3a85",
    file=f"{BUNDLE_NAME}.zip",
    size=1_141_379_936,
    sha256="90c532943d460c559a8d84b7a0f05a4d265fee78ca355fdd5aa734fd43e08972",
    default=True,
)
SDXL = PublishedBundle(
    name="sdxl",
    title="Stable Diffusion XL base (4.5-bit mixed-bit palettized UNet, original attention)",
    repository="apple/coreml-stable-diffusion-mixed-bit-palettization",
    revision="main",
    file="coreml-stable-diffusion-mixed-bit-palettization_original_compiled.zip",
    size=6_711_666_087,
    sha256="a00f335d990588c97c347d97f7e92080f8cb23342c454f4a4d853a59bea1e2b5",
)
PUBLISHED = {bundle.name: bundle for bundle in (SD21, SDXL)}
