"""Sampler backends: Core ML Stable Diffusion, Hugging Face diffusers, and a procedural
mock for tests.

The ids and the names the environment may use for them live here, apart from the
backends, so that settings and `capabilities` can name a backend without loading what
generating with it needs.
"""

from typing import Literal

from protocol.models import SCHEDULERS, Scheduler

BackendId = Literal["coreml_diffusion", "diffusers", "mock"]
COREML_BACKEND_ID: BackendId = "coreml_diffusion"
DIFFUSERS_BACKEND_ID: BackendId = "diffusers"
MOCK_BACKEND_ID: BackendId = "mock"
BACKEND_NAMES: dict[str, BackendId] = {
    "": COREML_BACKEND_ID,
    "coreml": COREML_BACKEND_ID,
    "coreml_diffusion": COREML_BACKEND_ID,
    "diffusers": DIFFUSERS_BACKEND_ID,
    "mock": MOCK_BACKEND_ID,
    "procedural": MOCK_BACKEND_ID,
}
"""What SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND may say (lower-cased), as the original did."""
MOCK_MODEL_ID = "local/macos-procedural-v1"
BACKEND_SCHEDULERS: dict[BackendId, tuple[Scheduler, ...]] = {
    COREML_BACKEND_ID: ("pndm", "dpmpp"),
    DIFFUSERS_BACKEND_ID: SCHEDULERS,
    MOCK_BACKEND_ID: SCHEDULERS,
}
"""The schedulers each backend serves; the environment may pin only one of these."""
