"""How result images are named, by every backend: StableDiffusionSample's convention,
which Studio graphs depend on.

The sampler names each file after `prompt.prefix(75)`: 75 Swift `Character`s, which
are extended grapheme clusters (a letter with 70 combining marks is one), spaces made
`_`, then `.<index>` (only when it makes several), `.str<P>` (image-to-image),
`.<seed>`, `.final.png` (or `.<step>.png` for an intermediate image). `final_name` is
that name exactly, as the sampler writes it; `image_file_name` is the one an image is
delivered under: its last path part, with no control or bidirectional character and no
leading dot, the same for ordinary prompts.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import regex

from worker.text import name_safe

NAME_PREFIX_CHARACTERS = 75
"""`fileCharLimit` in the sampler's `imageName`."""
NAME_MAX_BYTES = 255
"""Longest file name (one path component) on APFS, HFS+ and Linux file systems."""
NO_PROMPT_PART = "image"
"""What a delivered name starts with when its prompt part is empty (a prompt ending in
`/`, or made of dots)."""
_CLUSTER = regex.compile(r"\X")


def characters(text: str) -> list[str]:
    """Swift's `Character`s of `text`: its extended grapheme clusters (UAX #29)."""
    return _CLUSTER.findall(text)


def float32(value: float) -> float:
    """`value` rounded to a Swift `Float`, as the sampler holds `--strength`."""
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def strength_percent(strength: float) -> int:
    """`Int(strength * 100)` in Float arithmetic: the `P` of the `.strP` name part."""
    return math.trunc(float32(float32(strength) * 100))


def name_prefix(prompt: str) -> str:
    """`prompt.prefix(75).replacingOccurrences(of: " ", with: "_")`; Foundation compares
    whole characters, so a space carrying a combining mark is left as it is."""
    return "".join(
        "_" if cluster == " " else cluster
        for cluster in characters(prompt)[:NAME_PREFIX_CHARACTERS]
    )


def final_name(
    prompt: str,
    *,
    index: int,
    image_count: int,
    seed: int,
    strength: float | None = None,
    step: int | None = None,
) -> str:
    """The name the sampler gives image `index` (`imageName` in main.swift): the final
    one, or the intermediate one saved at the 0-based `step`."""
    return _named(name_prefix(prompt), index, image_count, seed, strength, step)


def image_file_name(
    prompt: str,
    *,
    index: int,
    image_count: int,
    seed: int,
    strength: float | None = None,
    step: int | None = None,
) -> str:
    """The name image `index` is delivered under: the last part of the sampler's name,
    safe on every file system and terminal (no control or bidirectional character, never
    hidden behind a leading dot)."""
    prompt_part = name_safe(name_prefix(prompt).rsplit("/", 1)[-1].replace("\\", "_"))
    prompt_part = prompt_part.lstrip(".") or NO_PROMPT_PART
    return _named(prompt_part, index, image_count, seed, strength, step)


def _named(
    prompt_part: str,
    index: int,
    image_count: int,
    seed: int,
    strength: float | None,
    step: int | None,
) -> str:
    """`<prompt part>[.<index>][.str<P>].<seed>.<final|step>.png`, as main.swift joins it."""
    name = prompt_part + (f".{index}" if image_count != 1 else "")
    if strength is not None:
        name += f".str{strength_percent(strength)}"
    return f"{name}.{seed}.{'final' if step is None else step}.png"


def preview_file_name(
    prompt: str, *, index: int, image_count: int, seed: int, strength: float | None, step: int
) -> str:
    """The name of the preview of image `index` at the 0-based `step`, written beside the
    images when they go to a folder."""
    name = image_file_name(
        prompt, index=index, image_count=image_count, seed=seed, strength=strength, step=step
    )
    return name.removesuffix(".png") + ".preview.png"


@dataclass(frozen=True)
class ImageNames:
    """The names of one job's images: as the sampler writes them, as they are delivered,
    and their previews'. `seed` is the job's; a backend that gives each image a seed of
    its own names it with that one."""

    prompt: str
    image_count: int
    seed: int
    strength: float | None = None

    def written(self, index: int, step: int | None = None) -> str:
        return final_name(
            self.prompt,
            index=index,
            image_count=self.image_count,
            seed=self.seed,
            strength=self.strength,
            step=step,
        )

    def delivered(self, index: int, seed: int | None = None) -> str:
        return image_file_name(
            self.prompt,
            index=index,
            image_count=self.image_count,
            seed=self.seed if seed is None else seed,
            strength=self.strength,
        )

    def preview(self, index: int, step: int, seed: int | None = None) -> str:
        return preview_file_name(
            self.prompt,
            index=index,
            image_count=self.image_count,
            seed=self.seed if seed is None else seed,
            strength=self.strength,
            step=step,
        )


def name_too_long(size: int) -> str:
    """Why a name of `size` bytes cannot be written, and what to change in the prompt."""
    return (
        f"the images are named after the first 75 characters of the prompt, which make a "
        f"file name of {size} bytes, over the file system's limit of {NAME_MAX_BYTES}; start "
        "the prompt with fewer emoji or non-Latin characters (each takes 2 to 4 bytes or more)"
    )


def fit_name(name: str, limit: int = NAME_MAX_BYTES) -> str:
    """`name` cut to `limit` bytes of UTF-8 by dropping whole characters from the end of
    its prompt part (what comes before its first dot), so that what follows (index, seed,
    the no-overwrite suffix) stays whole."""
    if len(name.encode()) <= limit:
        return name
    head, dot, tail = name.partition(".")
    clusters = characters(head)
    room = limit - len((dot + tail).encode())
    while clusters and len("".join(clusters).encode()) > room:
        clusters.pop()
    return ("".join(clusters) or NO_PROMPT_PART) + dot + tail
