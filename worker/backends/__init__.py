"""Sampler backends: Core ML Stable Diffusion, and a procedural mock for tests.

The ids and the names the environment may use for them live here, apart from the
backends, so that settings and `capabilities` can name a backend without loading what
generating with it needs.
"""

from typing import Literal

BackendId = Literal["coreml_diffusion", "mock"]
COREML_BACKEND_ID: BackendId = "coreml_diffusion"
MOCK_BACKEND_ID: BackendId = "mock"
BACKEND_NAMES: dict[str, BackendId] = {
    "": COREML_BACKEND_ID,
    "coreml": COREML_BACKEND_ID,
    "coreml_diffusion": COREML_BACKEND_ID,
    "mock": MOCK_BACKEND_ID,
    "procedural": MOCK_BACKEND_ID,
}
"""What SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND may say (lower-cased), as the original did."""
MOCK_MODEL_ID = "local/macos-procedural-v1"
