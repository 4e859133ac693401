"""The model host's previews: a thumbnail of an image as its latents stand at a step,
made in the host's memory and sent inline (no file, no PNG read back by the worker).

`latent` previews take the latents through the family's latent-to-RGB factors, a 4x3
matrix per latent pixel, as ComfyUI, AUTOMATIC1111, InvokeAI and Draw Things make
their live previews: a few milliseconds at 512x512, so a preview every step costs
almost nothing. `vae` previews decode the latents as the final image is decoded: what
the image would look like now, at the cost of a decode each. `taesd` previews decode
with a tiny autoencoder (TAESD) where one is installed: close to the VAE's look, at a
few percent of its time.

Runs only in the host process.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from worker.backends.diffusers.host import messages
from worker.backends.diffusers.host.families import Family


def preview_message(
    pipe: Any,
    family: Family,
    latents: Any,
    job: messages.HostJob,
    where: tuple[int, int, int],
    tiny_autoencoder: Any = None,
) -> messages.Preview:
    """The preview of image `where` = (index, step, total_steps) from its `latents` [1,
    C, h, w]: a PNG of the job's shape, its longest side at most the job's
    `preview_side` (and never larger than the image itself)."""
    if job.preview_decoder == "latent":
        image = latent_image(latents, family)
    elif job.preview_decoder == "taesd" and tiny_autoencoder is not None:
        image = tiny_decoded_image(tiny_autoencoder, latents)
    else:
        image = decoded_image(pipe, latents)
    scale = min(1.0, job.preview_side / max(job.width, job.height))
    size = (max(1, round(job.width * scale)), max(1, round(job.height * scale)))
    if size != image.size:
        image = image.resize(size, _resampling(image.size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    index, step, total = where
    return messages.Preview(
        step=step,
        total_steps=total,
        index=index,
        png=base64.b64encode(buffer.getvalue()).decode("ascii"),
        width=image.width,
        height=image.height,
    )


def _resampling(source: tuple[int, int], target: tuple[int, int]) -> Any:
    from PIL import Image

    enlarging = target[0] > source[0]
    return Image.Resampling.BILINEAR if enlarging else Image.Resampling.LANCZOS


def latent_image(latents: Any, family: Family) -> Any:
    """The latents of one image as RGB through the family's factors: `(x + 1) * 127.5`
    of their weighted sum per pixel, clamped, at the latents' own size."""
    import torch
    from PIL import Image

    with torch.no_grad():
        sample = latents[0].to(device="cpu", dtype=torch.float32)
        factors = torch.tensor(family.latent_rgb, dtype=torch.float32)
        bias = torch.tensor(family.latent_rgb_bias, dtype=torch.float32)
        rgb = torch.einsum("chw,cr->hwr", sample, factors) + bias
        pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).contiguous()
    height, width, _ = pixels.shape
    return Image.frombytes("RGB", (width, height), pixels.numpy().tobytes())


def tiny_decoded_image(tiny_autoencoder: Any, latents: Any) -> Any:
    """The latents decoded by TAESD, which reads them as the model makes them (its
    scaling factor is 1) and draws at the image's own size."""
    import torch
    from PIL import Image

    with torch.no_grad():
        sample = tiny_autoencoder.decode(
            latents.to(device=tiny_autoencoder.device, dtype=tiny_autoencoder.dtype)
        ).sample[0]
        rgb = ((sample.float().cpu() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
        pixels = rgb.permute(1, 2, 0).contiguous()
    height, width, _ = pixels.shape
    return Image.frombytes("RGB", (width, height), pixels.numpy().tobytes())


def decoded_image(pipe: Any, latents: Any) -> Any:
    """The image the latents would make now: one VAE decode, as the pipeline makes its
    final one (SD3's latents are shifted; a float16 VAE that overflows, as SDXL's does,
    decodes in float32)."""
    import torch

    vae = pipe.vae
    config = vae.config
    scaled = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    upcast = vae.dtype == torch.float16 and getattr(config, "force_upcast", False)
    dtype = torch.float32 if upcast else vae.dtype
    with torch.no_grad():
        if upcast:
            vae.to(torch.float32)
        try:
            image = vae.decode(scaled.to(dtype), return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
    return pipe.image_processor.postprocess(image, output_type="pil")[0]
