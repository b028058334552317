"""Text side: prompt templates, tokenisation and the CLIP text tower, with a per-prompt cache.

The official code encodes every prompt with the 80 OpenAI ImageNet templates padded to 77 tokens.
The text transformer is causal, so tokens after the end-of-text token cannot change the output at
the end-of-text position: we run the tower only up to the longest prompt's end token (identical
result, several times less work).
"""
from __future__ import annotations

import threading

import cachetools
import torch
from torch import nn

# The 80 OpenAI ImageNet zero-shot templates (as in OpenAI CLIP / open_clip).
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES


def prompt_texts(query: str) -> list[str]:
    return [template(query) for template in OPENAI_IMAGENET_TEMPLATES]


def tokenize(texts: list[str], context_length: int = 77) -> torch.Tensor:
    """CLIP BPE ids ``(len(texts), context_length)`` int64 (start 49406, end 49407, zero padded)."""
    import open_clip

    return open_clip.tokenize(texts, context_length=context_length)


def encode_tokens(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP text tower on ``(B, L)`` token ids -> ``(B, embed_dim)`` float32 (not normalised).

    Trims the padding after the longest sequence's end token (largest id); exact for a causal tower.
    """
    length = int((tokens.argmax(dim=-1)).max().item()) + 1
    tokens = tokens[:, :length]
    x = clip.token_embedding(tokens) + clip.positional_embedding[:length]
    mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
    for blk in clip.transformer.resblocks:
        x = blk(x, attn_mask=mask)
    x = clip.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    return pooled @ clip.text_projection


class TextEncoder:
    """Prompt -> normalised text embedding (mean over the 80 templates), cached per prompt.

    The cache is an LRU keyed by prompt; ``external`` (optional) is a second-level store with
    ``get_text(key) -> bytes | None`` / ``set_text(key, bytes)`` (e.g. :mod:`cass.cache`), keyed by
    ``"{model_fingerprint}:{prompt}"``; values are the raw float32 embedding bytes.
    """

    def __init__(self, clip: nn.Module, fingerprint: str, device: torch.device | str = "cpu",
                 max_entries: int = 4096, external=None):
        self.clip = clip
        self.fingerprint = fingerprint
        self.device = torch.device(device)
        self.max_entries = max_entries
        self.external = external
        self._cache: cachetools.LRUCache = cachetools.LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()
        self.context_length = int(clip.positional_embedding.shape[0])
        self.encoded_prompts = 0  # how many prompts were run through the tower (for tests/metrics)

    @torch.inference_mode()
    def encode_uncached(self, query: str) -> torch.Tensor:
        """``(embed_dim,)`` float32: normalise each template embedding, average, normalise.

        Prompts are run in two length buckets (shorter / longer half) so little padding is computed.
        """
        tokens = tokenize(prompt_texts(query), self.context_length).to(self.device)
        order = torch.argsort(tokens.argmax(dim=-1), stable=True)
        half = (len(order) + 1) // 2
        emb = torch.empty(len(order), int(self.clip.text_projection.shape[1]), device=self.device)
        for part in (order[:half], order[half:]):
            if len(part):
                emb[part] = encode_tokens(self.clip, tokens[part]).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        return (mean / mean.norm()).cpu()

    def is_cached(self, query: str) -> bool:
        """Whether ``query``'s embedding is in the in-process cache (no encoding, no Redis call)."""
        with self._lock:
            return query in self._cache

    def __call__(self, queries: list[str] | tuple[str, ...]) -> torch.Tensor:
        """``(Q, embed_dim)`` float32 embeddings of ``queries`` (cached)."""
        out = []
        for q in queries:
            with self._lock:
                hit = self._cache.get(q)  # a read makes it the most recently used
            if hit is None:
                hit = self._external_get(q)
            if hit is None:
                hit = self.encode_uncached(q)
                self.encoded_prompts += 1
                self._external_set(q, hit)
            with self._lock:
                self._cache[q] = hit  # evicts the least recently used beyond max_entries
            out.append(hit)
        return torch.stack(out) if out else torch.zeros(0, int(self.clip.text_projection.shape[1]))

    def _key(self, query: str) -> str:
        return f"{self.fingerprint}:{query}"

    def _external_get(self, query: str) -> torch.Tensor | None:
        if self.external is None:
            return None
        try:
            raw = self.external.get_text(self._key(query))
        except Exception:
            return None
        if raw is None:
            return None
        dim = int(self.clip.text_projection.shape[1])
        if len(raw) != dim * 4:
            return None
        return torch.frombuffer(bytearray(raw), dtype=torch.float32).clone()

    def _external_set(self, query: str, emb: torch.Tensor) -> None:
        if self.external is None:
            return
        try:
            self.external.set_text(self._key(query), emb.contiguous().numpy().tobytes())
        except Exception:
            pass
