"""Sampler backends: Core ML Stable Diffusion, and a procedural mock for tests."""
