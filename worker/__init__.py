"""studio-imagegen-worker: on-device image generation for Studio over JSON-RPC on stdio."""

__version__ = "0.1.0"
