"""Prompt encoding of text-conditioned teachers: prompts -> CLIP text-encoder hidden states ``(B, L, C)``, padded and
truncated to the tokenizer's ``model_max_length`` (what Stable Diffusion's UNets are trained on). The one place it
is written: the distillation conditioner, ``OneStepPipeline`` and SuperDiff's pipeline call it."""
from __future__ import annotations

import torch


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts, device=None, chunk: int | None = None) -> torch.Tensor:
    """Hidden states ``(len(prompts), L, C)`` in the text encoder's dtype, ``chunk`` prompts per encoder call (all
    at once by default)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    chunk = chunk or max(len(prompts), 1)
    out = []
    for i in range(0, len(prompts), chunk):
        ids = tokenizer(prompts[i:i + chunk], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        out.append(text_encoder(ids.to(device) if device is not None else ids)[0])
    return torch.cat(out)
