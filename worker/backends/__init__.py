"""The backends: Core ML Stable Diffusion (`coreml/`), Hugging Face diffusers
(`diffusers/`), and a procedural mock for tests (`mock.py`), each behind the plug-in
face of `base.py`, listed in `registry.py`."""
