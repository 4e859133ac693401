"""The diffusers backend's id and its own variables: the model, the device, the dtype,
and how long the model host may idle."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from worker.backends.diffusers.variables import (
    ENV_DEVICE,
    ENV_DTYPE,
    ENV_IDLE_MS,
    ENV_LOAD_TIMEOUT_MS,
    ENV_LORAS_DIR,
    ENV_MODEL,
    ENV_MODELS_DIR,
)
from worker.settings import EnvironmentReader

BACKEND_ID = "diffusers"
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""A hub repository id, looked up in the local Hugging Face cache (`install` puts it there)."""
DTYPES = ("auto", "float16", "bfloat16", "float32")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEFAULT_IDLE_MS = 600_000
MAX_IDLE_MS = 7 * 24 * 3_600_000
DEFAULT_LOAD_TIMEOUT_MS = 900_000
"""A first load of a real model can take minutes (imports compiled, weights read from disk)."""
LOAD_TIMEOUT_MS_RANGE = (1_000, 3_600_000)
DEFAULT_MODELS_DIR = ".systemsculpt/diffusers-models"
"""Relative to the home directory: where model directories and checkpoints are listed from."""
LORAS_FOLDER = "loras"
"""In the models folder: where LoRA files are listed from, unless set elsewhere."""


@dataclass(frozen=True)
class DiffusersSettings:
    model: str = DEFAULT_MODEL
    """A diffusers directory, a single-file checkpoint, or a hub repository id."""
    model_explicit: bool = False
    device: str = "auto"
    """auto (cuda, then mps, then cpu), cpu, mps, cuda or cuda:N."""
    dtype: str = "auto"
    """auto: float16 on cuda and mps, float32 on cpu."""
    idle_ms: int = DEFAULT_IDLE_MS
    """The model host exits after this long without a job (0: never)."""
    load_timeout_ms: int = DEFAULT_LOAD_TIMEOUT_MS
    """How long the model host may take to load the model: a limit of its own, since a
    request's `timeoutMs` counts only the work it asked for."""
    models_dir: Path = Path(DEFAULT_MODELS_DIR)
    loras_dir: Path = Path(DEFAULT_MODELS_DIR) / LORAS_FOLDER
    """Every `.safetensors` LoRA in it (and its folders) is listed for the models it fits."""

    def summary(self) -> str:
        """For `doctor`'s settings line."""
        return f"model {self.model}, idle unload {self.idle_ms} ms"

    @classmethod
    def read(cls, reader: EnvironmentReader, home: Path) -> DiffusersSettings:
        models_dir = Path(reader.text(ENV_MODELS_DIR, str(home / DEFAULT_MODELS_DIR))).expanduser()
        return cls(
            model=reader.text(ENV_MODEL, DEFAULT_MODEL),
            model_explicit=bool(reader.raw(ENV_MODEL)),
            device=reader.pattern(
                ENV_DEVICE, DEVICE_PATTERN, "auto", "auto, cpu, mps, cuda or cuda:N"
            ).lower(),
            dtype=reader.choice(ENV_DTYPE, DTYPES, "auto"),
            idle_ms=reader.number(ENV_IDLE_MS, int, 0, MAX_IDLE_MS, DEFAULT_IDLE_MS),
            load_timeout_ms=reader.number(
                ENV_LOAD_TIMEOUT_MS, int, *LOAD_TIMEOUT_MS_RANGE, DEFAULT_LOAD_TIMEOUT_MS
            ),
            models_dir=models_dir,
            loras_dir=Path(reader.text(ENV_LORAS_DIR, str(models_dir / LORAS_FOLDER))).expanduser(),
        )
