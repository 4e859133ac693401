"""Sampler backends: Core ML Stable Diffusion, and a procedural mock for tests.

The ids live here, apart from the backends, so that `capabilities` can name a backend
without loading what generating with it needs.
"""

MOCK_BACKEND_ID = "mock"
MOCK_MODEL_ID = "local/macos-procedural-v1"
