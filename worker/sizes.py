"""Which sizes a backend can make, and choosing one for a request.

Every backend offers a table of sizes by aspect ratio (`SizeTable`): Core ML one bundle
per ratio, converted for its size; the others any standard ratio at the model's native
area, and any size on request (`custom_sizes`). The ratio arithmetic is shared here;
where the sizes come from is each backend's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

from protocol.errors import ConfigInvalidData, UnsupportedFeatureData
from worker.errors import ConfigInvalid, UnsupportedFeature

STANDARD_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (512, 512),
    "4:3": (768, 576),
    "3:4": (576, 768),
    "16:9": (1024, 576),
    "9:16": (576, 1024),
}
"""The sizes Studio's converted bundles make, per ratio (the ratios every backend offers)."""
LATENT_SCALE = 8
"""A latent pixel is 8x8 image pixels: sides are multiples of this."""


@dataclass(frozen=True)
class SizeOption:
    """One size a backend can make: its ratio, and the model files that make it."""

    ratio: str
    width: int
    height: int
    resource_path: Path
    source: str
    """Where its path came from: the environment, a manifest, the default."""
    present: bool
    problem: str = ""
    """Why it cannot be used (its configuration disagrees with it); empty when it can."""

    @property
    def usable(self) -> bool:
        return self.present and not self.problem


@dataclass(frozen=True)
class SizeTable:
    """The sizes a backend offers now, by ratio."""

    options: dict[str, SizeOption]
    custom_sizes: bool = False
    """Any width and height (multiples of 8) within the protocol's range, made by the 1:1
    option's model; False: only the sizes of `options`."""
    manifest_path: Path | None = None
    """The file that mapped ratios to models, if one was read."""
    problems: tuple[ConfigInvalidData, ...] = ()
    configured_by: str = ""
    """The variable that maps ratios to models (named in errors); empty where the
    backend's own model makes every ratio."""
    fixed_sizes_reason: str = ""
    """Why only the sizes of `options` can be made, for the error that refuses another."""
    fixed_sizes_alternative: str = ""
    """What makes other sizes, for the same error."""
    native: tuple[int, int] | None = None
    """The size its model was trained at, where it makes other sizes too."""

    @property
    def usable_ratios(self) -> list[str]:
        return [ratio for ratio, option in self.options.items() if option.usable]


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


def standard_table(resource_path: Path, source: str, native_side: int) -> SizeTable:
    """Every standard ratio at the area of a model trained at `native_side`, all made by
    that one model, and any other size on request."""
    return SizeTable(
        {
            ratio: SizeOption(ratio, *size_at(ratio, native_side), resource_path, source, True)
            for ratio in STANDARD_SIZES
        },
        custom_sizes=True,
        native=(native_side, native_side),
    )


FAR_FROM_NATIVE = 4
"""A size with this many times the pixels of the model's native size, or this many times
fewer, is far from what it was trained at."""


def far_from_native(table: SizeTable, option: SizeOption) -> str:
    """A warning for a size far from the model's native one (slow, and a model far from
    its training size repeats or smears its subjects); empty when it is near."""
    if table.native is None:
        return ""
    native_width, native_height = table.native
    times = option.width * option.height / (native_width * native_height)
    native = f"{native_width}x{native_height}"
    if times >= FAR_FROM_NATIVE:
        return (
            f"{option.width}x{option.height} has {times:.0f} times the pixels of this model's "
            f"native {native}: each step takes about that much longer, and so far from its "
            f"training size it tends to repeat or smear its subject. It makes {native} best "
            "(or an aspectRatio at that area)."
        )
    if times <= 1 / FAR_FROM_NATIVE:
        return (
            f"{option.width}x{option.height} has 1/{1 / times:.0f} of the pixels of this "
            f"model's native {native}: so far below its training size it tends to lose its "
            f"subject. It makes {native} best (or an aspectRatio at that area)."
        )
    return ""


def ratio_of(width: int, height: int) -> str:
    """`16:9` for 1024x576: the size's ratio in lowest terms."""
    divisor = gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


def choose_ratio(table: SizeTable, ratio: str) -> SizeOption:
    """What makes `ratio`: -32001 listing the ratios that can be made when nothing can
    make it, -32007 when its configuration disagrees with its model."""
    option = table.options.get(ratio)
    where = f" ({table.configured_by})" if table.configured_by else ""
    if option is not None and option.problem:
        raise ConfigInvalid(
            f"Configuration invalid: {option.problem}. Fix the model manifest{where} or the "
            "bundle, and restart the worker.",
            ConfigInvalidData(
                variable=table.configured_by,
                value=str(table.manifest_path or option.resource_path),
                reason=option.problem,
            ),
        )
    if option is not None and not option.present and ratio == "1:1":
        return option  # the backend says what to install (-32002), as `install` provides it
    if option is None or not option.present:
        usable = table.usable_ratios
        why = (
            f"its bundle is not installed ({option.resource_path})"
            if option is not None
            else "no bundle for it is configured"
        )
        raise UnsupportedFeature(
            f"Unsupported feature: aspectRatio {ratio!r}: {why}. The installed bundles make "
            f"{', '.join(usable) or 'no ratio'}; the model manifest{where} maps each ratio to "
            "a bundle converted for its size.",
            UnsupportedFeatureData(feature="aspectRatio", supported=usable),
        )
    return option


def choose_size(table: SizeTable, width: int, height: int) -> SizeOption:
    """What makes `width` x `height`: the 1:1 model at that size where sizes are free,
    else the option of that size; -32001 listing the sizes that can be made when none is."""
    ratio = ratio_of(width, height)
    square = table.options.get("1:1")
    if table.custom_sizes and square is not None:
        return SizeOption(ratio, width, height, square.resource_path, square.source, True)
    for option in table.options.values():
        if (option.width, option.height) == (width, height) and option.usable:
            return option
    sizes = [f"{o.width}x{o.height}" for o in table.options.values() if o.usable]
    alternative = table.fixed_sizes_alternative
    raise UnsupportedFeature(
        f"Unsupported feature: size {width}x{height}: {table.fixed_sizes_reason}, and the "
        f"installed ones make {', '.join(sizes) or 'none'}. Ask for one of them (or its "
        f"aspectRatio){', or ' + alternative if alternative else ''}.",
        UnsupportedFeatureData(feature="size", supported=sizes),
    )
