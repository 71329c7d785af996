"""Prompt embeddings, cached per (prompt, text encoders): a re-run with the same prompt does not encode again,
so the text encoders need not come back to the device for it."""

from __future__ import annotations

from collections import OrderedDict

import torch

from .families import family_of

LIMIT = 16  # prompts kept (a T5 embedding is 512 x 4096 values: 4 MiB in bf16)


class PromptCache:
    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self._items: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> dict[str, torch.Tensor] | None:
        """The cached prompt arguments (prompt_embeds, and FLUX.1's pooled_prompt_embeds) for ``key``, or None."""
        found = self._items.get(key)
        if found is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return found

    @staticmethod
    def key(encoders: tuple, prompt: str, max_sequence_length: int) -> tuple:
        """``encoders``: what identifies the text encoders (their component keys): other encoders, other entry."""
        return (encoders, prompt, max_sequence_length)

    def encode(self, pipe, key: tuple, device: torch.device) -> dict[str, torch.Tensor]:
        """Encode the prompt of ``key`` with ``pipe``'s text encoders (as its family does) and keep the result."""
        _encoders, prompt, max_sequence_length = key
        with torch.no_grad():
            found = family_of(type(pipe).__name__).encode_prompt(pipe, prompt, device, max_sequence_length)
        self._items[key] = found
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
        return found

    def clear(self) -> None:
        self._items.clear()
