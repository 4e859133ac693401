"""The diffusers backend: Hugging Face diffusers in a supervised model host that keeps
the pipeline loaded between jobs.

`plugin` is its face to the core; `backend` runs a job, `supervisor` keeps the host
(`host_process` is the handle on one host process), `checks` finds the extra and the
model without importing them, `provision` is its doctor and install; `host/` is the
model host itself, the only code that imports torch.
"""
