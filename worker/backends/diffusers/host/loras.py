"""LoRAs in the warm model host: each file loaded once into the model's UNet or SD 3
transformer (and its CLIP text encoders, where the file has weights for them) as a PEFT
adapter, then switched per job by weight, without loading the model again. The model's
pipelines share those components, so what is set on one is set on all.

A job that applies none (or only weights of 0) runs with the adapters disabled: the
model's own image, bit for bit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from worker.backends.diffusers.host.messages import HostLora

MAX_HELD = 8
"""LoRAs kept loaded at once: beyond, the one used longest ago is let go."""


class LoraLoadError(Exception):
    """A LoRA file the listing took for one that fits, which diffusers could not load."""


@dataclass
class Adapters:
    """The LoRAs loaded into a model, by file, the one used last at the end."""

    names: dict[str, str] = field(default_factory=dict)
    made: int = 0

    def apply(self, pipe: Any, loras: list[HostLora]) -> None:
        """Make `pipe`'s components apply exactly `loras`, at their weights."""
        active = [lora for lora in loras if lora.weight != 0]
        if not active:
            if self.names:
                pipe.disable_lora()
            return
        wanted = {str(lora.path) for lora in active}
        for lora in active:
            key = str(lora.path)
            if key in self.names:
                self.names[key] = self.names.pop(key)
                continue
            self._make_room(pipe, keep=wanted)
            self.made += 1
            name = f"lora_{self.made}"
            try:
                pipe.load_lora_weights(key, adapter_name=name)
            except Exception as exc:  # diffusers' reason, whichever it is, is the reason
                with contextlib.suppress(Exception):
                    pipe.delete_adapters(name)
                text = str(exc).strip().splitlines()
                raise LoraLoadError(
                    f"the LoRA {lora.path.name} could not be loaded into this model "
                    f"({type(exc).__name__}: {text[0] if text else 'no message'}); it may be "
                    "for another model of the same width, or damaged"
                ) from exc
            self.names[key] = name
        pipe.enable_lora()
        pipe.set_adapters(
            [self.names[str(lora.path)] for lora in active],
            adapter_weights=[lora.weight for lora in active],
        )

    def _make_room(self, pipe: Any, keep: set[str]) -> None:
        while len(self.names) >= MAX_HELD:
            oldest = next((key for key in self.names if key not in keep), None)
            if oldest is None:
                return
            pipe.delete_adapters(self.names.pop(oldest))
