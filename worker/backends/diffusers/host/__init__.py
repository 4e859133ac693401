"""The diffusers model host: a child process that keeps one Stable Diffusion pipeline
loaded and renders the jobs the worker sends it, one at a time.

Only `messages` is imported by the worker; everything that needs torch lives in
`pipeline` and runs in the host process alone (`python -m worker.backends.diffusers.host`).
"""
