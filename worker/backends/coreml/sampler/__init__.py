"""Driving `StableDiffusionSample`: its command line, its output, its process."""
