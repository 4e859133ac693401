"""How result images are named, by every backend: StableDiffusionSample's convention,
which Studio graphs depend on.

The sampler names each file after `prompt.prefix(75)`: 75 Swift `Character`s, which
are extended grapheme clusters (a letter with 70 combining marks is one), spaces made
`_`, then `.<index>` (only when it makes several), `.str<P>` (image-to-image),
`.<seed>`, `.final.png` (or `.<step>.png` for an intermediate image).
"""

from __future__ import annotations

import math
import struct

import regex

NAME_PREFIX_CHARACTERS = 75
"""`fileCharLimit` in the sampler's `imageName`."""
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
    name = name_prefix(prompt)
    if image_count != 1:
        name += f".{index}"
    if strength is not None:
        name += f".str{strength_percent(strength)}"
    return f"{name}.{seed}.{'final' if step is None else step}.png"
