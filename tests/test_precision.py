"""The precision the diffusers backend runs in: `auto` takes bfloat16 on a CPU that does
it in hardware and float32 on one that would emulate it, says why, and a bfloat16 image
stays close to the float32 one."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from tests.diffusers_setup import DiffusersSetup
from tests.worker_clients import start_worker_process
from worker.backends.diffusers.host import precision
from worker.backends.diffusers.host.batches import batch_size, out_of_memory
from worker.backends.diffusers.host.precision import choose_precision, hardware_bfloat16

XEON = "flags\t\t: fpu vme sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile\n"
OLDER = "flags\t\t: fpu vme sse2 avx2 avx512f avx512bw\n"
GRAVITON = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "found"),
    [(XEON, "Intel AMX and AVX-512 BF16"), (OLDER, ""), (GRAVITON, "Arm BF16"), ("", "")],
)
def test_hardware_bfloat16_is_read_from_the_cpus_flags(
    tmp_path: Path, cpuinfo: str, found: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("platform.system", lambda: "Linux")
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\n" + cpuinfo)
    assert hardware_bfloat16(path) == found
    assert hardware_bfloat16(tmp_path / "absent") == ""


def test_auto_chooses_per_device_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    variable = "SYSTEMSCULPT_LOCAL_DIFFUSERS_DTYPE"
    assert choose_precision("float32", "cpu", variable) == ("float32", f"{variable}=float32")
    assert choose_precision("auto", "cuda:1", variable) == ("float16", "auto: float16 on cuda")
    monkeypatch.setattr(precision, "hardware_bfloat16", lambda: "Intel AMX")
    dtype, why = choose_precision("auto", "cpu", variable)
    assert dtype == "bfloat16" and "in hardware (Intel AMX)" in why
    monkeypatch.setattr(precision, "hardware_bfloat16", lambda: "")
    dtype, why = choose_precision("auto", "cpu", variable)
    assert dtype == "float32" and "emulated" in why


def _image(answer: dict[str, Any]) -> Image.Image:
    data = base64.b64decode(answer["result"]["images"][0]["base64"])
    return Image.open(io.BytesIO(data)).convert("RGB")


BFLOAT16_MEAN_DIFFERENCE = 2.0
"""The most a bfloat16 image of the tiny model may differ from its float32 image, as the
mean absolute difference of its channels in levels of 255. bfloat16 keeps 8 bits of
mantissa, so each operation rounds at about 0.4 %; through the tiny UNet's four steps
and the VAE that leaves well under a level on average (0.41 measured here), so 2 allows
five times that. An image gone wrong (noise, black, NaN) differs by 60 levels or more."""


@pytest.mark.diffusers
def test_auto_runs_as_this_cpu_allows_and_bfloat16_stays_close_to_float32(
    tiny_model: Path, tmp_path: Path
) -> None:
    expected = "bfloat16" if hardware_bfloat16() else "float32"
    params = {"prompt": "a fox", "seed": 4, "stepCount": 4}
    made = {}
    for dtype in ("auto", "bfloat16", "float32"):
        setup = DiffusersSetup(
            tmp_path / dtype, tiny_model, SYSTEMSCULPT_LOCAL_DIFFUSERS_DTYPE=dtype
        )
        worker = start_worker_process(setup.env)
        try:
            answer = worker.call("generate", params)
            metadata = answer["result"]["metadata"]
            host = worker.call("capabilities")["result"]["backend"]["modelHost"]
        finally:
            worker.close()
        ran = expected if dtype == "auto" else dtype
        assert (metadata["dtype"], host["dtype"]) == (ran, ran)
        assert metadata["dtypeReason"] == host["dtypeReason"]
        assert metadata["dtypeReason"].startswith("auto:" if dtype == "auto" else "SYSTEMSCULPT")
        made[dtype] = _image(answer)
    difference = ImageChops.difference(made["bfloat16"], made["float32"])
    mean = sum(ImageStat.Stat(difference).mean) / 3
    print(f"bfloat16 against float32: {mean:.2f} levels of 255 on average")
    assert 0 < mean <= BFLOAT16_MEAN_DIFFERENCE, mean
    assert made["auto"].tobytes() == made[expected].tobytes()


def test_a_batch_takes_what_the_free_memory_holds() -> None:
    gib = 1 << 30
    assert batch_size(4, (512, 512), "float32", False, None) == 4  # unknown: all
    assert batch_size(4, (512, 512), "float32", True, 64 * gib) == 1  # reduceMemory
    assert batch_size(1, (512, 512), "float32", False, 64 * gib) == 1
    assert batch_size(4, (512, 512), "float32", False, 64 * gib) == 4
    assert batch_size(4, (512, 512), "float32", False, 2 * gib) == 1
    assert batch_size(4, (512, 512), "bfloat16", False, int(1.2 * gib)) == 2


def test_running_out_of_memory_is_told_from_other_failures() -> None:
    assert out_of_memory(MemoryError())
    assert out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: 9 GB"))
    assert out_of_memory(type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"))
    assert not out_of_memory(RuntimeError("shapes cannot be multiplied"))
    assert not out_of_memory(ValueError("out of memory, said a string"))
