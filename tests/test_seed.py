from __future__ import annotations

import pytest

from worker.seed import derive_seed


@pytest.mark.parametrize(
    ("prompt", "run_id", "seed"),
    [
        ("a red fox in snow", "run_1", 349733761),
        ("a red fox in snow", "", 3142319263),
        ("x", "", 2631246022),
        ("  a red fox in snow ", " run_1 ", 349733761),
    ],
)
def test_seed_matches_the_original_provider(prompt: str, run_id: str, seed: int) -> None:
    assert derive_seed(prompt, run_id) == seed


def test_empty_run_id_means_local() -> None:
    assert derive_seed("x", "") == derive_seed("x", "local")


def test_non_ascii_uses_only_the_low_byte_of_each_utf16_unit() -> None:
    # U+0161 (š) and U+0061 (a) share the low byte 0x61 in JavaScript's charCodeAt & 0xff.
    assert derive_seed("\u0161", "r") == derive_seed("a", "r")
    # An astral character is two UTF-16 units (a surrogate pair), as in JavaScript.
    assert derive_seed("\U0001f98a", "r") == derive_seed("\ud83e\udd8a", "r")
    assert derive_seed("\U0001f98a", "r") == derive_seed("\u003e\u008a", "r")
