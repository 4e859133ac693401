"""The seed the original one-shot provider derived from prompt and run, bit for bit."""

from __future__ import annotations

FNV_OFFSET_BASIS = 0x811C9DC5
FNV_PRIME = 0x01000193


def fnv1a32_low_bytes(text: str) -> int:
    """32-bit FNV-1a over the low 8 bits of each UTF-16 code unit (JS `charCodeAt(i) & 0xff`)."""
    utf16 = text.encode("utf-16-le", "surrogatepass")
    value = FNV_OFFSET_BASIS
    # Little-endian UTF-16: the low byte of each code unit is at the even offsets.
    for low_byte in utf16[0::2]:
        value ^= low_byte
        value = (value * FNV_PRIME) & 0xFFFFFFFF
    return value


def derive_seed(prompt: str, run_id: str) -> int:
    """`max(1, fnv1a32(prompt + "::" + (runId or "local")))`, both trimmed first."""
    return max(1, fnv1a32_low_bytes(f"{prompt.strip()}::{run_id.strip() or 'local'}"))
