"""Prompts as embeddings, for the families that read CLIP text encoders (SD 1.x/2.x, SDXL
and SD 3's two CLIP encoders): the words' weights (`(word:1.2)`, `(word)`, `[word]`, as
AUTOMATIC1111 reads them) and clip skip.

Used only where a prompt carries weights or a clip skip asks for an earlier layer;
otherwise the pipeline encodes its prompts itself. The tokens are encoded as the
pipeline does (start, the tokens, end, padding: 77 in all), in as many chunks of 75
tokens as the prompt needs (a weighted prompt is not cut at 77 tokens); each token's
embedding is multiplied by its weight, and each chunk scaled back to the mean it had
unweighted, as AUTOMATIC1111 does, so weights move the emphasis, not the overall scale.
A prompt of weights 1 only is the pipeline's own embedding, number for number. SD 3's
T5 encoder, where the model has one, reads the words as its pipeline does (its weights
are CLIP's).
"""

from __future__ import annotations

from typing import Any

from worker.prompt_weights import is_weighted, parse, plain

Tokens = list[tuple[int, float]]


def prompt_arguments(
    pipe: Any, family: str, prompt: str, negative: str, clip_skip: int | None
) -> dict[str, Any] | None:
    """The pipeline's prompt arguments as embeddings (in place of `prompt` and
    `negative_prompt`), or None where the pipeline's own encoding is the same."""
    skip = clip_skip or 1
    if not (is_weighted(prompt) or is_weighted(negative) or skip > 1):
        return None
    import torch

    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if family in ("sdxl", "sd3"):
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    encoders = [(t, e) for t, e in encoders if t is not None and e is not None]
    sides = [_tokens(encoders, prompt), _tokens(encoders, negative)]
    chunk_count = max(len(_chunks(tokens, encoders[0][0])) for tokens in sides[0] + sides[1])
    with torch.no_grad():
        (embeds, pooled), (negative_embeds, negative_pooled) = (
            _embed(encoders, side, chunk_count, family, skip) for side in sides
        )
    if family == "sd3":
        embeds, negative_embeds = (
            _with_t5(pipe, clip, words)
            for clip, words in ((embeds, prompt), (negative_embeds, negative))
        )
    if family not in ("sdxl", "sd3"):
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
    if not negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        # SDXL's own rule for an empty negative prompt: zeros, not the empty text's embedding.
        negative_embeds, negative_pooled = (
            torch.zeros_like(negative_embeds),
            torch.zeros_like(negative_pooled),
        )
    return {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative_embeds,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


def _with_t5(pipe: Any, clip: Any, text: str) -> Any:
    """SD 3's whole embedding: CLIP's, widened to T5's width, then T5's of the words
    (zeros where the model has no T5), as its pipeline joins them."""
    import torch

    t5 = pipe._get_t5_prompt_embeds(
        prompt=plain(text), num_images_per_prompt=1, device=clip.device, dtype=clip.dtype
    )
    widened = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([widened, t5.to(clip.dtype)], dim=-2)


def _tokens(encoders: list[tuple[Any, Any]], text: str) -> list[Tokens]:
    """The text's tokens by each tokenizer, each with the weight of its fragment."""
    fragments = parse(text)
    return [
        [
            (token, weight)
            for fragment, weight in fragments
            for token in tokenizer(fragment, add_special_tokens=False).input_ids
        ]
        for tokenizer, _ in encoders
    ]


def _chunks(tokens: Tokens, tokenizer: Any) -> list[Tokens]:
    size = tokenizer.model_max_length - 2
    return [tokens[i : i + size] for i in range(0, len(tokens), size)] or [[]]


def _embed(
    encoders: list[tuple[Any, Any]],
    tokens_each: list[Tokens],
    chunk_count: int,
    family: str,
    skip: int,
) -> tuple[Any, Any]:
    """The embeddings of one side (the prompt or the negative), `chunk_count` chunks
    long; and the pooled embedding of its first chunk (SDXL's second encoder's, SD 3's
    two joined; else None)."""
    import torch

    chunks = []
    pooled = []
    for index in range(chunk_count):
        hidden = []
        weights = None
        for (tokenizer, encoder), tokens in zip(encoders, tokens_each, strict=True):
            ids, weights = _framed(_chunk(tokens, tokenizer, index), tokenizer)
            output = encoder(torch.tensor([ids], device=encoder.device), output_hidden_states=True)
            hidden.append(_layer(encoder, output, family, skip))
            last = encoder is encoders[-1][1]
            if index == 0 and (family == "sd3" or (family == "sdxl" and last)):
                pooled.append(output.text_embeds)
        embedding = torch.cat(hidden, dim=-1)
        assert weights is not None
        scale = torch.tensor(weights, dtype=embedding.dtype, device=embedding.device)
        mean = embedding.float().mean()
        weighted = embedding * scale.reshape(1, -1, 1)
        chunks.append(weighted * (mean / weighted.float().mean()).to(embedding.dtype))
    return torch.cat(chunks, dim=1), torch.cat(pooled, dim=-1) if pooled else None


def _chunk(tokens: Tokens, tokenizer: Any, index: int) -> Tokens:
    chunks = _chunks(tokens, tokenizer)
    return chunks[index] if index < len(chunks) else []


def _framed(chunk: Tokens, tokenizer: Any) -> tuple[list[int], list[float]]:
    """A chunk as the encoder reads it: start, its tokens, end, then padding."""
    length = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *(t for t, _ in chunk), tokenizer.eos_token_id]
    weights = [1.0, *(w for _, w in chunk), 1.0]
    return ids + [pad] * (length - len(ids)), weights + [1.0] * (length - len(weights))


def _layer(encoder: Any, output: Any, family: str, skip: int) -> Any:
    """The layer the family reads: SDXL and SD 3 the one before last, as their pipelines
    do; SD 1.x/2.x the last, or `skip` from the end through the final layer norm."""
    if family in ("sdxl", "sd3"):
        return output.hidden_states[-2]
    if skip == 1:
        return output[0]
    norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 4 / 5
    return norm(output.hidden_states[-skip])
