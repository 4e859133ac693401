"""Where StableDiffusionSample's image names make it write, and which names cannot work.

The sampler appends each image's name (`worker.file_names`) to `--output-path` as a
relative path, so `/` in the prompt means subdirectories and `..` climbs. Everything
here mirrors that exactly, so the worker can give the sampler an output path from which
no name can leave the job's directory, and refuse names that cannot work.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from worker.file_names import NAME_PREFIX_CHARACTERS, characters, final_name

NAME_MAX_BYTES = 255
"""Longest file name (one path component) on APFS, HFS+ and Linux file systems."""
PATH_MAX_BYTES = 1024
"""macOS `PATH_MAX`, the shorter of the two (Linux allows 4,096)."""
OUTPUT_ROOT = "out"
"""Inside the job directory: everything the sampler writes is below it."""
_STABLE_MARKS = frozenset({"Mn", "Me", "Mc"})


def is_stable_cluster(cluster: str) -> bool:
    """A cluster that every Unicode version since 5.1 segments alike: one code point, or
    one followed by combining marks only. Emoji sequences, flags, Hangul syllables and
    Indic conjuncts are grouped differently by older Swift runtimes (macOS 13)."""
    return all(unicodedata.category(mark) in _STABLE_MARKS for mark in cluster[1:])


@dataclass(frozen=True)
class OutputLayout:
    """Where the sampler's names lead, relative to the `--output-path`."""

    directories: tuple[str, ...]
    """The path components before the file name, as the name spells them."""
    file_names: tuple[str, ...]
    """The last component of each final image's name."""
    certain: bool
    """False when an older or newer Unicode version could cut the 75 characters
    elsewhere and a `/` lies where that would change the directories."""

    @property
    def climb(self) -> int:
        """How many levels above the output path the names can reach (`..` parts)."""
        return self.directories.count("..")

    def problems(self, output_path_bytes: int) -> list[str]:
        """Why the sampler could not write these names (empty when it can), in words that
        say what to change in the prompt."""
        found = []
        if not self.certain:
            found.append(
                "its first 75 characters mix '/' with emoji, flags or joined letters, which "
                "macOS versions group into characters differently, so the worker cannot be "
                "sure which folder the sampler would write the image to; remove the '/' "
                "from the prompt"
            )
        for part in (*self.directories, *self.file_names):
            size = len(part.encode("utf-8"))
            if size > NAME_MAX_BYTES:
                found.append(
                    f"the sampler names the image after the first 75 characters of the prompt, "
                    f"which make a file name of {size} bytes, over the file system's limit of "
                    f"{NAME_MAX_BYTES}; start the prompt with fewer emoji or non-Latin "
                    "characters (each takes 2 to 4 bytes or more)"
                )
                break
        longest = max(len(name.encode("utf-8")) for name in self.file_names)
        path_size = (
            output_path_bytes
            + sum(len(part.encode("utf-8")) + 1 for part in self.directories)
            + 1
            + longest
        )
        if path_size > PATH_MAX_BYTES and not found:
            found.append(
                f"the image's path would be {path_size} bytes, over macOS's limit of "
                f"{PATH_MAX_BYTES}; use fewer '/' in the first 75 characters of the prompt"
            )
        return found


def output_layout(
    prompt: str, *, image_count: int, seed: int, strength: float | None = None
) -> OutputLayout:
    """The directories and file names the sampler will use for this request."""
    clusters = characters(prompt)
    # The cut is certain when every character up to the first one after it is segmented
    # alike by every Unicode version; otherwise it matters only if a `/` could move in or
    # out of the prefix.
    unstable = next(
        (
            sum(map(len, clusters[:position]))
            for position, cluster in enumerate(clusters[: NAME_PREFIX_CHARACTERS + 1])
            if not is_stable_cluster(cluster)
        ),
        None,
    )
    certain = unstable is None or "/" not in prompt[unstable:]
    names = [
        final_name(prompt, index=index, image_count=image_count, seed=seed, strength=strength)
        for index in range(image_count)
    ]
    directories = tuple(names[0].split("/")[:-1])
    return OutputLayout(
        directories=directories,
        file_names=tuple(name.rsplit("/", 1)[-1] for name in names),
        certain=certain,
    )


def prepare_output_path(job_directory: Path, layout: OutputLayout) -> Path:
    """An `--output-path` inside `job_directory` from which the names stay inside it.

    The output path is nested as deep as the names climb, and the subdirectories the
    names imply are created (the sampler writes into them but does not make them).
    """
    output_path = job_directory.joinpath(OUTPUT_ROOT, *(["d"] * layout.climb))
    output_path.mkdir(parents=True)
    current = output_path
    for part in layout.directories:
        if part == "..":
            current = current.parent
        elif part not in ("", "."):
            current = current / part
            current.mkdir(exist_ok=True)
    return output_path
