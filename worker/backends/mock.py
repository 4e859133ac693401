"""The test-only procedural backend: deterministic 512x512 PNGs, no diffusion."""

from __future__ import annotations

BACKEND_ID = "mock"
MODEL_ID = "local/macos-procedural-v1"
