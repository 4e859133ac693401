"""The version of the wire contract. Bumped on any change a host must know about."""

from typing import Final

PROTOCOL_VERSION = "1.7"
"""1.1: -32008, metadata with every sampling parameter and its source, any id cancellable.
1.2: the diffusers backend: schedulers euler, euler_a and ddim, `backend.modelHost`, a
seed per image, `width` and `height` (`limits.width`, `features.customSizes`).
1.3: `limits.maxBatchMembers`, a bounded batch.
1.4: `capabilities.models` and `defaultModel`, `generate.model`, `metadata.model` and
`family`; schedulers dpmpp_karras, euler_karras, euler_a_trailing, lcm and flow_match;
the parameter source `model`.
1.5: masked editing: `generate.mask`, `maskBlur` and `outpaint`, `models[].inpainting`
and `inpaintingReason`, `metadata.maskSha256`, `maskBlur` and `outpaint`.
1.6: ControlNet: `generate.controls`, `models[].controlnets`, `controlsReason` and
`controlWeights`, `metadata.controls`.
1.7: previews from the latents or TAESD: `generate.previewDecoder`,
`models[].previewDecoders` and `previewNote`; `metadata.dtypeReason`; LoRA:
`generate.loras`, `models[].loras` and `lorasReason`, `metadata.loras`; prompt weights
(`models[].promptWeights`); clip skip (`generate.clipSkip`, `models[].clipSkip`,
`metadata.clipSkip`)."""
REQUEST_SCHEMA_TAG: Final = "studio.local-image-generation.request.v1"
RESPONSE_SCHEMA_TAG: Final = "studio.local-image-generation.response.v1"
