"""The Core ML backend: Apple's `StableDiffusionSample`, one supervised run per job.

`plugin` is its face to the core; `backend` renders jobs with the `sampler` package;
`bundles` reads which bundle makes which size; `checks`, `install` and `download` find,
verify and provide the sampler and its model; `settings` reads its own variables.
"""
