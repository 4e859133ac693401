"""Which precision a model runs in: the one configured, or `auto`'s choice for the
device, with the reason either way (what `capabilities` and a result's metadata say).

`auto` takes the fastest precision that keeps images right on each device: float16 on
CUDA and MPS; on a CPU, bfloat16 where the CPU does bfloat16 matrix work in hardware
(Intel AMX, AVX-512 BF16 on recent Xeons and AMD Zen 4 and later, Arm's BF16 extension
as on Apple M2 and later), which runs a Stable Diffusion step about twice as fast as
float32 at the same image; elsewhere float32, since emulated bfloat16 is slower than
float32. bfloat16 keeps float32's range, so no part of a model overflows in it (float16
does: the SDXL VAE is upcast when it decodes).

Torch-free: reads the CPU's flags as the operating system reports them.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

X86_BF16_FLAGS = {"amx_bf16": "Intel AMX", "avx512_bf16": "AVX-512 BF16"}
"""/proc/cpuinfo flags of hardware bfloat16 matrix work, by what they are called."""


def hardware_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What of this CPU does bfloat16 matrix work in hardware ("Intel AMX", ...); ""
    where nothing does (or the system does not say)."""
    if platform.system() == "Darwin":
        return "Arm BF16" if _sysctl("hw.optional.arm.FEAT_BF16") == "1" else ""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in text.splitlines()
            if line.startswith(("flags", "Features"))
        ),
        [],
    )
    found = [name for flag, name in X86_BF16_FLAGS.items() if flag in flags]
    if "bf16" in flags:  # an Arm CPU's Features line
        found.append("Arm BF16")
    return " and ".join(found)


def _sysctl(name: str) -> str:
    try:
        ran = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return ran.stdout.strip()


def choose_precision(configured: str, device: str, variable: str) -> tuple[str, str]:
    """The dtype's name for `device` and why: `configured` unless it is `auto`."""
    if configured != "auto":
        return configured, f"{variable}={configured}"
    if device != "cpu":
        return "float16", f"auto: float16 on {device.split(':')[0]}"
    found = hardware_bfloat16()
    if found:
        return "bfloat16", f"auto: this CPU does bfloat16 matrix work in hardware ({found})"
    return "float32", (
        "auto: this CPU has no hardware bfloat16 (AMX, AVX-512 BF16, Arm BF16), where it "
        "would be emulated and slower than float32"
    )


def channels_last(device: str, dtype: str) -> bool:
    """Whether the UNet and the VAE run in channels-last memory layout: with bfloat16 on
    a CPU, where oneDNN's kernels want it (measured at SD 1.5's scale, 256x256: a UNet step
    6 % faster, a VAE decode 42 % faster); not in float32 there, where it is slower (26 %
    a UNet step)."""
    return device == "cpu" and dtype == "bfloat16"
