"""The model host's rendering of one job, made directly in one process, timed.

`python -m bench.direct_pipeline MODEL --steps N --runs R --size WxH`: loads the model
and renders with the very functions the model host uses (minus the worker, the pipe and
the host's framing), warms up once, then prints as JSON the seconds each job took. Run
in its own process so that the bench itself never imports torch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from worker.backends.diffusers.host import messages, pipeline
from worker.backends.diffusers.host.messages import HostJob, HostSampling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--prompt", default="a red fox in snow")
    parser.add_argument("--dtype", default="auto", help="as the worker's variable takes it")
    parser.add_argument("--scheduler", default="pndm")
    parser.add_argument("--guidance", type=float, default=7.5)
    arguments = parser.parse_args()
    width, height = (int(part) for part in arguments.size.split("x"))
    model = pipeline.load(arguments.model, "auto", arguments.dtype, safety=False)
    stop = threading.Event()
    events: list[messages.Message] = []
    seconds = []
    with tempfile.TemporaryDirectory() as output:
        job = HostJob(
            prompt=arguments.prompt,
            negative_prompt="",
            seed=42,
            count=1,
            width=width,
            height=height,
            strength=None,
            preview_every=0,
            sampling=HostSampling(
                step_count=arguments.steps,
                guidance_scale=arguments.guidance,
                scheduler=arguments.scheduler,
                reduce_memory=False,
            ),
            output_dir=output,
        )
        pipeline.render(model, job, stop, events.append)  # warm-up, as the worker's is warm
        for _ in range(arguments.runs):
            started = time.perf_counter()
            pipeline.render(model, job, stop, events.append)
            seconds.append(time.perf_counter() - started)
    print(json.dumps({"seconds": seconds, "loadMs": model.load_ms, "dtype": model.dtype}))


if __name__ == "__main__":
    main()
